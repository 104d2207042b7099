"""A folder of DICOM chest radiographs (e.g. a hospital's export), optionally with a label table.

    ROOT/**/*.dcm (also *.dicom and extension-less files that start with the DICOM magic)
    labels.csv (optional, ``--labels-csv``):  file,Finding Labels
                                              CASE1/IMG0001.dcm,Effusion|Mass
                                              CASE2/IMG0007.dcm,No Finding

Each file is one input. Everything else comes from the header, read on the worker with the pixels:
PatientID (hashed; falls back to StudyInstanceUID, then to the file itself when absent),
SOPInstanceUID (hashed into the example key), ViewPosition. Pixels go through the modality LUT, the
VOI LUT / window, MONOCHROME1 inversion and BitsStored masking (:mod:`cxr_tfp.io.dicom`); colour or
non-radiograph DICOMs are rejected with their reason.

Labels: ``Finding Labels`` as in NIH (``|``-joined, ``No Finding`` = all negative), over the findings
named by ``--label-vocabulary`` (default ``nih``: the 14 NIH findings get mask 1). Without a label
table every label has mask 0 (unlabelled data, e.g. for inference or a TFX statistics run). With a
label table, files it does not list are rejected and rows naming a missing file are rejected.

Duplicates: the launcher reads each file's ``SOPInstanceUID`` (header only, stopping before the
pixels); a file whose UID was already seen (in sorted path order) is rejected as a duplicate, so
the same image is written once and cannot sit in two splits.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from cxr_tfp import labels as L
from cxr_tfp.datasets.base import (Adapter, DatasetLayoutError, Item, Rejected, SourceRecord,
                                   empty_labels, parse_finding_list, read_dict_csv, rel)

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def find_dicoms(root: Path) -> List[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            low = f.lower()
            if low.endswith(DICOM_SUFFIXES) or ("." not in f and _looks_like_dicom(p)):
                out.append(p)
    return out


def sop_instance_uid(path: Path) -> Optional[str]:
    """The file's SOPInstanceUID from its header (no pixel data read), or None if unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except Exception:  # noqa: BLE001  (an unreadable header is the worker's dead letter, with its reason)
        return None
    uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    return uid or None


def parse_labels(text: str, vocabulary) -> Tuple:
    """``'Effusion|Mass'`` from the optional label table -> (labels, mask) over ``vocabulary``."""
    return parse_finding_list(text, vocabulary, "in --label-vocabulary")


class DicomFolderAdapter(Adapter):
    name = "dicom"
    namespace = "dicom"
    label_table_hint = "*.dcm files (any depth), optional --labels-csv with columns file,Finding Labels"

    def __init__(self, root, labels_csv: Optional[str] = None, label_vocabulary: str = "nih", **options):
        super().__init__(root, **options)
        self.labels_csv = labels_csv
        self.vocabulary = L.resolve_vocabulary(label_vocabulary)
        self._files: Optional[List[Path]] = None

    def files(self) -> List[Path]:
        if self._files is None:
            self._files = find_dicoms(self.root)
        return self._files

    def labels_path(self) -> Optional[Path]:
        if not self.labels_csv:
            return None
        p = Path(self.labels_csv)
        return p if p.is_absolute() else self.root / p

    def check(self) -> None:
        self.check_root()
        lp = self.labels_path()
        if lp is not None and not lp.is_file():
            raise DatasetLayoutError(f"label table {lp} not found (--labels-csv; expected columns "
                                     "file,Finding Labels)")
        if not self.files():
            raise DatasetLayoutError(f"no DICOM files under {self.root}: expected *.dcm files")

    def collect(self) -> Tuple[List[SourceRecord], List[Rejected]]:
        self.check()
        rejected: List[Rejected] = []
        table: Optional[Dict[str, object]] = None
        lp = self.labels_path()
        if lp is not None:
            table = {}
            for line, r in read_dict_csv(lp, required=("file", "Finding Labels")):
                src = f"{lp.name}:{line}"
                if "__malformed__" in r:
                    rejected.append(Rejected(src, "labels", f"malformed row: {r['__malformed__']}"))
                    continue
                f = str(r.get("file", "")).strip().replace("\\", "/")
                if not f or "Finding Labels" not in r:
                    raise DatasetLayoutError(f"{lp} must have columns file,Finding Labels")
                try:
                    table[f] = parse_labels(r["Finding Labels"], self.vocabulary)
                except ValueError as exc:
                    table[f] = f"{src}: {exc}"
            present = {rel(p, self.root).replace(os.sep, "/") for p in self.files()}
            for f in sorted(set(table) - present):
                rejected.append(Rejected(f"{lp.name} ({f})", "read", "label row for a file that is not there"))
        records: List[SourceRecord] = []
        seen: Dict[str, str] = {}
        for p in self.files():
            rp = rel(p, self.root).replace(os.sep, "/")
            uid = sop_instance_uid(p)
            if uid is not None:
                if uid in seen:
                    rejected.append(Rejected(rp, "dedupe", "duplicate SOPInstanceUID: an earlier file (in path "
                                                           "order) holds the same image, written once"))
                    continue
                seen[uid] = rp
            if table is not None:
                lab = table.get(rp)
                if lab is None:
                    rejected.append(Rejected(rp, "labels", f"file has no row in {lp.name}"))
                    continue
                if isinstance(lab, str):
                    rejected.append(Rejected(rp, "labels", lab))
                    continue
                labels, mask = lab
            else:
                labels, mask = empty_labels()
            records.append(SourceRecord(
                dataset=self.name, namespace=self.namespace, source=rp, image_path=str(p),
                image_id=uid, patient_id=None, labels=labels, label_mask=mask, view=None))
        return records, rejected

    def items(self) -> Iterator[Item]:
        records, rejected = self.collect()
        yield from rejected
        yield from records
