"""Hostile inputs made in a few milliseconds: decompression bombs, lying headers, truncated files.

No image is ever materialised at its announced size: the bombs are built by streaming zlib over
rows of zeros, so a 20000 x 20000 PNG costs ~400 KB and ~1 s to make.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR announces width x height grey pixels, with a tiny (wrong) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def png_bomb(width: int, height: int, colour: bool = False) -> bytes:
    """A valid all-black PNG of width x height (grey, or RGB), compressed row by row."""
    channels = 3 if colour else 1
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if colour else 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + width * channels)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def small_png(side: int = 32, value: int = 120, colour: bool = False) -> bytes:
    from PIL import Image

    if colour:
        arr = np.zeros((side, side, 3), np.uint8)
        arr[..., 0] = 200
        arr[..., 2] = 30
        img = Image.fromarray(arr, "RGB")
    else:
        img = Image.fromarray(np.full((side, side), value, np.uint8), "L")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def small_jpeg(side: int = 32, value: int = 120) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((side, side), value, np.uint8), "L").save(buf, format="JPEG")
    return buf.getvalue()


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF header is patched to announce width x height."""
    data = bytearray(small_jpeg(32))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


def garbage(n: int = 2048, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def dicom_with(arr=None, **header) -> bytes:
    """A DICOM from tests.io.dicom_factory with extra header elements set (e.g. BurnedInAnnotation)."""
    import pydicom

    from tests.io.dicom_factory import make_dicom, ramp

    base = {k: header.pop(k) for k in list(header) if k in ("patient_id", "patient_name", "modality",
                                                             "body_part", "view", "photometric",
                                                             "samples_per_pixel")}
    raw = make_dicom(ramp() if arr is None else arr, **base)
    if not header:
        return raw
    ds = pydicom.dcmread(io.BytesIO(raw))
    for k, v in header.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
