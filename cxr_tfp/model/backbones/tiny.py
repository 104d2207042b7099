"""A tiny 3-block CNN for tests and the smoke config (no BatchNorm: replica-independent)."""
from __future__ import annotations


def tiny_cnn(image_size: int, channels: int = 1, widths=(16, 32, 64)):
    """``[S, S, C] -> [S/8, S/8, widths[-1]]`` with strided 3x3 convs + ReLU."""
    import keras

    inp = keras.Input((image_size, image_size, channels), name="image")
    x = inp
    for i, w in enumerate(widths):
        x = keras.layers.Conv2D(w, 3, strides=2, padding="same", activation="relu",
                                name=f"tiny_conv{i + 1}")(x)
    x = keras.layers.Conv2D(widths[-1], 3, padding="same", activation="relu", name="tiny_last")(x)
    return keras.Model(inp, x, name="tiny")
