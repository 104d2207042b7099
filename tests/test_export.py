"""SavedModel export: both signatures, equality with the Keras model, assets, warm-up requests."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cxr_tfp import features as F
from cxr_tfp import model_dir as MD
from cxr_tfp.config import TrainConfig
from cxr_tfp.export import export_saved_model, sample_inputs
from cxr_tfp.model_dir import WARMUP_FILE, read_labels, read_thresholds
from cxr_tfp.labels import FINDINGS
from cxr_tfp.model import build_model
from cxr_tfp.preprocess import decode_image_tensor


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = TrainConfig(backbone="tiny", image_size=32, findings=["Mass", "Effusion", "Hernia"],
                      latent_dim=4, hidden_dim=8, num_samples=6, seed=2)
    model = build_model(cfg)
    model.thresholds = {"Mass": 0.2, "Effusion": 0.7}
    d = str(tmp_path_factory.mktemp("export") / "sm")
    # float32 forced: these tests compare with the Keras model to 1e-6 on any CPU (auto would pick
    # bfloat16 on one with bfloat16 units).
    assert export_saved_model(model, d, precision="float32") == d
    return model, d, tf.saved_model.load(d)


def test_signatures_match_the_keras_model(exported):
    model, _, loaded = exported
    pngs, examples = sample_inputs(48, 3)          # stored at 48 px: the signature resizes to 32
    ex = loaded.signatures[MD.SERVING_SIGNATURE](**{MD.EXAMPLES_INPUT: tf.constant(examples)})
    im = loaded.signatures[MD.IMAGE_SIGNATURE](**{MD.IMAGES_INPUT: tf.constant(pngs)})
    ref = model.predict_with_uncertainty(np.stack([decode_image_tensor(p, 32).numpy() for p in pngs]))
    for key in (MD.PROBABILITIES, MD.UNCERTAINTY):
        assert ex[key].shape == (3, 3) and ex[key].dtype == tf.float32
        np.testing.assert_allclose(ex[key].numpy(), ref[key], atol=1e-6)
        np.testing.assert_allclose(im[key].numpy(), ref[key], atol=1e-6)
    assert set(im) == {MD.PROBABILITIES, MD.UNCERTAINTY, MD.LABEL_NAMES, MD.THRESHOLDS,
                       MD.THRESHOLD_SOURCES, MD.THRESHOLD_POSITIVES}
    # thresholds set by hand carry no record of how they were chosen: "unknown", -1 positives
    assert {s.decode() for s in im[MD.THRESHOLD_SOURCES].numpy().ravel()} == {"unknown"}
    assert (im[MD.THRESHOLD_POSITIVES].numpy() == -1).all()
    # Names and thresholds travel with every row, in output order, so a client needs no model files.
    assert [n.decode() for n in im[MD.LABEL_NAMES].numpy()[2]] == list(model.findings)
    # model.thresholds sets Mass and Effusion; Hernia was never evaluated and gets 0.5.
    np.testing.assert_allclose(im[MD.THRESHOLDS].numpy(), [[0.2, 0.7, 0.5]] * 3)
    full = ex[MD.PROBABILITIES_FULL].numpy()
    assert full.shape == (3, len(FINDINGS))
    for j, name in enumerate(model.findings):
        np.testing.assert_allclose(full[:, FINDINGS.index(name)], ex[MD.PROBABILITIES].numpy()[:, j])
    others = [i for i, n in enumerate(FINDINGS) if n not in model.findings]
    assert np.all(full[:, others] == 0)
    again = loaded.signatures[MD.SERVING_SIGNATURE](**{MD.EXAMPLES_INPUT: tf.constant(examples)})
    np.testing.assert_array_equal(again[MD.PROBABILITIES].numpy(), ex[MD.PROBABILITIES].numpy())


def test_examples_with_only_an_image_are_accepted(exported):
    _, _, loaded = exported
    png = sample_inputs(32, 1)[0][0]
    ex = tf.train.Example(features=tf.train.Features(feature={
        F.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))}))
    out = loaded.signatures[MD.SERVING_SIGNATURE](**{MD.EXAMPLES_INPUT: tf.constant([ex.SerializeToString()])})
    assert out[MD.PROBABILITIES].shape == (1, 3)


def test_assets_travel_with_the_model(exported):
    model, d, _ = exported
    assert read_labels(d) == model.findings
    thr = read_thresholds(d)
    assert thr == {"Mass": pytest.approx(0.2), "Effusion": pytest.approx(0.7), "Hernia": 0.5}
    assert os.path.exists(os.path.join(d, "assets", MD.LABELS_ASSET))


def test_warmup_requests_cover_both_signatures(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    _, d, loaded = exported
    logs = []
    for rec in tf.data.TFRecordDataset(os.path.join(d, WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(rec.numpy())
        logs.append(log.predict_log.request)
    assert {r.model_spec.signature_name for r in logs} == {MD.SERVING_SIGNATURE, MD.IMAGE_SIGNATURE}
    for req in logs:
        (key, proto), = req.inputs.items()
        assert key == {MD.SERVING_SIGNATURE: MD.EXAMPLES_INPUT, MD.IMAGE_SIGNATURE: MD.IMAGES_INPUT}[
            req.model_spec.signature_name]
        out = loaded.signatures[req.model_spec.signature_name](**{key: tf.make_ndarray(proto)})
        assert np.all(np.isfinite(out[MD.PROBABILITIES].numpy()))


@pytest.mark.parametrize("units", [False, True])
def test_auto_precision_follows_the_cpus_bfloat16_units(monkeypatch, units):
    from cxr_tfp import export as E

    monkeypatch.setattr(E, "cpu_has_bfloat16", lambda: units)
    chosen, why = E.resolve_precision()           # the default is auto
    assert E.DEFAULT_SERVE_PRECISION == "auto"
    assert chosen == ("bfloat16" if units else "float32") and why.startswith("auto")
    assert E.resolve_precision("float32") == ("float32", "asked for")
    with pytest.raises(ValueError, match="float16"):
        E.resolve_precision("float16")


def test_default_export_is_bfloat16_on_a_bfloat16_cpu_and_says_so(monkeypatch, tmp_path, exported):
    """What a user gets with no flag on a CPU with bfloat16 units: a bfloat16 backbone, recorded in
    assets/serving.json, within 0.01 of the float32 export (which records that it was asked for)."""
    from cxr_tfp import export as E

    model, d32, loaded32 = exported
    info32 = MD.read_serving_info(d32)
    assert info32["precision"] == "float32" and info32["precision_requested"] == "float32"
    assert info32["num_samples"] == 6 and info32["backbone_jit_compile"] is False
    monkeypatch.setattr(E, "cpu_has_bfloat16", lambda: True)
    d = str(tmp_path / "auto")
    export_saved_model(model, d)
    info = MD.read_serving_info(d)
    assert (info["precision_requested"], info["precision"], info["cpu_bfloat16_units"]) == ("auto", "bfloat16", True)
    assert "--tensorflow_inter_op_parallelism=1" in info["tf_serving_flags"]
    pngs = tf.constant(sample_inputs(32, 3)[0])
    a = loaded32.signatures[MD.IMAGE_SIGNATURE](**{MD.IMAGES_INPUT: pngs})[MD.PROBABILITIES].numpy()
    b = tf.saved_model.load(d).signatures[MD.IMAGE_SIGNATURE](**{MD.IMAGES_INPUT: pngs})[MD.PROBABILITIES].numpy()
    assert not np.array_equal(a, b)                # it really computes in bfloat16
    assert np.abs(a - b).max() <= 0.01


@pytest.mark.slow
def test_xla_backbone_export_matches(tmp_path, exported):
    """``--jit-compile``: the backbone compiled by XLA inside the signature gives the same outputs."""
    model, _, loaded32 = exported
    d = str(tmp_path / "xla")
    export_saved_model(model, d, precision="float32", jit_compile=True)
    assert MD.read_serving_info(d)["backbone_jit_compile"] is True
    pngs = tf.constant(sample_inputs(32, 2)[0])
    a = loaded32.signatures[MD.IMAGE_SIGNATURE](**{MD.IMAGES_INPUT: pngs})[MD.PROBABILITIES].numpy()
    b = tf.saved_model.load(d).signatures[MD.IMAGE_SIGNATURE](**{MD.IMAGES_INPUT: pngs})[MD.PROBABILITIES].numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
