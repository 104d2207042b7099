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

import numpy as np

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


def example_features(rec: F.ExampleRecord) -> Dict[str, Tuple[str, Sequence]]:
    """The feature values of :func:`cxr_tfp.features.to_example`, as plain Python values."""
    size = int(rec.image.shape[0])
    if rec.image.shape != (size, size):
        raise ValueError(f"image must be square 2-D, got {rec.image.shape}")
    for name, m in (("gaze", rec.gaze), ("box_mask", rec.box_mask)):
        if m is not None and m.shape != rec.image.shape:
            raise ValueError(f"{name} shape {m.shape} does not match image {rec.image.shape}")
    labels = np.asarray(rec.labels, np.float32).reshape(-1)
    mask = np.asarray(rec.label_mask, np.float32).reshape(-1)
    if labels.shape != (F.NUM_FINDINGS,) or mask.shape != (F.NUM_FINDINGS,):
        raise ValueError(f"labels/mask must have {F.NUM_FINDINGS} values")
    has_gaze, has_boxes = rec.gaze is not None, rec.box_mask is not None
    gaze_png = F.encode_png(F._to_uint8_map(rec.gaze)) if has_gaze else b""
    box_png = F.encode_png((np.asarray(rec.box_mask) > 0).astype(np.uint8) * 255) if has_boxes else b""
    return {
        F.IMAGE: ("bytes", [F.encode_png(np.asarray(rec.image, np.uint8))]),
        F.IMAGE_SIZE: ("int64", [size]),
        F.LABELS: ("float", (labels * mask).tolist()),
        F.LABEL_MASK: ("float", mask.tolist()),
        F.GAZE: ("bytes", [gaze_png]),
        F.BOX_MASK: ("bytes", [box_png]),
        F.HAS_GAZE: ("int64", [int(has_gaze)]),
        F.HAS_BOXES: ("int64", [int(has_boxes)]),
        F.HAS_ANNOTATION: ("int64", [int(has_gaze or has_boxes)]),
        F.VIEW: ("bytes", [(rec.view or "UNKNOWN").encode()]),
        F.DATASET: ("bytes", [rec.dataset.encode()]),
        F.PATIENT_KEY: ("bytes", [rec.patient_key.encode()]),
        F.EXAMPLE_KEY: ("bytes", [rec.example_key.encode()]),
    }


def serialize(rec: F.ExampleRecord) -> bytes:
    """Serialized tf.Example of ``rec`` (TensorFlow-free unless CXR_TFP_EXAMPLE_CODEC=tensorflow)."""
    if os.environ.get("CXR_TFP_EXAMPLE_CODEC", "").lower() == "tensorflow":
        return F.to_example(rec).SerializeToString()
    return serialize_features(example_features(rec))
