"""The tf.Example contract: feature names, specs, encoding and parsing. Imported, never restated.

One example is one image. Images and annotation maps are stored as 8-bit grey PNGs at the stored
size (``image_size`` x ``image_size``), aligned pixel for pixel. Labels are over
:data:`cxr_tfp.labels.FINDINGS` with a per-finding mask (1 = known, 0 = unknown/uncertain/not
labelled by this dataset). Identifiers are pseudonymous (salted hashes), never the source IDs.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from cxr_tfp.labels import FINDINGS

NUM_FINDINGS = len(FINDINGS)

# Feature keys.
IMAGE = "image"                  # bytes: PNG, uint8 grey, image_size x image_size
IMAGE_SIZE = "image_size"        # int64: side of the stored (square) image
LABELS = "labels"                # float[NUM_FINDINGS]: 1 positive, 0 negative (value where mask=0 is 0)
LABEL_MASK = "label_mask"        # float[NUM_FINDINGS]: 1 where the label is known
GAZE = "gaze_heatmap"            # bytes: PNG uint8 heatmap (max scaled to 255), b"" when absent
BOX_MASK = "box_mask"            # bytes: PNG uint8 mask (255 inside any box/ellipse), b"" when absent
HAS_GAZE = "has_gaze"            # int64 0/1
HAS_BOXES = "has_boxes"          # int64 0/1
HAS_ANNOTATION = "has_annotation"  # int64 0/1: has_gaze or has_boxes
VIEW = "view"                    # bytes: PA, AP, LL, ... or UNKNOWN
DATASET = "dataset"              # bytes: nih, mimic, egd, reflacx, dicom, synthetic
PATIENT_KEY = "patient_key"      # bytes: salted hash of the patient id (pseudonymous)
EXAMPLE_KEY = "example_key"      # bytes: salted hash of the image id (pseudonymous, unique)

VIEWS = ("PA", "AP", "LL", "UNKNOWN")
# Dataset names: the DATASET feature's values, the adapters' names (cxr_tfp.datasets) and --dataset.
DATASETS = ("nih", "mimic", "egd", "reflacx", "dicom", "synthetic")

# Splits: the records' sub-folders <out>/{train,eval,test}/ and the patient-level split assignment.
TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT = "train", "eval", "test"
SPLITS = (TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT)

# Batch keys: the (x, y) dicts the input pipeline yields (cxr_tfp.input) and the model reads.
X_IMAGE = "image"                # float32 [B, S, S, 1] in [0, 1]
X_ANNOTATION = "annotation"      # float32 [B, S, S, 2]: gaze heatmap, box mask (zeros when absent)
X_HAS_GAZE = "has_gaze"          # float32 [B]
X_HAS_BOXES = "has_boxes"        # float32 [B]
X_FEATURES = "features"          # stage 2's cached backbone feature maps (instead of X_IMAGE)
X_ANN_GRID = "ann_grid"          # stage 2's cached annotations on the feature grid
Y_LABELS = "labels"              # float32 [B, L] over the model's findings
Y_MASK = "mask"                  # float32 [B, L]: 1 where the label is known

# The serving contract (signatures, their inputs/outputs, the asset files) lives in
# cxr_tfp.model_dir.

FEATURE_SPEC: Dict[str, object] = {}


def _build_spec() -> Dict[str, object]:
    import tensorflow as tf  # local: keep `import cxr_tfp.features` light for Beam workers

    return {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        IMAGE_SIZE: tf.io.FixedLenFeature([], tf.int64),
        LABELS: tf.io.FixedLenFeature([NUM_FINDINGS], tf.float32),
        LABEL_MASK: tf.io.FixedLenFeature([NUM_FINDINGS], tf.float32),
        GAZE: tf.io.FixedLenFeature([], tf.string, default_value=b""),
        BOX_MASK: tf.io.FixedLenFeature([], tf.string, default_value=b""),
        HAS_GAZE: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        HAS_BOXES: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        HAS_ANNOTATION: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        VIEW: tf.io.FixedLenFeature([], tf.string, default_value=b"UNKNOWN"),
        DATASET: tf.io.FixedLenFeature([], tf.string, default_value=b""),
        PATIENT_KEY: tf.io.FixedLenFeature([], tf.string, default_value=b""),
        EXAMPLE_KEY: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    }


def feature_spec() -> Dict[str, object]:
    """``{key: tf.io.FixedLenFeature}`` for ``tf.io.parse_example``."""
    if not FEATURE_SPEC:
        FEATURE_SPEC.update(_build_spec())
    return dict(FEATURE_SPEC)


@dataclasses.dataclass
class ExampleRecord:
    """One image ready for serialisation (numpy arrays, already resized to the stored size)."""

    image: np.ndarray                       # uint8 [S, S]
    labels: np.ndarray                      # float32 [NUM_FINDINGS]
    label_mask: np.ndarray                  # float32 [NUM_FINDINGS]
    patient_key: str
    example_key: str
    dataset: str
    view: str = "UNKNOWN"
    gaze: Optional[np.ndarray] = None       # float or uint8 [S, S]; None when absent
    box_mask: Optional[np.ndarray] = None   # uint8/bool [S, S]; None when absent


def encode_png(array: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as a grey PNG (Pillow: no TensorFlow needed on Beam workers)."""
    import io

    from PIL import Image

    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {array.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _to_uint8_map(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    peak = float(arr.max()) if arr.size else 0.0
    if peak <= 0:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)


def example_values(rec: ExampleRecord) -> Dict[str, Tuple[str, list]]:
    """The feature values of one record as plain Python: ``{key: (kind, values)}``.

    ``kind`` is ``bytes``, ``float`` or ``int64``. The one definition of how a record becomes
    features: :func:`to_example` and the TensorFlow-free Beam writer
    (:mod:`cxr_tfp.records.example_codec`) both serialise exactly this.
    """
    size = int(rec.image.shape[0])
    if rec.image.shape != (size, size):
        raise ValueError(f"image must be square 2-D, got {rec.image.shape}")
    for name, m in (("gaze", rec.gaze), ("box_mask", rec.box_mask)):
        if m is not None and m.shape != rec.image.shape:
            raise ValueError(f"{name} shape {m.shape} does not match image {rec.image.shape}")
    labels = np.asarray(rec.labels, np.float32).reshape(-1)
    mask = np.asarray(rec.label_mask, np.float32).reshape(-1)
    if labels.shape != (NUM_FINDINGS,) or mask.shape != (NUM_FINDINGS,):
        raise ValueError(f"labels/mask must have {NUM_FINDINGS} values")
    has_gaze = rec.gaze is not None
    has_boxes = rec.box_mask is not None
    gaze_png = encode_png(_to_uint8_map(rec.gaze)) if has_gaze else b""
    box_png = encode_png((np.asarray(rec.box_mask) > 0).astype(np.uint8) * 255) if has_boxes else b""
    return {
        IMAGE: ("bytes", [encode_png(np.asarray(rec.image, np.uint8))]),
        IMAGE_SIZE: ("int64", [size]),
        LABELS: ("float", (labels * mask).tolist()),
        LABEL_MASK: ("float", mask.tolist()),
        GAZE: ("bytes", [gaze_png]),
        BOX_MASK: ("bytes", [box_png]),
        HAS_GAZE: ("int64", [int(has_gaze)]),
        HAS_BOXES: ("int64", [int(has_boxes)]),
        HAS_ANNOTATION: ("int64", [int(has_gaze or has_boxes)]),
        VIEW: ("bytes", [(rec.view or "UNKNOWN").encode()]),
        DATASET: ("bytes", [rec.dataset.encode()]),
        PATIENT_KEY: ("bytes", [rec.patient_key.encode()]),
        EXAMPLE_KEY: ("bytes", [rec.example_key.encode()]),
    }


def to_example(rec: ExampleRecord):
    """Serialise an :class:`ExampleRecord` to a ``tf.train.Example``."""
    import tensorflow as tf

    def feature(kind: str, values: list):
        if kind == "bytes":
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if kind == "float":
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    feats = {k: feature(kind, vals) for k, (kind, vals) in example_values(rec).items()}
    return tf.train.Example(features=tf.train.Features(feature=feats))


def parse_examples(serialized) -> Mapping[str, object]:
    """Parse a batch of serialized examples with the contract's spec (TF graph op)."""
    import tensorflow as tf

    return tf.io.parse_example(serialized, feature_spec())
