"""ResNet-50 (v1) from keras-hub (its stem already pads explicitly, like torch)."""
from __future__ import annotations

from typing import Optional


def resnet50(image_size: Optional[int], channels: int = 1, dtype=None):
    """ResNet-50 feature extractor ``[S, S, C] -> [S/32, S/32, 2048]`` (keras-hub ``ResNetBackbone``)."""
    import keras_hub

    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block", use_pre_activation=False,
        image_shape=(image_size, image_size, channels), dtype=dtype, name="resnet50")
