"""tf.data input pipeline over the contract's TFRecords: shared by training, evaluation and TFX.

Yields ``(x, y)`` batches (keys: ``cxr_tfp.features.X_*`` / ``Y_*``):
- ``x["image"]``: float32 ``[B, S, S, 1]`` in [0, 1]
- ``x["annotation"]``: float32 ``[B, S, S, 2]``: channel 0 gaze heatmap, channel 1 box mask (zeros when absent)
- ``x["has_gaze"]``, ``x["has_boxes"]``: float32 ``[B]``
- ``y["labels"]``, ``y["mask"]``: float32 ``[B, L]`` over the requested findings
With ``with_meta=True`` a third element carries ``patient_key``, ``example_key``, ``view``, ``dataset``
(strings ``[B]``) for evaluation and slicing.
"""
from __future__ import annotations

from typing import List, Sequence, Union

from cxr_tfp import features as F
from cxr_tfp.labels import indices
from cxr_tfp.preprocess import decode_image_tensor, decode_map

FilePattern = Union[str, Sequence[str]]


def list_files(pattern: FilePattern) -> List[str]:
    """Expand a glob, directory or list of them to TFRecord files; raise if nothing matches."""
    import tensorflow as tf

    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    files: List[str] = []
    for p in patterns:
        if tf.io.gfile.isdir(p):
            p = p.rstrip("/") + "/*"
        files.extend(sorted(tf.io.gfile.glob(p)))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return files


def parse_batch(serialized, image_size: int, findings: Sequence[str], with_meta: bool = False):
    """Parse and preprocess a batch of serialized tf.Examples into ``(x, y[, meta])``."""
    import tensorflow as tf

    feats = F.parse_examples(serialized)
    cols = tf.constant(indices(findings), tf.int32)
    images = tf.map_fn(lambda b: decode_image_tensor(b, image_size), feats[F.IMAGE],
                       fn_output_signature=tf.TensorSpec([image_size, image_size, 1], tf.float32))
    gaze = tf.map_fn(lambda b: decode_map(b, image_size), feats[F.GAZE],
                     fn_output_signature=tf.TensorSpec([image_size, image_size, 1], tf.float32))
    boxes = tf.map_fn(lambda b: decode_map(b, image_size), feats[F.BOX_MASK],
                      fn_output_signature=tf.TensorSpec([image_size, image_size, 1], tf.float32))
    x = {
        F.X_IMAGE: images,
        F.X_ANNOTATION: tf.concat([gaze, boxes], axis=-1),
        F.X_HAS_GAZE: tf.cast(feats[F.HAS_GAZE], tf.float32),
        F.X_HAS_BOXES: tf.cast(feats[F.HAS_BOXES], tf.float32),
    }
    y = {
        F.Y_LABELS: tf.gather(feats[F.LABELS], cols, axis=1),
        F.Y_MASK: tf.gather(feats[F.LABEL_MASK], cols, axis=1),
    }
    if not with_meta:
        return x, y
    meta = {k: feats[k] for k in (F.PATIENT_KEY, F.EXAMPLE_KEY, F.VIEW, F.DATASET)}
    return x, y, meta


def make_dataset(pattern: FilePattern, image_size: int, findings: Sequence[str], batch_size: int,
                 *, shuffle: bool = False, repeat: bool = False, annotated_only: bool = False,
                 with_meta: bool = False, seed: int = 0, compression: str = "GZIP"):
    """A batched, prefetched ``tf.data.Dataset`` over TFRecords matching ``pattern``.

    ``annotated_only`` keeps examples with a gaze heatmap or a box mask (the stage-2 subset).
    Batches are parsed in parallel and always delivered in a reproducible order: with ``shuffle``
    the order is fixed by ``seed`` (re-drawn each epoch), so two runs with one seed see the same batches.
    """
    import tensorflow as tf

    files = list_files(pattern)
    ds = tf.data.TFRecordDataset(files, compression_type=compression or None,
                                 num_parallel_reads=min(len(files), 4))
    if annotated_only:
        spec = {F.HAS_ANNOTATION: F.feature_spec()[F.HAS_ANNOTATION]}
        ds = ds.filter(lambda s: tf.io.parse_single_example(s, spec)[F.HAS_ANNOTATION] > 0)
    if shuffle:
        ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size)
    ds = ds.map(lambda s: parse_batch(s, image_size, findings, with_meta),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
