"""Backbone factories: ``build_backbone(name, image_size, channels, weights)`` -> functional keras.Model.

Each backbone maps ``[S, S, C]`` images to its last spatial feature map ``[h, w, K]`` (the block
Grad-CAM reads). keras-cv backbones are built from explicit architecture arguments (presets need a
hub, which is unreachable); weights load from a local file only.
"""
from __future__ import annotations

import os
from typing import Optional


def build_backbone(name: str, image_size: int, channels: int = 1, weights: Optional[str] = None):
    """Build backbone ``name`` (densenet121, resnet50, tiny); load ``weights`` from a local file."""
    if name == "densenet121":
        from cxr_tfp.model.backbones.densenet import densenet121 as fn
    elif name == "resnet50":
        from cxr_tfp.model.backbones.resnet import resnet50 as fn
    elif name == "tiny":
        from cxr_tfp.model.backbones.tiny import tiny_cnn as fn
    else:
        raise ValueError(f"unknown backbone {name!r}; choose densenet121, resnet50 or tiny")
    model = fn(image_size, channels)
    if weights:
        if not os.path.exists(weights):
            raise FileNotFoundError(f"backbone weights file not found: {weights}")
        try:
            model.load_weights(weights)
        except Exception as exc:  # name the file: shape mismatches are the usual cause
            raise ValueError(f"cannot load backbone weights from {weights} into {name} "
                             f"({image_size}px, {channels} channels): {exc}") from exc
    return model
