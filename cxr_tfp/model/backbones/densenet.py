"""DenseNet-121 (Huang et al. 2017), the CheXNet backbone, from keras-cv's base class."""
from __future__ import annotations


def densenet121(image_size: int, channels: int = 1):
    """DenseNet-121 feature extractor ``[S, S, C] -> [S/32, S/32, 1024]`` (no rescaling inside)."""
    import keras_cv

    return keras_cv.models.DenseNetBackbone(
        stackwise_num_repeats=[6, 12, 24, 16], include_rescaling=False,
        input_shape=(image_size, image_size, channels), name="densenet121")
