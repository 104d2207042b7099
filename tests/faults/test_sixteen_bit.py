"""One 16-bit rule (cxr_tfp.io.images.stretch_to_uint8): a 16-bit grey PNG is stretched from its own
min..max in the ingestion, in every serving signature and in the predictor. Was: stretched at
ingestion, rescaled by bit depth in serving (a 12-bit image in a 16-bit file came out nearly black)."""
import glob
import io

import numpy as np
import pytest

from cxr_tfp import model_dir as MD


def png16(side: int = 32, seed: int = 0) -> bytes:
    """A 16-bit grey PNG holding 12-bit data (values 300..3800), as hospital PACS exports do."""
    from PIL import Image

    arr = np.random.default_rng(seed).integers(300, 3800, (side, side)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr, "I;16").save(buf, format="PNG")
    data = buf.getvalue()
    assert data[24:26] == b"\x10\x00"          # IHDR: bit depth 16, grey
    return data


def test_ingestion_and_serving_decode_a_16bit_png_to_the_same_pixels():
    """Cheap default check of the rule; the whole build -> evaluate vs served path is the slow test."""
    import tensorflow as tf

    from cxr_tfp.io import decode_image
    from cxr_tfp.preprocess import decode_image_tensor

    data = png16(48, seed=7)
    ingested = decode_image(data).pixels                           # what the build stores (8-bit)
    served = decode_image_tensor(tf.constant(data), 48).numpy()[..., 0]
    np.testing.assert_allclose(served, ingested / 255.0, atol=1e-6)   # was: up to 0.93 apart
    assert ingested.min() == 0 and ingested.max() == 255


@pytest.mark.slow  # a real build (Beam) + a SavedModel save: ~20 s on the shared machine
def test_a_16bit_png_gives_the_same_probabilities_built_then_evaluated_and_served(tmp_path):
    import tensorflow as tf

    import cxr_tfp
    from cxr_tfp.datasets.synthetic import generate
    from cxr_tfp.input import parse_batch
    from cxr_tfp.records import build as B
    from tests.serving import tiny_model

    data = png16(tiny_model.SIZE)
    root = generate(tmp_path / "root", n_patients=3, images_per_patient=1, image_size=32, seed=1)
    for p in (root / "images").glob("*.png"):   # every image of the hospital export is this 16-bit PNG
        p.write_bytes(data)
    (tmp_path / "x.png").write_bytes(data)
    B.build("synthetic", root, tmp_path / "records", image_size=tiny_model.SIZE, workers=1, progress=False)
    shards = sorted(glob.glob(str(tmp_path / "records" / "*" / "*.tfrecord*")))
    record = next(iter(tf.data.TFRecordDataset(shards[:1], compression_type="GZIP"))).numpy()

    # build -> evaluate: the input pipeline training and evaluate use, then the model's closed form
    from cxr_tfp import features as F

    x, _ = parse_batch(tf.constant([record]), tiny_model.SIZE, ("Atelectasis",))
    mean = float(tf.reduce_mean(x[F.X_IMAGE][0]))
    assert 0.3 < mean < 0.7, mean                 # stretched, not read as nearly black (~0.03)
    evaluated = tiny_model.expected(mean)[0]

    tiny_model.build(str(tmp_path / "model"))
    sigs = tf.saved_model.load(str(tmp_path / "model")).signatures
    served = sigs[MD.IMAGE_SIGNATURE](**{MD.IMAGES_INPUT: tf.constant([data])})[MD.PROBABILITIES].numpy()[0]
    served_ex = sigs[MD.SERVING_SIGNATURE](**{MD.EXAMPLES_INPUT: tf.constant([record])})[MD.PROBABILITIES].numpy()[0]
    predicted = cxr_tfp.load(str(tmp_path / "model")).predict([str(tmp_path / "x.png")])
    from_predictor = np.array([predicted[(f, "probability")].iloc[0] for f in tiny_model.LABELS])
    np.testing.assert_allclose(served, evaluated, atol=1e-5)
    np.testing.assert_allclose(served, served_ex, atol=1e-6)
    np.testing.assert_allclose(from_predictor, served, atol=1e-6)


def test_16bit_arrays_follow_the_same_rule_in_the_predictor():
    from PIL import Image

    from cxr_tfp.io import decode_image
    from cxr_tfp.predictor import _check_array

    data = png16(40, seed=3)
    arr16 = np.asarray(Image.open(io.BytesIO(data)))
    ingested = decode_image(data).pixels
    np.testing.assert_array_equal(np.round(_check_array(arr16.astype(np.uint16), "array[0]")[..., 0] * 255),
                                  ingested)
    with pytest.raises(ValueError, match=r"array\[0\]: array of dtype int64"):
        _check_array(arr16.astype(np.int64), "array[0]")
