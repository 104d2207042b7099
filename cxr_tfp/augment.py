"""keras-cv augmentations that move the image and its annotation maps together.

The image and its gaze/box channels are stacked into one tensor before the random affine layers
run, so every pixel of the annotation follows its image pixel (same rotation, shift and zoom).
Horizontal flips are left out on purpose: they swap the heart's side, which no real CXR does.
"""
from __future__ import annotations

from cxr_tfp import features as F


def make_augmenter(seed: int = 0, rotation: float = 0.03, shift: float = 0.05, zoom: float = 0.1):
    """A callable ``(x) -> x`` on input-pipeline batches (dict with image [B,S,S,1], annotation [B,S,S,2])."""
    import keras
    import keras_cv
    import tensorflow as tf

    layers = keras.Sequential([
        keras_cv.layers.RandomRotation(rotation, fill_mode="constant", seed=seed),
        keras_cv.layers.RandomTranslation(shift, shift, fill_mode="constant", seed=seed + 1),
        keras_cv.layers.RandomZoom(zoom, fill_mode="constant", seed=seed + 2),
    ], name="augment")

    def augment(x):
        stacked = tf.concat([x[F.X_IMAGE], x[F.X_ANNOTATION]], axis=-1)
        out = layers(stacked, training=True)
        out = tf.clip_by_value(out, 0.0, 1.0)
        return {**x, F.X_IMAGE: out[..., :1], F.X_ANNOTATION: out[..., 1:]}

    return augment
