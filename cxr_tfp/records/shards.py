"""Byte-reproducible TFRecord shards: the same examples give the same files, whatever the runner did.

Beam's ``WriteToTFRecord`` lets the runner decide how many shards there are and which example lands
in which, in bundle order, so two builds of the same inputs differ byte for byte. Here the shard of
an example is a hash of its example key (a salted, stable pseudonym), the number of shards is fixed
from the input size, and each shard is written in example-key order with a fixed gzip header.
Same inputs, salt and options -> identical bytes (tested by building twice).
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable, List, Tuple

from cxr_tfp import features as F
from cxr_tfp.records.example_codec import bytes_feature

EXAMPLES_PER_SHARD = 1000
SHARD_SUFFIX = ".tfrecord.gz"             # OUT/<split>/data-SSSSS-of-NNNNN.tfrecord.gz


def num_shards(n_examples: int, per_shard: int = EXAMPLES_PER_SHARD) -> int:
    """How many shards ``n_examples`` (an upper bound is fine) are spread over."""
    return max(1, int(math.ceil(n_examples / per_shard)))


def shard_name(prefix: str, index: int, count: int, suffix: str) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}{suffix}"


def shard_of(key: bytes, count: int) -> int:
    """Stable shard index of an example key (sha256, not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % count


def write_shard(path: str, examples: Iterable[Tuple[bytes, bytes]]) -> str:
    """Write ``(key, serialized)`` pairs sorted by key as one gzip TFRecord file (mtime 0 in the header)."""
    import gzip

    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.tfrecordio import _TFRecordUtil

    with FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as fh:
            for _, data in sorted(examples, key=lambda kv: kv[0]):
                _TFRecordUtil.write_record(fh, data)
    return path


def write_sorted_shards(prefix: str, count: int, suffix: str):
    """Beam ``PTransform``: serialized tf.Examples -> ``count`` key-sorted shards ``prefix-i-of-n``.

    Empty shards are not written by the pipeline; :func:`fill_empty_shards` adds them afterwards so
    the file set is the same however the examples fell.
    """
    import apache_beam as beam

    def keyed(data: bytes):
        key = bytes_feature(data, F.EXAMPLE_KEY)
        return shard_of(key, count), (key, data)

    def write(item) -> str:
        index, examples = item
        return write_shard(shard_name(prefix, index, count, suffix), list(examples))

    @beam.ptransform_fn
    def SortedShards(pcoll):  # noqa: N802  (Beam transform naming)
        return (pcoll | "KeyByShard" >> beam.Map(keyed)
                | "GroupShards" >> beam.GroupByKey()
                | "WriteShards" >> beam.Map(write))

    return SortedShards()  # pylint: disable=no-value-for-parameter


def fill_empty_shards(prefix: str, count: int, suffix: str) -> List[str]:
    """Write the shards of ``prefix`` that received no example as empty files; return their paths."""
    from apache_beam.io.filesystems import FileSystems

    made = []
    for i in range(count):
        path = shard_name(prefix, i, count, suffix)
        if not FileSystems.exists(path):
            made.append(write_shard(path, []))
    return made
