"""The TensorFlow-free tf.Example writer produces the same message as features.to_example."""
import numpy as np
import pytest

from cxr_tfp import features as F
from cxr_tfp.records import example_codec as C


def _record(rng, gaze=True, boxes=True, size=16):
    labels = (rng.uniform(size=F.NUM_FINDINGS) < 0.3).astype(np.float32)
    mask = (rng.uniform(size=F.NUM_FINDINGS) < 0.7).astype(np.float32)
    return F.ExampleRecord(
        image=rng.integers(0, 255, (size, size), dtype=np.uint8), labels=labels, label_mask=mask,
        patient_key="a1b2c3", example_key="d4e5f6", dataset="nih", view="PA" if gaze else "UNKNOWN",
        gaze=rng.uniform(size=(size, size)).astype(np.float32) if gaze else None,
        box_mask=(rng.uniform(size=(size, size)) < 0.2).astype(np.uint8) if boxes else None)


@pytest.mark.parametrize("gaze,boxes", [(True, True), (False, True), (True, False), (False, False)])
def test_same_message_as_to_example(gaze, boxes):
    import tensorflow as tf

    rng = np.random.default_rng(int(gaze) * 2 + int(boxes))
    rec = _record(rng, gaze, boxes)
    ours = tf.train.Example.FromString(C.serialize(rec))
    ref = F.to_example(rec)
    assert ours == ref


def test_parses_with_the_contract_spec():
    import tensorflow as tf

    rec = _record(np.random.default_rng(7))
    parsed = F.parse_examples(tf.constant([C.serialize(rec)]))
    np.testing.assert_allclose(parsed[F.LABELS].numpy()[0], rec.labels * rec.label_mask)
    assert parsed[F.IMAGE_SIZE].numpy()[0] == 16 and parsed[F.HAS_ANNOTATION].numpy()[0] == 1


def test_varint_edge_cases():
    assert C._varint(0) == b"\x00" and C._varint(300) == b"\xac\x02" and len(C._varint(-1)) == 10


def test_tensorflow_codec_switch(monkeypatch):
    rec = _record(np.random.default_rng(3))
    monkeypatch.setenv("CXR_TFP_EXAMPLE_CODEC", "tensorflow")
    assert C.serialize(rec) == F.to_example(rec).SerializeToString()
