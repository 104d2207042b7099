"""Backbone factories: ``build_backbone(name, image_size, channels, precision)`` -> keras-hub Backbone.

Each backbone maps ``[S, S, C]`` images (already scaled, see :mod:`cxr_tfp.weights`) to its last
spatial feature map ``[h, w, K]`` (the block Grad-CAM reads). All are ``keras_hub.models.Backbone``
subclasses (keras-hub is where Keras' pretrained vision models are maintained), so they save to and
load from keras-hub presets. Pretrained weights are applied by :func:`cxr_tfp.weights.apply_weights`.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict

# name -> "module:function"; the one list of backbones (config choices come from it).
_FACTORIES: Dict[str, str] = {
    "densenet121": "cxr_tfp.model.backbones.densenet:densenet121",
    "resnet50": "cxr_tfp.model.backbones.resnet:resnet50",
    "tiny": "cxr_tfp.model.backbones.tiny:tiny_cnn",
    "densenet_tiny": "cxr_tfp.model.backbones.densenet:densenet_tiny",
}
BACKBONE_NAMES = tuple(_FACTORIES)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _factory(name: str) -> Callable:
    import importlib

    if name not in _FACTORIES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    module, fn = _FACTORIES[name].split(":")
    return getattr(importlib.import_module(module), fn)


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Build layers under Keras policy ``precision`` (keras-hub's blocks take the global policy)."""
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    saved = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(saved)


def build_backbone(name: str, image_size: int, channels: int = 1, precision: str = "float32"):
    """Build backbone ``name`` (randomly initialised) for ``[image_size, image_size, channels]`` input.

    ``precision`` is the Keras dtype policy of the backbone's layers (variables stay float32 under
    the mixed policies); the head of the model is built in float32 regardless.
    """
    fn = _factory(name)
    with dtype_policy(precision):
        return fn(image_size, channels)
