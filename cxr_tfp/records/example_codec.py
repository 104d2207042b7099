"""Serialise a :class:`cxr_tfp.features.ExampleRecord` to tf.Example bytes without importing TensorFlow.

``features.to_example(rec).SerializeToString()`` needs TensorFlow, and importing TensorFlow costs a
Beam worker several seconds and ~0.5 GB before its first element. This module writes the same
``tf.train.Example`` message directly in the protobuf wire format (Example -> Features -> map<string,
Feature> -> BytesList / FloatList / Int64List, packed repeated scalars), so ingestion workers stay
TensorFlow-free. The feature values are built by the same rules as :func:`cxr_tfp.features.to_example`
(same keys, ``labels * mask``, maps scaled to 0..255, flags), and a test parses both with
``tf.train.Example`` and requires the messages to be equal, so the two cannot drift apart silently.
Set ``CXR_TFP_EXAMPLE_CODEC=tensorflow`` to serialise through ``features.to_example`` instead.
"""
from __future__ import annotations

import os
import struct
from typing import Dict, List, Sequence, Tuple, Union


from cxr_tfp import features as F

Value = Union[Tuple[str, List[bytes]], Tuple[str, List[float]], Tuple[str, List[int]]]


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _feature(kind: str, values: Sequence) -> bytes:
    if kind == "bytes":
        inner = b"".join(_field(1, bytes(v)) for v in values)
        return _field(1, inner)
    if kind == "float":
        packed = struct.pack(f"<{len(values)}f", *[float(v) for v in values])
        inner = _field(1, packed) if values else b""
        return _field(2, inner)
    if kind == "int64":
        packed = b"".join(_varint(int(v)) for v in values)
        inner = _field(1, packed) if values else b""
        return _field(3, inner)
    raise ValueError(kind)


def serialize_features(feats: Dict[str, Tuple[str, Sequence]]) -> bytes:
    """``{key: (kind, values)}`` (kind: bytes / float / int64) -> serialized tf.train.Example."""
    entries = b"".join(_field(1, _field(1, k.encode("utf-8")) + _field(2, _feature(kind, vals)))
                       for k, (kind, vals) in feats.items())
    return _field(1, entries)


# The feature values themselves are defined once, in the record contract.
example_features = F.example_values


def serialize(rec: F.ExampleRecord) -> bytes:
    """Serialized tf.Example of ``rec`` (TensorFlow-free unless CXR_TFP_EXAMPLE_CODEC=tensorflow)."""
    if os.environ.get("CXR_TFP_EXAMPLE_CODEC", "").lower() == "tensorflow":
        return F.to_example(rec).SerializeToString()
    return serialize_features(example_features(rec))


def _read_varint(buf: bytes, pos: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """``(field number, wire type, value)`` of a protobuf message (value: bytes for length-delimited)."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            n, pos = _read_varint(buf, pos)
            yield number, wire, buf[pos:pos + n]
            pos += n
        elif wire == 0:
            v, pos = _read_varint(buf, pos)
            yield number, wire, v
        elif wire == 5:
            yield number, wire, buf[pos:pos + 4]
            pos += 4
        elif wire == 1:
            yield number, wire, buf[pos:pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def bytes_feature(serialized: bytes, name: str) -> bytes:
    """The first value of bytes feature ``name`` in a serialized tf.Example (TensorFlow-free)."""
    want = name.encode("utf-8")
    for n1, _, features in _fields(serialized):            # Example.features
        if n1 != 1:
            continue
        for n2, _, entry in _fields(features):              # Features.feature map entries
            if n2 != 1:
                continue
            key, value = None, None
            for n3, _, v in _fields(entry):
                if n3 == 1:
                    key = v
                elif n3 == 2:
                    value = v
            if key != want or value is None:
                continue
            for n4, _, blist in _fields(value):             # Feature.bytes_list
                if n4 == 1:
                    for n5, _, v in _fields(blist):
                        if n5 == 1:
                            return bytes(v)
    raise KeyError(f"no bytes feature {name!r} in the example")
