"""MIMIC-CXR-JPG adapter on a fixture in the published layout."""
import numpy as np
import pytest

from cxr_tfp import labels as L
from cxr_tfp.datasets.base import DatasetLayoutError
from cxr_tfp.datasets.mimic import MIMICAdapter, column_to_finding
from tests.datasets.layouts import make_mimic

I = L.FINDINGS.index


@pytest.fixture()
def mimic(tmp_path):
    make_mimic(tmp_path)
    return tmp_path


def _by_id(records):
    return {r.image_id: r for r in records}


def test_default_policies_uncertain_ignored_blank_negative(mimic):
    a = MIMICAdapter(mimic)
    records, rejected = a.collect()
    r = _by_id(records)
    assert sorted(r) == ["d1", "d2", "d3", "d4"]
    d1 = r["d1"]
    assert d1.labels[I("Effusion")] == 1 and d1.label_mask[I("Effusion")] == 1      # Pleural Effusion harmonised
    assert d1.label_mask[I("Cardiomegaly")] == 0                                       # -1.0 ignored
    assert d1.labels[I("Edema")] == 0 and d1.label_mask[I("Edema")] == 1               # blank -> 0
    assert d1.label_mask[I("Mass")] == 0 and d1.label_mask[I("Nodule")] == 0           # not labelled by MIMIC
    assert r["d4"].labels[I("Edema")] == 1 and r["d4"].labels[I("Atelectasis")] == 0


def test_uncertain_and_blank_policy_options(mimic):
    r = _by_id(MIMICAdapter(mimic, uncertain="ones", blank="ignore").collect()[0])
    assert r["d1"].labels[I("Cardiomegaly")] == 1 and r["d1"].label_mask[I("Cardiomegaly")] == 1
    assert r["d1"].label_mask[I("Edema")] == 0
    r = _by_id(MIMICAdapter(mimic, uncertain="zeros").collect()[0])
    assert r["d1"].labels[I("Cardiomegaly")] == 0 and r["d1"].label_mask[I("Cardiomegaly")] == 1
    with pytest.raises(ValueError, match="uncertain"):
        MIMICAdapter(mimic, uncertain="maybe")


def test_views_splits_and_partial_download(mimic):
    a = MIMICAdapter(mimic)
    records, rejected = a.collect()
    r = _by_id(records)
    assert r["d1"].view == "PA" and r["d2"].view == "LL" and r["d3"].view == "AP"
    assert r["d1"].split == "train" and r["d4"].split == "eval"                       # validate -> eval
    assert a.skipped["metadata row without its image on disk (partial download)"] == 1  # d6
    assert r["d1"].source == "files/p10/p10000001/s50000001/d1.jpg"
    reasons = sorted(x.reason for x in rejected)
    assert any("is not 1, 0, -1 or blank" in x for x in reasons)                      # d5: value 2.0
    assert any("has no row in mimic-cxr-2.0.0-chexpert.csv.gz" in x for x in reasons)  # d7
    assert len(rejected) == 2
    records, _ = MIMICAdapter(mimic, views="PA,AP").collect()
    assert "d2" not in _by_id(records)


def test_without_metadata_images_are_found_by_walking_files(mimic):
    (mimic / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    records, rejected = MIMICAdapter(mimic).collect()
    assert sorted(r.image_id for r in records) == ["d1", "d2", "d3", "d4"]
    assert all(r.view == "UNKNOWN" for r in records)


def test_missing_label_table_fails_at_once(tmp_path):
    (tmp_path / "files").mkdir()
    with pytest.raises(DatasetLayoutError, match="mimic-cxr-2.0.0-chexpert.csv.gz"):
        MIMICAdapter(tmp_path).check()


@pytest.mark.parametrize("col,expected", [("Pleural Effusion", "Effusion"), ("No Finding", None),
                                          ("pleural_effusion__chx", "Effusion"), ("lung_lesion__chx", "Lung_Lesion"),
                                          ("no_finding__chx", None), ("Support Devices", "Support_Devices")])
def test_column_names_harmonise(col, expected):
    assert column_to_finding(col) == expected
