"""The tf.Example contract and the shared input pipeline."""
import numpy as np
import pytest
import tensorflow as tf

from cxr_tfp import features as F
from cxr_tfp import labels as L
from cxr_tfp.input import list_files, make_dataset


def _record(i: int, size: int = 32, gaze: bool = False, boxes: bool = False) -> F.ExampleRecord:
    rng = np.random.default_rng(i)
    labels = np.zeros(F.NUM_FINDINGS, np.float32)
    labels[L.FINDINGS.index("Mass")] = i % 2
    labels[L.FINDINGS.index("Nodule")] = 1.0
    mask = np.ones(F.NUM_FINDINGS, np.float32)
    mask[L.FINDINGS.index("Nodule")] = 0.0  # unknown: stored value must be 0 whatever was given
    g = np.zeros((size, size), np.float32)
    g[4, 20] = 3.0
    b = np.zeros((size, size), np.uint8)
    b[10:20, 5:15] = 1
    return F.ExampleRecord(image=rng.integers(0, 256, (size, size), dtype=np.uint8), labels=labels,
                           label_mask=mask, patient_key=f"pk{i}", example_key=f"ek{i}",
                           dataset="synthetic", view="AP", gaze=g if gaze else None,
                           box_mask=b if boxes else None)


def _write(path, records):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for r in records:
            w.write(F.to_example(r).SerializeToString())


def test_example_round_trips_through_the_spec():
    rec = _record(1, gaze=True, boxes=True)
    parsed = F.parse_examples(tf.constant([F.to_example(rec).SerializeToString()]))
    img = tf.io.decode_png(parsed[F.IMAGE][0]).numpy()[..., 0]
    np.testing.assert_array_equal(img, rec.image)
    assert parsed[F.LABELS].shape == (1, F.NUM_FINDINGS)
    assert parsed[F.LABELS][0, L.FINDINGS.index("Mass")] == 1.0
    assert parsed[F.LABELS][0, L.FINDINGS.index("Nodule")] == 0.0  # masked -> stored as 0
    assert parsed[F.LABEL_MASK][0, L.FINDINGS.index("Nodule")] == 0.0
    gaze = tf.io.decode_png(parsed[F.GAZE][0]).numpy()[..., 0]
    assert gaze[4, 20] == 255 and gaze.sum() == 255  # peak scaled to 255
    box = tf.io.decode_png(parsed[F.BOX_MASK][0]).numpy()[..., 0]
    assert box[15, 10] == 255 and box[0, 0] == 0 and (box > 0).sum() == 100
    assert int(parsed[F.HAS_ANNOTATION][0]) == 1
    assert parsed[F.VIEW][0].numpy() == b"AP"
    assert parsed[F.PATIENT_KEY][0].numpy() == b"pk1"


def test_absent_annotations_are_empty_and_flagged():
    parsed = F.parse_examples(tf.constant([F.to_example(_record(2)).SerializeToString()]))
    assert parsed[F.GAZE][0].numpy() == b"" and parsed[F.BOX_MASK][0].numpy() == b""
    assert int(parsed[F.HAS_GAZE][0]) == 0 and int(parsed[F.HAS_ANNOTATION][0]) == 0


@pytest.mark.parametrize("bad,match", [
    (dict(image=np.zeros((8, 9), np.uint8)), "square"),
    (dict(gaze=np.zeros((4, 4))), "gaze shape"),
    (dict(labels=np.zeros(3, np.float32)), "labels/mask"),
])
def test_bad_records_are_rejected_with_the_field_named(bad, match):
    rec = _record(3)
    for k, v in bad.items():
        setattr(rec, k, v)
    with pytest.raises(ValueError, match=match):
        F.to_example(rec)


def test_make_dataset_yields_model_inputs(tmp_path):
    _write(tmp_path / "a.tfrecord.gz", [_record(i, gaze=i == 0, boxes=i == 1) for i in range(5)])
    batches = list(make_dataset(str(tmp_path), 16, L.SYNTHETIC_FINDINGS, 4, with_meta=True))
    assert [b[0]["image"].shape[0] for b in batches] == [4, 1]
    x, y, meta = batches[0]
    assert x["image"].shape == (4, 16, 16, 1) and x["annotation"].shape == (4, 16, 16, 2)
    assert 0.0 <= float(tf.reduce_min(x["image"])) and float(tf.reduce_max(x["image"])) <= 1.0
    np.testing.assert_array_equal(x["has_gaze"].numpy(), [1, 0, 0, 0])
    np.testing.assert_array_equal(x["has_boxes"].numpy(), [0, 1, 0, 0])
    assert float(tf.reduce_max(x["annotation"][0, ..., 0])) > 0  # gaze channel
    assert float(tf.reduce_max(x["annotation"][2])) == 0.0      # no annotation -> zeros
    mass = list(L.SYNTHETIC_FINDINGS).index("Mass")
    nodule = list(L.SYNTHETIC_FINDINGS).index("Nodule")
    np.testing.assert_array_equal(y["labels"].numpy()[:, mass], [0, 1, 0, 1])
    np.testing.assert_array_equal(y["mask"].numpy()[:, nodule], [0, 0, 0, 0])
    assert list(meta[F.PATIENT_KEY].numpy()) == [b"pk0", b"pk1", b"pk2", b"pk3"]


def test_annotated_only_keeps_the_annotated_subset(tmp_path):
    _write(tmp_path / "a.tfrecord.gz", [_record(i, gaze=i in (1, 4), boxes=i == 2) for i in range(6)])
    ds = make_dataset(str(tmp_path / "*.gz"), 16, L.SYNTHETIC_FINDINGS, 8, annotated_only=True,
                      with_meta=True)
    keys = [k for _, _, m in ds for k in m[F.EXAMPLE_KEY].numpy()]
    assert keys == [b"ek1", b"ek2", b"ek4"]


def test_list_files_names_the_missing_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        list_files(str(tmp_path / "nothing-here" / "*"))


def test_every_adapter_writes_a_dataset_value_of_the_contract():
    from cxr_tfp.datasets import DATASETS, adapter_class

    assert DATASETS == F.DATASETS
    for name in F.DATASETS:   # every contract name has an importable adapter
        assert adapter_class(name).__name__.endswith("Adapter")
