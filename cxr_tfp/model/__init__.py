"""Keras 3 CXR classifier with a TFP latent-variable head (see ``cxr_model`` and ``latent_head``).

Public API: :func:`build_model`, :func:`load_model`, :class:`CxrModel`; Grad-CAM in
``cxr_tfp.model.saliency``.
"""
from cxr_tfp.model.cxr_model import CxrModel, build_model, load_model  # noqa: F401
