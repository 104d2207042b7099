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
arrays (uint8, uint16 by the 16-bit rule of the ingestion, or float in [0, 1]; 2-D or H x W x 1).

Untrusted inputs are checked before they cost memory: a file's type and size are looked at before
it is read (a folder, a symbolic-link loop, a broken link, a file larger than any image within the
pixel limit, or one whose first bytes are not a PNG, JPEG or DICOM header is refused without reading
it), and arrays get the same pixel limit as files (``$CXR_TFP_MAX_PIXELS``, ``max_pixels=``).

Bad inputs do not cost the good ones (``errors="row"``, the default): the table keeps one row per
input, in order; a bad row has NaN probabilities and uncertainties, no decision, and its reason in
the ``error`` column (``table["error"]``: ``None`` for good rows; ``table[table["error"].isna()]``
keeps the good ones); ``table.attrs["errors"]`` maps each bad input to its reason, and a warning
says how many failed. ``errors="raise"`` raises :class:`InputCheckError` at the first bad input
instead. Every reason names its input: the path, ``bytes[i]`` or ``array[i]``.
"""
from __future__ import annotations

import errno
import os
import stat
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from cxr_tfp import features as F
from cxr_tfp import model_dir as MD

InputItem = Union[str, os.PathLike, bytes, np.ndarray]
FIELDS = ("probability", "uncertainty", "decision", "call", "threshold_from")
ERROR_COLUMN = "error"
HEAD_BYTES = 64 * 1024          # read first: type and pixel count come from the header
HEADER_ALLOWANCE = 16 << 20     # a DICOM's header and tags beyond its pixel data


class InputCheckError(ValueError):
    """An input to :meth:`Predictor.predict` is not a usable image; the message names it."""


def max_file_bytes(max_pixels: Optional[int] = None) -> int:
    """The largest file an image within the pixel limit can be: 4 bytes a pixel (16-bit DICOM, RGBA
    PNG stored uncompressed) plus :data:`HEADER_ALLOWANCE`. Larger files are refused unread."""
    from cxr_tfp.io.limits import max_pixels_default

    limit = max_pixels_default() if max_pixels is None else int(max_pixels)
    return 4 * limit + HEADER_ALLOWANCE


def _check_array(arr: np.ndarray, name: str, max_pixels: Optional[int] = None) -> np.ndarray:
    """float32 ``[H, W, 1]`` in [0, 1] from a uint8, uint16 or [0, 1] float array, 2-D or H x W x 1,
    within the pixel limit files get (checked on the shape, before any conversion)."""
    from cxr_tfp.io.limits import TooLargeError, check_pixels

    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputCheckError(f"{name}: array of shape {arr.shape}; expected a grey image, 2-D or H x W x 1")
    if min(arr.shape) < 2:
        raise InputCheckError(f"{name}: array of shape {arr.shape} is too small to be an image")
    try:
        check_pixels(arr.shape[1], arr.shape[0], max_pixels)
    except TooLargeError as exc:
        raise InputCheckError(f"{name}: {str(exc).replace('; rejected before decoding', '; refused before conversion')}") from None
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) / 255.0)[..., None]
    if arr.dtype == np.uint16:   # the ingestion's 16-bit rule: own min..max to 0..255, 8-bit
        from cxr_tfp.io.images import stretch_to_uint8

        return (stretch_to_uint8(arr).astype(np.float32) / 255.0)[..., None]
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputCheckError(f"{name}: float array holds NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InputCheckError(f"{name}: float array with values in [{lo:g}, {hi:g}]; expected [0, 1] "
                                  f"(or pass uint8)")
        return arr.astype(np.float32)[..., None]
    raise InputCheckError(f"{name}: array of dtype {arr.dtype}; expected uint8, uint16, or float in [0, 1]")


def _check_header(head: bytes, name: str, max_pixels: Optional[int]) -> None:
    """Refuse from the first bytes alone: unknown type, or a PNG/JPEG header above the pixel limit
    (a DICOM's Rows x Columns are checked by its decoder before the pixel data)."""
    from cxr_tfp.io.images import is_dicom
    from cxr_tfp.io.limits import TooLargeError, check_pixels, jpeg_size, png_size, raster_size

    if not head:
        raise InputCheckError(f"{name}: empty")
    if is_dicom(head):
        return
    size = png_size(head) or jpeg_size(head)
    if size is None and not (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff")):
        try:
            size = raster_size(head)      # another format Pillow knows (header only)
        except ValueError:
            raise InputCheckError(f"{name}: not a PNG, JPEG or DICOM file (from its first bytes; the rest "
                                  f"was not read)") from None
    if size is not None:
        try:
            check_pixels(size[0], size[1], max_pixels)
        except TooLargeError as exc:
            raise InputCheckError(f"{name}: {exc}") from None


def _read_file(item: Union[str, os.PathLike], name: str, max_pixels: Optional[int]) -> bytes:
    """A file's bytes, after its type, size and header were checked (module doc)."""
    try:
        st = os.stat(item)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputCheckError(f"{name}: symbolic link loop (the link leads back to itself)") from None
        if exc.errno == errno.ENOENT:
            broken = os.path.islink(item)
            raise InputCheckError(f"{name}: {'broken symbolic link (its target does not exist)' if broken else 'no such file'}") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise InputCheckError(f"{name}: permission denied") from None
        raise InputCheckError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputCheckError(f"{name}: is a folder, not an image file (pass its files, e.g. "
                              f"sorted(Path(folder).glob('*.png')))")
    if not stat.S_ISREG(st.st_mode):
        raise InputCheckError(f"{name}: not a regular file")
    limit = max_file_bytes(max_pixels)
    if st.st_size > limit:
        raise InputCheckError(f"{name}: {st.st_size:,} bytes, larger than any image within the pixel limit "
                              f"can be ({limit:,} bytes); not read")
    try:
        with open(item, "rb") as fh:
            head = fh.read(HEAD_BYTES)
            _check_header(head, name, max_pixels)
            return head + fh.read(limit + 1 - len(head))
    except PermissionError:
        raise InputCheckError(f"{name}: permission denied") from None
    except OSError as exc:
        raise InputCheckError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _encoded(data: bytes, name: str, max_pixels: Optional[int] = None) -> bytes:
    """PNG/JPEG bytes as they are, a DICOM as the PNG the ingestion would store; checked by decoding."""
    from cxr_tfp import io as cxr_io

    _check_header(bytes(data[:HEAD_BYTES]), name, max_pixels)
    try:
        decoded = cxr_io.decode_image(data, max_pixels=max_pixels)
    except cxr_io.InputError as exc:
        raise InputCheckError(f"{name}: {exc}") from None
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        return data
    return F.encode_png(decoded.pixels)


def _as_list(inputs) -> List[Any]:
    if isinstance(inputs, (str, os.PathLike, bytes, bytearray, np.ndarray)):
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            return list(inputs)                                    # a batch [B, H, W, 1]
        return [inputs]
    return list(inputs)


def _check_one(i: int, item: Any, max_pixels: Optional[int]) -> Tuple[str, Any]:
    if isinstance(item, (str, os.PathLike)):
        name = str(item)
        return name, _encoded(_read_file(item, name, max_pixels), name, max_pixels)
    if isinstance(item, (bytes, bytearray)):
        name = f"bytes[{i}]"
        return name, _encoded(bytes(item), name, max_pixels)
    if isinstance(item, np.ndarray):
        name = f"array[{i}]"
        return name, _check_array(item, name, max_pixels)
    raise InputCheckError(f"input[{i}]: {type(item).__name__} is not a file path, bytes or a numpy array")


def _name_of(i: int, item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, (bytes, bytearray)):
        return f"bytes[{i}]"
    if isinstance(item, np.ndarray):
        return f"array[{i}]"
    return f"input[{i}]"


def check_inputs(inputs: Union[InputItem, Sequence[InputItem]], max_pixels: Optional[int] = None
                 ) -> Tuple[List[str], List[Any], Dict[int, str]]:
    """``(names, items, errors)``: each good item encoded bytes (PNG/JPEG) or a float32 ``[H, W, 1]``
    array; a bad one ``None``, with its one-line reason (naming it) in ``errors[index]``."""
    names, items, errors = [], [], {}
    for i, item in enumerate(_as_list(inputs)):
        try:
            name, checked = _check_one(i, item, max_pixels)
        except InputCheckError as exc:
            name, checked = _name_of(i, item), None
            errors[i] = str(exc)
        names.append(name)
        items.append(checked)
    return names, items, errors


def normalise_inputs(inputs: Union[InputItem, Sequence[InputItem]],
                     max_pixels: Optional[int] = None) -> Tuple[List[str], List[Any]]:
    """``(names, items)`` as :func:`check_inputs`, raising :class:`InputCheckError` at the first bad input."""
    names, items = [], []
    for i, item in enumerate(_as_list(inputs)):
        name, checked = _check_one(i, item, max_pixels)
        names.append(name)
        items.append(checked)
    return names, items


def _tf_reason(exc: BaseException) -> str:
    """The model's own reason from a TF error (the signature's assertion text), without graph noise."""
    import re

    text = getattr(exc, "message", None) or str(exc)
    m = re.search(r"assertion failed: \[([^\]]+)\]", text)
    if m:
        return m.group(1).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "stack traces unavailable" not in ln]
    for ln in lines:
        if ln.startswith(("image:", "examples:")) or "Invalid PNG" in ln or "Invalid JPEG" in ln:
            return ln.split(" [[", 1)[0].strip()
    useful = [ln for ln in lines if not ln.startswith(("Graph execution error", "Detected at node", "[["))]
    return (useful[0] if useful else type(exc).__name__)[:200]


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

    def _run_rows(self, items: List[Any], names: List[str], errors: Dict[int, str], offset: int):
        """Run a batch; when the model refuses it (TF error), run its rows one by one so only the bad
        row is lost, and record that row's reason (naming it) in ``errors``."""
        import tensorflow as tf

        run = self._run_keras if self.kind == "keras" else self._run_saved_model
        L = len(self.findings)
        try:
            return run(items)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
            if len(items) == 1:
                errors[offset] = f"{names[offset]}: {_tf_reason(exc)}"
                return np.full((1, L), np.nan, np.float32), np.full((1, L), np.nan, np.float32)
        parts = [self._run_rows([it], names, errors, offset + k) for k, it in enumerate(items)]
        return np.concatenate([p for p, _ in parts]), np.concatenate([s for _, s in parts])

    def predict(self, inputs: Union[InputItem, Sequence[InputItem]], batch_size: int = 16,
                errors: str = "row", max_pixels: Optional[int] = None):
        """A pandas DataFrame, one row per input (index: the path, or ``bytes[i]`` / ``array[i]``).

        ``errors="row"`` (default): a bad input gets a row with NaN values and its reason in the
        ``error`` column, the others their results (module doc); ``errors="raise"``: raise
        :class:`InputCheckError` at the first bad input. ``max_pixels`` overrides the pixel limit.
        """
        import pandas as pd

        if errors not in ("row", "raise"):
            raise ValueError(f"errors={errors!r}: expected 'row' or 'raise'")
        if errors == "raise":
            names, items = normalise_inputs(inputs, max_pixels)
            bad: Dict[int, str] = {}
        else:
            names, items, bad = check_inputs(inputs, max_pixels)
        L = len(self.findings)
        prob = np.full((len(items), L), np.nan, np.float32)
        std = np.full((len(items), L), np.nan, np.float32)
        good = [i for i, it in enumerate(items) if it is not None]
        for start in range(0, len(good), batch_size):
            rows = good[start:start + batch_size]
            run_errors: Dict[int, str] = {}
            p, s = self._run_rows([items[i] for i in rows], [names[i] for i in rows], run_errors, 0)
            prob[rows], std[rows] = p, s
            for k, reason in run_errors.items():
                if errors == "raise":
                    raise InputCheckError(reason)
                bad[rows[k]] = reason
        thr = np.asarray([self.thresholds[f] for f in self.findings], np.float32)
        from cxr_tfp.metrics import SOURCE_UNKNOWN, decide

        provenance = self.threshold_provenance()
        ok = np.ones(len(items), bool)
        ok[list(bad)] = False
        data: Dict[Tuple[str, str], Any] = {}
        for j, f in enumerate(self.findings):
            data[(f, "probability")] = prob[:, j].astype(float)
            data[(f, "uncertainty")] = std[:, j].astype(float)
            decision = pd.array(prob[:, j] >= thr[j], dtype="boolean")
            decision[~ok] = pd.NA
            data[(f, "decision")] = decision if bad else np.asarray(prob[:, j] >= thr[j])
            call = np.asarray(decide(prob[:, j], std[:, j], thr[j]), dtype=object)
            call[~ok] = None  # a row that could not be read gets no call, as it gets no decision
            data[(f, "call")] = call
            data[(f, "threshold_from")] = [str(provenance.get(f, {}).get("source", SOURCE_UNKNOWN))] * len(names)
        data[(ERROR_COLUMN, "")] = [bad.get(i) for i in range(len(items))]
        df = pd.DataFrame(data, index=pd.Index(names, name="input"))
        df.columns = pd.MultiIndex.from_tuples(df.columns, names=["finding", "field"])
        df.attrs["thresholds"] = dict(self.thresholds)
        df.attrs["threshold_provenance"] = provenance
        df.attrs["model"] = self.path
        df.attrs["errors"] = {names[i]: bad[i] for i in sorted(bad)}
        if bad:
            first = bad[min(bad)]
            warnings.warn(f"{len(bad)} of {len(items)} inputs could not be used (first: {first}); see the "
                          f"'{ERROR_COLUMN}' column", stacklevel=2)
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
