"""REFLACX: reports and eye-tracking data for localization of abnormalities in chest X-rays
(Bigolin Lanfredi et al., PhysioNet ``reflacx-xray-localization`` 1.0.0).

    ROOT/main_data/
      metadata_phase_1.csv, metadata_phase_2.csv, metadata_phase_3.csv
          id, split, eye_tracking_data_discarded, image, dicom_id, subject_id, image_size_x,
          image_size_y, one certainty column (0-5) per label, Support devices (bool), Other (text)
      <id>/fixations.csv                 timestamp_start_fixation, timestamp_end_fixation, x_position,
                                         y_position (image pixels), angular_resolution_{x,y}_pixels_per_degree, ...
      <id>/anomaly_location_ellipses.csv xmin, ymin, xmax, ymax (image pixels), certainty, one bool per label
    MIMIC_ROOT/files/p1x/p1xxxxxx/sYYYY/<dicom_id>.dcm (or .jpg)   the images (``--mimic-root``, default ROOT)

One example per *reading* (``id``): phases 1-2 have several radiologists reading the same image; each
reading is its own example (same patient, so same split). Labels: a certainty at or above
``min_certainty`` (default 3, "Possibly") is positive, 0 (not selected) negative, 1..min-1
uncertain (policy ``uncertain``, default ``ignore``). Label spellings are harmonised by
:mod:`cxr_tfp.labels`; REFLACX labels with no harmonised finding (``Airway wall thickening``,
``Enlarged hilum``, ``Quality issue``, ``Other``) are not stored.

Annotations: every ellipse of certainty >= ``min_certainty`` is one input and becomes part of the
mask; fixations become a heatmap whose sigma is one degree of visual angle per fixation (its
angular-resolution columns), weighted by fixation duration. Coordinates are in pixels of the
``image_size_x`` x ``image_size_y`` original; they are rescaled if the image on disk has another size.
The split is REFLACX's ``split`` column (MIMIC's official split; ``validate`` -> eval).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from cxr_tfp import labels as L
from cxr_tfp.annotations import Gaze, Region
from cxr_tfp.datasets.base import (Adapter, DatasetLayoutError, Item, Rejected, SourceRecord,
                                   apply_policy, check_policy, empty_labels, read_csv, read_dict_csv,
                                   rel, to_float)
from cxr_tfp.datasets.mimic import SPLIT_NAMES, find_mimic_image, resolve_patient_splits

FIXATION_COLUMNS = ("timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position",
                    "angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree")
META_COLUMNS = ("id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id",
                "image_size_x", "image_size_y")
NOT_LABELS = set(META_COLUMNS) | {"Other"}
BOOL_LABELS = ("Support devices", "Quality issue")


def _bool(text) -> bool:
    return str(text).strip().lower() in ("true", "1", "1.0", "yes", "t")


def label_columns(header) -> Dict[str, str]:
    """Metadata label column -> harmonised finding (columns without one are left out)."""
    out = {}
    for c in header:
        if c in NOT_LABELS:
            continue
        if L.is_known(c):
            out[c] = L.harmonise(c)
    return out


def read_gaze(path: Path, skip=None) -> Gaze:
    """A REFLACX ``fixations.csv`` -> :class:`Gaze` with per-fixation sigma = 1 degree."""
    header, rows = read_csv(path)
    missing = [c for c in FIXATION_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"fixations.csv lacks columns {missing}")
    ci = {c: header.index(c) for c in FIXATION_COLUMNS}
    pts = []
    for _, f in rows:
        try:
            vals = [float(f[ci[c]]) for c in FIXATION_COLUMNS]
        except (ValueError, IndexError):
            if skip:
                skip("fixation row dropped (malformed)")
            continue
        t0, t1, x, y, ax, ay = vals
        pts.append((x, y, t1 - t0, ax, ay))
    if not pts:
        raise ValueError("fixations.csv has no usable fixation")
    a = np.asarray(pts, np.float64)
    return Gaze(x=a[:, 0], y=a[:, 1], weight=a[:, 2], sigma_x=a[:, 3], sigma_y=a[:, 4])


class REFLACXAdapter(Adapter):
    name = "reflacx"
    namespace = "mimic"
    label_table_hint = "main_data/metadata_phase_*.csv and main_data/<id>/ (PhysioNet REFLACX)"

    def __init__(self, root, mimic_root: Optional[str] = None, uncertain: str = "ignore",
                 min_certainty: int = 3, phases: Optional[str] = None, use_official_split: bool = True,
                 **options):
        super().__init__(root, **options)
        self.mimic_root = Path(mimic_root).expanduser() if mimic_root else self.root
        self.uncertain = check_policy("uncertain", uncertain)
        self.min_certainty = int(min_certainty)
        if not 1 <= self.min_certainty <= 5:
            raise ValueError("--min-certainty must be between 1 and 5")
        self.phases = {p.strip() for p in str(phases).split(",")} if phases else None
        self.use_official_split = use_official_split

    @property
    def main(self) -> Path:
        return self.root / "main_data"

    def metadata_tables(self) -> List[Path]:
        tabs = sorted(self.main.glob("metadata_phase_*.csv"))
        if self.phases:
            tabs = [t for t in tabs if t.stem.rsplit("_", 1)[-1] in self.phases]
        return tabs

    def check(self) -> None:
        self.check_root()
        if not self.main.is_dir():
            raise DatasetLayoutError(f"no main_data/ folder in {self.root}: expected the REFLACX layout "
                                     "(main_data/metadata_phase_*.csv)")
        if not self.metadata_tables():
            raise DatasetLayoutError(f"no label table in {self.main}: expected metadata_phase_1.csv, "
                                     "metadata_phase_2.csv and/or metadata_phase_3.csv")
        if not (self.mimic_root / "files").is_dir():
            raise DatasetLayoutError(f"no files/ folder in {self.mimic_root}: REFLACX images are MIMIC-CXR "
                                     "images; pass --mimic-root pointing at MIMIC-CXR(-JPG)")

    def _labels(self, row: Dict[str, str], columns: Dict[str, str]) -> Tuple[np.ndarray, np.ndarray]:
        labels, mask = empty_labels()
        for col, finding in columns.items():
            text = row.get(col, "")
            if col in BOOL_LABELS:
                lm = (1.0, 1.0) if _bool(text) else (0.0, 1.0)
            else:
                c = to_float(text, f"certainty of {col!r}") if str(text).strip() != "" else 0.0
                if c not in (0, 1, 2, 3, 4, 5):
                    raise ValueError(f"certainty of {col!r} is {text!r}, expected 0-5")
                if c >= self.min_certainty:
                    lm = (1.0, 1.0)
                elif c == 0:
                    lm = (0.0, 1.0)
                else:
                    lm = apply_policy(-1, self.uncertain, "zeros")
            i = L.FINDINGS.index(finding)
            # Several REFLACX labels can map to one finding: positive wins, known wins.
            if lm[1] > 0:
                labels[i] = max(labels[i] if mask[i] > 0 else 0.0, lm[0])
                mask[i] = 1.0
        return labels, mask

    def _ellipses(self, rid: str, frame: Tuple[float, float], rejected: List[Rejected]) -> List[Region]:
        path = self.main / rid / "anomaly_location_ellipses.csv"
        if not path.is_file():
            return []
        out: List[Region] = []
        for line, r in read_dict_csv(path):
            src = f"main_data/{rid}/{path.name}:{line}"
            if "__malformed__" in r:
                rejected.append(Rejected(src, "annotations", f"malformed row: {r['__malformed__']}",
                                         kind="annotation"))
                continue
            try:
                cert = to_float(r.get("certainty", ""), "certainty")
                if cert < self.min_certainty:
                    self.skip("ellipse below --min-certainty")
                    continue
                x0, y0 = to_float(r.get("xmin"), "xmin"), to_float(r.get("ymin"), "ymin")
                x1, y1 = to_float(r.get("xmax"), "xmax"), to_float(r.get("ymax"), "ymax")
            except ValueError as exc:
                rejected.append(Rejected(src, "annotations", str(exc), kind="annotation"))
                continue
            names = [c for c, v in r.items() if c not in ("xmin", "ymin", "xmax", "ymax", "certainty")
                     and _bool(v)]
            finding = next((L.harmonise(n) for n in names if L.is_known(n)), "")
            out.append(Region("ellipse", x0, y0, x1, y1, source=src, finding=finding))
        return out

    def collect(self) -> Tuple[List[SourceRecord], List[Rejected]]:
        self.check()
        records: Dict[str, SourceRecord] = {}
        rejected: List[Rejected] = []
        known_ids = set()
        for tab in self.metadata_tables():
            header, _ = read_csv(tab)
            missing = [c for c in META_COLUMNS if c not in header]
            if missing:
                raise DatasetLayoutError(f"{tab} is not a REFLACX metadata table: missing columns {missing}")
            columns = label_columns(header)
            for line, r in read_dict_csv(tab):
                src = f"main_data/{tab.name}:{line}"
                if "__malformed__" in r:
                    rejected.append(Rejected(src, "labels", f"malformed row: {r['__malformed__']}"))
                    continue
                rid, pid = r["id"].strip(), r["subject_id"].strip()
                known_ids.add(rid)
                n_ann = self._count_annotation_inputs(rid, r)
                try:
                    if not rid or not pid or not r["dicom_id"].strip():
                        raise ValueError("row without id/subject_id/dicom_id")
                    if rid in records:
                        raise ValueError("duplicate reading id")
                    frame = (to_float(r["image_size_x"], "image_size_x"), to_float(r["image_size_y"], "image_size_y"))
                    labels, mask = self._labels(r, columns)
                except ValueError as exc:
                    rejected.append(Rejected(src, "labels", str(exc)))
                    self._reject_annotations(rid, n_ann, "its reading was rejected", rejected)
                    continue
                path = find_mimic_image(self.mimic_root, r["image"])
                if path is None:
                    reason = "image file not found under --mimic-root (metadata 'image' path)"
                    rejected.append(Rejected(src, "read", reason))
                    self._reject_annotations(rid, n_ann, f"its image was rejected ({reason})", rejected)
                    continue
                split = SPLIT_NAMES.get(r["split"].strip().lower()) if self.use_official_split else None
                rec = SourceRecord(
                    dataset=self.name, namespace=self.namespace, source=rel(path, self.mimic_root),
                    image_path=str(path), image_id=f"reflacx:{rid}", patient_id=pid, labels=labels,
                    label_mask=mask, view=None if path.suffix.lower() == ".dcm" else "UNKNOWN",
                    split=split, frame=frame)
                rec.regions = self._ellipses(rid, frame, rejected)
                if not _bool(r["eye_tracking_data_discarded"]):
                    fix = self.main / rid / "fixations.csv"
                    fsrc = f"main_data/{rid}/fixations.csv"
                    try:
                        if not fix.is_file():
                            raise ValueError("fixations.csv missing for a reading with eye-tracking data")
                        rec.gaze = read_gaze(fix, skip=self.skip)
                        rec.gaze.source = fsrc
                    except ValueError as exc:
                        rejected.append(Rejected(fsrc, "annotations", str(exc), kind="annotation"))
                records[rid] = rec
        # Reading folders that no metadata table lists: their annotations have no image.
        if self.main.is_dir() and not self.phases:
            for d in sorted(p for p in self.main.iterdir() if p.is_dir() and p.name not in known_ids):
                self._reject_annotations(d.name, self._count_annotation_inputs(d.name, None),
                                         "annotations for a reading/image that is not in any metadata table",
                                         rejected)
        recs = [records[k] for k in sorted(records)]
        per_patient = resolve_patient_splits((r.patient_id, r.split) for r in recs if r.split)
        for r in recs:
            r.split = per_patient.get(r.patient_id)
        return recs, rejected

    def _count_annotation_inputs(self, rid: str, row: Optional[Dict[str, str]]) -> Tuple[int, int]:
        """(ellipse inputs, fixation-set inputs) present on disk for a reading."""
        n_ell = 0
        p = self.main / rid / "anomaly_location_ellipses.csv"
        if p.is_file():
            for _, r in read_dict_csv(p):
                try:
                    if "__malformed__" in r or float(r.get("certainty", "nan")) >= self.min_certainty:
                        n_ell += 1
                except ValueError:
                    n_ell += 1
        has_fix = (self.main / rid / "fixations.csv").is_file()
        return n_ell, int(has_fix)

    def _reject_annotations(self, rid: str, counts: Tuple[int, int], reason: str,
                            rejected: List[Rejected]) -> None:
        n_ell, n_fix = counts
        for k in range(n_ell):
            rejected.append(Rejected(f"main_data/{rid}/anomaly_location_ellipses.csv (ellipse {k + 1})",
                                     "join", reason, kind="annotation"))
        if n_fix:
            rejected.append(Rejected(f"main_data/{rid}/fixations.csv", "join", reason, kind="annotation"))

    def items(self) -> Iterator[Item]:
        records, rejected = self.collect()
        yield from rejected
        yield from records
