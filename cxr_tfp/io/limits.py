"""Pixel limits checked from the header, before any pixel is decoded (decompression bombs cost nothing).

A 20000 x 20000 PNG of a few hundred KB decodes to 400 MB of grey pixels (1.6 GB as float32): the
size must be known *before* decoding. PNG and JPEG dimensions come from Pillow's lazy
``Image.open`` (it parses the header only); DICOM dimensions from ``Rows`` x ``Columns`` x
``NumberOfFrames`` x ``SamplesPerPixel``, read before ``pixel_array``. The same limit is applied
inside the exported serving signature (:mod:`cxr_tfp.preprocess` parses the PNG / JPEG header with
TensorFlow string ops).

The limit is configurable: ``max_pixels`` arguments, ``--max-pixels`` on the build, or the
environment variable ``CXR_TFP_MAX_PIXELS``; the default (:data:`DEFAULT_MAX_PIXELS`, 36 megapixels,
e.g. 6000 x 6000) is well above any chest detector (about 4300 x 4300).
"""
from __future__ import annotations

import io as _io
import os
from typing import Optional, Tuple

from cxr_tfp.io.errors import DecodeError, InputError

DEFAULT_MAX_PIXELS = 36_000_000
MAX_PIXELS_ENV = "CXR_TFP_MAX_PIXELS"


class TooLargeError(InputError):
    """The header announces more pixels than the limit: rejected before decoding."""

    stage = "decode"


def max_pixels_default() -> int:
    """``$CXR_TFP_MAX_PIXELS`` if set (a positive integer), else :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} is not an integer") from None
    if value <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV} must be positive, got {value}")
    return value


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8"
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic...): C0-CF except the
# DHT (C4), JPG (C8) and DAC (CC) markers, which share the range.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def png_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from a PNG's IHDR chunk (bytes 16-24), or None if it is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def jpeg_size(data: bytes, max_markers: int = 1000) -> Optional[Tuple[int, int]]:
    """(width, height) from a JPEG's first start-of-frame segment, or None if there is none.

    Walks the marker segments (each ``FF xx LLLL``) without decoding anything; the same walk is
    done in-graph by :func:`cxr_tfp.preprocess.encoded_image_size`.
    """
    if not data.startswith(JPEG_MAGIC):
        return None
    i, n = 2, len(data)
    for _ in range(max_markers):
        while i < n and data[i] == 0xFF and i + 1 < n and data[i + 1] == 0xFF:
            i += 1  # fill bytes
        if i + 4 > n or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in SOF_MARKERS:
            if i + 9 > n:
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker == 0xD9 or marker == 0xDA:  # end of image / start of scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def raster_size(data: bytes) -> Tuple[int, int]:
    """(width, height) of a PNG / JPEG / other Pillow image from its header only."""
    from PIL import Image, UnidentifiedImageError

    for sniff in (png_size, jpeg_size):
        size = sniff(data)
        if size is not None:
            return size

    try:
        with Image.open(_io.BytesIO(data)) as img:  # lazy: reads the header, decodes nothing
            return int(img.size[0]), int(img.size[1])
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise TooLargeError("image too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"cannot read the image header ({type(exc).__name__})") from None


def check_pixels(width: int, height: int, max_pixels: Optional[int], frames: int = 1,
                 samples: int = 1) -> None:
    """Raise :class:`TooLargeError` when width x height x frames x samples exceeds ``max_pixels``."""
    limit = max_pixels_default() if max_pixels is None else int(max_pixels)
    total = int(width) * int(height) * max(int(frames), 1) * max(int(samples), 1)
    if total > limit:
        extra = f" x {frames} frames" if frames > 1 else ""
        raise TooLargeError(f"image is {width}x{height}{extra} = {total} pixels, above the limit of {limit} "
                            f"(--max-pixels / {MAX_PIXELS_ENV}); rejected before decoding")
