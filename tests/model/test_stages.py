"""Which weights change in each stage; stage 2 on cached features equals recomputing them."""
import numpy as np
import pytest
import tensorflow as tf

import keras
from cxr_tfp.config import TrainConfig
from cxr_tfp.model import build_model


def _cfg(**kw):
    base = dict(backbone="tiny", image_size=32, findings="synthetic", latent_dim=4, hidden_dim=8,
                num_samples=3, seed=1, batch_size=4)
    base.update(kw)
    return TrainConfig(**base)


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    ann = np.zeros((n, 32, 32, 2), np.float32)
    ann[:, 8:16, 8:16, 1] = 1.0
    ann[:, :, :, 0] = rng.random((n, 32, 32))
    x = {"image": rng.random((n, 32, 32, 1)).astype(np.float32), "annotation": ann,
         "has_gaze": np.ones(n, np.float32), "has_boxes": (np.arange(n) % 2).astype(np.float32)}
    y = {"labels": (rng.random((n, 4)) > 0.5).astype(np.float32), "mask": np.ones((n, 4), np.float32)}
    return x, y


def _snap(layer):
    return [w.numpy().copy() for w in layer.weights]


def _changed(before, layer):
    return any(not np.array_equal(a, b.numpy()) for a, b in zip(before, layer.weights))


def _fit(model, x, y, stage, freeze="backbone", lr=1e-2):
    model.set_stage(stage, freeze)
    model.compile(optimizer=keras.optimizers.Adam(lr))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    model.fit(ds, epochs=1, verbose=0)


def test_weights_changed_per_stage():
    model = build_model(_cfg())
    x, y = _data()
    parts = {"backbone": model.backbone, "prior": model.head.prior, "posterior": model.head.posterior,
             "classifier": model.head.classifier}
    snap = {k: _snap(v) for k, v in parts.items()}
    _fit(model, x, y, 1)
    changed = {k: _changed(snap[k], v) for k, v in parts.items()}
    assert changed == {"backbone": True, "prior": True, "posterior": False, "classifier": True}

    model.init_posterior_from_prior()
    snap = {k: _snap(v) for k, v in parts.items()}
    _fit(model, x, y, 2)
    changed = {k: _changed(snap[k], v) for k, v in parts.items()}
    # frozen backbone is bit-identical; KL gradients reach the prior (distillation)
    assert changed == {"backbone": False, "prior": True, "posterior": True, "classifier": True}

    snap = {k: _snap(v) for k, v in parts.items()}
    _fit(model, x, y, 2, freeze="backbone+classifier")
    changed = {k: _changed(snap[k], v) for k, v in parts.items()}
    assert changed == {"backbone": False, "prior": True, "posterior": True, "classifier": False}


def test_posterior_starts_as_prior_mlp_on_annotation_pooling():
    model = build_model(_cfg())
    x, _ = _data()
    model.init_posterior_from_prior()
    fmap = model.features(x["image"])
    w = tf.random.uniform([8] + list(model.grid_hw), seed=0)
    w = w / tf.reduce_sum(w, axis=[1, 2], keepdims=True)
    mq, lq = model.head.posterior_params(fmap, w)
    pooled = tf.einsum("bhwk,bhw->bk", fmap, w)
    mp, lp = model.head.prior.gauss(pooled)
    np.testing.assert_allclose(mq.numpy(), mp.numpy(), atol=1e-6)
    np.testing.assert_allclose(lq.numpy(), lp.numpy(), atol=1e-6)
    # with the prior's own attention as "annotation", q equals p exactly (KL 0)
    att = model.head.prior.pool.attention(fmap)
    mq2, _ = model.head.posterior_params(fmap, att)
    np.testing.assert_allclose(mq2.numpy(), model.head.prior(fmap)[0].numpy(), atol=1e-5)


def test_stage2_on_cached_features_equals_recompute():
    x, y = _data(12, seed=4)
    a = build_model(_cfg())
    _fit(a, x, y, 1)
    a.init_posterior_from_prior()
    b = build_model(_cfg())
    b.set_weights(a.get_weights())
    prior_before = [w.numpy().copy() for w in a.head.prior.weights]
    # a: recompute the frozen backbone from images each step
    _fit(a, x, y, 2)
    # b: the same batches as cached feature maps + grid annotations
    cached = {"features": b.features(x["image"]).numpy(),
              "ann_grid": b.annotation_grid(x["annotation"]).numpy(),
              "has_gaze": x["has_gaze"], "has_boxes": x["has_boxes"]}
    _fit(b, cached, y, 2)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(wa.numpy(), wb.numpy(), rtol=1e-5, atol=1e-6, err_msg=wa.path)
    # and stage 2 did train the compared weights (else equality would be trivial)
    assert any(not np.allclose(w.numpy(), s) for w, s in zip(a.head.prior.weights, prior_before))


@pytest.mark.slow  # two more stage-2 trainings (~10 s)
def test_ablations_no_freezing_and_no_annotation():
    x, y = _data()
    model = build_model(_cfg())
    _fit(model, x, y, 1)
    snap = _snap(model.backbone)
    _fit(model, x, y, 2, freeze="none")
    assert _changed(snap, model.backbone)          # no freezing: the backbone trains in stage 2

    model = build_model(_cfg(annotation="none"))
    _fit(model, x, y, 1)
    model.init_posterior_from_prior()
    snap = _snap(model.head.posterior)
    model.set_stage(2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    hist = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), epochs=1, verbose=0)
    assert hist.history["kl"][-1] == 0.0            # posterior = prior
    assert not _changed(snap, model.head.posterior)
