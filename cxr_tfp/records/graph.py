"""The build's Beam graph: work shards -> per-image processing -> split examples, dead letters, stats.

:func:`examples_transform` is the graph as one reusable ``PTransform``; the standalone build
(:mod:`cxr_tfp.records.build`) and the TFX ExampleGen apply it, so both produce the same records.
Everything here is module level so that Beam workers can unpickle it; workers import no TensorFlow.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from cxr_tfp.datasets.base import SourceRecord
from cxr_tfp.features import SPLITS
from cxr_tfp.records.accounting import empty_stats
from cxr_tfp.records.process import ProcessConfig, process_record

RECORDS_PER_WORK_SHARD = 2000


def _load_work_shard(path: str, key: bytes) -> List[SourceRecord]:
    from cxr_tfp.workfiles import read_shard

    return read_shard(path, key)


class _Progress:
    """Per-worker counter written to OUT/.progress/<pid>-<n> (read by the launcher's progress thread)."""

    def __init__(self, folder: Optional[str]):
        self.folder, self.count, self.last = folder, 0, 0.0
        self.path = None

    def tick(self, force: bool = False) -> None:
        self.count += 1
        if not self.folder:
            return
        now = time.monotonic()
        if force or now - self.last > 0.5:
            self.last = now
            try:
                if self.path is None:
                    self.path = os.path.join(self.folder, f"{os.getpid()}-{id(self)}")
                tmp = self.path + ".tmp"
                with open(tmp, "w") as fh:
                    fh.write(str(self.count))
                os.replace(tmp, self.path)
            except OSError:
                self.folder = None  # not a local file system: no progress, no failure


def _make_dofn():
    import apache_beam as beam

    class ProcessDoFn(beam.DoFn):
        def __init__(self, cfg: ProcessConfig, progress_dir: Optional[str]):
            self.cfg, self.progress_dir = cfg, progress_dir
            self.progress = None

        def setup(self):
            import cxr_tfp.records.example_codec  # noqa: F401  (TensorFlow-free serialisation)
            self.progress = _Progress(self.progress_dir)

        def process(self, rec):
            ok, dead = process_record(rec, self.cfg)
            for d in dead:
                yield beam.pvalue.TaggedOutput("dead", json.dumps(d, sort_keys=True))
            if ok is not None:
                split, data, stats = ok
                yield beam.pvalue.TaggedOutput(split, data)
                yield beam.pvalue.TaggedOutput("stats", stats)
            self.progress.tick()

        def finish_bundle(self):
            if self.progress is not None and self.progress.count:
                self.progress.count -= 1
                self.progress.tick(force=True)

    return ProcessDoFn


def _make_stats_combine():
    import apache_beam as beam

    class StatsCombine(beam.CombineFn):
        def create_accumulator(self):
            return empty_stats()

        def add_input(self, acc, s):
            sp = s["split"]
            for key, val in (("written", 1), ("gaze", s["gaze"]), ("boxes", s["boxes"]),
                             ("any", int(bool(s["gaze"] or s["boxes"])))):
                acc[key][sp] = acc[key].get(sp, 0) + val
            for key in ("pos", "known"):
                d = acc[key].setdefault(sp, {})
                for i in s[key]:
                    d[str(i)] = d.get(str(i), 0) + 1
            acc["ann_ok"] += s["ann_ok"]
            return acc

        def merge_accumulators(self, accs):
            out = self.create_accumulator()
            for a in accs:
                for key in ("written", "gaze", "boxes", "any"):
                    for sp, n in a[key].items():
                        out[key][sp] = out[key].get(sp, 0) + n
                for key in ("pos", "known"):
                    for sp, d in a[key].items():
                        o = out[key].setdefault(sp, {})
                        for i, n in d.items():
                            o[i] = o.get(i, 0) + n
                out["ann_ok"] += a["ann_ok"]
            return out

        def extract_output(self, acc):
            return acc

    return StatsCombine


def write_work_shards(records: Sequence[SourceRecord], cfg: ProcessConfig, work: Path) -> Tuple[List[str], bytes]:
    """Seal and encrypt the records into owner-only work shards under ``work``; return (paths, key).

    ``work`` must be visible to every Beam worker (local disk for the DirectRunner, the pipeline's
    shared storage mounted on every worker for Dataflow / Flink / Spark). See :mod:`cxr_tfp.workfiles`.
    """
    from cxr_tfp.workfiles import new_key, seal_identifiers, write_shard

    Path(work).mkdir(mode=0o700, parents=True, exist_ok=True)
    key = new_key()  # this run only, never written to disk: leftover shards stay unreadable
    sealed = seal_identifiers(records, cfg.salt, cfg.split_fractions)
    shards = []
    for i in range(0, max(len(sealed), 1), RECORDS_PER_WORK_SHARD):
        p = f"{str(work).rstrip('/')}/records-{i // RECORDS_PER_WORK_SHARD:05d}.bin"
        write_shard(p, sealed[i:i + RECORDS_PER_WORK_SHARD], key)
        shards.append(p)
    return shards, key


def examples_transform(shards: Sequence[str], key: bytes, cfg: ProcessConfig,
                       progress_dir: Optional[str] = None):
    """The build's Beam graph as one ``PTransform`` applied to a pipeline root (``p | transform``).

    Work shards -> records -> (reshuffled) per-image processing -> a dict of PCollections:
    ``train`` / ``eval`` / ``test`` (serialized tf.Examples, bytes), ``dead`` (dead-letter JSON
    lines) and ``stats`` (one combined accounting dict, read by
    :func:`cxr_tfp.records.accounting.summarise`). The standalone build
    (:func:`cxr_tfp.records.build.build`) and the TFX ExampleGen both apply it, so the two produce
    the same records.
    """
    import apache_beam as beam

    ProcessDoFn, StatsCombine = _make_dofn(), _make_stats_combine()

    @beam.ptransform_fn
    def ChestXrayExamples(root):  # noqa: N802  (Beam transform naming)
        recs = (root | "WorkShards" >> beam.Create(list(shards))
                | "LoadRecords" >> beam.FlatMap(_load_work_shard, key)
                | "Distribute" >> beam.Reshuffle())
        res = recs | "Process" >> beam.ParDo(ProcessDoFn(cfg, progress_dir)).with_outputs(
            "dead", "stats", *SPLITS)
        out = {sp: res[sp] for sp in SPLITS}
        out["dead"] = res.dead
        out["stats"] = res.stats | "Stats" >> beam.CombineGlobally(StatsCombine())
        return out

    return ChestXrayExamples()  # pylint: disable=no-value-for-parameter
