"""Finding vocabularies per dataset and their harmonisation: the one place these names live.

Every TFRecord stores labels over ``FINDINGS`` (the harmonised union vocabulary) with a per-finding
mask; a model predicts a chosen subset (default ``NIH_FINDINGS``) and gathers those columns.
A dataset's adapter maps its own spelling to a harmonised name with :func:`harmonise`.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

# The 14 findings of NIH ChestX-ray14 (Wang et al. 2017), in the order of the published papers.
NIH_FINDINGS: Tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)

# The 14 CheXpert labeller observations used by MIMIC-CXR-JPG (chexpert / negbio tables), in their
# column spelling.
MIMIC_COLUMNS: Tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
)

# Source spelling -> harmonised name. Anything not listed maps to itself.
_SYNONYMS: Dict[str, str] = {
    "Pleural Effusion": "Effusion",          # MIMIC / CheXpert
    "Infiltrate": "Infiltration",            # NIH BBox_List_2017.csv spelling
    "Pleural Thickening": "Pleural_Thickening",
    "Pleural_Thickening": "Pleural_Thickening",
    "Enlarged Cardiomediastinum": "Enlarged_Cardiomediastinum",
    "Lung Lesion": "Lung_Lesion",
    "Lung Opacity": "Lung_Opacity",
    "Pleural Other": "Pleural_Other",
    "Support Devices": "Support_Devices",
    # REFLACX ellipse / label spellings
    "Enlarged cardiac silhouette": "Cardiomegaly",
    "Pleural abnormality": "Pleural_Other",
    "Abnormal mediastinal contour": "Enlarged_Cardiomediastinum",
    "Acute fracture": "Fracture",
    "Groundglass opacity": "Lung_Opacity",
    "Interstitial lung disease": "Fibrosis",
    "Lung nodule or mass": "Lung_Lesion",
    "Wide mediastinum": "Enlarged_Cardiomediastinum",
    "Quality issue": "Quality_Issue",
    "Support devices": "Support_Devices",
    "Other": "Other",
    # REFLACX spellings with no entry above (phase 1 and phases 2-3 metadata columns)
    "Pleural effusion": "Effusion",
    "Pulmonary edema": "Edema",
    "Hiatal hernia": "Hernia",
    "High lung volume / emphysema": "Emphysema",
}

# Findings that are not diseases of the image: they are read but not predicted.
NON_FINDINGS: Tuple[str, ...] = ("No Finding", "No_Finding")

# The harmonised union vocabulary stored in every TFRecord (order is part of the record contract:
# append only, never reorder).
FINDINGS: Tuple[str, ...] = NIH_FINDINGS + (
    "Enlarged_Cardiomediastinum", "Fracture", "Lung_Lesion", "Lung_Opacity", "Pleural_Other",
    "Support_Devices",
)

# The embedded synthetic dataset (cxr_tfp.datasets.synthetic) draws findings from this subset of
# NIH's boxed findings; the smoke / demo configs predict exactly these.
SYNTHETIC_FINDINGS: Tuple[str, ...] = ("Cardiomegaly", "Effusion", "Mass", "Nodule")

# Named subsets a model config may ask for.
VOCABULARIES: Dict[str, Tuple[str, ...]] = {
    "nih": NIH_FINDINGS,
    "mimic": tuple(n for n in (_SYNONYMS.get(c, c) for c in MIMIC_COLUMNS) if n not in NON_FINDINGS),
    "synthetic": SYNTHETIC_FINDINGS,
    "all": FINDINGS,
}


def harmonise(name: str) -> str:
    """Map a dataset's spelling of a finding to its harmonised name (raises KeyError if unknown)."""
    key = name.strip()
    out = _SYNONYMS.get(key, key)
    if out not in FINDINGS:
        raise KeyError(f"unknown finding {name!r}; known: {', '.join(FINDINGS)}")
    return out


def is_known(name: str) -> bool:
    """True when ``name`` harmonises to a finding in ``FINDINGS``."""
    try:
        harmonise(name)
        return True
    except KeyError:
        return False


def resolve_vocabulary(spec: str | Sequence[str]) -> Tuple[str, ...]:
    """A vocabulary by name (``nih``, ``mimic``, ``all``) or an explicit list of finding names."""
    if isinstance(spec, str):
        if spec in VOCABULARIES:
            return VOCABULARIES[spec]
        spec = [s for s in spec.split(",") if s.strip()]
    names = tuple(harmonise(s) for s in spec)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate findings in vocabulary {list(spec)}")
    return names


def indices(vocabulary: Iterable[str]) -> List[int]:
    """Column indices of ``vocabulary`` inside the stored ``FINDINGS`` vector."""
    return [FINDINGS.index(harmonise(n)) for n in vocabulary]
