"""Hostile inputs made in a few milliseconds: decompression bombs, lying headers, truncated files.

No image is ever materialised at its announced size: the bombs are built by streaming zlib over
rows of zeros, so a 20000 x 20000 PNG costs ~400 KB and ~1 s to make.
"""
from __future__ import annotations

import io
import os
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


# ---------------------------------------------------------------------------- torch checkpoints
# Crafted without torch: a pickler that writes the globals and persistent ids torch.save writes
# (torch._utils._rebuild_tensor_v2, torch.FloatStorage, ('storage', type, key, 'cpu', numel)).
FIXTURE_TXRV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "txrv")


class FakeStorage:
    """A storage reference (key, element count) of a crafted checkpoint."""

    def __init__(self, key: str, numel: int, dtype: str = "FloatStorage"):
        self.key, self.numel, self.dtype = key, numel, dtype


class FakeTensor:
    """A tensor view (storage, offset, size, stride) of a crafted checkpoint."""

    def __init__(self, storage: FakeStorage, size, stride=None, offset: int = 0):
        if stride is None:
            stride, acc = [], 1
            for n in reversed(size):
                stride.insert(0, acc)
                acc *= n
        self.storage, self.size, self.stride, self.offset = storage, tuple(size), tuple(stride), offset


def torch_pickle(obj) -> bytes:
    """``obj`` (dicts / lists of :class:`FakeTensor`) pickled the way ``torch.save`` pickles data.pkl."""
    import collections
    import pickle
    import sys
    import types

    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for name in ("FloatStorage", "LongStorage", "ByteStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch_mod, name, cls)
        storage_types[name] = cls

    class _P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, FakeStorage):
                return ("storage", storage_types[o.dtype], o.key, "cpu", o.numel)
            return None

        def reducer_override(self, o):
            if isinstance(o, FakeTensor):
                return (_rebuild_tensor_v2, (o.storage, o.offset, o.size, o.stride, False,
                                             collections.OrderedDict()))
            return NotImplemented

    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch_mod, utils_mod
    try:
        buf = io.BytesIO()
        _P(buf, protocol=2).dump(obj)
        return buf.getvalue()
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def torch_zip(pkl: bytes, storages=None, compress: bool = False, prefix: str = "archive",
              extra=None) -> bytes:
    """A zip-format checkpoint: ``prefix/data.pkl`` and ``prefix/data/KEY`` per storage."""
    import zipfile

    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr(f"{prefix}/data.pkl", pkl)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, raw in (storages or {}).items():
            zf.writestr(f"{prefix}/data/{key}", raw)
        for name, raw in (extra or {}).items():
            zf.writestr(name, raw)
    return buf.getvalue()


def _legacy_head() -> bytes:
    import pickle

    return (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"little_endian": True}, protocol=2))


def _fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURE_TXRV, name), "rb") as fh:
        return fh.read()


def malformed_checkpoints():
    """name -> bytes: 23 malformed checkpoints (none of them a memory bomb; see checkpoint_bombs)."""
    import pickle
    import zipfile

    s = FakeStorage("0", 4)
    f4 = b"\x00" * 16
    z = _fixture("state_zip.pt")
    lg = _fixture("state_legacy.pt")
    depth = 200_000
    nested = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    two = io.BytesIO()
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a/data.pkl", torch_pickle({"w": FakeTensor(s, (4,))}))
        zf.writestr("b/data.pkl", torch_pickle({"w": FakeTensor(s, (4,))}))
    return {
        "empty": b"",
        "random_bytes": garbage(4096, seed=21),
        "git_lfs_pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64
                           + b"\nsize 28000000\n",
        "truncated_zip": z[: len(z) // 2],
        "truncated_legacy": lg[: len(lg) // 2],
        "zip_without_data_pkl": torch_zip(b"", extra={"x/readme.txt": b"hi"}, prefix="x")
                                .replace(b"data.pkl", b"data.txt"),
        "zip_two_data_pkl": two.getvalue(),
        "zip_garbage_pickle": torch_zip(garbage(512, seed=3), {"0": f4}),
        "zip_storage_missing": torch_zip(torch_pickle({"w": FakeTensor(FakeStorage("7", 4), (4,))}), {"0": f4}),
        "zip_partial_element": torch_zip(torch_pickle({"w": FakeTensor(s, (1,))}), {"0": b"\x00" * 5}),
        "legacy_wrong_magic": pickle.dumps(12345, protocol=2) + lg[40:],
        "legacy_wrong_protocol": pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
                                 + pickle.dumps(999, protocol=2) + b"\x00" * 64,
        "plain_pickled_list": pickle.dumps([1, 2, 3]),
        "legacy_deep_nesting": _legacy_head() + nested + pickle.dumps([], protocol=2),
        "zip_memo_missing": torch_zip(b"\x80\x02h\x05.", {"0": f4}),
        "zip_unhashable_key": torch_zip(b"\x80\x02}]K\x01s.", {"0": f4}),
        "zip_huge_size": torch_zip(torch_pickle({"w": FakeTensor(s, (2 ** 70,), (1,))}), {"0": f4}),
        "zip_reads_past_storage": torch_zip(torch_pickle({"w": FakeTensor(s, (4,), (1,), offset=2)}), {"0": f4}),
        "zip_negative_stride": torch_zip(torch_pickle({"w": FakeTensor(s, (4,), (-1,))}), {"0": f4}),
        "zip_unknown_storage_type": torch_zip(b"\x80\x02}X\x01\x00\x00\x00w(X\x07\x00\x00\x00storage"
                                              b"X\x03\x00\x00\x00bad\x8c\x010X\x03\x00\x00\x00cpuK\x04tQs.",
                                              {"0": f4}),
        "zip_not_a_densenet": torch_zip(torch_pickle({"layer.weight": FakeTensor(s, (4,))}), {"0": f4}),
        "legacy_storage_past_end": _legacy_head() + torch_pickle({"w": FakeTensor(s, (4,))})
                                   + pickle.dumps(["0"], protocol=2) + (10 ** 9).to_bytes(8, "little") + f4,
        "zip_pickle_without_stop": torch_zip(b"\x80\x02}q\x00", {"0": f4}),
    }


def checkpoint_bombs(storage_bytes: int = 4096, views: int = 4000):
    """name -> bytes: small checkpoints that describe far more than they hold."""
    n = storage_bytes // 4
    s = FakeStorage("0", n)
    raw = garbage(storage_bytes, seed=5)
    return {
        # one 4 KB storage seen as 2**31 floats (8 GiB): stride 0 repeats the same element
        "stride_repeat": torch_zip(torch_pickle({"w": FakeTensor(s, (2 ** 31,), (0,))}), {"0": raw}),
        # overlapping rows: a [2**20, n] view whose rows step by one element (4 GiB from 4 KB)
        "overlapping_rows": torch_zip(torch_pickle({"w": FakeTensor(FakeStorage("0", n), (2 ** 18, n // 2),
                                                                     (0, 1))}), {"0": raw}),
            # VIEWS tensors, each a full view of the same storage: VIEWS x the file's data
        "many_views": torch_zip(torch_pickle({f"w{i}": FakeTensor(s, (n,)) for i in range(views)}), {"0": raw}),
    }


def zip_bomb_checkpoint(inflated_bytes: int) -> bytes:
    """A zip checkpoint whose one storage is ``inflated_bytes`` of zeros, deflated (~1000:1)."""
    n = inflated_bytes // 4
    return torch_zip(torch_pickle({"w": FakeTensor(FakeStorage("0", n), (n,))}), {"0": b"\x00" * inflated_bytes},
                     compress=True)
