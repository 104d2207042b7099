"""A folder of DICOMs (the real samples and generated ones), optionally with a label table."""
import pytest

from cxr_tfp import labels as L
from cxr_tfp.datasets.base import DatasetLayoutError
from cxr_tfp.datasets.dicom_folder import DicomFolderAdapter
from tests.io.dicom_factory import make_dicom, ramp


def test_real_dicom_folder(shared_data):
    # The two samples share one SOPInstanceUID (Fake_MONOHR1 is an edited copy): written once.
    records, rejected = DicomFolderAdapter(shared_data / "dicom").collect()
    assert len(records) == 1 and [(r.source, r.stage) for r in rejected] == [("Fake_MONOHR1.dcm", "dedupe")]
    assert all(r.patient_id is None and r.view is None and not r.label_mask.any() for r in records)


def test_label_table_and_missing_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.dcm").write_bytes(make_dicom(ramp()))
    (tmp_path / "two").write_bytes(make_dicom(ramp()))          # extension-less, found by magic
    (tmp_path / "notes.txt").write_text("not a dicom")
    (tmp_path / "labels.csv").write_text("file,Finding Labels\na/one.dcm,Effusion|Mass\ntwo,Dragonpox\n"
                                         "gone.dcm,No Finding\n")
    records, rejected = DicomFolderAdapter(tmp_path, labels_csv="labels.csv").collect()
    assert [r.source for r in records] == ["a/one.dcm"]
    r = records[0]
    assert r.labels[L.FINDINGS.index("Effusion")] == 1 and r.label_mask[:14].all()
    reasons = sorted(x.reason for x in rejected)
    assert any("unknown finding 'Dragonpox'" in x for x in reasons)
    assert "label row for a file that is not there" in reasons


def test_missing_label_table_or_no_dicoms_fail_at_once(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no DICOM files"):
        DicomFolderAdapter(tmp_path).check()
    (tmp_path / "x.dcm").write_bytes(make_dicom(ramp()))
    with pytest.raises(DatasetLayoutError, match="labels.csv"):
        DicomFolderAdapter(tmp_path, labels_csv="labels.csv").check()
