"""cxr_tfp.load(...).predict(...) on the real NIH sample images and DICOMs; input checks; bfloat16
serving within 0.01 of float32."""
import os

import numpy as np
import pandas as pd
import pytest

import cxr_tfp
from cxr_tfp.config import TrainConfig
from cxr_tfp.export import export_saved_model, with_serving_precision
from cxr_tfp.model import build_model
from cxr_tfp.predictor import InputCheckError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TXRV = "torchxrayvision:" + os.path.join(REPO, "tests", "fixtures", "txrv", "state_zip.pt")


def _save_and_export(out, backbone, weights=None):
    model = build_model(TrainConfig(backbone=backbone, image_size=64, findings="synthetic", latent_dim=4,
                                    hidden_dim=8, num_samples=4, seed=5, weights=weights))
    model.thresholds = {"Cardiomegaly": 0.3, "Effusion": 0.5, "Mass": 0.7, "Nodule": 0.99}
    model.save(str(out / "model.keras"))
    export_saved_model(model, str(out / "f32"), precision="float32")   # forced: auto may be bfloat16
    export_saved_model(model, str(out / "bf16"), precision="bfloat16")
    return model, out


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny backbone saved as .keras and exported in float32 and bfloat16."""
    return _save_and_export(tmp_path_factory.mktemp("model"), "tiny")


@pytest.fixture(scope="module")
def keras_predictor(saved):
    return cxr_tfp.load(str(saved[1] / "model.keras"))


@pytest.fixture(scope="module")
def nih_images(shared_data):
    folder = shared_data / "nih-sample" / "images"
    files = sorted(str(p) for p in folder.glob("*.png"))[:8]
    assert len(files) == 8
    return files


def test_three_lines_keras_and_saved_model_agree(saved, nih_images, shared_data):
    model, out = saved
    dcm = str(shared_data / "dicom" / "Fake_MONOHR1.dcm")
    files = nih_images[:3] + [dcm]
    table = cxr_tfp.load(str(out / "model.keras")).predict(files)
    assert isinstance(table, pd.DataFrame) and list(table.index) == files
    assert table.columns.names == ["finding", "field"]
    assert set(table.columns.get_level_values(0)) == {"Cardiomegaly", "Effusion", "Mass", "Nodule", "error"}
    assert table["error"].isna().all()                  # every input was usable
    probs = table.xs("probability", axis=1, level="field")
    assert ((probs >= 0) & (probs <= 1)).all().all()
    assert (table.xs("uncertainty", axis=1, level="field") >= 0).all().all()
    for f, t in model.thresholds.items():
        assert (table[(f, "decision")] == (table[(f, "probability")] >= t)).all()
    served = cxr_tfp.load(str(out / "f32")).predict(files)
    np.testing.assert_allclose(served.xs("probability", axis=1, level="field").to_numpy(),
                               probs.to_numpy(), atol=1e-5)
    assert served.attrs["thresholds"] == model.thresholds


def test_bytes_and_arrays_give_the_file_result(keras_predictor, nih_images):
    pred = keras_predictor
    from PIL import Image

    raw = open(nih_images[0], "rb").read()
    arr = np.asarray(Image.open(nih_images[0]).convert("L"))
    t = pred.predict([nih_images[0], raw, arr, arr[..., None], arr.astype(np.float32) / 255.0])
    p = t.xs("probability", axis=1, level="field").to_numpy()
    assert list(t.index) == [nih_images[0], "bytes[1]", "array[2]", "array[3]", "array[4]"]
    np.testing.assert_allclose(p[1:], np.repeat(p[:1], 4, axis=0), atol=1e-5)


@pytest.mark.parametrize("item, msg", [
    (np.zeros((8, 8, 3), np.uint8), r"array\[0\]: array of shape \(8, 8, 3\)"),
    (np.full((8, 8), 2.0, np.float32), r"array\[0\]: float array with values in \[2, 2\]"),
    (np.zeros((8, 8), np.int32), r"array\[0\]: array of dtype int32"),
    (np.array([[np.nan, 0], [0, 0]], np.float32), r"array\[0\]: float array holds NaN"),
    (b"not an image", r"bytes\[0\]"),
    ("/nonexistent/x.png", r"/nonexistent/x.png: no such file"),
    (3.5, r"input\[0\]: float is not"),
])
def test_bad_inputs_are_named(keras_predictor, item, msg):
    with pytest.raises(InputCheckError, match=msg):
        keras_predictor.predict([item], errors="raise")


def test_a_bad_input_costs_only_its_own_row(keras_predictor, nih_images):
    """errors="row" (default): the good rows keep their results, the bad one has NaN and its reason."""
    with pytest.warns(UserWarning, match=r"1 of 3 inputs could not be used \(first: bytes\[1\]"):
        t = keras_predictor.predict([nih_images[0], b"not an image", nih_images[1]])
    alone = keras_predictor.predict(nih_images[:2])
    probs = t.xs("probability", axis=1, level="field")
    np.testing.assert_allclose(probs.iloc[[0, 2]].to_numpy(), alone.xs("probability", axis=1, level="field"),
                               atol=1e-5)
    assert probs.iloc[1].isna().all() and t["error"].iloc[1].startswith("bytes[1]: ")
    assert t["error"].isna().tolist() == [True, False, True]
    assert list(t.attrs["errors"]) == ["bytes[1]"]


def test_load_names_a_wrong_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a .keras file nor a SavedModel"):
        cxr_tfp.load(str(tmp_path))


def _bf16_vs_f32(model, out, files):
    f32 = cxr_tfp.load(str(out / "f32")).predict(files)
    bf16 = cxr_tfp.load(str(out / "bf16")).predict(files)
    a = f32.xs("probability", axis=1, level="field").to_numpy()
    b = bf16.xs("probability", axis=1, level="field").to_numpy()
    assert not np.array_equal(a, b)           # it really computed in bfloat16
    clone = with_serving_precision(model, "bfloat16")
    assert clone.backbone.layers[1].compute_dtype == "bfloat16"
    assert clone.head.prior.dtype_policy.compute_dtype == "float32"
    return float(np.abs(a - b).max())


def test_bfloat16_serving_within_0_01_of_float32(saved, nih_images):
    assert _bf16_vs_f32(*saved, nih_images) <= 0.01


@pytest.mark.slow
def test_bfloat16_serving_densenet_from_torchxrayvision_weights(tmp_path, nih_images):
    """The same check through a DenseNet (BatchNorm, 60 layers) started from converted weights."""
    model, out = _save_and_export(tmp_path, "densenet_tiny", TXRV)
    assert cxr_tfp.load(str(out / "f32")).weights_source["kind"] == "torchxrayvision"
    assert _bf16_vs_f32(model, out, nih_images) <= 0.01


@pytest.mark.slow
def test_bfloat16_serving_of_a_trained_densenet_on_all_nih_images(tmp_path, shared_data):
    """Issue 22 point 3: a TRAINED DenseNet (from the converted torchxrayvision fixture, both stages
    on synthetic records), exported float32 and bfloat16, within 0.01 on all 24 NIH sample images."""
    from cxr_tfp.config import load_config
    from cxr_tfp.model import load_model
    from cxr_tfp.train import train_model
    from tests.model.synth import write_dataset

    write_dataset(str(tmp_path / "data"), n_train=64, n_eval=32, size=64)
    cfg = load_config(os.path.join(REPO, "configs", "smoke.yaml")).to_dict()
    cfg.update(dict(backbone="densenet_tiny", weights=TXRV, image_size=64, stage1_epochs=3,
                    stage2_epochs=1, num_samples=8, verbose=0))
    metrics = train_model(TrainConfig.from_dict(cfg), str(tmp_path / "data" / "train"),
                          str(tmp_path / "data" / "eval"), str(tmp_path / "run"))
    assert metrics                                   # it trained and evaluated
    model = load_model(str(tmp_path / "run" / "model.keras"))
    export_saved_model(model, str(tmp_path / "f32"), precision="float32")
    export_saved_model(model, str(tmp_path / "bf16"), precision="bfloat16")
    files = sorted(str(p) for p in (shared_data / "nih-sample" / "images").glob("*.png"))
    assert len(files) == 24
    assert _bf16_vs_f32(model, tmp_path, files) <= 0.01
