"""Small contract TFRecords for the model/train/export tests (written with features.to_example).

Each positive finding draws a faint square at a random place; its box mask and a gaze blob mark it.
Finding k's square has side 6 + 2k px, so findings are told apart by size and need localisation.
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from cxr_tfp import features as F
from cxr_tfp.labels import FINDINGS, SYNTHETIC_FINDINGS


def make_records(n: int, size: int = 64, seed: int = 0, annotated_fraction: float = 0.5,
                 gaze_only_fraction: float = 0.0, unknown_fraction: float = 0.1) -> List[F.ExampleRecord]:
    rng = np.random.default_rng(seed)
    cols = [FINDINGS.index(f) for f in SYNTHETIC_FINDINGS]
    out = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = rng.normal(0.35, 0.08, (size, size))
        labels = np.zeros(F.NUM_FINDINGS, np.float32)
        mask = np.zeros(F.NUM_FINDINGS, np.float32)
        box = np.zeros((size, size), np.uint8)
        gaze = np.zeros((size, size), np.float32)
        for k, c in enumerate(cols):
            mask[c] = 0.0 if rng.random() < unknown_fraction else 1.0
            if rng.random() < 0.4:
                labels[c] = 1.0
                side = 6 + 2 * k
                r0, c0 = rng.integers(2, size - side - 2, 2)
                img[r0:r0 + side, c0:c0 + side] += 0.25
                box[r0:r0 + side, c0:c0 + side] = 1
                cy, cx = r0 + side / 2, c0 + side / 2
                gaze += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (side / 2) ** 2))
        labels *= mask
        annotated = rng.random() < annotated_fraction and box.any()
        gaze_only = annotated and rng.random() < gaze_only_fraction
        out.append(F.ExampleRecord(
            image=np.clip(img * 255, 0, 255).astype(np.uint8), labels=labels, label_mask=mask,
            patient_key=f"p{seed}-{i // 2}", example_key=f"e{seed}-{i}", dataset="synthetic",
            gaze=gaze if annotated else None, box_mask=None if (not annotated or gaze_only) else box))
    return out


def write_split(directory: str, records: List[F.ExampleRecord], shards: int = 2) -> str:
    import tensorflow as tf

    os.makedirs(directory, exist_ok=True)
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = [tf.io.TFRecordWriter(os.path.join(directory, f"part-{s:05d}.tfrecord.gz"), opts)
               for s in range(shards)]
    for i, rec in enumerate(records):
        writers[i % shards].write(F.to_example(rec).SerializeToString())
    for w in writers:
        w.close()
    return directory


def write_dataset(root: str, n_train: int = 96, n_eval: int = 48, size: int = 64, seed: int = 0,
                  annotated_fraction: float = 0.5, **kw) -> str:
    """``root/train`` and ``root/eval`` like the data build output; returns ``root``."""
    write_split(os.path.join(root, "train"), make_records(n_train, size, seed, annotated_fraction, **kw))
    write_split(os.path.join(root, "eval"), make_records(n_eval, size, seed + 1000, annotated_fraction, **kw))
    return root
