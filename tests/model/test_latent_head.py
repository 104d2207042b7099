"""Latent head: KL by hand, annotation weights, masking, shapes, serialisation, Grad-CAM."""
import numpy as np
import pytest
import tensorflow as tf

import keras
from cxr_tfp import model_dir as MD
from cxr_tfp.config import TrainConfig
from cxr_tfp.model import build_model, load_model
from cxr_tfp.model.latent_head import (AttentionPool, GaussianParams, LatentHead, PosteriorNet, PriorNet,
                                       combine_annotation, kl_diag_gaussians)
from cxr_tfp.model.saliency import grad_cam


def tiny_cfg(**kw):
    base = dict(backbone="tiny", image_size=32, findings="synthetic", latent_dim=4, hidden_dim=8,
                num_samples=5, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_kl_matches_hand_computation():
    rng = np.random.default_rng(0)
    mq, mp = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    lq, lp = rng.normal(size=(3, 4)) * 0.5, rng.normal(size=(3, 4)) * 0.5
    vq, vp = np.exp(lq), np.exp(lp)
    hand = 0.5 * np.sum(vq / vp + (mp - mq) ** 2 / vp - 1.0 + lp - lq, axis=1)
    got = kl_diag_gaussians(*(tf.constant(a, tf.float32) for a in (mq, lq, mp, lp))).numpy()
    np.testing.assert_allclose(got, hand, rtol=1e-5)
    assert np.allclose(kl_diag_gaussians(*(tf.constant(a, tf.float32) for a in (mq, lq, mq, lq))), 0)


def test_combine_annotation_modes():
    grid = np.zeros((3, 4, 4, 2), np.float32)
    grid[:, 0, 0, 0] = 2.0   # gaze at the top-left cell
    grid[:, 3, 3, 1] = 1.0   # box at the bottom-right cell
    has_g = tf.constant([1.0, 1.0, 0.0])
    has_b = tf.constant([1.0, 0.0, 0.0])
    w, has = combine_annotation(tf.constant(grid), has_g, has_b, "gaze+boxes")
    w = w.numpy()
    np.testing.assert_allclose(has.numpy(), [1, 1, 0])
    np.testing.assert_allclose(w[0, 0, 0], 0.5, atol=1e-5)
    np.testing.assert_allclose(w[0, 3, 3], 0.5, atol=1e-5)
    np.testing.assert_allclose(w[1, 0, 0], 1.0, atol=1e-5)   # example 1 has gaze only
    assert w[1, 3, 3] == 0 and w[2].sum() == 0
    wb, hb = combine_annotation(tf.constant(grid), has_g, has_b, "boxes")
    np.testing.assert_allclose(hb.numpy(), [1, 0, 0])
    np.testing.assert_allclose(wb.numpy()[0, 3, 3], 1.0, atol=1e-5)
    _, hn = combine_annotation(tf.constant(grid), has_g, has_b, "none")
    assert hn.numpy().sum() == 0


def test_masked_bce_ignores_unknown_labels():
    model = build_model(tiny_cfg())
    logits = tf.constant(np.random.default_rng(1).normal(size=(2, 3, 4)), tf.float32)
    labels = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    mask = np.array([[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]], np.float32)
    a = model.masked_bce(logits, tf.constant(labels), tf.constant(mask)).numpy()
    flipped = np.where(mask > 0, labels, 1 - labels)
    b = model.masked_bce(logits, tf.constant(flipped), tf.constant(mask)).numpy()
    assert a == pytest.approx(b, rel=1e-6)
    z = logits.numpy()
    ce = np.maximum(z, 0) - z * labels[None] + np.log1p(np.exp(-np.abs(z)))
    hand = (ce * mask[None]).sum() / (mask.sum() * 2)
    assert a == pytest.approx(hand, rel=1e-5)


def test_prediction_shapes_and_determinism():
    model = build_model(tiny_cfg())
    x = np.random.default_rng(0).random((3, 32, 32, 1)).astype(np.float32)
    out = model.predict_with_uncertainty(x)
    assert out[MD.PROBABILITIES].shape == (3, 4) and out[MD.UNCERTAINTY].shape == (3, 4)
    assert np.all((out[MD.PROBABILITIES] > 0) & (out[MD.PROBABILITIES] < 1))
    assert np.all(out[MD.UNCERTAINTY] > 0)
    again = model.predict_with_uncertainty(x)
    np.testing.assert_array_equal(out[MD.PROBABILITIES], again[MD.PROBABILITIES])
    one = model.predict_with_uncertainty(x, num_samples=1)
    np.testing.assert_allclose(one[MD.UNCERTAINTY], 0, atol=1e-7)
    assert model.findings == ("Cardiomegaly", "Effusion", "Mass", "Nodule") and model.image_size == 32
    with pytest.raises(ValueError, match="images must be"):
        model.predict_with_uncertainty(np.zeros((1, 16, 16, 1), np.float32))


@pytest.mark.parametrize("layer, call_shape", [
    (AttentionPool(name="a"), (2, 4, 4, 6)),
    (AttentionPool(5, name="a5"), (2, 4, 4, 6)),
    (GaussianParams(3, 5, name="g"), (2, 6)),
    (PriorNet(3, 5, name="p"), (2, 4, 4, 6)),
    (PriorNet(3, 5, 7, name="p7"), (2, 4, 4, 6)),
    (LatentHead(3, 5, 2, name="h"), (2, 4, 4, 6)),
    (LatentHead(3, 5, 2, posterior_attention=True, attention_hidden=4, name="h4"), (2, 4, 4, 6)),
])
def test_custom_layers_round_trip_config(layer, call_shape):
    x = tf.constant(np.random.default_rng(0).normal(size=call_shape), tf.float32)
    y = layer(x)
    clone = layer.__class__.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    for a, b in zip(tf.nest.flatten(y), tf.nest.flatten(clone(x))):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    post = PosteriorNet(3, 5)
    w = tf.fill(call_shape[:3], 1.0 / 16) if len(call_shape) == 4 else None
    if w is not None:
        clone_post = PosteriorNet.from_config(post.get_config())
        post(x, w), clone_post(x, w)
        clone_post.set_weights(post.get_weights())
        np.testing.assert_allclose(post(x, w)[0].numpy(), clone_post(x, w)[0].numpy(), rtol=1e-6)


def test_keras_save_load_identical_predictions(tmp_path):
    model = build_model(tiny_cfg())
    model.thresholds = {"Mass": 0.3}
    x = np.random.default_rng(2).random((4, 32, 32, 1)).astype(np.float32)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = load_model(path)
    assert loaded.findings == model.findings and loaded.thresholds["Mass"] == pytest.approx(0.3)
    a, b = model.predict_with_uncertainty(x), loaded.predict_with_uncertainty(x)
    np.testing.assert_array_equal(a[MD.PROBABILITIES], b[MD.PROBABILITIES])
    np.testing.assert_array_equal(a[MD.UNCERTAINTY], b[MD.UNCERTAINTY])
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.keras"))


def test_grad_cam_shape_and_range():
    model = build_model(tiny_cfg())
    x = np.random.default_rng(3).random((2, 32, 32, 1)).astype(np.float32)
    cam = grad_cam(model, x, 2)
    assert cam.shape == (2, 32, 32) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() <= 1
    with pytest.raises(IndexError):
        grad_cam(model, x, 4)


@pytest.mark.parametrize("backbone, grid", [("densenet121", 2), ("resnet50", 2)])
def test_keras_hub_backbones_build_offline(backbone, grid):
    model = build_model(tiny_cfg(backbone=backbone, image_size=64))
    assert model.grid_hw == (grid, grid)
    out = model.predict_with_uncertainty(np.zeros((1, 64, 64, 1), np.float32))
    assert out[MD.PROBABILITIES].shape == (1, 4)


def test_three_channel_input_and_weights_file(tmp_path):
    src = build_model(tiny_cfg(channels=3))
    path = str(tmp_path / "bb.weights.h5")
    src.backbone.save_weights(path)
    dst = build_model(tiny_cfg(channels=3, weights=path, seed=9))
    for a, b in zip(src.backbone.get_weights(), dst.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="weights: file not found"):
        build_model(tiny_cfg(weights=str(tmp_path / "nope.weights.h5")))


@pytest.mark.parametrize("hidden", [0, 8])
def test_attention_scorer_sees_position_only_with_context(hidden):
    """On a feature map that is the same in every cell, the linear scorer must attend uniformly; the
    context scorer reads grid coordinates, so it can prefer places (lesions sit in the lungs)."""
    pool = AttentionPool(hidden, name="a")
    fmap = tf.ones((2, 4, 4, 6))
    pool.build(fmap.shape)
    rng = np.random.default_rng(8)
    for v in pool.trainable_weights:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    att = pool.attention(fmap).numpy()
    np.testing.assert_allclose(att.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    if hidden:
        assert att.max() > 2 * att.min()
        assert len(pool.trainable_weights) == 4     # context conv (kernel, bias) + score (kernel, bias)
    else:
        np.testing.assert_allclose(att, 1.0 / 16, rtol=1e-5)
    clone = AttentionPool.from_config(pool.get_config())
    clone.build(fmap.shape)
    clone.set_weights(pool.get_weights())
    assert clone.hidden == hidden
    np.testing.assert_allclose(clone.attention(fmap).numpy(), att, rtol=1e-6)


@pytest.mark.parametrize("use_attention", [False, True])
def test_posterior_reads_the_image_only_where_the_expert_looked(use_attention):
    rng = np.random.default_rng(6)
    fmap = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
    w = np.zeros((2, 4, 4), np.float32)
    w[:, :2, :2] = 0.25                      # the expert looked at the top-left quarter only
    post = PosteriorNet(3, 5, use_attention=use_attention)
    post.build(fmap.shape)
    for v in post.trainable_weights:         # non-trivial weights everywhere
        v.assign(rng.normal(size=v.shape).astype(np.float32) * 0.5)
    base = post(tf.constant(fmap), tf.constant(w))[0].numpy()
    elsewhere = fmap.copy()
    elsewhere[:, 2:, 2:] += 5.0              # change the image where the expert did not look
    moved = post(tf.constant(elsewhere), tf.constant(w))[0].numpy()
    inside = fmap.copy()
    inside[:, 0, 0] += 5.0
    assert not np.allclose(post(tf.constant(inside), tf.constant(w))[0].numpy(), base)
    if use_attention:    # its own attention reads the whole image: it can ignore the annotation
        assert not np.allclose(moved, base, atol=1e-4)
    else:
        np.testing.assert_allclose(moved, base, rtol=1e-6)
    clone = PosteriorNet.from_config(post.get_config())
    clone.build(fmap.shape)
    clone.set_weights(post.get_weights())
    assert clone.use_attention is use_attention
    np.testing.assert_allclose(clone(tf.constant(fmap), tf.constant(w))[0].numpy(), base, rtol=1e-6)
