"""REFLACX adapter on a fixture in the published layout."""
import io

import numpy as np
import pytest
from PIL import Image

from cxr_tfp import labels as L
from cxr_tfp.records.process import ProcessConfig, process_record
from cxr_tfp.datasets.base import DatasetLayoutError
from cxr_tfp.datasets.reflacx import REFLACXAdapter
from tests.datasets.layouts import make_reflacx

I = L.FINDINGS.index


@pytest.fixture()
def reflacx(tmp_path):
    root, mimic = tmp_path / "reflacx", tmp_path / "mimic"
    make_reflacx(root, mimic)
    return root, mimic


def test_readings_labels_and_annotations(reflacx):
    root, mimic = reflacx
    a = REFLACXAdapter(root, mimic_root=str(mimic))
    records, rejected = a.collect()
    r = {x.image_id: x for x in records}
    assert sorted(r) == ["reflacx:P300R000001", "reflacx:P300R000002"]
    one, two = r["reflacx:P300R000001"], r["reflacx:P300R000002"]
    assert one.labels[I("Cardiomegaly")] == 1                        # Enlarged cardiac silhouette, certainty 5
    assert one.labels[I("Edema")] == 1                               # Pulmonary edema, certainty 4
    assert one.label_mask[I("Lung_Lesion")] == 0                     # certainty 2: uncertain -> ignored
    assert one.labels[I("Atelectasis")] == 0 and one.label_mask[I("Atelectasis")] == 1
    assert one.labels[I("Support_Devices")] == 1
    assert one.split == two.split == "train" and one.patient_id == two.patient_id == "12000001"
    assert one.frame == (400.0, 300.0)
    assert len(one.regions) == 2 and one.gaze is not None and len(one.gaze) == 2
    assert one.gaze.sigma_x.tolist() == [40.0, 40.0]                 # one degree of visual angle
    assert two.gaze is None and len(two.regions) == 1               # eye tracking discarded
    assert a.skipped["ellipse below --min-certainty"] == 1
    kinds = sorted((x.kind, x.reason.split(" (")[0]) for x in rejected)
    assert kinds == [
        ("annotation", "annotations for a reading/image that is not in any metadata table"),
        ("annotation", "its image was rejected"), ("annotation", "its image was rejected"),
        ("example", "image file not found under --mimic-root"),
    ]


def test_min_certainty_option(reflacx):
    root, mimic = reflacx
    records, _ = REFLACXAdapter(root, mimic_root=str(mimic), min_certainty=5).collect()
    one = next(x for x in records if x.image_id.endswith("0001"))
    assert one.labels[I("Cardiomegaly")] == 1 and one.label_mask[I("Edema")] == 0
    assert len(one.regions) == 1


def test_coordinates_rescale_to_the_image_on_disk_and_outside_ellipse_is_dead_lettered(reflacx):
    root, mimic = reflacx
    records, _ = REFLACXAdapter(root, mimic_root=str(mimic)).collect()
    one = next(x for x in records if x.image_id.endswith("0001"))
    ok, dead = process_record(one, ProcessConfig(image_size=40))
    assert ok is not None
    assert [d["reason"] for d in dead] == ["ellipse [350,250,900,800] lies outside the 400x300 image"]
    import tensorflow as tf
    ex = tf.train.Example.FromString(ok[1])
    f = ex.features.feature
    mask = np.array(Image.open(io.BytesIO(f["box_mask"].bytes_list.value[0]))) > 0
    # ellipse (200,100)-(300,200) on the 400x300 frame -> centre (25, 20) on the 40 px square
    assert mask[20, 25] and not mask[5, 5] and f["has_gaze"].int64_list.value[0] == 1
    heat = np.array(Image.open(io.BytesIO(f["gaze_heatmap"].bytes_list.value[0])))
    i, j = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert abs(j - 25) <= 1 and abs(i - 20) <= 1                    # fixation (250,150) held longest


def test_missing_metadata_fails_at_once(tmp_path):
    (tmp_path / "main_data").mkdir()
    (tmp_path / "files").mkdir()
    with pytest.raises(DatasetLayoutError, match="metadata_phase_1.csv"):
        REFLACXAdapter(tmp_path).check()
