"""Decode PNG / JPEG / DICOM bytes to a 2-D uint8 grey array, and resize it to the stored square.

Pillow and numpy only (no TensorFlow): this runs inside Beam workers and in the gRPC client.

Geometry: a :class:`Geometry` records how the decoded image (``src_w`` x ``src_h``) maps onto the
stored ``size`` x ``size`` square, so annotations given in source pixels (boxes, ellipses,
fixations) land on the same stored pixels as the anatomy under them. Coordinates are continuous:
pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, so its centre is at ``(j + 0.5, i + 0.5)``.

Resize modes:
- ``stretch`` (default): the whole image, each axis scaled independently. This is what
  :func:`cxr_tfp.preprocess.decode_image_tensor` does to an image sent to the serving signature, so a
  stored image and a served image of the same radiograph look the same to the model.
- ``crop``: centre square crop of side ``min(w, h)``, then scale (keeps aspect; may cut annotations,
  which are then clipped).
- ``pad``: centre the image on a black square of side ``max(w, h)``, then scale (keeps aspect and
  everything in view).
"""
from __future__ import annotations

import dataclasses
import io as _io
import os
from typing import Optional, Tuple, Union

import numpy as np

from cxr_tfp.io.decoded import DecodedImage
from cxr_tfp.io.dicom import decode_dicom
from cxr_tfp.io.errors import DecodeError, MissingFileError, NotChestXrayError

RESIZE_MODES = ("stretch", "crop", "pad")
MIN_SIDE = 16                 # smaller "images" are rejected
COLOUR_TOLERANCE = 3.0        # mean |R-G|+|G-B| above this (0-255 scale) = a colour picture, not a CXR

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview]


def read_bytes(path: Union[str, os.PathLike]) -> bytes:
    """Read a file, raising :class:`MissingFileError` (no path in the message) if it is absent."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise MissingFileError("file not found") from None
    except IsADirectoryError:
        raise MissingFileError("is a directory, not a file") from None
    except PermissionError:
        raise MissingFileError("permission denied") from None
    except OSError as exc:
        raise MissingFileError(f"cannot read file ({exc.strerror or type(exc).__name__})") from None


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part-10 file (``DICM`` magic at byte 128)."""
    return len(data) >= 132 and bytes(data[128:132]) == b"DICM"


def stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """The 16-bit rule: an image with more than 8 bits per pixel -> uint8, its own min..max stretched
    to 0..255 (round half to even). The same rule runs in TF for 16-bit PNGs sent to the serving
    signatures and the predictor (:func:`cxr_tfp.preprocess.decode_image_tensor`)."""
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.round((arr - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _to_uint8_grey(img) -> np.ndarray:
    """A loaded Pillow image -> 2-D uint8, rejecting colour pictures."""
    mode = img.mode
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return stretch_to_uint8(np.asarray(img))
    if mode == "LA":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    # P, RGB, RGBA, CMYK, YCbCr...: grey stored as colour is fine, a colour picture is not.
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 65536)))
    sub = rgb[::step, ::step]
    spread = float(np.mean(np.abs(sub[..., 0] - sub[..., 1]) + np.abs(sub[..., 1] - sub[..., 2])))
    if spread > COLOUR_TOLERANCE:
        raise NotChestXrayError(f"colour image (mode {mode}): a chest X-ray must be grey")
    return np.asarray(img.convert("L"), dtype=np.uint8)


def decode_raster(data: bytes, max_pixels: Optional[int] = None) -> np.ndarray:
    """PNG / JPEG / other Pillow format bytes -> uint8 [H, W]. Raises :class:`DecodeError`.

    The header's width x height is checked against ``max_pixels`` (default
    :func:`cxr_tfp.io.limits.max_pixels_default`) before any pixel is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    from cxr_tfp.io.limits import check_pixels, raster_size

    if not data:
        raise DecodeError("empty file")
    w, h = raster_size(data)
    check_pixels(w, h, max_pixels)
    try:
        img = Image.open(_io.BytesIO(data))
        img.load()  # force a full decode: a truncated file fails here, not later
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            raise DecodeError("truncated image file") from None
        raise DecodeError(f"cannot decode image: {msg}") from None
    except Image.DecompressionBombError:
        raise DecodeError("image too large (decompression bomb guard)") from None
    return _to_uint8_grey(img)


def decode_image(data: bytes, max_pixels: Optional[int] = None,
                 allow_burned_in: bool = False) -> DecodedImage:
    """Any supported encoded image (PNG, JPEG, DICOM) -> :class:`DecodedImage`.

    ``max_pixels``: header-checked pixel limit (see :mod:`cxr_tfp.io.limits`); ``allow_burned_in``:
    keep DICOMs whose header says ``BurnedInAnnotation YES`` (rejected by default).
    """
    if is_dicom(data):
        out = decode_dicom(data, max_pixels=max_pixels, allow_burned_in=allow_burned_in)
    else:
        from PIL import Image  # noqa: F401  (fail early if Pillow is missing)

        fmt = "jpeg" if data[:3] == b"\xff\xd8\xff" else ("png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image")
        out = DecodedImage(pixels=decode_raster(data, max_pixels), source_format=fmt)
    h, w = out.pixels.shape
    if min(h, w) < MIN_SIDE:
        raise NotChestXrayError(f"image is {w}x{h} pixels: too small to be a radiograph")
    return out


def load_image(path: Union[str, os.PathLike]) -> DecodedImage:
    """Read and decode a file (PNG, JPEG or DICOM, recognised by content, not extension)."""
    return decode_image(read_bytes(path))


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Maps source pixel coordinates to stored pixel coordinates: ``x' = (x - x0) * sx``."""

    src_w: int
    src_h: int
    size: int
    mode: str = "stretch"

    @property
    def window(self) -> Tuple[float, float, float, float]:
        """The source rectangle (x0, y0, x1, y1) that becomes the stored square."""
        w, h = float(self.src_w), float(self.src_h)
        if self.mode == "stretch":
            return 0.0, 0.0, w, h
        if self.mode == "crop":
            side = min(w, h)
        elif self.mode == "pad":
            side = max(w, h)
        else:
            raise ValueError(f"unknown resize mode {self.mode!r}; use one of {RESIZE_MODES}")
        x0, y0 = (w - side) / 2.0, (h - side) / 2.0
        return x0, y0, x0 + side, y0 + side

    @property
    def scale(self) -> Tuple[float, float]:
        x0, y0, x1, y1 = self.window
        return self.size / (x1 - x0), self.size / (y1 - y0)

    def map_xy(self, x, y):
        """Source coordinates (scalars or arrays) -> stored coordinates."""
        x0, y0, _, _ = self.window
        sx, sy = self.scale
        return (np.asarray(x, np.float64) - x0) * sx, (np.asarray(y, np.float64) - y0) * sy


def resize_to_square(pixels: np.ndarray, size: int, mode: str = "stretch") -> Tuple[np.ndarray, Geometry]:
    """Resize a uint8 [H, W] image to [size, size] (antialiased bilinear) and return its geometry."""
    from PIL import Image

    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; use one of {RESIZE_MODES}")
    h, w = pixels.shape
    geo = Geometry(int(w), int(h), int(size), mode)
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L")
    x0, y0, x1, y1 = geo.window
    if mode == "pad" and (w != h):
        side = int(max(w, h))
        canvas = Image.new("L", (side, side), 0)
        canvas.paste(img, (int(round(-x0)), int(round(-y0))))
        img, box = canvas, (0.0, 0.0, float(side), float(side))
    else:
        box = (x0, y0, x1, y1)
    if (w, h) == (size, size) and box == (0.0, 0.0, float(w), float(h)):
        return np.asarray(img, np.uint8).copy(), geo
    out = img.resize((size, size), resample=Image.BILINEAR, box=box, reducing_gap=None)
    return np.asarray(out, np.uint8), geo


def prepare_image(data: PathOrBytes, size: int, mode: str = "stretch") -> np.ndarray:
    """Bytes or a path of a PNG/JPEG/DICOM -> uint8 [size, size], as stored in the TFRecords."""
    if isinstance(data, (str, os.PathLike)):
        data = read_bytes(data)
    decoded = decode_image(bytes(data))
    out, _ = resize_to_square(decoded.pixels, size, mode)
    return out
