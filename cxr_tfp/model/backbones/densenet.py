"""DenseNet (Huang et al. 2017), the CheXNet / torchxrayvision backbone, as a keras-hub Backbone.

The dense and transition blocks are keras-hub's own (same layer names as
``keras_hub.models.DenseNetBackbone``, so its ImageNet preset loads layer by layer). Only the stem
differs: keras-hub pads the 7x7/2 convolution and the 3x3/2 max-pool "same" (TensorFlow pads 2
before / 3 after, and 0 / 1), torch pads 3/3 and 1/1, which shifts every feature by a pixel and put
converted torchxrayvision features off by ~100% relative. Explicit ZeroPadding2D + "valid" layers
pad like torch (zero padding of the pool input is exact: it follows a ReLU, so values are >= 0).
BatchNorm epsilon is torch's 1e-5 (keras-hub uses 1.001e-5; the difference is far below 1e-6).
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras
import keras_hub
from keras_hub.src.models.densenet.densenet_backbone import apply_dense_block, apply_transition_block

# (stackwise_num_repeats, growth_rate, stem filters)
DENSENET121 = ((6, 12, 24, 16), 32, 64)
# Tests and smoke runs: the same code paths (stem, dense layers, transitions, final norm), tiny sizes.
DENSENET_TINY = ((2, 2, 2, 2), 8, 16)


@keras.saving.register_keras_serializable(package="cxr_tfp")
class CxrDenseNetBackbone(keras_hub.models.Backbone):
    """``[S, S, C] -> [S/32, S/32, K]`` (after the final BatchNorm + ReLU), torch-style stem."""

    def __init__(self, stackwise_num_repeats: Sequence[int] = DENSENET121[0], growth_rate: int = 32,
                 stem_filters: int = 64, compression_ratio: float = 0.5,
                 image_shape=(None, None, 1), bn_epsilon: float = 1e-5, **kwargs):
        channel_axis = -1
        inp = keras.layers.Input(shape=tuple(image_shape), name="image")
        x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inp)
        x = keras.layers.Conv2D(stem_filters, 7, strides=2, use_bias=False, padding="valid",
                                name="conv1_conv")(x)
        x = keras.layers.BatchNormalization(axis=channel_axis, epsilon=bn_epsilon, name="conv1_bn")(x)
        x = keras.layers.Activation("relu", name="conv1_relu")(x)
        x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="pool1")(x)
        n = len(stackwise_num_repeats)
        for i in range(n - 1):
            x = apply_dense_block(x, channel_axis, int(stackwise_num_repeats[i]), growth_rate,
                                  name=f"stack{i + 1}")
            x = apply_transition_block(x, channel_axis, compression_ratio, name=f"transition{i + 1}")
        x = apply_dense_block(x, channel_axis, int(stackwise_num_repeats[-1]), growth_rate,
                              name=f"stack{n}")
        x = keras.layers.BatchNormalization(axis=channel_axis, epsilon=bn_epsilon, name="bn")(x)
        x = keras.layers.Activation("relu", name="relu")(x)
        super().__init__(inputs=inp, outputs=x, **kwargs)
        # keras-hub's blocks fix their epsilon (1.001e-5); BatchNormalization reads it at call time.
        for layer in self.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.epsilon = float(bn_epsilon)
        self.stackwise_num_repeats = [int(v) for v in stackwise_num_repeats]
        self.growth_rate = int(growth_rate)
        self.stem_filters = int(stem_filters)
        self.compression_ratio = float(compression_ratio)
        self.image_shape = tuple(image_shape)
        self.bn_epsilon = float(bn_epsilon)

    def get_config(self):
        config = super().get_config()
        config.update({"stackwise_num_repeats": self.stackwise_num_repeats, "growth_rate": self.growth_rate,
                       "stem_filters": self.stem_filters, "compression_ratio": self.compression_ratio,
                       "image_shape": self.image_shape, "bn_epsilon": self.bn_epsilon})
        return config


def densenet121(image_size: Optional[int], channels: int = 1, dtype=None) -> CxrDenseNetBackbone:
    """DenseNet-121 feature extractor ``[S, S, C] -> [S/32, S/32, 1024]`` (no rescaling inside)."""
    repeats, growth, stem = DENSENET121
    return CxrDenseNetBackbone(repeats, growth, stem, image_shape=(image_size, image_size, channels),
                               dtype=dtype, name="densenet121")


def densenet_tiny(image_size: Optional[int], channels: int = 1, dtype=None) -> CxrDenseNetBackbone:
    """A tiny DenseNet (blocks 2-2-2-2, growth 8, 16 stem filters) for tests and smoke runs."""
    repeats, growth, stem = DENSENET_TINY
    return CxrDenseNetBackbone(repeats, growth, stem, image_shape=(image_size, image_size, channels),
                               dtype=dtype, name="densenet_tiny")
