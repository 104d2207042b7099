"""Tiny learnable TFRecord splits written with the record contract (no dependency on the data build).

Each finding of ``SYNTHETIC_FINDINGS`` draws a bright square in its own quadrant, so even a tiny
model separates positives from negatives within a few steps.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from cxr_tfp import features as F
from cxr_tfp.labels import SYNTHETIC_FINDINGS, indices


def make_record(rng: np.random.Generator, i: int, size: int, split: str,
                view: Optional[str] = None) -> F.ExampleRecord:
    """One synthetic image with 0-2 findings, each a bright square in its quadrant."""
    img = rng.normal(60, 10, (size, size)).clip(0, 255)
    labels = np.zeros(F.NUM_FINDINGS, np.float32)
    mask = np.zeros(F.NUM_FINDINGS, np.float32)
    cols = indices(SYNTHETIC_FINDINGS)
    mask[cols] = 1.0
    half, q = size // 2, size // 4
    box = np.zeros((size, size), np.uint8)
    for k, col in enumerate(cols):
        if rng.random() < 0.4:
            labels[col] = 1.0
            r0, c0 = (k // 2) * half + q // 2, (k % 2) * half + q // 2
            img[r0:r0 + q, c0:c0 + q] = 220
            box[r0:r0 + q, c0:c0 + q] = 1
    annotated = i % 2 == 0
    return F.ExampleRecord(
        image=img.astype(np.uint8), labels=labels, label_mask=mask,
        patient_key=f"p{split}{i // 2:04d}", example_key=f"e{split}{i:05d}", dataset="synthetic",
        view=view or ("PA" if i % 3 else "AP"), box_mask=box if annotated else None)


def write_splits(root: str, sizes: Dict[str, int] = None, image_size: int = 32, seed: int = 0,
                 bad_view_in: Optional[str] = None) -> str:
    """Write ``root/{train,eval,test}/part-0.tfrecord.gz``; ``bad_view_in`` injects an anomaly.

    The anomaly is a ``view`` value outside the contract's closed vocabulary in every example of
    that split.
    """
    import tensorflow as tf

    sizes = sizes or {"train": 48, "eval": 16, "test": 24}
    rng = np.random.default_rng(seed)
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    for split, n in sizes.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        path = os.path.join(root, split, "part-0.tfrecord.gz")
        with tf.io.TFRecordWriter(path, opts) as w:
            for i in range(n):
                view = "SIDEWAYS" if split == bad_view_in else None
                rec = make_record(rng, i, image_size, split, view)
                w.write(F.to_example(rec).SerializeToString())
    return root
