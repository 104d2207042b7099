"""Dataset adapters: one per source, each readable in one sitting.

=========  ====================================  ==============================================
name       module                                layout
=========  ====================================  ==============================================
nih        :mod:`cxr_tfp.datasets.nih`           ChestX-ray14: Data_Entry_2017*.csv, BBox_List_2017.csv, images/
mimic      :mod:`cxr_tfp.datasets.mimic`         MIMIC-CXR-JPG: chexpert/negbio, metadata, split tables, files/
egd        :mod:`cxr_tfp.datasets.egd`           EGD-CXR: master_sheet.csv, fixations.csv (+ MIMIC images)
reflacx    :mod:`cxr_tfp.datasets.reflacx`       REFLACX: main_data/metadata_phase_*.csv, main_data/<id>/
dicom      :mod:`cxr_tfp.datasets.dicom_folder`  any folder of DICOMs (+ optional label table)
synthetic  :mod:`cxr_tfp.datasets.synthetic`     generated NIH + EGD-CXR layouts (demo, tests)
=========  ====================================  ==============================================

``get_adapter(name, root, **options)`` returns the adapter; ``adapter.check()`` fails at once on a
wrong root or a missing label table, ``adapter.items()`` yields records and rejections
(:mod:`cxr_tfp.datasets.base`).
"""
from __future__ import annotations

import importlib
from typing import Dict, Tuple

from cxr_tfp.features import DATASETS

# name (one of cxr_tfp.features.DATASETS, the one list of dataset names) -> (module, class)
_ADAPTERS: Dict[str, Tuple[str, str]] = {
    "nih": ("cxr_tfp.datasets.nih", "NIHAdapter"),
    "mimic": ("cxr_tfp.datasets.mimic", "MIMICAdapter"),
    "egd": ("cxr_tfp.datasets.egd", "EGDAdapter"),
    "reflacx": ("cxr_tfp.datasets.reflacx", "REFLACXAdapter"),
    "dicom": ("cxr_tfp.datasets.dicom_folder", "DicomFolderAdapter"),
    "synthetic": ("cxr_tfp.datasets.synthetic", "SyntheticAdapter"),
}
if tuple(_ADAPTERS) != DATASETS:  # import-time guard: every contract name has exactly one adapter
    raise ImportError(f"adapters {tuple(_ADAPTERS)} do not match cxr_tfp.features.DATASETS {DATASETS}")


def adapter_class(name: str):
    if name not in _ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    mod, cls = _ADAPTERS[name]
    return getattr(importlib.import_module(mod), cls)


def get_adapter(name: str, root, **options):
    """The adapter for ``name`` over ``root`` (options not used by that adapter are ignored)."""
    return adapter_class(name)(root, **options)
