"""--precision: the backbone computes in 16 bits, the TFP head, KL and loss stay float32; training runs
(with loss scaling under mixed_float16) and a saved model reloads with its precision."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tfp.config import TrainConfig
from cxr_tfp.model import build_model, load_model


def _batch(n=8, size=32):
    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 1, (n, size, size, 1)).astype(np.float32),
         "annotation": np.zeros((n, size, size, 2), np.float32),
         "has_gaze": np.zeros(n, np.float32), "has_boxes": np.zeros(n, np.float32)}
    y = {"labels": (rng.uniform(size=(n, 4)) > 0.5).astype(np.float32), "mask": np.ones((n, 4), np.float32)}
    return x, y


# float16 is emulated on CPUs (slow): its loss-scaled run is a slow test; bfloat16 runs by default.
@pytest.mark.parametrize("precision, dtype", [pytest.param("mixed_float16", "float16", marks=pytest.mark.slow),
                                              ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_trains_with_float32_head(precision, dtype, tmp_path):
    model = build_model(TrainConfig(backbone="tiny", image_size=32, findings="synthetic", latent_dim=4,
                                    hidden_dim=8, num_samples=4, seed=1, precision=precision))
    assert model.backbone.get_layer("tiny_conv1").compute_dtype == dtype
    assert model.backbone.get_layer("tiny_conv1").kernel.dtype == "float32"      # float32 variables
    assert all(w.dtype == "float32" for w in model.head.weights)
    assert model.head.prior.compute_dtype == "float32"
    x, y = _batch()
    assert model.features(x["image"]).dtype == tf.float32
    opt = keras.optimizers.Adam(1e-2)
    if precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    model.set_stage(1)
    model.compile(optimizer=opt)
    loss, bce, kl = model.compute_losses(x, y, training=False)
    assert loss.dtype == tf.float32 and kl.dtype == tf.float32
    before = model.backbone.get_layer("tiny_conv1").kernel.numpy().copy()
    hist = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), epochs=2, verbose=0)
    assert all(np.isfinite(hist.history["loss"]))
    assert not np.array_equal(before, model.backbone.get_layer("tiny_conv1").kernel.numpy())
    model.save(str(tmp_path / "m.keras"))
    back = load_model(str(tmp_path / "m.keras"))
    assert back.precision == precision and back.backbone.get_layer("tiny_conv1").compute_dtype == dtype
    np.testing.assert_allclose(back.predict_with_uncertainty(x["image"])["probabilities"],
                               model.predict_with_uncertainty(x["image"])["probabilities"], atol=1e-6)
    assert keras.config.dtype_policy().name == "float32"      # the global policy is left as it was


def test_precision_is_validated():
    with pytest.raises(ValueError, match="precision='float8'"):
        TrainConfig(precision="float8")
