"""Three lines from a trained model to a table of findings, for people who work in Python::

    import cxr_tfp
    model = cxr_tfp.load("runs/a/model.keras")          # or an exported SavedModel folder
    table = model.predict(["a.png", "b.dcm"])           # pandas DataFrame, one row per image

Columns are a two-level index ``(finding, field)`` with fields ``probability`` (mean over latent
samples), ``uncertainty`` (their standard deviation), ``decision`` (the raw comparison: probability
>= the model's saved operating threshold), ``call`` (``above`` / ``below``, or ``uncertain`` when
``|probability - threshold| < uncertainty``: :func:`cxr_tfp.metrics.decide`) and ``threshold_from``
(how that threshold was set: ``chosen`` on n positives, ``fallback`` when the split it was chosen on
had no positives so 0.5 stands in, ``fixed`` or ``unknown``). ``table.attrs`` holds the thresholds
and their provenance. Inputs may be file paths (PNG, JPEG or DICOM: read by the same code as
the client and the ingestion, decoded by the same TF ops as training), encoded bytes, or numpy
arrays (uint8, or float in [0, 1]; 2-D or H x W x 1). A bad input raises ``ValueError`` naming it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from cxr_tfp import features as F
from cxr_tfp import model_dir as MD

InputItem = Union[str, os.PathLike, bytes, np.ndarray]
FIELDS = ("probability", "uncertainty", "decision", "call", "threshold_from")


class InputCheckError(ValueError):
    """An input to :meth:`Predictor.predict` is not a usable image; the message names it."""


def _check_array(arr: np.ndarray, name: str) -> np.ndarray:
    """float32 ``[H, W, 1]`` in [0, 1] from a uint8 or [0, 1] float array, 2-D or H x W x 1."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputCheckError(f"{name}: array of shape {arr.shape}; expected a grey image, 2-D or H x W x 1")
    if min(arr.shape) < 2:
        raise InputCheckError(f"{name}: array of shape {arr.shape} is too small to be an image")
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) / 255.0)[..., None]
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputCheckError(f"{name}: float array holds NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InputCheckError(f"{name}: float array with values in [{lo:g}, {hi:g}]; expected [0, 1] "
                                  f"(or pass uint8)")
        return arr.astype(np.float32)[..., None]
    raise InputCheckError(f"{name}: array of dtype {arr.dtype}; expected uint8, or float in [0, 1]")


def _encoded(data: bytes, name: str) -> bytes:
    """PNG/JPEG bytes as they are, a DICOM as the PNG the ingestion would store; checked by decoding."""
    from cxr_tfp import io as cxr_io

    if not data:
        raise InputCheckError(f"{name}: empty")
    try:
        decoded = cxr_io.decode_image(data)
    except cxr_io.InputError as exc:
        raise InputCheckError(f"{name}: {exc}") from None
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        return data
    return F.encode_png(decoded.pixels)


def normalise_inputs(inputs: Union[InputItem, Sequence[InputItem]]) -> Tuple[List[str], List[Any]]:
    """``(names, items)``: each item encoded bytes (PNG/JPEG) or a float32 ``[H, W, 1]`` array."""
    if isinstance(inputs, (str, os.PathLike, bytes, np.ndarray)):
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            inputs = list(inputs)                                  # a batch [B, H, W, 1]
        else:
            inputs = [inputs]
    names, items = [], []
    for i, item in enumerate(inputs):
        if isinstance(item, (str, os.PathLike)):
            name = str(item)
            p = Path(item)
            if not p.is_file():
                raise InputCheckError(f"{name}: no such file")
            items.append(_encoded(p.read_bytes(), name))
        elif isinstance(item, (bytes, bytearray)):
            name = f"bytes[{i}]"
            items.append(_encoded(bytes(item), name))
        elif isinstance(item, np.ndarray):
            name = f"array[{i}]"
            items.append(_check_array(item, name))
        else:
            raise InputCheckError(f"input[{i}]: {type(item).__name__} is not a file path, bytes or a numpy array")
        names.append(name)
    return names, items


class Predictor:
    """A loaded ``.keras`` model or SavedModel; :meth:`predict` returns a DataFrame (module doc)."""

    def __init__(self, path: str):
        p = Path(path)
        self.path = str(path)
        if p.is_dir() and (p / "model.keras").is_file() and not MD.is_saved_model(p):
            p = p / "model.keras"                                  # a training output folder
        if p.is_file() and p.suffix == ".keras":
            from cxr_tfp.model import load_model

            self.kind = "keras"
            self._model = load_model(str(p))
            self.findings = tuple(self._model.findings)
            self.thresholds = {f: float(self._model.thresholds.get(f, 0.5)) for f in self.findings}
            self.image_size = int(self._model.image_size)
            self.weights_source = self._model.weights_source
        elif p.is_dir() and MD.is_saved_model(p):
            import json

            import tensorflow as tf

            from cxr_tfp.model_dir import WEIGHTS_ASSET, read_labels, read_thresholds

            self.kind = "saved_model"
            self._loaded = tf.saved_model.load(str(p))
            if MD.IMAGE_SIGNATURE not in self._loaded.signatures:
                raise ValueError(f"{path}: SavedModel has no {MD.IMAGE_SIGNATURE!r} signature")
            self._fn = self._loaded.signatures[MD.IMAGE_SIGNATURE]
            self.findings = read_labels(str(p))
            thr = read_thresholds(str(p))
            self.thresholds = {f: float(thr.get(f, 0.5)) for f in self.findings}
            self.image_size = None
            wpath = p / MD.ASSETS_DIR / WEIGHTS_ASSET
            self.weights_source = json.loads(wpath.read_text()) if wpath.is_file() else None
        else:
            raise FileNotFoundError(f"{path}: neither a .keras file nor a SavedModel folder (saved_model.pb)")

    def _run_keras(self, items: List[Any]) -> Tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        from cxr_tfp.preprocess import decode_image_tensor as decode_image

        s = self.image_size
        images = []
        for item in items:
            if isinstance(item, bytes):
                images.append(decode_image(tf.constant(item), s).numpy())
            else:   # the same resize as decode_image, on the [0, 1] array
                img = tf.image.resize(tf.constant(item), [s, s], method="bilinear", antialias=True)
                images.append(tf.clip_by_value(img, 0.0, 1.0).numpy())
        out = self._model.predict_with_uncertainty(np.stack(images))
        return np.asarray(out[MD.PROBABILITIES]), np.asarray(out[MD.UNCERTAINTY])

    def _run_saved_model(self, items: List[Any]) -> Tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        # A SavedModel takes encoded bytes: arrays go in as 8-bit PNG (float inputs are quantised).
        enc = [it if isinstance(it, bytes) else F.encode_png(np.round(it[..., 0] * 255.0).astype(np.uint8))
               for it in items]
        out = self._fn(**{MD.IMAGES_INPUT: tf.constant(enc)})
        return out[MD.PROBABILITIES].numpy(), out[MD.UNCERTAINTY].numpy()

    def predict(self, inputs: Union[InputItem, Sequence[InputItem]], batch_size: int = 16):
        """A pandas DataFrame, one row per input (index: the path, or ``bytes[i]`` / ``array[i]``)."""
        import pandas as pd

        names, items = normalise_inputs(inputs)
        run = self._run_keras if self.kind == "keras" else self._run_saved_model
        probs, stds = [], []
        for i in range(0, len(items), batch_size):
            p, s = run(items[i:i + batch_size])
            probs.append(p)
            stds.append(s)
        L = len(self.findings)
        prob = np.concatenate(probs) if probs else np.zeros((0, L), np.float32)
        std = np.concatenate(stds) if stds else np.zeros((0, L), np.float32)
        thr = np.asarray([self.thresholds[f] for f in self.findings], np.float32)
        from cxr_tfp.metrics import SOURCE_UNKNOWN, decide

        provenance = self.threshold_provenance()
        data: Dict[Tuple[str, str], Any] = {}
        for j, f in enumerate(self.findings):
            data[(f, "probability")] = prob[:, j].astype(float)
            data[(f, "uncertainty")] = std[:, j].astype(float)
            data[(f, "decision")] = prob[:, j] >= thr[j]
            data[(f, "call")] = np.asarray(decide(prob[:, j], std[:, j], thr[j]), dtype=object)
            data[(f, "threshold_from")] = [str(provenance.get(f, {}).get("source", SOURCE_UNKNOWN))] * len(names)
        df = pd.DataFrame(data, index=pd.Index(names, name="input"))
        df.columns = pd.MultiIndex.from_tuples(df.columns, names=["finding", "field"])
        df.attrs["thresholds"] = dict(self.thresholds)
        df.attrs["threshold_provenance"] = provenance
        df.attrs["model"] = self.path
        return df

    def threshold_provenance(self) -> Dict[str, Dict[str, Any]]:
        """How each operating threshold was set (``{}`` for a model saved before this was recorded)."""
        if self.kind == "keras":
            return {f: dict(v) for f, v in (getattr(self._model, "threshold_provenance", {}) or {}).items()}
        p = Path(self.path)
        return MD.read_threshold_provenance(p) if MD.is_saved_model(p) else {}

    def __repr__(self) -> str:
        return f"Predictor({self.path!r}, {self.kind}, {len(self.findings)} findings)"


def load(path: Union[str, os.PathLike]) -> Predictor:
    """Load a ``.keras`` model, a training output folder or an exported SavedModel for prediction."""
    return Predictor(str(path))
