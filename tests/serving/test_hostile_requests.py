"""The REAL export under hostile requests: bombs, garbage, colour, truncated files -> INVALID_ARGUMENT
with a clear message, before any large allocation; the server keeps serving valid requests."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from cxr_tfp import model_dir
from tests.faults import hostile
from tests.serving.conftest import MODEL_NAME

HOSTILE = {
    "png_bomb_header": (hostile.png_header_only(20000, 20000), "more pixels than the limit"),
    "jpeg_bomb_header": (hostile.jpeg_with_size(20000, 20000), "more pixels than the limit"),
    "garbage": (hostile.garbage(), "not a PNG or JPEG"),
    "empty": (b"", "not a PNG or JPEG"),
    "colour": (hostile.small_png(32, colour=True), "colour picture"),
    "truncated_png": (hostile.truncated(hostile.small_png(64, 90)), "PNG"),
    "truncated_jpeg": (hostile.truncated(hostile.small_jpeg(64)), "JPEG"),
}


def _request(payloads, signature):
    from tensorflow_serving.apis import predict_pb2
    import tensorflow as tf

    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL_NAME
    req.model_spec.signature_name = signature
    key = model_dir.IMAGES_INPUT if signature == model_dir.IMAGE_SIGNATURE else model_dir.EXAMPLES_INPUT
    req.inputs[key].CopyFrom(tf.make_tensor_proto(payloads, dtype=tf.string))
    return req


@pytest.fixture(scope="module")
def stub(export_server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    _, address = export_server
    ch = grpc.insecure_channel(address)
    yield prediction_service_pb2_grpc.PredictionServiceStub(ch)
    ch.close()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_image_is_invalid_argument(stub, name):
    data, words = HOSTILE[name]
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(_request([data], model_dir.IMAGE_SIGNATURE), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert words in e.value.details()
    # ... and the server still answers a valid request
    ok = stub.Predict(_request([hostile.small_png(48, 100)], model_dir.IMAGE_SIGNATURE), timeout=60)
    assert ok.outputs[model_dir.PROBABILITIES].tensor_shape.dim[0].size == 1


def test_garbage_to_the_examples_signature_is_invalid_argument_without_echo(stub):
    junk = hostile.garbage(600, seed=7)
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(_request([junk], model_dir.SERVING_SIGNATURE), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a serialized tf.Example" in e.value.details()


def test_a_real_decompression_bomb_costs_no_memory(export_base):
    """A valid 20000 x 20000 PNG (~400 KB) is refused from its header: peak RSS grows < 100 MB."""
    import resource

    import tensorflow as tf

    from cxr_tfp.client import _resolve_saved_model_dir

    fn = tf.saved_model.load(_resolve_saved_model_dir(export_base)).signatures[model_dir.IMAGE_SIGNATURE]
    fn(**{model_dir.IMAGES_INPUT: tf.constant([hostile.small_png(48)])})  # warm
    bomb = hostile.png_bomb(20000, 20000)
    assert len(bomb) < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(tf.errors.InvalidArgumentError, match="more pixels than the limit"):
        fn(**{model_dir.IMAGES_INPUT: tf.constant([bomb])})
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, grown_mb


def test_grey_stored_as_rgb_is_accepted_like_the_ingestion(export_base):
    """Colour rule, identical in ingestion and serving: grey-as-RGB becomes its grey value."""
    import io

    import tensorflow as tf
    from PIL import Image

    from cxr_tfp.client import _resolve_saved_model_dir
    from cxr_tfp.io import decode_image as ingest_decode
    from cxr_tfp.preprocess import decode_image_tensor as serve_decode

    arr = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (48, 1))
    buf = io.BytesIO()
    Image.fromarray(np.stack([arr] * 3, -1), "RGB").save(buf, format="PNG")
    rgb_png = buf.getvalue()
    grey = ingest_decode(rgb_png).pixels
    assert np.array_equal(grey, arr)
    served = serve_decode(tf.constant(rgb_png), 48).numpy()[..., 0]
    np.testing.assert_allclose(served, arr / 255.0, atol=1 / 255)
    fn = tf.saved_model.load(_resolve_saved_model_dir(export_base)).signatures[model_dir.IMAGE_SIGNATURE]
    assert fn(**{model_dir.IMAGES_INPUT: tf.constant([rgb_png])})[model_dir.PROBABILITIES].shape[0] == 1
