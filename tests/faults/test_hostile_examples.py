"""Crafted tf.Examples that pass the framing check but are malformed inside: refused by the examples
signature's checks with an error that quotes no byte of the payload (was: parse_example quoted the
bytes, e.g. a planted identifier, or failed to build its error at all: UnicodeDecodeError)."""
import numpy as np
import pytest

from cxr_tfp import features as F
from cxr_tfp.preprocess import check_serialized_examples

SECRET = b"PATIENT42"
HOSTILE = {
    "bad_tag_inside_features": b"\x0a\x03\xff\xff\xff",
    "truncated_feature_entry": b"\x0a\x04\x0a\x02\x0a\x05",
    "planted_identifier": b"\x0a\x0b\x0a\x09" + SECRET,
    "truncated_bytes_list": b"\x0a\x0e\x0a\x0c\x0a\x01k\x12\x07\x0a\x05\x0a\x09" + b"PAT",
}


def _serve(examples):
    """What the exported examples signature does before its model (cxr_tfp/export.py serve_examples)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(ex):
        with tf.control_dependencies([check_serialized_examples(ex)]):
            return tf.io.parse_example(ex, {F.IMAGE: F.feature_spec()[F.IMAGE]})[F.IMAGE]

    return serve(tf.constant(examples))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_malformed_example_inside_its_framing_quotes_no_payload(name):
    import tensorflow as tf

    data = HOSTILE[name]
    with pytest.raises(tf.errors.OpError) as err:
        _serve([data])
    msg = str(err.value)                       # building the message must work (was: UnicodeDecodeError)
    assert "examples_not_a_serialized_tf_Example" in msg, msg
    assert SECRET not in msg.encode() and b"PAT" not in msg.encode()
    assert "Could not parse example input" not in msg


def test_real_examples_still_pass():
    from PIL import Image  # noqa: F401

    import tensorflow as tf

    ex = tf.train.Example(features=tf.train.Features(feature={
        F.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[F.encode_png(np.zeros((16, 16), np.uint8))])),
        "f": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, 1.5])),
        "i": tf.train.Feature(int64_list=tf.train.Int64List(value=[1, -2, 3])),
        "empty": tf.train.Feature()}))
    out = _serve([ex.SerializeToString(), ex.SerializeToString()])
    assert out.shape[0] == 2
