"""Read PyTorch checkpoint files without torch and without running code from them.

``torch.load(..., weights_only=False)`` (how torchxrayvision loads its released weights) unpickles
whatever the file names, so a crafted checkpoint runs arbitrary code. Here a restricted unpickler
rebuilds tensors as numpy arrays, turns torch / torchvision / torchxrayvision module objects into
inert :class:`ModuleStub` records of their attributes, and refuses every other global (e.g.
``os.system``, ``builtins.eval``) with :class:`UnsafeCheckpointError` naming it. Nothing from the
file is ever called: a stub only stores the state it is given.

The file is untrusted in size too: what it *describes* may be far larger than what it *holds*
(a tensor view whose strides repeat its storage, many views of one storage, a deflated zip member
of zeros). Reading has a byte budget (:class:`_Budget`), checked before anything is allocated:

- a tensor may not reach past its storage nor hold more elements than its storage has from its
  offset (a real checkpoint's views never repeat their storage);
- all tensors together may not exceed ``VIEW_SLACK`` x the bytes of the file's storages (plus
  1 MiB): views sharing a storage (slices, tied weights) stay far below that;
- a compressed zip member (``torch.save`` never compresses) is inflated in chunks up to
  ``INFLATE_RATIO`` x its compressed size;
- nothing may exceed the ceiling ``max_bytes`` (argument, or ``$CXR_TFP_MAX_CHECKPOINT_BYTES``,
  default 4 GiB: 140 x a DenseNet-121 checkpoint).

Every failure is one :class:`CheckpointFormatError` (a ``ValueError``: exit 2 through the CLI)
reading ``checkpoint PATH: not a readable checkpoint (REASON)``, whatever went wrong inside (a
malformed pickle, a recursion, an overflow), so a bad ``--weights`` file is always named.

Both serialisation formats are read:
- the zip format (torch >= 1.6): ``<archive>/data.pkl`` + one raw file per storage;
- the legacy format (older released weights): magic number, protocol, sys info, the object pickle,
  the storage key list, then each storage as an 8-byte element count and its raw bytes.
"""
from __future__ import annotations

import collections
import functools
import io
import math
import os
import pickle
import struct
import zipfile
from typing import Any, Dict, Optional, Tuple

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage class name (as pickled) -> numpy dtype. bfloat16 comes from ml_dtypes (a TF dependency).
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}
# Module prefixes whose classes become inert stubs (a whole pickled model references them).
_MODULE_PREFIXES = ("torch.nn.modules.", "torchvision.models.", "torchxrayvision.")

MAX_BYTES_ENV = "CXR_TFP_MAX_CHECKPOINT_BYTES"
DEFAULT_MAX_BYTES = 4 << 30
VIEW_SLACK = 2          # all tensors together <= 2 x the storages' bytes (+ 1 MiB)
INFLATE_RATIO = 16      # float weights deflate by ~1.1x; zeros by ~1000x
_SLACK_BYTES = 1 << 20
_MAX_DIMS = 32


class CheckpointFormatError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands (or asks for too much memory)."""


class UnsafeCheckpointError(CheckpointFormatError, pickle.UnpicklingError):
    """The checkpoint asks for something other than tensors, containers and model classes."""


def max_checkpoint_bytes() -> int:
    """The ceiling on bytes materialised from one checkpoint (``$CXR_TFP_MAX_CHECKPOINT_BYTES``)."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(float(raw))
    except ValueError:
        raise CheckpointFormatError(f"${MAX_BYTES_ENV}={raw!r}: expected a number of bytes") from None
    if value <= 0:
        raise CheckpointFormatError(f"${MAX_BYTES_ENV}={raw!r}: must be positive")
    return value


class _Budget:
    """Bytes a checkpoint may materialise: storages first (bounded by the file and the ceiling), then
    tensors (bounded by ``VIEW_SLACK`` x the storages). Checked before each allocation."""

    def __init__(self, ceiling: int):
        self.ceiling = ceiling
        self.storage_bytes = 0
        self.tensor_bytes = 0

    def add_storage(self, nbytes: int, key: str) -> None:
        self.storage_bytes += nbytes
        if self.storage_bytes > self.ceiling:
            raise CheckpointFormatError(f"storage {key} brings the storages to {self.storage_bytes:,} bytes, "
                                        f"above the ceiling of {self.ceiling:,} (${MAX_BYTES_ENV})")

    def add_tensor(self, nbytes: int, geometry: str) -> None:
        limit = min(self.ceiling, VIEW_SLACK * self.storage_bytes + _SLACK_BYTES)
        if self.tensor_bytes + nbytes > limit:
            raise CheckpointFormatError(
                f"tensor {geometry} would bring the tensors to {self.tensor_bytes + nbytes:,} bytes from "
                f"{self.storage_bytes:,} bytes of storage (limit {limit:,}: views repeat their storages)")
        self.tensor_bytes += nbytes


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _StorageType:
    """Stands for ``torch.FloatStorage`` etc. in a persistent id: only carries the dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _np_dtype(_STORAGE_DTYPES[name])


class ModuleStub:
    """An inert stand-in for a pickled ``torch.nn.Module`` (or other allowed model class).

    ``qualname`` is the class the file named; ``state`` the attribute dict pickle handed over.
    """

    qualname = "?"

    def __init__(self, *args, **kwargs):  # a REDUCE onto a stub class records its arguments only
        self.args = args
        self.state: Dict[str, Any] = {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {"_state": state}

    def __repr__(self) -> str:
        return f"ModuleStub({self.qualname})"


def _stub_class(qualname: str):
    return type("Stub_" + qualname.replace(".", "_"), (ModuleStub,), {"qualname": qualname})


def _ints(values, what: str) -> Tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or len(values) > _MAX_DIMS:
        raise CheckpointFormatError(f"invalid tensor {what} {values!r:.80}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise CheckpointFormatError(f"invalid tensor {what} {values!r:.80}")
    return tuple(values)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored, budget: Optional[_Budget] = None):
    """numpy copy of a strided view into ``storage``, checked against the storage and the budget
    (module doc) in Python integers before numpy allocates anything: the file is untrusted."""
    if not isinstance(storage, np.ndarray):
        raise UnsafeCheckpointError("tensor without a storage array")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if not isinstance(storage_offset, int):
        raise CheckpointFormatError(f"invalid tensor offset {storage_offset!r:.40}")
    offset = storage_offset
    geometry = f"size={size} stride={stride} offset={offset}"
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointFormatError(f"invalid tensor geometry {geometry}")
    numel = math.prod(size)
    if numel == 0:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= storage.size:
        raise CheckpointFormatError(f"tensor {geometry} reads past its storage of {storage.size} elements")
    if numel > storage.size - offset:
        raise CheckpointFormatError(f"tensor {geometry} has {numel:,} elements from a storage of "
                                    f"{storage.size - offset:,}: its strides repeat the storage")
    if budget is not None:
        budget.add_tensor(numel * storage.dtype.itemsize, geometry)
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[st * item for st in stride], writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_state):
    return data


class _Dtype:
    """``torch.float32`` & co. when pickled as attributes (e.g. a module's dtype)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"torch.{self.name}"


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("torch", "device"): str,
}
_DTYPE_NAMES = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                "uint8", "bool", "float", "double", "half", "long", "int"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that maps an allow-list of globals and refuses the rest (see module docstring)."""

    def __init__(self, file, what: str, budget: Optional[_Budget] = None):
        super().__init__(file)
        self._what = what
        self.budget = budget
        self.legacy_requests: Dict[str, Tuple[_StorageType, int]] = {}   # legacy format storages

    def find_class(self, module: str, name: str):
        if module in ("__builtin__", "copy_reg"):   # protocol-2 spellings (torch pickles with protocol 2)
            module = {"__builtin__": "builtins", "copy_reg": "copyreg"}[module]
        key = (module, name)
        if key in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return functools.partial(_legacy_aware_rebuild, budget=self.budget)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _DTYPE_NAMES:
            return _Dtype(name)
        if module in ("torch", "torch.nn") or module.startswith(_MODULE_PREFIXES):
            if module in ("torch", "torch.nn") and not name[:1].isupper():
                raise UnsafeCheckpointError(
                    f"{self._what}: refuses to load {module}.{name} (only tensors, containers and "
                    f"model classes are allowed; the file may be unsafe)")
            return _stub_class(f"{module}.{name}")
        raise UnsafeCheckpointError(
            f"{self._what}: refuses to load {module}.{name} (only tensors, containers and model "
            f"classes are allowed; the file may be unsafe)")

    def persistent_load(self, pid):
        # Legacy whole-model files tag each module class with its source code: ('module', cls, file,
        # source). The class was already resolved (to a stub) by find_class; the source is ignored.
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            if not (isinstance(pid[1], type) and issubclass(pid[1], ModuleStub)):
                raise UnsafeCheckpointError(f"{self._what}: unexpected module record {pid[1]!r:.80}")
            return pid[1]
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointFormatError(f"{self._what}: unsupported persistent id {pid!r:.80}")
        stype, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(stype, _StorageType):
            raise CheckpointFormatError(f"{self._what}: unknown storage type {stype!r:.80}")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointFormatError(f"{self._what}: storage views (very old torch files) are not supported")
        self.legacy_requests[key] = (stype, numel)
        return _LegacyStorage(key, stype.dtype, numel)


class _LegacyStorage:
    """Placeholder storage for the legacy format: its raw bytes follow the pickle (no allocation here:
    the element count comes from the untrusted file)."""

    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


def _inflate(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> bytearray:
    """A member's bytes, read in chunks: a stored member is bounded by the file itself, a compressed
    one by ``INFLATE_RATIO`` x its compressed size; both by the ceiling (checked as it grows)."""
    limit = budget.ceiling
    if info.compress_type != zipfile.ZIP_STORED:
        limit = min(limit, INFLATE_RATIO * info.compress_size + _SLACK_BYTES)
    if info.file_size > limit:
        raise CheckpointFormatError(f"zip member {info.filename} inflates to {info.file_size:,} bytes from "
                                    f"{info.compress_size:,} (limit {limit:,})")
    out = bytearray()
    with zf.open(info) as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            out += chunk
            if len(out) > limit:
                raise CheckpointFormatError(f"zip member {info.filename} inflates past {limit:,} bytes "
                                            f"from {info.compress_size:,}")
    return out


def _read_zip(path: str, what: str, budget: _Budget) -> Any:
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        names = list(infos)
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointFormatError(f"{what}: zip file without exactly one data.pkl (not a torch checkpoint)")
        prefix = pkl[0][: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in names:
            order = bytes(_inflate(zf, infos[prefix + "byteorder"], budget)[:16]).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise CheckpointFormatError(f"{what}: byteorder {order!r:.20}")
        # Storages are typed by the pickle's persistent ids: read them as bytes and view on request.
        storages: Dict[str, np.ndarray] = {}
        for n in names:
            if n.startswith(prefix + "data/"):
                key = n[len(prefix + "data/"):]
                budget.add_storage(infos[n].file_size, key)
                storages[key] = np.frombuffer(_inflate(zf, infos[n], budget), np.uint8)
        data_pkl = _inflate(zf, infos[pkl[0]], budget)

        class _ZipUnpickler(RestrictedUnpickler):
            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
                    raise CheckpointFormatError(f"{what}: unsupported persistent id {pid!r:.80}")
                stype, key, numel = pid[1], str(pid[2]), int(pid[4])
                if not isinstance(stype, _StorageType):
                    raise CheckpointFormatError(f"{what}: unknown storage type {stype!r:.80}")
                if key not in storages:
                    raise CheckpointFormatError(f"{what}: storage {key} missing from the archive")
                buf = storages[key]
                dt = stype.dtype.newbyteorder("<" if order == "little" else ">")
                if buf.size % dt.itemsize:
                    raise CheckpointFormatError(f"{what}: storage {key} has a partial element")
                return buf.view(dt).astype(stype.dtype, copy=False)

        return _ZipUnpickler(io.BytesIO(data_pkl), what, budget).load()


def _read_legacy(path: str, what: str, budget: _Budget) -> Any:
    with open(path, "rb") as fh:
        data = fh.read()
    f = io.BytesIO(data)

    def plain_load():
        return RestrictedUnpickler(f, what).load()

    try:
        magic = plain_load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        if isinstance(exc, UnsafeCheckpointError):
            raise
        raise CheckpointFormatError(f"{what}: not a PyTorch checkpoint ({exc})") from None
    if magic != LEGACY_MAGIC:
        raise CheckpointFormatError(f"{what}: not a PyTorch checkpoint (no torch magic number)")
    protocol = plain_load()
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointFormatError(f"{what}: unsupported legacy protocol {protocol!r}")
    plain_load()  # sys info (endianness, type sizes): little-endian assumed, as torch writes on x86/ARM
    unpickler = RestrictedUnpickler(f, what, budget)
    obj = unpickler.load()
    keys = RestrictedUnpickler(f, what).load()
    if not isinstance(keys, list):
        raise CheckpointFormatError(f"{what}: malformed storage key list")
    filled: Dict[str, np.ndarray] = {}
    for key in keys:
        key = str(key)
        if key not in unpickler.legacy_requests:
            raise CheckpointFormatError(f"{what}: storage {key} listed but never used")
        stype, _ = unpickler.legacy_requests[key]
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointFormatError(f"{what}: truncated before storage {key}")
        (count,) = struct.unpack("<q", head)
        nbytes = count * stype.dtype.itemsize
        if count < 0 or f.tell() + nbytes > len(data):
            raise CheckpointFormatError(f"{what}: storage {key} runs past the end of the file")
        budget.add_storage(nbytes, key)
        filled[key] = np.frombuffer(data, stype.dtype.newbyteorder("<"), count, f.tell()).astype(stype.dtype)
        f.seek(nbytes, io.SEEK_CUR)
    # Tensors were recorded against placeholder storages: rebuild them from the bytes just read.
    return _LegacyFix(filled, what, budget).fix(obj)


class _LegacyFix:
    """Walks the unpickled object and replaces each :class:`_LegacyTensor` by its numpy array."""

    def __init__(self, filled, what, budget):
        self.filled, self.what, self.budget, self.seen = filled, what, budget, {}

    def fix(self, obj):
        if isinstance(obj, _LegacyTensor):
            if obj.key not in self.filled:
                raise CheckpointFormatError(f"{self.what}: storage {obj.key} has no data")
            return _rebuild_tensor(self.filled[obj.key], *obj.geometry, budget=self.budget)
        if id(obj) in self.seen:
            return self.seen[id(obj)]
        if isinstance(obj, dict):
            out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
            self.seen[id(obj)] = out
            for k, v in obj.items():
                out[k] = self.fix(v)
            return out
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.fix(v) for v in obj)
        if isinstance(obj, ModuleStub):
            self.seen[id(obj)] = obj
            obj.state = {k: self.fix(v) for k, v in obj.state.items()}
            return obj
        return obj


class _LegacyTensor:
    """A tensor whose storage bytes come after the pickle (legacy format)."""

    def __init__(self, key, geometry):
        self.key, self.geometry = key, geometry


def _legacy_aware_rebuild(storage, storage_offset, size, stride, *rest, budget: Optional[_Budget] = None):
    if isinstance(storage, _LegacyStorage):
        return _LegacyTensor(storage.key, (storage_offset, size, stride))
    return _rebuild_tensor(storage, storage_offset, size, stride, *rest, budget=budget)


_ALLOWED[("torch._utils", "_rebuild_tensor_v2")] = _legacy_aware_rebuild
_ALLOWED[("torch._utils", "_rebuild_tensor")] = _legacy_aware_rebuild


def not_readable(path: str, reason: str) -> str:
    """The one error line for a checkpoint that cannot be used: names the file, says why."""
    reason = " ".join(str(reason).split()) or "unknown reason"
    for prefix in (f"checkpoint {path}: ", f"torchxrayvision checkpoint {path}: "):
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
    if len(reason) > 200:
        reason = reason[:197] + "..."
    return f"checkpoint {path}: not a readable checkpoint ({reason})"


def load_checkpoint(path: str, max_bytes: Optional[int] = None) -> Any:
    """The object a torch checkpoint at ``path`` holds, with tensors as numpy arrays (see module doc).

    Raises :class:`CheckpointFormatError` (or its :class:`UnsafeCheckpointError`) with one line naming
    the file for anything but a readable checkpoint within the byte budget; ``FileNotFoundError`` when
    the path is missing or not a file.
    """
    what = f"checkpoint {path}"
    if not os.path.isfile(path):
        reason = "is a folder" if os.path.isdir(path) else "no such file"
        raise FileNotFoundError(f"{what}: {reason}")
    budget = _Budget(max_bytes if max_bytes is not None else max_checkpoint_bytes())
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path, what, budget)
        return _read_legacy(path, what, budget)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(not_readable(path, str(exc))) from None
    except OSError as exc:
        raise CheckpointFormatError(not_readable(path, exc.strerror or str(exc))) from None
    except MemoryError:
        raise CheckpointFormatError(not_readable(path, "out of memory while reading it")) from None
    except RecursionError:
        raise CheckpointFormatError(not_readable(path, "nested too deeply")) from None
    except Exception as exc:  # noqa: BLE001  (any parse failure of an untrusted file: one named line)
        reason = str(exc) if isinstance(exc, CheckpointFormatError) else f"{type(exc).__name__}: {exc}"
        raise CheckpointFormatError(not_readable(path, reason)) from None


def state_dict_of(obj: Any, what: str = "checkpoint") -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """``(state_dict, attributes)`` of a loaded checkpoint: a plain state dict, a dict holding one
    under ``state_dict`` / ``model``, or a whole pickled model (stub), whose parameters and buffers
    are collected recursively like ``Module.state_dict()``. ``attributes`` are the top module's
    non-tensor attributes (e.g. torchxrayvision's ``op_threshs``, ``pathologies``)."""
    if isinstance(obj, ModuleStub):
        out: Dict[str, np.ndarray] = collections.OrderedDict()
        _collect(obj, "", out)
        attrs = {k: v for k, v in obj.state.items() if not k.startswith("_")}
        attrs["__class__"] = obj.qualname
        return out, attrs
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], (dict, ModuleStub)):
                return state_dict_of(obj[key], what)
        arrays = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
        if arrays and len(arrays) == len(obj):
            return collections.OrderedDict(arrays), {}
    raise CheckpointFormatError(f"{what}: not a readable checkpoint (holds neither a state dict nor a "
                                f"pickled model; found {type(obj).__name__})")


def _collect(mod: ModuleStub, prefix: str, out: Dict[str, np.ndarray]) -> None:
    st = mod.state
    for group in ("_parameters", "_buffers"):
        for name, value in (st.get(group) or {}).items():
            if value is not None and isinstance(value, np.ndarray):
                if group == "_buffers" and name in (st.get("_non_persistent_buffers_set") or ()):
                    continue
                out[prefix + name] = value
    for name, child in (st.get("_modules") or {}).items():
        if isinstance(child, ModuleStub):
            _collect(child, f"{prefix}{name}.", out)
