"""Build sharded TFRecords from a chest X-ray dataset with Apache Beam.

    python -m cxr_tfp.records.build --dataset {nih,mimic,egd,reflacx,dicom,synthetic} --root DIR --out DIR \
        [--image-size 256] [--workers 2] [--max-rejected-fraction 0.1] [adapter options] [Beam options]

Writes::

    OUT/train/data-SSSSS-of-NNNNN.tfrecord.gz   gzip TFRecords of tf.Example (cxr_tfp.features contract)
    OUT/eval/...  OUT/test/...
    OUT/dead_letters.jsonl                      one JSON line per rejected input: source, stage, reason, kind
    OUT/summary.json                            counts (see below)

Modules: this one is the launcher (options, staging, the Beam run, the CLI); the Beam graph is
:mod:`cxr_tfp.records.graph` (a reusable ``PTransform``), the per-image work
:mod:`cxr_tfp.records.process`, the summary and dead letters :mod:`cxr_tfp.records.accounting`, the
byte-reproducible shard writer :mod:`cxr_tfp.records.shards`.

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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cxr_tfp.records.process import ProcessConfig
from cxr_tfp.records.accounting import (TIMING_KEYS, annotation_line, check_fraction, empty_stats, rejected_line, summarise,
                                        write_dead_letters)
from cxr_tfp.records.graph import examples_transform, write_work_shards
from cxr_tfp.records.shards import SHARD_SUFFIX, fill_empty_shards, num_shards, write_sorted_shards
from cxr_tfp.datasets import DATASETS, get_adapter
from cxr_tfp.datasets.base import DatasetLayoutError, Rejected, SourceRecord
from cxr_tfp.io.images import RESIZE_MODES
from cxr_tfp.features import SPLITS
from cxr_tfp.privacy import parse_fractions
from cxr_tfp.cli import cli_main

DEFAULT_IMAGE_SIZE = 256
DEFAULT_WORKERS = 2
DEFAULT_MAX_REJECTED_FRACTION = 0.1
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


def split_shard_counts(n_records: int, cfg: ProcessConfig) -> Dict[str, int]:
    """Shards per split, fixed from the input size (byte-reproducible output, see records/shards.py)."""
    return {sp: num_shards(int(math.ceil(n_records * frac))) for sp, frac in zip(SPLITS, cfg.split_fractions)}


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

    out = S.real_out(out)   # a symlinked --out: write where it points, keep the link
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
    say(annotation_line(summary))
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
        summary = summarise(dataset, root, out, cfg, adapter, [], pre_rejected, [], empty_stats(),
                             time.monotonic() - t0, max_rej, "none", workers)
        # The images were never processed: count them as inputs that were not written.
        summary["in"] = n_in_upper
        summary["examples"]["in"] += len(records)
        summary["annotations"]["in"] += n_ann
        summary["rejected_fraction"] = len(pre_rejected) / n_in_upper
        msg = check_fraction(dict(summary, rejected=len(pre_rejected)), max_rej)
        summary.update(status="failed", error=msg + " (failed before processing images)", out=str(final_out))
        write_dead_letters(out, [rejected_line(r, dataset) for r in pre_rejected], redact_sources, salt)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        raise RejectedFractionError(summary["error"], summary)

    worker_dead, stats, runner, used = _run_beam(records, out, cfg, beam_args or [], workers, say,
                                                 show_progress)
    summary = summarise(dataset, root, out, cfg, adapter, records, pre_rejected, worker_dead, stats,
                         time.monotonic() - t0, max_rej, runner, used)
    write_dead_letters(out, [rejected_line(r, dataset) for r in pre_rejected] + worker_dead,
                        redact_sources, salt)
    assert summary["in"] == summary["written"] + summary["rejected"], "accounting bug: in != written + rejected"
    msg = check_fraction(summary, max_rej)
    summary["out"] = str(final_out)
    if msg:
        summary.update(status="failed", error=msg)
    # Timings stay out of summary.json (returned and printed only): the file is byte-reproducible.
    (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k not in TIMING_KEYS},
                                                 indent=2) + "\n")
    if msg:
        raise RejectedFractionError(msg, summary)
    return summary


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
    stats = json.loads(stats_lines[0]) if stats_lines else empty_stats()
    for name in (".work", ".progress", ".beam_dead", ".beam_stats"):
        shutil.rmtree(out / name, ignore_errors=True)
    return worker_dead, stats, runner, (workers if is_direct else None)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cxr_tfp.records.build",
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
