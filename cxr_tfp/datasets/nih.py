"""NIH ChestX-ray14 (Wang et al., CVPR 2017), in its published layout.

    ROOT/
      Data_Entry_2017_v2020.csv or Data_Entry_2017.csv      the label table (required)
      BBox_List_2017.csv                                     984 expert boxes (optional)
      train_val_list.txt, test_list.txt                      official split (optional)
      images/*.png   or   images_001/images/*.png ... images_012/images/*.png

Label table quirks handled here: the header's bracketed columns
(``OriginalImage[Width,Height]``, ``OriginalImagePixelSpacing[x,y]``) each hold two values, so a
data row has more fields than the header has names; the 2017 file also ends every line with a
trailing comma. Only the first seven columns are used (by name), so both versions read the same.
``Finding Labels`` joins findings with ``|``; ``No Finding`` means all 14 are negative. The box
file spells ``Infiltrate`` (harmonised to ``Infiltration``); its ``Bbox [x,y,w,h]`` values are in
pixels of the 1024x1024 PNG.

Partial downloads are normal (the images come in 12 archives): label rows whose image is not on
disk are skipped (``summary["skipped"]``), not rejected. An image on disk without a label row is
rejected. Split: the official lists when present (``test_list.txt`` -> test, ``train_val_list.txt``
-> train or eval by salted patient hash), otherwise the salted patient hash; resolved per patient,
so a patient never spans two splits.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from cxr_tfp import labels as L
from cxr_tfp.annotations import Region
from cxr_tfp.datasets.base import (Adapter, DatasetLayoutError, Item, Rejected, SourceRecord,
                                   find_first, parse_finding_list, read_csv, rel,
                                   to_float)
from cxr_tfp.io.views import normalise_view
from cxr_tfp.privacy import assign_train_eval

LABEL_TABLES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017*.csv",
                "Data_Entry*.csv", "Data_Entry_2017*.csv.gz")
BBOX_TABLE = "BBox_List_2017.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def index_images(root: Path) -> Dict[str, Path]:
    """``{file name: path}`` for images under ``images/`` and ``images_*/[images/]``."""
    found: Dict[str, Path] = {}
    dirs = [root / "images"] + sorted(p for p in root.glob("images_*") if p.is_dir())
    for d in dirs:
        for sub in (d / "images", d):
            if not sub.is_dir():
                continue
            with os.scandir(sub) as it:
                for e in it:
                    if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES):
                        found.setdefault(e.name, Path(e.path))
    return found


def parse_findings(text: str) -> Tuple[np.ndarray, np.ndarray]:
    """``'Effusion|Mass'`` -> (labels, mask) over FINDINGS; NIH labels its 14 findings (mask 1).

    Raises ``ValueError`` naming an unknown finding.
    """
    return parse_finding_list(text, L.NIH_FINDINGS, "one of the 14 NIH findings", require_nonempty=True)


def read_list(path: Path) -> set:
    if not path.is_file():
        return set()
    return {ln.strip() for ln in path.read_text().splitlines() if ln.strip()}


class NIHAdapter(Adapter):
    name = "nih"
    namespace = "nih"
    label_table_hint = "Data_Entry_2017*.csv plus images/ or images_0NN/images/"

    def __init__(self, root, label_table: Optional[str] = None, use_official_split: bool = True,
                 views: Optional[str] = None, split_fractions=None, salt: Optional[str] = None,
                 **options):
        super().__init__(root, **options)
        self.label_table = label_table
        self.use_official_split = use_official_split
        self.views = {v.strip().upper() for v in views.split(",")} if views else None
        self.split_fractions = split_fractions
        self.salt = salt
        self._table: Optional[Path] = None
        self.rejected_images: Dict[str, str] = {}
        self.absent_images: set = set()     # label rows whose image is not on disk (partial download)
        self._images: Optional[Dict[str, Path]] = None

    # -- layout -----------------------------------------------------------------------------------
    def table_path(self) -> Path:
        if self._table is None:
            if self.label_table:
                p = Path(self.label_table)
                p = p if p.is_absolute() else self.root / p
                if not p.is_file():
                    raise DatasetLayoutError(f"label table {p} not found")
                self._table = p
            else:
                p = find_first(self.root, LABEL_TABLES)
                if p is None:
                    raise DatasetLayoutError(
                        f"no NIH label table in {self.root}: expected Data_Entry_2017_v2020.csv or "
                        "Data_Entry_2017.csv (ChestX-ray14 layout)")
                self._table = p
        return self._table

    def images(self) -> Dict[str, Path]:
        if self._images is None:
            self._images = index_images(self.root)
        return self._images

    def check(self) -> None:
        self.check_root()
        self.table_path()
        if not self.images():
            raise DatasetLayoutError(
                f"no images under {self.root}: expected PNGs in images/ or images_0NN/images/")

    # -- reading ----------------------------------------------------------------------------------
    def collect(self) -> Tuple[Dict[str, SourceRecord], List[Rejected]]:
        """Records keyed by image file name, plus rejections (before joins of extra annotations)."""
        self.check()
        images = self.images()
        table = self.table_path()
        tname = table.name
        header, rows = read_csv(table, required=NIH_COLUMNS)  # a renamed column fails here
        ci = {c: header.index(c) for c in NIH_COLUMNS if c in header}
        need = max(ci.values()) + 1
        records: Dict[str, SourceRecord] = {}
        rejected: List[Rejected] = []
        rejected_images: Dict[str, str] = {}
        for line, f in rows:
            name = f[0].strip() if f else ""
            if name not in images:
                self.skip("label row without its image on disk (partial download)")
                self.absent_images.add(name)
                continue
            src = f"{tname}:{line}"
            if name in records or name in rejected_images:
                rejected.append(Rejected(src, "labels", "duplicate row for an image already listed"))
                continue
            if len(f) < need:
                reason = f"malformed row: {len(f)} fields, expected at least {need}"
                rejected.append(Rejected(src, "labels", reason))
                rejected_images[name] = reason
                continue
            pid = f[ci["Patient ID"]].strip()
            try:
                if not pid:
                    raise ValueError("empty Patient ID")
                labels, mask = parse_findings(f[ci["Finding Labels"]])
            except ValueError as exc:
                rejected.append(Rejected(src, "labels", str(exc)))
                rejected_images[name] = str(exc)
                continue
            view = normalise_view(f[ci["View Position"]]) if "View Position" in ci else "UNKNOWN"
            if self.views is not None and view not in self.views:
                self.skip(f"view not in --views")
                rejected_images[name] = "__skipped__"
                continue
            path = images[name]
            records[name] = SourceRecord(
                dataset=self.name, namespace=self.namespace, source=rel(path, self.root),
                image_path=str(path), image_id=name, patient_id=pid, labels=labels, label_mask=mask,
                view=view)
        for name in sorted(set(images) - set(records) - set(rejected_images)):
            reason = f"image has no row in {tname}"
            rejected.append(Rejected(rel(images[name], self.root), "labels", reason))
            rejected_images[name] = reason
        self.rejected_images = rejected_images
        self._attach_boxes(records, rejected, rejected_images)
        self._assign_official_splits(records)
        return records, rejected

    def _attach_boxes(self, records, rejected, rejected_images) -> None:
        path = self.root / BBOX_TABLE
        if not path.is_file():
            return
        images = self.images()
        _, rows = read_csv(path)
        for line, f in rows:
            src = f"{BBOX_TABLE}:{line}"
            name = f[0].strip() if f else ""
            if name not in images:
                self.skip("box row without its image on disk (partial download)")
                continue
            if rejected_images.get(name) == "__skipped__":
                self.skip("box row of a skipped image")
                continue
            if name in rejected_images:
                rejected.append(Rejected(src, "join", f"its image was rejected ({rejected_images[name]})",
                                         kind="annotation"))
                continue
            try:
                if len(f) < 6:
                    raise ValueError(f"malformed box row: {len(f)} fields, expected 6")
                finding = L.harmonise(f[1])
                x, y = to_float(f[2], "x"), to_float(f[3], "y")
                w, h = to_float(f[4], "w"), to_float(f[5], "h")
            except KeyError:
                rejected.append(Rejected(src, "annotations", f"unknown finding {f[1].strip()!r}",
                                         kind="annotation"))
                continue
            except ValueError as exc:
                rejected.append(Rejected(src, "annotations", str(exc), kind="annotation"))
                continue
            records[name].regions.append(Region.from_xywh(x, y, w, h, source=src, finding=finding))

    def _assign_official_splits(self, records: Dict[str, SourceRecord]) -> None:
        if not self.use_official_split:
            return
        test = read_list(self.root / "test_list.txt")
        trainval = read_list(self.root / "train_val_list.txt")
        if not test and not trainval:
            return
        per_patient: Dict[str, str] = {}
        for name, r in records.items():
            s = "test" if name in test else ("trainval" if name in trainval else None)
            if s is None:
                continue
            prev = per_patient.get(r.patient_id)
            # A patient listed in both lists goes to test (never train on a test patient).
            per_patient[r.patient_id] = "test" if "test" in (prev, s) else s
        for r in records.values():
            s = per_patient.get(r.patient_id)
            if s == "test":
                r.split = "test"
            elif s == "trainval":
                r.split = assign_train_eval(r.patient_id, self.namespace, self.salt, self.split_fractions
                                            or (0.8, 0.1, 0.1))

    def items(self) -> Iterator[Item]:
        records, rejected = self.collect()
        yield from rejected
        for name in sorted(records):
            yield records[name]
