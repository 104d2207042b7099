"""Build sharded TFRecords from a chest X-ray dataset with Apache Beam.

    python -m cxr_tfp.data.build --dataset {nih,mimic,egd,reflacx,dicom,synthetic} --root DIR --out DIR \
        [--image-size 256] [--workers 2] [--max-rejected-fraction 0.1] [adapter options] [Beam options]

Writes::

    OUT/train/data-SSSSS-of-NNNNN.tfrecord.gz   gzip TFRecords of tf.Example (cxr_tfp.features contract)
    OUT/eval/...  OUT/test/...
    OUT/dead_letters.jsonl                      one JSON line per rejected input: source, stage, reason, kind
    OUT/summary.json                            counts (see below)

How it runs: the adapter reads the dataset's tables on this machine (fails at once on a wrong
``--root`` or a missing label table) and yields one record per image plus the inputs it already
knows are bad. The records go to Beam (DirectRunner by default: ``--workers`` processes in
``multi_processing`` mode; any other Beam option, e.g. ``--runner=DataflowRunner`` or
``--runner=FlinkRunner --flink_master=...``, passes through unchanged). Each worker reads and
decodes the image (Pillow / pydicom), resizes it, draws its annotations, assigns the patient's
split, hashes the identifiers and serialises the tf.Example; failures leave through a tagged
dead-letter output, so one bad file never stops the run. ``--root`` and ``--out`` must be visible
to every worker (local disk, or a shared / FUSE-mounted file system on a cluster); ship the package
to remote workers with ``--setup_file ./setup.py``.

Accounting (``summary.json``): an *input* is an image row (or DICOM file) or an annotation input
(one box row, one ellipse, one fixation set). ``in == written + rejected`` always holds, where
``written`` counts inputs that reached a TFRecord (examples and the annotations drawn into them) and
``rejected`` the dead-letter lines. ``examples`` and ``annotations`` break the same down by kind;
``written_per_split`` counts examples per split; ``positives`` / ``labelled`` count, per split and
finding, examples with a positive / known label; ``annotated`` counts examples with gaze, boxes or
either. Rows skipped on purpose (label rows of images absent from a partial download, filtered
views) are listed under ``skipped`` and are not inputs. The run fails (non-zero exit) when
``rejected / in`` exceeds ``--max-rejected-fraction``; the outputs and ``summary.json`` (``status:
failed``) go to ``OUT.failed/`` so the dead letters can be inspected, and ``OUT`` is left as it was.

Nothing lost (:mod:`cxr_tfp.staging`): the build writes into ``.OUT.staging/`` beside ``OUT`` (owner-only)
and swaps it in only when shards, dead letters and summary are complete; a killed or failed build
leaves the previous ``OUT`` byte-for-byte intact, and the next run removes its staging folder
(Beam temp files included). A second build into the same ``OUT`` is refused while the first runs
(``.OUT.lock`` names the holder). ``OUT`` must be new, empty or a previous build. The records handed
to the workers are sealed (:mod:`cxr_tfp.workfiles`): salted keys, encrypted, 0600.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from cxr_tfp.data.shards import fill_empty_shards, num_shards, write_sorted_shards
from cxr_tfp.data.process import ProcessConfig, dead_letter, process_record
from cxr_tfp.datasets import DATASETS, get_adapter
from cxr_tfp.datasets.base import DatasetLayoutError, Rejected, SourceRecord
from cxr_tfp.io.images import RESIZE_MODES
from cxr_tfp.labels import FINDINGS
from cxr_tfp.privacy import SPLITS, parse_fractions, pseudonym, salt_fingerprint
from cxr_tfp.cli import cli_main

DEFAULT_IMAGE_SIZE = 256
DEFAULT_WORKERS = 2
DEFAULT_MAX_REJECTED_FRACTION = 0.1
SHARD_SUFFIX = ".tfrecord.gz"
RECORDS_PER_WORK_SHARD = 2000
# Starting a DirectRunner worker process costs seconds (it imports TensorFlow for to_example), so
# small builds run in-process: one extra worker per this many images, up to --workers.
IMAGES_PER_EXTRA_WORKER = 250

log = logging.getLogger("cxr_tfp.build")


class BuildError(RuntimeError):
    """The build failed for a reason the user can act on (message names it)."""


class RejectedFractionError(BuildError):
    def __init__(self, message: str, summary: Dict[str, Any]):
        super().__init__(message)
        self.summary = summary


# ---------------------------------------------------------------------------------------------
# Beam pieces (module level so that workers can unpickle them)
# ---------------------------------------------------------------------------------------------
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
            import cxr_tfp.data.example_codec  # noqa: F401  (TensorFlow-free serialisation)
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
            return {"written": {}, "pos": {}, "known": {}, "gaze": {}, "boxes": {}, "any": {}, "ann_ok": 0}

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


# ---------------------------------------------------------------------------------------------
# Launcher side
# ---------------------------------------------------------------------------------------------
def _pipeline_options(beam_args: Sequence[str], workers: int):
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    args = list(beam_args or [])
    opts = PipelineOptions(args)
    runner = opts.view_as(StandardOptions).runner or "DirectRunner"
    is_direct = runner.split(".")[-1] in ("DirectRunner", "direct", "SwitchingDirectRunner")
    if is_direct:
        direct = opts.view_as(DirectOptions)
        if not any(a.startswith("--direct_num_workers") for a in args):
            direct.direct_num_workers = max(1, int(workers))
        if not any(a.startswith("--direct_running_mode") for a in args):
            direct.direct_running_mode = "multi_processing" if int(workers) > 1 else "in_memory"
    return opts, runner, is_direct


def _progress_thread(folder: Path, total: int, stop: threading.Event, stream) -> threading.Thread:
    def run():
        t0, last_done = time.monotonic(), -1
        while not stop.wait(2.0):
            done = 0
            try:
                for f in folder.iterdir():
                    if not f.name.endswith(".tmp"):
                        try:
                            done += int(f.read_text() or 0)
                        except (OSError, ValueError):
                            pass
            except OSError:
                continue
            el = time.monotonic() - t0
            pct = 100.0 * done / total if total else 100.0
            if done != last_done and done > 0:
                print(f"[build] processed {done}/{total} images ({pct:.0f}%), {done / max(el, 1e-6):.1f} images/s",
                      file=stream, flush=True)
                last_done = done

    th = threading.Thread(target=run, name="cxr-build-progress", daemon=True)
    th.start()
    return th


def _read_lines(prefix: Path) -> List[str]:
    lines: List[str] = []
    for f in sorted(prefix.parent.glob(prefix.name + "*")):
        if f.is_file():
            lines.extend(ln for ln in f.read_text().splitlines() if ln.strip())
    return lines


def _rejected_line(r: Rejected, dataset: str) -> Dict[str, str]:
    return dead_letter(r.source, r.stage, r.reason, r.kind, dataset)


def _summarise(dataset, root, out, cfg, adapter, records, pre_rejected, worker_dead, stats, seconds,
               max_rejected_fraction, runner, workers) -> Dict[str, Any]:
    ex_in = len(records) + sum(1 for r in pre_rejected if r.kind == "example")
    ann_in = sum(r.n_annotation_inputs for r in records) + sum(1 for r in pre_rejected if r.kind == "annotation")
    dead_all = [_rejected_line(r, dataset) for r in pre_rejected] + worker_dead
    ex_rej = sum(1 for d in dead_all if d["kind"] == "example")
    ann_rej = sum(1 for d in dead_all if d["kind"] == "annotation")
    written_per_split = {sp: int(stats["written"].get(sp, 0)) for sp in SPLITS}
    ex_written = sum(written_per_split.values())
    ann_written = int(stats["ann_ok"])
    n_in = ex_in + ann_in
    n_rej = ex_rej + ann_rej

    def per_finding(key):
        return {sp: {FINDINGS[int(i)]: n for i, n in sorted(stats[key].get(sp, {}).items(), key=lambda kv: int(kv[0]))}
                for sp in SPLITS}

    labelled = per_finding("known")
    positives = {sp: {f: per_finding("pos")[sp].get(f, 0) for f in labelled[sp]} for sp in SPLITS}
    by_stage = Counter(d["stage"] for d in dead_all)
    by_reason = Counter(f"{d['stage']}: {d['reason']}" for d in dead_all)
    return {
        "status": "ok",
        "dataset": dataset,
        "root": str(root),
        "out": str(out),
        "image_size": cfg.image_size,
        "resize_mode": cfg.resize_mode,
        "split_fractions": list(cfg.split_fractions),
        "salt_fingerprint": salt_fingerprint(cfg.salt),
        "runner": runner,
        "workers": workers,
        "in": n_in,
        "written": ex_written + ann_written,
        "rejected": n_rej,
        "rejected_fraction": (n_rej / n_in) if n_in else 0.0,
        "max_rejected_fraction": max_rejected_fraction,
        "examples": {"in": ex_in, "written": ex_written, "rejected": ex_rej},
        "annotations": {"in": ann_in, "written": ann_written, "rejected": ann_rej},
        "written_per_split": written_per_split,
        "positives": positives,
        "labelled": labelled,
        "annotated": {sp: {"gaze": int(stats["gaze"].get(sp, 0)), "boxes": int(stats["boxes"].get(sp, 0)),
                           "any": int(stats["any"].get(sp, 0))} for sp in SPLITS},
        "rejected_by_stage": dict(sorted(by_stage.items())),
        # Ties ordered by reason, not by arrival order (which the runner decides): reproducible bytes.
        "top_rejection_reasons": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
        "skipped": dict(sorted(getattr(adapter, "skipped", {}).items())),
        "files": {sp: sorted(f.name for f in (out / sp).glob(f"*{SHARD_SUFFIX}")) for sp in SPLITS},
        "seconds": round(seconds, 3),
        "images_per_second": round(ex_in / seconds, 2) if seconds > 0 else None,
    }


def _write_dead_letters(out: Path, lines: List[Dict[str, str]], redact_sources: bool, salt) -> None:
    rows = []
    for d in lines:
        d = dict(d)
        if redact_sources:
            d["source"] = "redacted:" + pseudonym(d["source"], "source", "source", salt, 16)
        rows.append(json.dumps(d, sort_keys=True))
    rows.sort()
    (out / "dead_letters.jsonl").write_text("".join(r + "\n" for r in rows))


def _check_fraction(summary: Dict[str, Any], limit: float) -> Optional[str]:
    if summary["in"] and summary["rejected"] / summary["in"] > limit:
        reasons = "; ".join(f"{k} ({v})" for k, v in list(summary["top_rejection_reasons"].items())[:3])
        return (f"rejected {summary['rejected']} of {summary['in']} inputs "
                f"({100.0 * summary['rejected'] / summary['in']:.1f}%), more than --max-rejected-fraction "
                f"{limit:g}; most common: {reasons}. See dead_letters.jsonl")
    return None


def parse_options(dataset: str, image_size: int, adapter_options: Dict[str, Any]
                  ) -> Tuple[ProcessConfig, Dict[str, Any], Dict[str, Any]]:
    """Split build options into (worker config, adapter options, build options).

    Build options: ``max_rejected_fraction``, ``redact_sources``, ``progress``. Raises ValueError
    naming a bad value. Shared by :func:`build` and the TFX ExampleGen, so both read options alike.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    opts = dict(adapter_options)
    max_rej = float(opts.pop("max_rejected_fraction", DEFAULT_MAX_REJECTED_FRACTION))
    resize_mode = opts.pop("resize_mode", "stretch") or "stretch"
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}")
    redact_sources = bool(opts.pop("redact_sources", False))
    allow_burned_in = bool(opts.pop("keep_burned_in", False))
    max_pixels = opts.pop("max_pixels", None)
    if max_pixels is not None and int(max_pixels) <= 0:
        raise ValueError("max_pixels must be positive")
    show_progress = bool(opts.pop("progress", True))
    image_size = int(image_size)
    if image_size < 16:
        raise ValueError("image_size must be at least 16")
    salt = opts.get("salt")
    fractions = parse_fractions(opts.get("split_fractions"))
    opts["split_fractions"] = fractions
    cfg = ProcessConfig(image_size=image_size, resize_mode=resize_mode, salt=salt, split_fractions=fractions,
                        max_pixels=None if max_pixels is None else int(max_pixels),
                        allow_burned_in=allow_burned_in, redact_sources=redact_sources)
    return cfg, opts, {"max_rejected_fraction": max_rej, "redact_sources": redact_sources,
                       "progress": show_progress}


def read_inputs(dataset: str, root: Path, cfg: ProcessConfig, opts: Dict[str, Any], say=lambda msg: None):
    """Run the adapter on this machine: ``(adapter, records, inputs already rejected)``.

    Raises :class:`~cxr_tfp.datasets.base.DatasetLayoutError` before anything is written.
    """
    adapter = get_adapter(dataset, root, image_size=cfg.image_size, **opts)
    say(f"reading the {dataset} tables under {root}")
    adapter.check()  # fails at once, before anything is written
    if getattr(adapter, "generated", False):
        say(f"generated the synthetic dataset in {root}")
    records: List[SourceRecord] = []
    pre_rejected: List[Rejected] = []
    for item in adapter.items():
        (records if isinstance(item, SourceRecord) else pre_rejected).append(item)
    n_ann = sum(r.n_annotation_inputs for r in records)
    say(f"{len(records)} images to process ({n_ann} annotation inputs attached), "
        f"{len(pre_rejected)} inputs already rejected, {sum(adapter.skipped.values())} rows skipped")
    return adapter, records, pre_rejected


def build(dataset: str, root, out, image_size: int = DEFAULT_IMAGE_SIZE, workers: int = DEFAULT_WORKERS,
          beam_args: Optional[List[str]] = None, **adapter_options) -> Dict[str, Any]:
    """Build OUT/{train,eval,test}/*.tfrecord.gz, dead_letters.jsonl and summary.json; return the summary.

    Options besides the adapter's own: ``max_rejected_fraction`` (default 0.1), ``resize_mode``
    (stretch / crop / pad), ``salt``, ``split_fractions`` (e.g. ``"0.8,0.1,0.1"``), ``redact_sources``
    (hash the source paths in dead_letters.jsonl), ``progress`` (print progress to stderr, default True).

    Raises :class:`~cxr_tfp.datasets.base.DatasetLayoutError` (wrong root / missing label table, before
    anything is written) and :class:`RejectedFractionError` (after writing, when too many inputs failed).
    """
    t0 = time.monotonic()
    cfg, opts, extra = parse_options(dataset, image_size, adapter_options)
    max_rej, redact_sources, show_progress = (extra["max_rejected_fraction"], extra["redact_sources"],
                                              extra["progress"])
    salt = cfg.salt
    stream = sys.stderr

    def say(msg: str) -> None:
        if show_progress:
            print(f"[build] {msg}", file=stream, flush=True)

    root, out = Path(root).expanduser(), Path(out).expanduser()
    adapter, records, pre_rejected = read_inputs(dataset, root, cfg, opts, say)
    n_ann = sum(r.n_annotation_inputs for r in records)

    from cxr_tfp import staging as S

    # Owner-only (umask 077) for everything the build creates: the records hold medical images.
    with S.OutputLock(out, "build"), S.owner_only_umask():
        for note in S.recover(out):
            say(note)
        S.check_replaceable(out, BUILD_ENTRIES)
        stage = S.make_staging(out)
        try:
            summary = _build_into(stage, out, dataset, root, cfg, adapter, records, pre_rejected, n_ann, max_rej,
                                  redact_sources, salt, beam_args, workers, say, show_progress, t0)
        except RejectedFractionError as exc:
            failed = _keep_failed(stage, out, say)
            msg = str(exc).replace("See dead_letters.jsonl", "")
            raise RejectedFractionError(f"{msg.rstrip('. ')}. {out} was left as it was; see "
                                        f"{failed / 'dead_letters.jsonl'}", exc.summary) from None
        finally:
            if stage.exists() and _incomplete(stage):
                shutil.rmtree(stage, ignore_errors=True)  # killed runs are cleaned by the next recover()
        S.swap_in(stage, out, publish_mode=0o700)  # the records hold medical images: owner-only
        failed = out.parent / f"{out.name}{FAILED_SUFFIX}"
        if failed.is_dir():
            shutil.rmtree(failed, ignore_errors=True)
    wp = summary["written_per_split"]
    say(f"wrote {sum(wp.values())} examples (train {wp['train']}, eval {wp['eval']}, test {wp['test']}), "
        f"rejected {summary['rejected']} of {summary['in']} inputs, in {summary['seconds']:.1f} s -> {out}")
    return summary


BUILD_ENTRIES = ("train", "eval", "test", "dead_letters.jsonl", "summary.json")
FAILED_SUFFIX = ".failed"


def _incomplete(stage: Path) -> bool:
    """True unless ``stage`` holds a complete, successful build (then it is about to be swapped in)."""
    try:
        return json.loads((stage / "summary.json").read_text()).get("status") != "ok"
    except (OSError, ValueError):
        return True


def _keep_failed(stage: Path, out: Path, say) -> Path:
    """A build over --max-rejected-fraction: keep its summary and dead letters in OUT.failed/ (no images)."""
    failed = out.parent / f"{out.name}{FAILED_SUFFIX}"
    shutil.rmtree(failed, ignore_errors=True)
    failed.mkdir(mode=0o700)
    for name in ("summary.json", "dead_letters.jsonl"):
        if (stage / name).exists():
            os.replace(stage / name, failed / name)
    shutil.rmtree(stage, ignore_errors=True)
    say(f"build failed: {out} left as it was; summary and dead letters in {failed}")
    return failed


def _build_into(out: Path, final_out: Path, dataset, root, cfg, adapter, records, pre_rejected, n_ann, max_rej,
                redact_sources, salt, beam_args, workers, say, show_progress, t0) -> Dict[str, Any]:
    """Write a complete build into the staging folder ``out`` (swapped in at ``final_out`` by the caller)."""
    for sp in SPLITS:
        (out / sp).mkdir(parents=True, exist_ok=True)

    # Fail before the heavy part when the tables alone are already over the threshold.
    n_in_upper = len(records) + n_ann + len(pre_rejected)
    if n_in_upper and len(pre_rejected) / n_in_upper > max_rej:
        empty = {"written": {}, "pos": {}, "known": {}, "gaze": {}, "boxes": {}, "any": {}, "ann_ok": 0}
        summary = _summarise(dataset, root, out, cfg, adapter, [], pre_rejected, [], empty,
                             time.monotonic() - t0, max_rej, "none", workers)
        # The images were never processed: count them as inputs that were not written.
        summary["in"] = n_in_upper
        summary["examples"]["in"] += len(records)
        summary["annotations"]["in"] += n_ann
        summary["rejected_fraction"] = len(pre_rejected) / n_in_upper
        msg = _check_fraction(dict(summary, rejected=len(pre_rejected)), max_rej)
        summary.update(status="failed", error=msg + " (failed before processing images)", out=str(final_out))
        _write_dead_letters(out, [_rejected_line(r, dataset) for r in pre_rejected], redact_sources, salt)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        raise RejectedFractionError(summary["error"], summary)

    worker_dead, stats, runner, used = _run_beam(records, out, cfg, beam_args or [], workers, say,
                                                 show_progress)
    summary = _summarise(dataset, root, out, cfg, adapter, records, pre_rejected, worker_dead, stats,
                         time.monotonic() - t0, max_rej, runner, used)
    _write_dead_letters(out, [_rejected_line(r, dataset) for r in pre_rejected] + worker_dead,
                        redact_sources, salt)
    assert summary["in"] == summary["written"] + summary["rejected"], "accounting bug: in != written + rejected"
    msg = _check_fraction(summary, max_rej)
    summary["out"] = str(final_out)
    if msg:
        summary.update(status="failed", error=msg)
    # Timings stay out of summary.json (returned and printed only): the file is byte-reproducible.
    (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k not in TIMING_KEYS},
                                                 indent=2) + "\n")
    if msg:
        raise RejectedFractionError(msg, summary)
    return summary


TIMING_KEYS = ("seconds", "images_per_second")
EMPTY_STATS = {"written": {}, "pos": {}, "known": {}, "gaze": {}, "boxes": {}, "any": {}, "ann_ok": 0}


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
    lines) and ``stats`` (one combined accounting dict, see :func:`_summarise`). The standalone
    build (:func:`build`) and the TFX ExampleGen (``pipeline/example_gen.py``) both apply it, so
    the two produce the same records.
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


def split_shard_counts(n_records: int, cfg: ProcessConfig) -> Dict[str, int]:
    """Shards per split, fixed from the input size (byte-reproducible output, see data/shards.py)."""
    return {sp: num_shards(int(math.ceil(n_records * frac))) for sp, frac in zip(SPLITS, cfg.split_fractions)}


def _run_beam(records: List[SourceRecord], out: Path, cfg: ProcessConfig, beam_args: List[str], workers: int,
              say, show_progress: bool):
    import apache_beam as beam

    if not show_progress:
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
    elif not logging.getLogger("apache_beam").level:
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
    from cxr_tfp.staging import owner_only_umask

    shards, key = write_work_shards(records, cfg, out / ".work")
    if not any(a.startswith("--direct_running_mode") for a in beam_args):
        workers = max(1, min(int(workers), len(records) // IMAGES_PER_EXTRA_WORKER))
    options, runner, is_direct = _pipeline_options(beam_args, workers)
    progress_dir = out / ".progress"
    progress_dir.mkdir(mode=0o700, exist_ok=True)
    mode = options.view_as(__import__("apache_beam.options.pipeline_options", fromlist=["DirectOptions"])
                           .DirectOptions).direct_running_mode if is_direct else ""
    shard_counts = split_shard_counts(len(records), cfg)
    say(f"running Beam ({runner}{f', {mode}, {workers} worker(s)' if is_direct else ''}) on {len(records)} images")
    stop = threading.Event()
    th = _progress_thread(progress_dir, len(records), stop, sys.stderr) if (show_progress and is_direct) else None
    try:
        # Owner-only files for everything Beam writes (temp shards, dead letters, stats): medical images.
        with owner_only_umask(), beam.Pipeline(options=options) as p:
            res = p | "Examples" >> examples_transform(shards, key, cfg,
                                                       str(progress_dir) if is_direct else None)
            # Shards by example-key hash, key-sorted: two builds of the same inputs are byte-identical.
            for sp in SPLITS:
                _ = res[sp] | f"Write_{sp}" >> write_sorted_shards(
                    str(out / sp / "data"), shard_counts[sp], SHARD_SUFFIX)
            _ = res["dead"] | "WriteDead" >> beam.io.WriteToText(
                str(out / ".beam_dead" / "dead"), file_name_suffix=".jsonl")
            _ = (res["stats"] | "StatsJson" >> beam.Map(json.dumps)
                 | "WriteStats" >> beam.io.WriteToText(str(out / ".beam_stats" / "stats"),
                                                       file_name_suffix=".json", num_shards=1))
    finally:
        stop.set()
        if th is not None:
            th.join(timeout=5)
    for sp in SPLITS:
        fill_empty_shards(str(out / sp / "data"), shard_counts[sp], SHARD_SUFFIX)
    worker_dead = [json.loads(ln) for ln in _read_lines(out / ".beam_dead" / "dead")]
    stats_lines = _read_lines(out / ".beam_stats" / "stats")
    stats = json.loads(stats_lines[0]) if stats_lines else dict(EMPTY_STATS)
    for name in (".work", ".progress", ".beam_dead", ".beam_stats"):
        shutil.rmtree(out / name, ignore_errors=True)
    return worker_dead, stats, runner, (workers if is_direct else None)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cxr_tfp.data.build",
        description="Turn a chest X-ray dataset (NIH, MIMIC-CXR-JPG, EGD-CXR, REFLACX, a DICOM folder, or the "
                    "embedded synthetic set) into sharded gzip TFRecords with Apache Beam. Unknown --flags are "
                    "passed to Beam (e.g. --runner=DataflowRunner --project=... --region=...).",
        epilog="Exit codes: 0 ok, 1 too many rejected inputs / runtime failure (full disk, another build "
               "holds --out), 2 bad arguments / wrong --root / bad label table / unwritable --out. "
               "--debug (or CXR_TFP_DEBUG=1) prints tracebacks.")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, help="the dataset folder, in its published layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="stored square side (default 256)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help="DirectRunner worker processes (default 2; 1 = in-process)")
    p.add_argument("--max-rejected-fraction", type=float, default=DEFAULT_MAX_REJECTED_FRACTION,
                   help="fail when more than this fraction of inputs is rejected (default 0.1)")
    p.add_argument("--resize-mode", choices=RESIZE_MODES, default="stretch",
                   help="stretch (default, as the serving signature), crop (centre square) or pad")
    p.add_argument("--salt", default=None, help="salt for keys and splits (default: $CXR_TFP_SALT, else the "
                                                "documented public default)")
    p.add_argument("--split-fractions", default=None, help="train,eval,test fractions (default 0.8,0.1,0.1)")
    p.add_argument("--redact-sources", action="store_true",
                   help="hash source paths in dead_letters.jsonl and echo no DICOM header value at all")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="reject images whose header announces more pixels, before decoding (default "
                        "$CXR_TFP_MAX_PIXELS, else 36000000)")
    p.add_argument("--keep-burned-in", action="store_true", default=None,
                   help="keep DICOMs with BurnedInAnnotation YES (default: dead letters)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    g = p.add_argument_group("adapter options")
    g.add_argument("--views", default=None, help="keep only these views, e.g. PA,AP (nih, mimic)")
    g.add_argument("--no-official-split", dest="use_official_split", action="store_false", default=None,
                   help="ignore official split files; split by salted patient hash")
    g.add_argument("--label-table", default=None, help="nih: path of the Data_Entry table (default: found in root)")
    g.add_argument("--labeler", choices=("chexpert", "negbio"), default=None, help="mimic: label table")
    g.add_argument("--uncertain", choices=("ignore", "zeros", "ones"), default=None,
                   help="mimic/egd/reflacx: uncertain labels (default ignore = mask 0)")
    g.add_argument("--blank", choices=("ignore", "zeros", "ones"), default=None,
                   help="mimic/egd: blank (not mentioned) labels (default zeros)")
    g.add_argument("--image-ext", default=None, help="mimic: image extension, jpg (default) or dcm")
    g.add_argument("--mimic-root", default=None, help="egd/reflacx: folder holding MIMIC-CXR(-JPG) files/")
    g.add_argument("--gaze-sigma-px", type=float, default=None,
                   help="egd: gaze sigma in original-image pixels (default 150)")
    g.add_argument("--min-certainty", type=int, default=None, help="reflacx: certainty counted positive (default 3)")
    g.add_argument("--phases", default=None, help="reflacx: metadata phases to read, e.g. 3 or 1,2,3")
    g.add_argument("--labels-csv", default=None, help="dicom: label table with columns file,Finding Labels")
    g.add_argument("--label-vocabulary", default=None, help="dicom: findings the label table covers (default nih)")
    s = p.add_argument_group("synthetic dataset")
    s.add_argument("--synthetic-patients", type=int, default=None, help="patients to generate (default 60)")
    s.add_argument("--synthetic-images-per-patient", type=int, default=None, help="default 2")
    s.add_argument("--synthetic-annotated-fraction", type=float, default=None, help="default 0.35")
    s.add_argument("--synthetic-control", action="store_true", default=None,
                   help="annotations at random places (carry no information about the findings)")
    s.add_argument("--synthetic-seed", type=int, default=None, help="default 0")
    s.add_argument("--synthetic-contrast", type=float, default=None, help="finding contrast multiplier (default 1)")
    s.add_argument("--synthetic-decoys", type=float, default=None,
                   help="mean number of unlabelled lesion-like decoys per image, outside the lungs (default 0)")
    s.add_argument("--synthetic-shortcut", type=float, default=None,
                   help="train split only: probability that a finding gets a copy of its pattern outside "
                        "the lungs (a spurious cue; eval/test keep --synthetic-decoys); default 0")
    s.add_argument("--synthetic-image-size", type=int, default=None,
                   help="generated image side (default: --image-size)")
    return p


_CORE = {"dataset", "root", "out", "image_size", "workers", "quiet"}


@cli_main
def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    stray = [a for a in beam_args if not a.startswith("-")]
    if stray and not any(b.startswith("--") for b in beam_args):
        parser.error(f"unexpected arguments: {' '.join(stray)}")
    options = {k: v for k, v in vars(args).items() if k not in _CORE and v is not None}
    if not options.get("redact_sources"):
        options.pop("redact_sources", None)
    options["progress"] = not args.quiet
    try:
        build(args.dataset, args.root, args.out, image_size=args.image_size, workers=args.workers,
              beam_args=beam_args, **options)
    except DatasetLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RejectedFractionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
