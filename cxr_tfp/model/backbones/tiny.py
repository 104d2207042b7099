"""A tiny 3-block CNN for tests and the smoke config (no BatchNorm: replica-independent).

A keras-hub ``Backbone`` like the others, so ``save_to_preset`` / ``from_preset`` work on it too.
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras
import keras_hub


@keras.saving.register_keras_serializable(package="cxr_tfp")
class CxrTinyBackbone(keras_hub.models.Backbone):
    """``[S, S, C] -> [S/8, S/8, widths[-1]]`` with strided 3x3 convs + ReLU."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), image_shape=(None, None, 1), **kwargs):
        inp = keras.Input(tuple(image_shape), name="image")
        x = inp
        for i, w in enumerate(widths):
            x = keras.layers.Conv2D(int(w), 3, strides=2, padding="same", activation="relu",
                                    name=f"tiny_conv{i + 1}")(x)
        x = keras.layers.Conv2D(int(widths[-1]), 3, padding="same", activation="relu", name="tiny_last")(x)
        super().__init__(inputs=inp, outputs=x, **kwargs)
        self.widths = [int(w) for w in widths]
        self.image_shape = tuple(image_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"widths": self.widths, "image_shape": self.image_shape})
        return config


def tiny_cnn(image_size: Optional[int], channels: int = 1, dtype=None) -> CxrTinyBackbone:
    """The tiny test backbone."""
    return CxrTinyBackbone(image_shape=(image_size, image_size, channels), dtype=dtype, name="tiny")
