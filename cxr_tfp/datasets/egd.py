"""EGD-CXR: Eye Gaze Data for Chest X-rays (Karargyris et al., PhysioNet ``egd-cxr`` 1.0.0).

    ROOT/                                  (the egd-cxr/1.0.0 folder)
      master_sheet.csv                     one row per image: dicom_id, path, study_id, patient_id, ...,
                                           CheXpert labels as ``<finding>__chx`` columns (1 / 0 / -1 / blank)
      fixations.csv                        DICOM_ID, ..., FPOGD (fixation duration, s), FPOGV (valid),
                                           X_ORIGINAL, Y_ORIGINAL (fixation in original image pixels)
      bounding_boxes.csv                   ANATOMY boxes (lungs, heart, ...): not disease boxes, not used
    MIMIC_ROOT/files/p1x/p1xxxxxx/sYYYY/<dicom_id>.jpg (or .dcm: master_sheet's ``path``)

The images are MIMIC-CXR images: ``--mimic-root`` (default: ROOT) points at a MIMIC-CXR-JPG or
MIMIC-CXR folder holding ``files/``. Labels come from the ``__chx`` columns with the same
uncertain/blank policies as MIMIC. Each master-sheet row is one input (a missing image is rejected:
the master sheet defines this dataset), and all fixations of one image are one more input.

Gaze heatmap: duration-weighted Gaussians with sigma :data:`cxr_tfp.annotations.EGD_SIGMA_PX`
(150 source pixels, the authors' setting; option ``gaze_sigma_px``), scaled with the image. Off-image
fixations (the dataset writes negative X/Y_ORIGINAL when the gaze left the image) and ``FPOGV == 0``
rows are dropped. Views are PA (the dataset selected PA images); a DICOM's own ViewPosition wins.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from cxr_tfp.annotations import EGD_SIGMA_PX, Gaze
from cxr_tfp.datasets.base import (Adapter, DatasetLayoutError, Item, Rejected, SourceRecord,
                                   check_policy, read_csv, read_dict_csv, rel)
from cxr_tfp.datasets.mimic import (chexpert_labels, column_to_finding, find_mimic_image,
                                    read_split_table, resolve_patient_splits, table)

MASTER_SHEET = "master_sheet.csv"
FIXATIONS = "fixations.csv"


def read_fixations(path: Path, skip=None) -> Dict[str, Tuple[Gaze, str]]:
    """``{DICOM_ID: (Gaze without sigma, source)}`` from an EGD-CXR ``fixations.csv``.

    Rows with missing/non-numeric fields or ``FPOGV == 0`` are dropped (``skip(reason)`` is told).
    """
    header, rows = read_csv(path)
    need = ("DICOM_ID", "X_ORIGINAL", "Y_ORIGINAL", "FPOGD")
    missing = [c for c in need if c not in header]
    if missing:
        raise DatasetLayoutError(f"{path} is not an EGD-CXR fixations table: missing columns {missing}")
    ci = {c: header.index(c) for c in header}
    iv = ci.get("FPOGV")
    acc: Dict[str, List[Tuple[float, float, float]]] = defaultdict(list)
    first_line: Dict[str, int] = {}
    for line, f in rows:
        if len(f) != len(header):
            if skip:
                skip("fixation row dropped (malformed)")
            continue
        did = f[ci["DICOM_ID"]].strip()
        try:
            x, y = float(f[ci["X_ORIGINAL"]]), float(f[ci["Y_ORIGINAL"]])
            d = float(f[ci["FPOGD"]])
            valid = True if iv is None else float(f[iv]) > 0
        except ValueError:
            if skip:
                skip("fixation row dropped (malformed)")
            continue
        if not did:
            if skip:
                skip("fixation row dropped (malformed)")
            continue
        if not valid:
            if skip:
                skip("fixation row dropped (FPOGV=0)")
            continue
        first_line.setdefault(did, line)
        acc[did].append((x, y, d))
    out: Dict[str, Tuple[Gaze, str]] = {}
    for did, pts in acc.items():
        a = np.asarray(pts, np.float64)
        src = f"{path.name}:{first_line[did]} (DICOM_ID group, {len(pts)} rows)"
        out[did] = (Gaze(x=a[:, 0], y=a[:, 1], weight=a[:, 2], source=src), src)
    return out


def attach_gaze(records: Dict[str, SourceRecord], gazes: Dict[str, Tuple[Gaze, str]],
                rejected: List[Rejected], rejected_ids: Dict[str, str], what: str,
                sigma_px: Optional[float] = None, sigma_frac: Optional[float] = None,
                skipped_ids=(), skip=None) -> None:
    """Join fixation sets to records by image id; orphans become dead letters."""
    for did in sorted(gazes):
        g, src = gazes[did]
        g.sigma_px, g.sigma_frac = sigma_px, sigma_frac
        if did in records:
            records[did].gaze = g
        elif did in skipped_ids:  # its image was skipped on purpose (partial download, view filter)
            if skip:
                skip("fixation set of a skipped image")
        elif did in rejected_ids:
            rejected.append(Rejected(src, "join", f"its image was rejected ({rejected_ids[did]})",
                                     kind="annotation"))
        else:
            rejected.append(Rejected(src, "join", f"fixations for an image that is not in {what}",
                                     kind="annotation"))


class EGDAdapter(Adapter):
    name = "egd"
    namespace = "mimic"
    label_table_hint = "master_sheet.csv and fixations.csv (PhysioNet egd-cxr), images under --mimic-root"

    def __init__(self, root, mimic_root: Optional[str] = None, uncertain: str = "ignore",
                 blank: str = "zeros", gaze_sigma_px: float = EGD_SIGMA_PX,
                 use_official_split: bool = True, **options):
        super().__init__(root, **options)
        self.mimic_root = Path(mimic_root).expanduser() if mimic_root else self.root
        self.uncertain = check_policy("uncertain", uncertain)
        self.blank = check_policy("blank", blank)
        self.gaze_sigma_px = float(gaze_sigma_px)
        self.use_official_split = use_official_split

    def check(self) -> None:
        self.check_root()
        for f in (MASTER_SHEET, FIXATIONS):
            if not (self.root / f).is_file():
                raise DatasetLayoutError(f"no {f} in {self.root}: expected the egd-cxr layout "
                                         f"({MASTER_SHEET}, {FIXATIONS})")
        if not (self.mimic_root / "files").is_dir():
            raise DatasetLayoutError(f"no files/ folder in {self.mimic_root}: EGD-CXR images are MIMIC-CXR "
                                     "images; pass --mimic-root pointing at MIMIC-CXR(-JPG)")

    def collect(self) -> Tuple[List[SourceRecord], List[Rejected]]:
        self.check()
        records: Dict[str, SourceRecord] = {}
        rejected: List[Rejected] = []
        rejected_ids: Dict[str, str] = {}
        columns: Optional[Dict[str, str]] = None
        for line, r in read_dict_csv(self.root / MASTER_SHEET, required=("dicom_id", "patient_id", "path")):
            src = f"{MASTER_SHEET}:{line}"
            if "__malformed__" in r:
                rejected.append(Rejected(src, "labels", f"malformed row: {r['__malformed__']}"))
                continue
            if columns is None:
                columns = {c: f for c in r if c.endswith("__chx") for f in [column_to_finding(c)] if f}
            did = str(r.get("dicom_id", "")).strip()
            pid = str(r.get("patient_id", "")).strip()
            if not did or not pid:
                rejected.append(Rejected(src, "labels", "row without dicom_id/patient_id"))
                continue
            if did in records or did in rejected_ids:
                rejected.append(Rejected(src, "labels", "duplicate dicom_id"))
                continue
            try:
                labels, mask = chexpert_labels(r, columns, self.uncertain, self.blank)
            except ValueError as exc:
                rejected.append(Rejected(src, "labels", str(exc)))
                rejected_ids[did] = str(exc)
                continue
            path = find_mimic_image(self.mimic_root, r.get("path") or "") if r.get("path") else None
            if path is None:
                reason = "image file not found under --mimic-root (master_sheet path)"
                rejected.append(Rejected(src, "read", reason))
                rejected_ids[did] = reason
                continue
            records[did] = SourceRecord(
                dataset=self.name, namespace=self.namespace, source=rel(path, self.mimic_root),
                image_path=str(path), image_id=did, patient_id=pid, labels=labels, label_mask=mask,
                view=None if path.suffix.lower() == ".dcm" else "PA")
        gazes = read_fixations(self.root / FIXATIONS, skip=self.skip)
        attach_gaze(records, gazes, rejected, rejected_ids, MASTER_SHEET, sigma_px=self.gaze_sigma_px)
        if self.use_official_split:
            splits = read_split_table(table(self.mimic_root, "split"))
            per_patient = resolve_patient_splits(
                (r.patient_id, splits[d][1]) for d, r in records.items() if d in splits)
            for r in records.values():
                r.split = per_patient.get(r.patient_id)
        return [records[k] for k in sorted(records)], rejected

    def items(self) -> Iterator[Item]:
        records, rejected = self.collect()
        yield from rejected
        yield from records
