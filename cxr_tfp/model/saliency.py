"""Grad-CAM (Selvaraju et al. 2017) on the backbone's last block, for one finding."""
from __future__ import annotations

import numpy as np


def grad_cam(model, images: np.ndarray, finding_index: int) -> np.ndarray:
    """Class activation maps ``[B, S, S]`` in [0, 1] for ``model.findings[finding_index]``.

    The score is the finding's probability at the prior mean (deterministic); channel weights are
    the spatially averaged gradients of that score w.r.t. the backbone's last feature map.
    """
    import tensorflow as tf

    if not 0 <= finding_index < len(model.findings):
        raise IndexError(f"finding_index {finding_index} out of range for {len(model.findings)} findings")
    x = tf.constant(np.asarray(images, np.float32).reshape(-1, model.image_size, model.image_size, 1))
    with tf.GradientTape() as tape:
        fmap = model.features(x, training=False)
        tape.watch(fmap)
        mu, _ = model.head.prior(fmap)
        score = tf.sigmoid(model.head.classifier(mu))[:, finding_index]
    grads = tape.gradient(score, fmap)                                  # [B, h, w, K]
    weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, [model.image_size, model.image_size], method="bilinear")[..., 0]
    peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
    cam = tf.where(peak > 0, cam / tf.maximum(peak, 1e-12), tf.zeros_like(cam))
    return np.clip(cam.numpy(), 0.0, 1.0).astype(np.float32)
