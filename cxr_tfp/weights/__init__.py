"""Where a backbone's starting weights come from: the one place that reads ``--weights``.

``weights`` (config key, ``--weights`` flag, TFX Trainer custom config) accepts:

- ``imagenet``: the keras-hub ImageNet preset of the chosen backbone (``densenet_121_imagenet``,
  ``resnet_50_imagenet``), downloaded through keras-hub / kagglehub (cached afterwards). Where the
  hub cannot be reached the run stops within seconds with one line saying how to pass a local copy.
- a local keras-hub preset directory (what ``Backbone.save_to_preset`` writes, e.g. a downloaded
  ``densenet_121_imagenet``);
- a ``.weights.h5`` file saved from the exact backbone (``backbone.save_weights``);
- ``torchxrayvision:FILE``: a torchxrayvision DenseNet checkpoint (whole pickled model or state
  dict, zip or legacy torch format), converted without torch (:mod:`cxr_tfp.weights.torchxrayvision`).

Weights with a different number of input channels are adapted at the stem: 3-channel (RGB)
kernels are summed over their input channels for grey input (a 1-channel image then gives exactly
the features of that image replicated to RGB), 1-channel kernels are spread as k/3 for RGB input.

Each source expects its own input scale; :class:`WeightsInfo` carries it as ``(scale, offset)`` for
a ``Rescaling`` layer applied to images in [0, 1], which the model saves with itself.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

# (scale, offset) on [0, 1] images.
DEFAULT_SCALING = (4.0, -2.0)   # (x - 0.5) / 0.25: rough CXR statistics, for training from scratch
# ImageNet mean/std averaged over RGB (0.449, 0.226): grey input through the channel-summed stem.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_SCALING = (1.0 / float(np.mean(IMAGENET_STD)), -float(np.mean(IMAGENET_MEAN)) / float(np.mean(IMAGENET_STD)))
TXRV_SCALING = (2048.0, -1024.0)  # torchxrayvision's [-1024, 1024]

IMAGENET_PRESETS = {"densenet121": "densenet_121_imagenet", "resnet50": "resnet_50_imagenet"}
TXRV_PREFIX = "torchxrayvision:"
HUB_TIMEOUT_S = 5.0


class WeightsError(ValueError):
    """The weights cannot be found, fetched or applied; the message is one line for the user."""


@dataclasses.dataclass
class WeightsInfo:
    """What a backbone started from (recorded in the config, metrics.json and the export)."""

    kind: str                        # imagenet | preset | weights_h5 | torchxrayvision
    source: str                      # the spec as given
    input_scale: float
    input_offset: float
    sha256: Optional[str] = None     # of the file (checkpoints / .weights.h5)
    extras: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def record(self) -> Dict[str, Any]:
        """JSON-safe summary (no arrays)."""
        out = {"kind": self.kind, "source": self.source, "input_scale": self.input_scale,
               "input_offset": self.input_offset}
        if self.sha256:
            out["sha256"] = self.sha256
        for k, v in self.extras.items():
            if isinstance(v, (str, int, float, bool, list)) or v is None:
                out[k] = v
        return out


def weights_kind(spec: str) -> str:
    """Classify a weights spec without touching the network (config validation uses it)."""
    if spec == "imagenet":
        return "imagenet"
    if spec.startswith(TXRV_PREFIX):
        return "torchxrayvision"
    if os.path.isdir(spec):
        return "preset"
    if spec.endswith(".weights.h5"):
        return "weights_h5"
    raise WeightsError(f"weights={spec!r}: expected 'imagenet', a keras-hub preset directory, a "
                       f".weights.h5 file or torchxrayvision:FILE")


def check_weights_spec(spec: Optional[str]) -> None:
    """Fail early (before any data is read) when a local weights file or folder is missing or wrong."""
    if not spec or spec == "imagenet":
        return
    if spec.startswith(TXRV_PREFIX):
        path = spec[len(TXRV_PREFIX):]
        if not os.path.isfile(path):
            raise WeightsError(f"weights: torchxrayvision checkpoint not found: {path}"
                               + (" (a folder)" if os.path.isdir(path) else ""))
        # Read it now (numpy only, bounded: cxr_tfp.weights.torch_file) so a bad file is named before
        # any data is read or a model is built.
        from cxr_tfp.weights.torchxrayvision import read_txrv
        from cxr_tfp.weights.torch_file import CheckpointFormatError

        try:
            read_txrv(path)
        except (FileNotFoundError, CheckpointFormatError) as exc:
            raise WeightsError(f"weights: {exc}") from None
    elif os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise WeightsError(f"weights: {spec} has no config.json (not a keras-hub preset folder)")
    elif spec.endswith(".weights.h5"):
        if not os.path.isfile(spec):
            raise WeightsError(f"weights: file not found: {spec}")
    else:
        weights_kind(spec)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------ weight transfer
def adapt_kernel(kernel: np.ndarray, in_channels: int, what: str) -> np.ndarray:
    """A conv kernel ``[kh, kw, c, out]`` for ``in_channels`` inputs (sum RGB -> grey; k/3 grey -> RGB)."""
    c = kernel.shape[2]
    if c == in_channels:
        return kernel
    if c == 3 and in_channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    if c == 1 and in_channels == 3:
        return np.repeat(kernel / 3.0, 3, axis=2)
    raise WeightsError(f"{what}: stem takes {c} channels, the model {in_channels}")


def transfer_weights(src, dst, what: str) -> int:
    """Copy weights layer by layer (matched by name) from keras model ``src`` into ``dst``.

    Every ``dst`` layer with weights must exist in ``src`` with the same shapes, except the stem
    convolution's input channels (adapted by :func:`adapt_kernel`). Returns the layers copied.
    """
    src_layers = {layer.name: layer for layer in src.layers}
    copied = 0
    for layer in dst.layers:
        if not layer.weights:
            continue
        if layer.name not in src_layers:
            raise WeightsError(f"{what}: has no layer {layer.name!r} (is it a {dst.name} preset?)")
        values = [np.asarray(v) for v in src_layers[layer.name].get_weights()]
        targets = layer.get_weights()
        if len(values) != len(targets):
            raise WeightsError(f"{what}: layer {layer.name!r} holds {len(values)} arrays, expected {len(targets)}")
        for i, (v, t) in enumerate(zip(values, targets)):
            if v.shape != t.shape and v.ndim == 4 and v.shape[:2] + v.shape[3:] == t.shape[:2] + t.shape[3:]:
                values[i] = adapt_kernel(v, t.shape[2], f"{what}: layer {layer.name!r}")
            elif v.shape != t.shape:
                raise WeightsError(f"{what}: layer {layer.name!r} has shape {v.shape}, the backbone "
                                   f"{dst.name} needs {t.shape}")
        layer.set_weights(values)
        copied += 1
    return copied


# ------------------------------------------------------------------------------ sources
def _hub_endpoint() -> str:
    """The URL kagglehub downloads presets from (kagglesdk's own choice, incl. its environment)."""
    from kagglesdk.kaggle_env import get_endpoint, get_env

    return get_endpoint(get_env())


def _cached_preset(handle: str) -> Optional[str]:
    """Local folder of a keras-hub preset that kagglehub already downloaded, or None."""
    import keras_hub  # noqa: F401  (registers the preset tables)
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle
    from keras_hub.src.utils.preset_utils import builtin_presets

    try:
        from keras_hub.src.models.backbone import Backbone

        url = builtin_presets(Backbone)[handle]["kaggle_handle"]
        h = parse_model_handle(url.removeprefix("kaggle://"))
        return Cache().load_from_cache(h)
    except Exception:  # noqa: BLE001  (any cache layout surprise: fall back to downloading)
        return None


def hub_reachable(timeout_s: float = HUB_TIMEOUT_S) -> Tuple[bool, str]:
    """``(reachable, detail)``: a TCP connection to the hub within ``timeout_s`` (name lookup included).

    Why: without a network kagglehub retries and a blackholed route hangs; a bounded probe turns
    that into a prompt, clear error.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(_hub_endpoint())
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result: Dict[str, Any] = {}

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result["ok"] = True
        except OSError as exc:
            result["err"] = exc.strerror or type(exc).__name__

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    if result.get("ok"):
        return True, f"{host}:{port}"
    return False, f"{host}:{port} ({result.get('err', f'no answer within {timeout_s:.0f} s')})"


def _load_hub_backbone(preset: str, what: str):
    import keras_hub

    import cxr_tfp.model.backbones.densenet  # noqa: F401  (registers cxr_tfp's backbone classes)
    import cxr_tfp.model.backbones.tiny  # noqa: F401

    try:
        return keras_hub.models.Backbone.from_preset(preset)
    except Exception as exc:  # noqa: BLE001  (keras-hub raises many types; one line for the user)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{what}: cannot load the keras-hub preset: {msg}") from None


def _preset_scaling(preset_dir: str) -> Optional[Tuple[float, float]]:
    """``(scale, offset)`` on [0, 1] from a preset's ``image_converter.json`` (keras-hub converters
    take [0, 255] pixels; per-channel values are averaged for grey input), or None."""
    import json

    path = os.path.join(preset_dir, "image_converter.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        cfg = json.load(fh).get("config", {})
    scale, offset = cfg.get("scale"), cfg.get("offset")
    if scale is None:
        return None
    s = float(np.mean(np.asarray(scale, np.float64)))
    o = float(np.mean(np.asarray(offset, np.float64))) if offset is not None else 0.0
    return s * 255.0, o


def apply_weights(backbone, backbone_name: str, spec: str) -> WeightsInfo:
    """Load ``spec`` (see module doc) into ``backbone`` (a freshly built one); return what it was."""
    kind = weights_kind(spec)
    in_channels = int(backbone.input_shape[-1])
    if kind == "imagenet":
        if backbone_name not in IMAGENET_PRESETS:
            raise WeightsError(f"weights=imagenet: no ImageNet preset for backbone {backbone_name!r} "
                               f"(available for {', '.join(IMAGENET_PRESETS)})")
        handle = IMAGENET_PRESETS[backbone_name]
        what = f"weights=imagenet ({handle})"
        if _cached_preset(handle) is None:
            ok, detail = hub_reachable()
            if not ok:
                raise WeightsError(
                    f"{what}: the model hub is not reachable ({detail}); download the preset on a "
                    f"connected machine (keras_hub.models.Backbone.from_preset('{handle}')"
                    f".save_to_preset('{handle}')) and pass the folder: --weights /path/to/{handle}")
        src = _load_hub_backbone(handle, what)
        transfer_weights(src, backbone, what)
        return WeightsInfo("imagenet", spec, *IMAGENET_SCALING, extras={"preset": handle})
    if kind == "preset":
        what = f"weights={spec} (keras-hub preset)"
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise WeightsError(f"{what}: folder has no config.json (not a keras-hub preset)")
        src = _load_hub_backbone(spec, what)
        transfer_weights(src, backbone, what)
        scaling = _preset_scaling(spec) or DEFAULT_SCALING
        return WeightsInfo("preset", spec, *scaling, extras={"preset_class": type(src).__name__})
    if kind == "weights_h5":
        if not os.path.isfile(spec):
            raise WeightsError(f"weights: file not found: {spec}")
        try:
            backbone.load_weights(spec)
        except Exception as exc:  # noqa: BLE001  (shape mismatches are the usual cause: name the file)
            raise WeightsError(f"cannot load backbone weights from {spec} into {backbone_name} "
                               f"({in_channels} channels): {str(exc).splitlines()[0] if str(exc) else exc}") from None
        return WeightsInfo("weights_h5", spec, *DEFAULT_SCALING, sha256=_sha256(spec))
    # torchxrayvision
    from cxr_tfp.weights.torchxrayvision import load_txrv_into

    path = spec[len(TXRV_PREFIX):]
    ckpt = load_txrv_into(backbone, path)
    return WeightsInfo("torchxrayvision", spec, *TXRV_SCALING, sha256=_sha256(path),
                       extras={"pathologies": list(ckpt.pathologies),
                               "has_op_threshs": ckpt.op_threshs is not None})
