"""EGD-CXR adapter on a fixture in the published layout (images from a MIMIC folder)."""
import numpy as np
import pytest

from cxr_tfp import labels as L
from cxr_tfp.annotations import EGD_SIGMA_PX
from cxr_tfp.records.process import ProcessConfig, process_record
from cxr_tfp.datasets.base import DatasetLayoutError
from cxr_tfp.datasets.egd import EGDAdapter
from tests.datasets.layouts import make_egd


@pytest.fixture()
def egd(tmp_path):
    root, mimic = tmp_path / "egd-cxr", tmp_path / "mimic-cxr-jpg"
    make_egd(root, mimic)
    return root, mimic


def test_records_labels_and_gaze(egd):
    root, mimic = egd
    a = EGDAdapter(root, mimic_root=str(mimic))
    records, rejected = a.collect()
    r = {x.image_id: x for x in records}
    assert sorted(r) == ["e1", "e2"]
    e1 = r["e1"]
    assert e1.labels[L.FINDINGS.index("Cardiomegaly")] == 1
    assert e1.label_mask[L.FINDINGS.index("Effusion")] == 0               # -1 ignored by default
    assert e1.namespace == "mimic" and e1.patient_id == "11000001" and e1.view == "PA"
    assert e1.image_path.endswith("e1.jpg")                               # master sheet says .dcm, JPG found
    assert e1.gaze is not None and len(e1.gaze) == 3                      # FPOGV=0 row dropped
    assert e1.gaze.sigma_px == EGD_SIGMA_PX
    assert a.skipped["fixation row dropped (FPOGV=0)"] == 1
    assert a.skipped["fixation row dropped (malformed)"] == 1
    reasons = {(x.kind, x.reason.split(" (")[0]) for x in rejected}
    assert ("example", "image file not found under --mimic-root") in reasons          # e3
    assert ("annotation", "its image was rejected") in reasons                        # e3's fixations
    assert ("annotation", "fixations for an image that is not in master_sheet.csv") in reasons  # zz
    assert len(rejected) == 3


def test_heatmap_lands_on_the_fixations(egd):
    root, mimic = egd
    records, _ = EGDAdapter(root, mimic_root=str(mimic), gaze_sigma_px=10).collect()
    e1 = next(x for x in records if x.image_id == "e1")
    ok, dead = process_record(e1, ProcessConfig(image_size=50))
    assert ok is not None and dead == []
    import io
    import tensorflow as tf
    from PIL import Image
    ex = tf.train.Example.FromString(ok[1])
    heat = np.array(Image.open(io.BytesIO(ex.features.feature["gaze_heatmap"].bytes_list.value[0])))
    i, j = np.unravel_index(int(np.argmax(heat)), heat.shape)
    # fixations at x=150 (of 200), y~41 (of 160) -> stored (37.5, 12.8) on a 50 px square
    assert abs(j - 37) <= 1 and abs(i - 12) <= 1


def test_missing_tables_fail_at_once(tmp_path):
    (tmp_path / "files").mkdir()
    with pytest.raises(DatasetLayoutError, match="master_sheet.csv"):
        EGDAdapter(tmp_path).check()
