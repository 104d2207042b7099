"""MIMIC-CXR-JPG (Johnson et al., 2019), in its published PhysioNet layout.

    ROOT/
      mimic-cxr-2.0.0-chexpert.csv.gz   (or -negbio; .csv also accepted)   labels per STUDY (required)
      mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, ... (optional)
      mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split (optional)
      files/p10/p10000032/s50414267/02aa804e-....jpg

Labels are per study (``subject_id``, ``study_id``) over the 14 CheXpert observations: ``1.0``
positive, ``0.0`` negative, ``-1.0`` uncertain, blank = not mentioned. The policies are options:
``uncertain`` (default ``ignore``: mask 0) and ``blank`` (default ``zeros``: a finding the report
does not mention is taken as absent), each one of ``ignore`` / ``zeros`` / ``ones``. ``No Finding``
is read but not stored. Findings CheXpert does not label (Mass, Nodule, ...) get mask 0.

Each image (a metadata row whose file exists) is one input. Without the metadata table the images
are found by walking ``files/`` (view UNKNOWN). Images of a partial download that are not on disk
are skipped. ``split.csv`` gives the official split (``validate`` -> eval), resolved per subject;
otherwise the salted hash of ``subject_id``. MIMIC-CXR, EGD-CXR and REFLACX share the ``mimic``
key namespace, so a subject gets the same pseudonymous key and split in all three.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from cxr_tfp import labels as L
from cxr_tfp.datasets.base import (Adapter, DatasetLayoutError, Item, Rejected, SourceRecord,
                                   apply_policy, check_policy, empty_labels, find_first,
                                   iter_files, parse_chexpert_value, read_dict_csv, rel)
from cxr_tfp.io.views import normalise_view

SPLIT_NAMES = {"train": "train", "validate": "eval", "validation": "eval", "val": "eval",
               "eval": "eval", "test": "test"}
_SPLIT_PRIORITY = {"test": 2, "eval": 1, "train": 0}


def table(root: Path, kind: str) -> Optional[Path]:
    """``mimic-cxr-*-{kind}.csv[.gz]`` under root (kind: chexpert, negbio, metadata, split)."""
    return find_first(root, [f"mimic-cxr-*-{kind}.csv.gz", f"mimic-cxr-*-{kind}.csv"])


def image_path(root: Path, subject_id: str, study_id: str, dicom_id: str, ext: str = "jpg") -> Path:
    s = str(subject_id).strip()
    return root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{str(study_id).strip()}" / f"{dicom_id.strip()}.{ext}"


def column_to_finding(column: str) -> Optional[str]:
    """A CheXpert column (``Pleural Effusion``, or EGD's ``pleural_effusion__chx``) -> FINDINGS name or None."""
    c = re.sub(r"__chx$", "", column.strip())
    if "_" in c and c.lower() == c:
        c = " ".join(w.capitalize() for w in c.split("_"))
    if c in L.NON_FINDINGS or c.replace(" ", "_") in L.NON_FINDINGS:
        return None
    for cand in (c, c.replace(" ", "_")):
        if L.is_known(cand):
            return L.harmonise(cand)
    # Case-insensitive match against the MIMIC spelling list.
    for m in L.MIMIC_COLUMNS:
        if m.lower() == c.lower():
            return None if m in L.NON_FINDINGS else L.harmonise(m)
    return None


def chexpert_labels(row: Dict[str, str], columns: Dict[str, str], uncertain: str, blank: str
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """One CheXpert-style row -> (labels, mask). ``columns`` maps column name -> FINDINGS name."""
    labels, mask = empty_labels()
    for col, finding in columns.items():
        v = parse_chexpert_value(row.get(col))
        lm = apply_policy(v, uncertain, blank)
        i = L.FINDINGS.index(finding)
        labels[i], mask[i] = lm
    return labels, mask


def resolve_patient_splits(pairs) -> Dict[str, str]:
    """[(patient, split)] -> {patient: split}; a patient listed in several splits gets the most held-out."""
    out: Dict[str, str] = {}
    for pid, s in pairs:
        prev = out.get(pid)
        if prev is None or _SPLIT_PRIORITY[s] > _SPLIT_PRIORITY[prev]:
            out[pid] = s
    return out


def read_split_table(path: Optional[Path]) -> Dict[str, Tuple[str, str]]:
    """``{dicom_id: (subject_id, split)}`` from a MIMIC split table (unknown split names ignored)."""
    out: Dict[str, Tuple[str, str]] = {}
    if path is None:
        return out
    for _, r in read_dict_csv(path, required=("dicom_id", "subject_id", "split")):
        if "__malformed__" in r:
            continue
        s = SPLIT_NAMES.get(str(r.get("split", "")).strip().lower())
        if s and r.get("dicom_id"):
            out[r["dicom_id"].strip()] = (str(r.get("subject_id", "")).strip(), s)
    return out


class MIMICAdapter(Adapter):
    name = "mimic"
    namespace = "mimic"
    label_table_hint = "mimic-cxr-2.0.0-chexpert.csv.gz (or -negbio) plus files/pXX/pSUBJECT/sSTUDY/*.jpg"

    def __init__(self, root, labeler: str = "chexpert", uncertain: str = "ignore", blank: str = "zeros",
                 image_ext: str = "jpg", views: Optional[str] = None, use_official_split: bool = True,
                 **options):
        super().__init__(root, **options)
        if labeler not in ("chexpert", "negbio"):
            raise ValueError(f"--labeler must be chexpert or negbio (got {labeler!r})")
        self.labeler = labeler
        self.uncertain = check_policy("uncertain", uncertain)
        self.blank = check_policy("blank", blank)
        self.image_ext = image_ext.lstrip(".")
        self.views = {v.strip().upper() for v in views.split(",")} if views else None
        self.use_official_split = use_official_split

    def check(self) -> None:
        self.check_root()
        if table(self.root, self.labeler) is None:
            raise DatasetLayoutError(
                f"no MIMIC-CXR label table in {self.root}: expected mimic-cxr-2.0.0-{self.labeler}.csv.gz "
                "(or .csv) from MIMIC-CXR-JPG")
        if not (self.root / "files").is_dir():
            raise DatasetLayoutError(f"no files/ folder in {self.root}: expected files/pXX/pSUBJECT/sSTUDY/*.jpg")

    def read_labels(self) -> Tuple[Dict[Tuple[str, str], object], str]:
        """``{(subject, study): (labels, mask) | reason}`` and the table's file name."""
        path = table(self.root, self.labeler)
        out: Dict[Tuple[str, str], object] = {}
        columns: Optional[Dict[str, str]] = None
        for line, r in read_dict_csv(path, required=("subject_id", "study_id")):
            if "__malformed__" in r:
                continue  # no key to attach the reason to; counted through the images of the study
            if columns is None:
                columns = {c: f for c in r if c not in ("subject_id", "study_id")
                           for f in [column_to_finding(c)] if f is not None}
            key = (str(r.get("subject_id", "")).strip(), str(r.get("study_id", "")).strip())
            try:
                out[key] = chexpert_labels(r, columns, self.uncertain, self.blank)
            except ValueError as exc:
                out[key] = f"{path.name}:{line}: {exc}"
        return out, path.name

    def discover(self) -> Iterator[Tuple[str, str, str, str, Optional[str], Optional[str]]]:
        """(source, subject, study, dicom_id, ViewPosition, error) for each image row / file."""
        meta = table(self.root, "metadata")
        if meta is not None:
            for line, r in read_dict_csv(meta, required=("subject_id", "study_id", "dicom_id", "ViewPosition")):
                if "__malformed__" in r:
                    yield f"{meta.name}:{line}", "", "", "", None, r["__malformed__"]
                    continue
                yield (f"{meta.name}:{line}", str(r.get("subject_id", "")).strip(),
                       str(r.get("study_id", "")).strip(), str(r.get("dicom_id", "")).strip(),
                       r.get("ViewPosition"), None)
            return
        for p in iter_files(self.root / "files", (f".{self.image_ext}",)):
            parts = p.relative_to(self.root / "files").parts
            if len(parts) != 4:
                continue
            yield rel(p, self.root), parts[1][1:], parts[2][1:], p.stem, None, None

    def collect(self) -> Tuple[List[SourceRecord], List[Rejected]]:
        self.check()
        labels, lname = self.read_labels()
        splits = read_split_table(table(self.root, "split")) if self.use_official_split else {}
        records: List[SourceRecord] = []
        rejected: List[Rejected] = []
        seen = set()
        for src, subject, study, dicom_id, view, error in self.discover():
            if error or not dicom_id or not subject or not study:
                reason = error or "no subject_id/study_id/dicom_id"
                rejected.append(Rejected(src, "metadata", f"malformed row: {reason}"))
                continue
            path = image_path(self.root, subject, study, dicom_id, self.image_ext)
            if not path.is_file():
                self.skip("metadata row without its image on disk (partial download)")
                continue
            v = normalise_view(view)
            if self.views is not None and v not in self.views:
                self.skip("view not in --views")
                continue
            relp = rel(path, self.root)
            if dicom_id in seen:
                rejected.append(Rejected(src, "metadata", "duplicate dicom_id"))
                continue
            seen.add(dicom_id)
            lab = labels.get((subject, study))
            if lab is None:
                rejected.append(Rejected(relp, "labels", f"its study has no row in {lname}"))
                continue
            if isinstance(lab, str):
                rejected.append(Rejected(relp, "labels", lab))
                continue
            sp = splits.get(dicom_id)
            records.append(SourceRecord(
                dataset=self.name, namespace=self.namespace, source=relp, image_path=str(path),
                image_id=dicom_id, patient_id=subject, labels=lab[0].copy(), label_mask=lab[1].copy(),
                view=v, split=sp[1] if sp else None))
        per_patient = resolve_patient_splits((r.patient_id, r.split) for r in records if r.split)
        for r in records:
            r.split = per_patient.get(r.patient_id)
        return records, rejected

    def items(self) -> Iterator[Item]:
        records, rejected = self.collect()
        yield from rejected
        yield from records


def find_mimic_image(mimic_root: Path, rel_path: str, exts=("jpg", "dcm", "png")) -> Optional[Path]:
    """A MIMIC image given a path like ``files/p1x/p1xxxx/sYYYY/ID.dcm`` (any prefix before ``files/``),
    trying the other extensions (MIMIC-CXR DICOM vs MIMIC-CXR-JPG)."""
    p = str(rel_path).strip().replace("\\", "/")
    m = list(re.finditer(r"(^|/)files/p\d", p))
    p = p[m[-1].start() + (1 if m[-1].group(1) else 0):] if m else p
    base, _ = os.path.splitext(p)
    for ext in exts:
        cand = mimic_root / f"{base}.{ext}"
        if cand.is_file():
            return cand
    return None
