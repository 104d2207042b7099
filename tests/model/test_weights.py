"""Starting weights: keras-hub backbones and presets, the folded grey stem, the torchxrayvision
conversion against numbers torch computed (tests/fixtures/txrv, made by scripts/make_txrv_fixture.py),
the restricted unpickler, offline `imagenet`, and a smoke training from each kind of weights."""
import json
import os
import pickle
import time
import zipfile

import keras
import keras_hub
import numpy as np
import pytest

from cxr_tfp.config import TrainConfig
from cxr_tfp.model import build_model, load_model
from cxr_tfp.model.backbones import build_backbone
from cxr_tfp.weights import (IMAGENET_SCALING, TXRV_SCALING, WeightsError, apply_weights,
                             check_weights_spec)
from cxr_tfp.weights.torch_file import UnsafeCheckpointError, load_checkpoint
from cxr_tfp.weights.torchxrayvision import build_classifier, read_txrv

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "txrv")
TXRV_FILES = ("model_zip.pt", "model_legacy.pt", "state_zip.pt", "state_legacy.pt")


def cfg(**kw):
    base = dict(backbone="tiny", image_size=32, findings="synthetic", latent_dim=4, hidden_dim=8,
                num_samples=4, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _randomise(backbone, seed=0):
    """Non-trivial weights everywhere (BatchNorm statistics too), so a wrong copy shows."""
    rng = np.random.default_rng(seed)
    for layer in backbone.layers:
        vals = layer.get_weights()
        if not vals:
            continue
        new = []
        for v in vals:
            if isinstance(layer, keras.layers.BatchNormalization):
                new.append(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
            else:
                new.append((rng.standard_normal(v.shape) * np.sqrt(2.0 / max(np.prod(v.shape[:-1]), 1)))
                           .astype(np.float32))
        layer.set_weights(new)


def test_backbones_are_keras_hub_and_densenet_pads_like_torch():
    for name in ("tiny", "densenet_tiny"):
        assert isinstance(build_backbone(name, 64), keras_hub.models.Backbone)
    bb = build_backbone("densenet_tiny", 64)
    assert bb.get_layer("conv1_pad").padding == ((3, 3), (3, 3))
    assert bb.get_layer("conv1_conv").padding == "valid"
    assert bb.get_layer("pool1_pad").padding == ((1, 1), (1, 1))
    assert all(l.epsilon == 1e-5 for l in bb.layers if isinstance(l, keras.layers.BatchNormalization))
    assert bb.output_shape == (None, 2, 2, 32)


@pytest.mark.parametrize("name", ["tiny", "densenet_tiny"])
def test_preset_round_trip_identical_outputs(tmp_path, name):
    src = build_backbone(name, 64)
    _randomise(src, 1)
    preset = str(tmp_path / "preset")
    src.save_to_preset(preset)
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 1)).astype(np.float32)
    back = keras_hub.models.Backbone.from_preset(preset)
    np.testing.assert_array_equal(back(x).numpy(), src(x).numpy())
    model = build_model(cfg(backbone=name, image_size=64, weights=preset))
    np.testing.assert_array_equal(model.backbone(x).numpy(), src(x).numpy())
    assert model.weights_source["kind"] == "preset" and model.weights_source["source"] == preset


def test_folded_grey_stem_equals_rgb_replicated(tmp_path):
    rgb = build_backbone("densenet_tiny", 64, channels=3)
    _randomise(rgb, 2)
    rgb.save_to_preset(str(tmp_path / "rgb"))
    grey = build_backbone("densenet_tiny", 64, channels=1)
    info = apply_weights(grey, "densenet_tiny", str(tmp_path / "rgb"))
    assert info.kind == "preset"
    x = np.random.default_rng(1).uniform(-2, 2, (2, 64, 64, 1)).astype(np.float32)
    diff = np.abs(grey(x).numpy() - rgb(np.repeat(x, 3, axis=-1)).numpy()).max()
    assert diff <= 1e-5, diff
    # and a grey kernel spread over RGB gives the grey features for replicated input
    back = build_backbone("densenet_tiny", 64, channels=3)
    grey.save_to_preset(str(tmp_path / "grey"))
    apply_weights(back, "densenet_tiny", str(tmp_path / "grey"))
    assert np.abs(back(np.repeat(x, 3, axis=-1)).numpy() - grey(x).numpy()).max() <= 1e-5


def test_preset_of_another_architecture_is_named(tmp_path):
    build_backbone("tiny", 64).save_to_preset(str(tmp_path / "tiny"))
    with pytest.raises(WeightsError, match="has no layer"):
        build_model(cfg(backbone="densenet_tiny", image_size=64, weights=str(tmp_path / "tiny")))


@pytest.mark.parametrize("name", TXRV_FILES)
def test_torchxrayvision_conversion_matches_torch(name):
    exp = np.load(os.path.join(FIXTURE, "expected.npz"))
    x01 = ((exp["input"] + 1024.0) / 2048.0).transpose(0, 2, 3, 1)     # [B, 224, 224, 1] in [0, 1]
    model, ckpt = build_classifier(os.path.join(FIXTURE, name))
    out = model(x01)
    assert ckpt.repeats == (2, 2, 2, 2) and ckpt.op_threshs is not None and len(ckpt.pathologies) == 18
    assert np.abs(out["features2"].numpy() - exp["features2"]).max() <= 1e-4
    assert np.abs(out["outputs"].numpy() - exp["outputs"]).max() <= 1e-4
    np.testing.assert_allclose(ckpt.op_threshs, exp["op_threshs"])


def test_torchxrayvision_weights_into_cxr_model_use_its_scale():
    model = build_model(cfg(backbone="densenet_tiny", image_size=64,
                            weights="torchxrayvision:" + os.path.join(FIXTURE, "model_legacy.pt")))
    assert (model.input_scale, model.input_offset) == TXRV_SCALING
    ws = model.weights_source
    assert ws["kind"] == "torchxrayvision" and len(ws["sha256"]) == 64 and ws["pathologies"][0] == "Atelectasis"
    ref = read_txrv(os.path.join(FIXTURE, "state_zip.pt")).state["features.conv0.weight"]
    np.testing.assert_array_equal(model.backbone.get_layer("conv1_conv").kernel.numpy(), ref.transpose(2, 3, 1, 0))
    from cxr_tfp.model.backbones.densenet import CxrDenseNetBackbone

    other = CxrDenseNetBackbone((1, 1, 1, 1), 8, 16, image_shape=(64, 64, 1))
    with pytest.raises(WeightsError, match="do not match backbone"):
        apply_weights(other, "densenet_tiny", "torchxrayvision:" + os.path.join(FIXTURE, "state_zip.pt"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cxr_tfp_pwned",))


def test_unpickler_refuses_code(tmp_path):
    marker = "/tmp/cxr_tfp_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    payload = pickle.dumps({"w": _Evil()}, protocol=2)
    # zip format: the evil pickle as data.pkl
    zpath = tmp_path / "evil_zip.pt"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    # legacy format: magic, protocol, sys info, then the evil pickle
    lpath = tmp_path / "evil_legacy.pt"
    lpath.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
                      + pickle.dumps({}, protocol=2) + payload)
    for p in (zpath, lpath):
        with pytest.raises(UnsafeCheckpointError, match=r"refuses to load (posix|os)\.system"):
            load_checkpoint(str(p))
        with pytest.raises(WeightsError, match="refuses to load"):
            build_model(cfg(backbone="densenet_tiny", image_size=64, weights=f"torchxrayvision:{p}"))
    assert not os.path.exists(marker)
    for bad in (b"not a checkpoint at all", pickle.dumps([1, 2, 3])):
        (tmp_path / "bad.pt").write_bytes(bad)
        with pytest.raises(WeightsError, match="bad.pt"):
            build_model(cfg(backbone="densenet_tiny", image_size=64, weights=f"torchxrayvision:{tmp_path / 'bad.pt'}"))


def test_imagenet_without_network_fails_fast_with_one_line(tmp_path, monkeypatch):
    # kagglesdk's TEST environment points the hub at localhost:7777 (nothing listens); empty cache.
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        build_model(cfg(backbone="densenet121", image_size=64, weights="imagenet"))
    assert time.perf_counter() - t0 < 15
    msg = str(err.value)
    assert "\n" not in msg and "not reachable" in msg and "--weights /path/to/densenet_121_imagenet" in msg
    with pytest.raises(WeightsError, match="no ImageNet preset for backbone 'tiny'"):
        build_model(cfg(weights="imagenet"))


def test_weights_spec_checked_early(tmp_path):
    for spec, msg in ((str(tmp_path / "x.weights.h5"), "not found"),
                      ("torchxrayvision:" + str(tmp_path / "x.pt"), "not found"),
                      (str(tmp_path), "not a keras-hub preset"),
                      ("resnet.bin", "expected 'imagenet'")):
        with pytest.raises(WeightsError, match=msg):
            check_weights_spec(spec)
    check_weights_spec("imagenet")
    assert IMAGENET_SCALING[0] == pytest.approx(1 / 0.226, rel=1e-3)


# ---------------------------------------------------------------------------- smoke trainings
@pytest.mark.slow  # a training from converted weights (~11 s); conversion itself is tested above
def test_smoke_fit_from_torchxrayvision_weights(tmp_path):
    """Default-run smoke training from converted weights (the full train_model run, with export, is
    the slow test below: a DenseNet export alone takes tens of seconds on 2 cores)."""
    import tensorflow as tf

    model = build_model(cfg(backbone="densenet_tiny", image_size=32,
                            weights="torchxrayvision:" + os.path.join(FIXTURE, "model_zip.pt")))
    before = model.backbone.get_layer("conv1_conv").kernel.numpy().copy()
    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 1, (8, 32, 32, 1)).astype(np.float32),
         "annotation": np.zeros((8, 32, 32, 2), np.float32),
         "has_gaze": np.zeros(8, np.float32), "has_boxes": np.zeros(8, np.float32)}
    y = {"labels": (rng.uniform(size=(8, 4)) > 0.5).astype(np.float32), "mask": np.ones((8, 4), np.float32)}
    model.set_stage(1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    hist = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert not np.array_equal(before, model.backbone.get_layer("conv1_conv").kernel.numpy())
    model.save(str(tmp_path / "m.keras"))
    back = load_model(str(tmp_path / "m.keras"))
    assert back.weights_source["kind"] == "torchxrayvision" and back.input_scale == TXRV_SCALING[0]
    for a, b in zip(back.backbone.get_weights(), model.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    from tests.model.synth import write_dataset

    return write_dataset(str(tmp_path_factory.mktemp("data")), n_train=32, n_eval=16, size=32)


def _smoke(data, out, **kw):
    from cxr_tfp.train import train_model

    c = cfg(image_size=32, stage1_epochs=1, stage2_epochs=0, batch_size=16, verbose=0, **kw)
    return train_model(c, os.path.join(data, "train"), os.path.join(data, "eval"), out)


@pytest.mark.parametrize("kind", ["preset", "weights_h5",
                                  pytest.param("torchxrayvision", marks=pytest.mark.slow)])
def test_smoke_training_from_each_kind_of_weights(kind, data32, tmp_path):
    if kind == "torchxrayvision":
        spec, backbone = "torchxrayvision:" + os.path.join(FIXTURE, "state_legacy.pt"), "densenet_tiny"
    else:
        backbone = "tiny"
        src = build_backbone("tiny", 32)
        _randomise(src, 4)
        if kind == "preset":
            spec = str(tmp_path / "preset")
            src.save_to_preset(spec)
        else:
            spec = str(tmp_path / "bb.weights.h5")
            src.save_weights(spec)
    out = str(tmp_path / "run")
    metrics = _smoke(data32, out, backbone=backbone, weights=spec)
    assert metrics["weights"]["kind"] == kind and metrics["weights"]["source"] == spec
    assert metrics["stage1"]["num_eval"] == 16
    state = json.load(open(os.path.join(out, "state.json"))) if os.path.exists(
        os.path.join(out, "state.json")) else None
    if state is not None:
        assert state["config"]["weights"] == spec
    exported = json.load(open(os.path.join(metrics["export_dir"], "assets", "weights.json")))
    assert exported["kind"] == kind
    reloaded = load_model(os.path.join(out, "model.keras"))   # reloads alone: no weights file read
    assert reloaded.weights_source["kind"] == kind
    assert (reloaded.input_scale, reloaded.input_offset) == (metrics["weights"]["input_scale"],
                                                            metrics["weights"]["input_offset"])


def test_evaluate_side_by_side_with_converted_torchxrayvision(tmp_path):
    from cxr_tfp import evaluate as E
    from tests.evalkit import StubAdapter, make_data

    data = make_data(tmp_path / "data", n_test_patients=8)
    spec = "torchxrayvision:" + os.path.join(FIXTURE, "model_zip.pt")
    txrv = E.load_adapter(spec)
    assert txrv.kind == "torchxrayvision" and len(txrv.findings) == 18
    assert {"Cardiomegaly", "Effusion", "Lung_Opacity", "Enlarged_Cardiomediastinum"} <= set(txrv.findings)
    res = E.evaluate(StubAdapter("ours", 0.5), str(data), str(tmp_path / "out"), compare=txrv,
                     options=E.EvalOptions(n_resamples=20), saliency=False, figures=False)
    assert [m["kind"] for m in res["models"]] == ["stub", "torchxrayvision"] or res["models"][1]["kind"] == "torchxrayvision"
    assert res["comparison"]["b"] == txrv.name
    assert set(res["comparison"]["findings"]) == {"Cardiomegaly", "Effusion", "Mass", "Nodule"}
    # the adapter's numbers are the converted classifier's outputs, column for column
    x = np.random.default_rng(0).uniform(0, 1, (2, 224, 224, 1)).astype(np.float32)
    probs, unc = txrv.predict(None, x)
    model, ckpt = build_classifier(txrv.path)
    ref = model(x)["outputs"].numpy()
    names = list(ckpt.pathologies)
    np.testing.assert_allclose(probs[:, txrv.findings.index("Cardiomegaly")], ref[:, names.index("Cardiomegaly")])
    assert np.all(unc == 0)


def test_cli_imagenet_offline_is_one_line_exit_2(data32, tmp_path, monkeypatch, capsys):
    from cxr_tfp.train import main

    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    rc = main(["--data", data32, "--out", str(tmp_path / "run"), "--config", os.path.join(REPO, "configs", "smoke.yaml"),
               "--backbone", "densenet121", "--image-size", "32", "--weights", "imagenet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: weights=imagenet")
    assert "--weights /path/to/densenet_121_imagenet" in err[0]
