"""ResNet-50 (v1; keras-cv's ResNetV2Backbone is broken under Keras 3.15)."""
from __future__ import annotations


def resnet50(image_size: int, channels: int = 1):
    """ResNet-50 feature extractor ``[S, S, C] -> [S/32, S/32, 2048]``."""
    import keras_cv

    return keras_cv.models.ResNetBackbone(
        stackwise_filters=[64, 128, 256, 512], stackwise_blocks=[3, 4, 6, 3],
        stackwise_strides=[1, 2, 2, 2], include_rescaling=False,
        input_shape=(image_size, image_size, channels), name="resnet50")
