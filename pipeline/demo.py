"""The main job, end to end (``make demo``):

1. generate the embedded synthetic chest X-ray dataset as a raw image folder (span 1),
2. run the whole TFX pipeline locally from that folder (the chest X-ray ExampleGen builds the
   tf.Examples with Beam, then validate, train in two stages, evaluate, push),
3. report the evaluation (blessing, macro / per-finding AUROC by slice),
4. check the pushed SavedModel in TF Serving's ``<model>/<version>/`` layout and print its lineage,
5. serve it (the project's gRPC stand-in for TF Serving) and send one prediction through the
   serving client, printing the findings table.

    python -m pipeline.demo --out demo_out [--patients 500] [--config configs/smoke.yaml] [--rebuild]

Every output lands under ``--out``; the last lines say where.
"""
from __future__ import annotations

import argparse
import logging as pylogging
import os
import sys
import time
from typing import List, Optional

import pipeline  # noqa: F401  (pins Keras 3 before tfx is imported)
from pipeline import configs
from cxr_tfp.cli import cli_main

DEFAULT_PATIENTS = configs.DEMO_PATIENTS
DEFAULT_IMAGE_SIZE = configs.DEMO_IMAGE_SIZE


class _Stages:
    """Numbered stage headers with elapsed times."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.monotonic()
        self._start = self.t0

    def begin(self, title: str) -> None:
        self.n += 1
        self._start = time.monotonic()
        print(f"\n=== [{self.n}/{self.total}] {title}", flush=True)

    def end(self, note: str = "") -> None:
        took = time.monotonic() - self._start
        print(f"--- [{self.n}/{self.total}] done in {took:.1f} s"
              f" (total {time.monotonic() - self.t0:.1f} s){'  ' + note if note else ''}", flush=True)


class _ComponentProgress(pylogging.Handler):
    """Turns LocalDagRunner's log into one line per component start / finish / cache hit."""

    def __init__(self):
        super().__init__(pylogging.INFO)
        self.started = {}
        self.cached = set()
        self.current = "?"

    def emit(self, record: pylogging.LogRecord) -> None:
        msg = record.getMessage()
        now = time.monotonic()
        if msg.startswith("Component ") and msg.endswith(" is running."):
            self.current = msg[len("Component "):-len(" is running.")]
            self.started[self.current] = now
            print(f"    > {self.current} ...", flush=True)
        elif msg.startswith("Component ") and msg.endswith(" is finished."):
            name = msg[len("Component "):-len(" is finished.")]
            took = now - self.started.get(name, now)
            how = "reused from the TFX cache" if name in self.cached else "finished"
            print(f"    < {name} {how} ({took:.1f} s)", flush=True)
        elif msg.startswith("A cached execution"):
            self.cached.add(self.current)
        elif record.levelno >= pylogging.ERROR:
            print(f"    ! {msg.splitlines()[0] if msg else record.levelname}", flush=True)


def _route_tfx_logs(log_path: str) -> None:
    """Full absl/TFX log to ``log_path``; the console gets one line per component."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    logger = pylogging.getLogger("absl")
    # absl's own stderr handler would print every proto TFX logs: keep it for warnings and up only.
    absl_logging.get_absl_handler().setLevel(pylogging.ERROR + 10)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    fh = pylogging.FileHandler(log_path, mode="w")
    fh.setFormatter(pylogging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(fh)
    logger.addHandler(_ComponentProgress())
    logger.setLevel(pylogging.INFO)
    logger.propagate = False  # a library's logging.basicConfig would echo every record


def _sample_test_image(tfrecords: str, out_dir: str, findings) -> tuple:
    """Write the first test example's image as PNG; return (path, its known positive findings)."""
    import numpy as np
    import tensorflow as tf

    from cxr_tfp import features as F
    from cxr_tfp.input import list_files
    from cxr_tfp.labels import indices

    files = list_files(os.path.join(tfrecords, f"Split-{configs.EVALUATOR_SPLIT}"))
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    cols = indices(findings)
    chosen = None
    for raw in ds.take(64):
        ex = F.parse_examples(tf.expand_dims(raw, 0))
        labels = ex[F.LABELS].numpy()[0]
        chosen = (ex[F.IMAGE].numpy()[0], labels)
        if labels[cols].sum() > 0:  # prefer an image with at least one finding
            break
    if chosen is None:
        raise FileNotFoundError(f"no test examples under {tfrecords}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "test_example.png")
    with open(path, "wb") as fh:
        fh.write(chosen[0])
    positives = [f for f, c in zip(findings, cols) if chosen[1][c] > 0.5]
    return path, positives, np.asarray(chosen[1])


def _predict(push_base: str, model_name: str, files: List[str]) -> tuple:
    """Predict through the gRPC stand-in, started as its own program, and the real client."""
    from cxr_tfp import client
    from serving.standin import run_program

    with run_program(push_base, model_name=model_name) as (address, _pid):
        print(f"    stand-in TF Serving PredictionService for {model_name!r} on {address} "
              f"(python -m serving.standin, model base path {push_base})", flush=True)
        results = client.predict_files(address, files, model=model_name, model_dir=push_base)
        return results, f"gRPC Predict via cxr_tfp.client -> {address}"


def run_demo(out: str, patients: int = DEFAULT_PATIENTS, image_size: int = DEFAULT_IMAGE_SIZE,
             train_config: Optional[str] = None, workers: int = 2,
             contrast: float = configs.DEMO_SYNTHETIC_CONTRAST, rebuild: bool = False) -> int:
    """Run the five stages; returns a process exit code (0 = pushed and predicted)."""
    out = os.path.abspath(out)
    raw_root = os.path.join(out, "raw")
    raw = os.path.join(raw_root, "1")          # span 1; a new drop would go to raw/2/
    settings = configs.PipelineSettings(
        output_root=os.path.join(out, "tfx"), input="raw", raw_root=raw_root, dataset="synthetic",
        serving_root=os.path.join(out, "serving"),
        train_config_path=train_config or configs.DEFAULT_TRAIN_CONFIG,
        train_overrides=dict(configs.TRAIN_OVERRIDES, image_size=image_size))
    log_path = os.path.join(out, "logs", "pipeline.log")
    stages = _Stages(5)
    print(f"cxr-tfp demo: everything goes under {out}")

    # 1 ---------------------------------------------------------------------------------------
    stages.begin(f"Synthetic raw dataset ({patients} patients, lesion contrast {contrast:g}) -> {raw}")
    import json
    import shutil

    from cxr_tfp.datasets.synthetic import generate

    # Regenerating writes new files, which the ExampleGen's driver sees as new data (no TFX cache):
    # keep the raw folder made with the same parameters unless asked to rebuild.
    params = {"dataset": "synthetic", "patients": patients, "image_size": image_size,
              "contrast": contrast}
    marker = os.path.join(out, "raw.params.json")
    reuse = (not rebuild and os.path.exists(marker) and os.path.isdir(raw)
             and json.load(open(marker)) == params)
    if reuse:
        print(f"    reusing the raw images in {raw} (same parameters; --rebuild to redo)")
    else:
        shutil.rmtree(raw_root, ignore_errors=True)
        generate(raw, n_patients=patients, image_size=image_size, contrast=contrast,
                 processes=max(1, int(workers)))
        with open(marker, "w") as fh:
            json.dump(params, fh)
    n_images = sum(1 for _ in os.scandir(os.path.join(raw, "images"))) if os.path.isdir(
        os.path.join(raw, "images")) else 0
    stages.end(f"{n_images} PNG images with their label, box and gaze tables")

    # 2 ---------------------------------------------------------------------------------------
    stages.begin("TFX pipeline (LocalDagRunner): ExampleGen (raw images -> tf.Examples, Beam) -> "
                 "StatisticsGen -> SchemaGen -> ExampleValidator -> AnomaliesGate -> Trainer -> "
                 "Resolver -> Evaluator -> Pusher")
    for line in configs.summary_lines(settings):
        print(f"    {line}")
    print(f"    full log        : {log_path}", flush=True)
    _route_tfx_logs(log_path)
    from tfx import v1 as tfx

    from pipeline import dag as P
    from pipeline.dag import create_pipeline
    from pipeline import run_report as R

    from pipeline.anomalies_gate import DataAnomaliesError

    problem = configs.check_raw_root(settings)
    if problem:
        from cxr_tfp.cli import UsageError

        raise UsageError(problem)
    try:
        tfx.orchestration.LocalDagRunner().run(create_pipeline(settings))
    except DataAnomaliesError as exc:
        print(f"\n    STOPPED before training: {exc}\n    full log: {log_path}", flush=True)
        return 2
    run = R.latest_run(settings.resolved_metadata_path)
    examples = run.uri(P.EXAMPLE_GEN, "examples")
    summary = json.load(open(os.path.join(examples, "summary.json")))
    wp = summary["written_per_split"]
    print(f"    ExampleGen: train {wp['train']}, eval {wp['eval']}, test {wp['test']} examples, "
          f"{summary['rejected']} rejected inputs (span {summary.get('span')}; {examples})")
    stages.end(", ".join(f"{k} {v}" for k, v in run.states.items()))

    # 3 ---------------------------------------------------------------------------------------
    stages.begin("Evaluation (TFMA on the test split) and blessing")
    findings = settings.findings()
    evaluation = run.uri("Evaluator", "evaluation")
    print(R.metrics_table(R.read_metrics(evaluation), findings))
    failures = R.validation_failures(evaluation)
    for line in failures:
        print(f"      - {line}")
    print(f"    TFMA output (reported, not gated): {evaluation}")
    from pipeline.blessing_gate import read_gate

    gate = read_gate(run.uri(P.BLESSING_GATE, "blessing") or "") or {}
    print(f"    blessed: {run.blessed}   (blessing gate: {gate.get('reason', 'did not run')})")
    stages.end()

    # 4 ---------------------------------------------------------------------------------------
    stages.begin("Push (TF Serving layout <base>/<model>/<version>/)")
    versions = R.pushed_versions(settings.push_base)
    if not run.pushed:
        why = "already served" if run.blessed else "not blessed"
        print(f"    the candidate was NOT pushed ({why}); versions there: {versions}")
    if not versions:
        print("    nothing to serve: no pushed version exists. See the failed thresholds above.")
        return 1
    version_dir = os.path.join(settings.push_base, versions[-1])
    sigs = R.check_pushed_model(version_dir)
    print(f"    pushed model: {version_dir}")
    for name, keys in sigs.items():
        print(f"      signature {name}: outputs {', '.join(keys)}")
    from pipeline import lineage as L

    try:
        info = L.lineage(R._store(settings.resolved_metadata_path), versions[-1])
        print("    lineage (python -m pipeline.lineage VERSION):")
        print("\n".join("      " + line for line in L.format_lineage(info).splitlines()))
    except LookupError as exc:  # pushed by another pipeline into the same base path
        print(f"    lineage: {exc}")
    stages.end()

    # 5 ---------------------------------------------------------------------------------------
    stages.begin("Serve the pushed model and predict one test image through the serving client")
    image, positives, _ = _sample_test_image(examples, os.path.join(out, "sample"), findings)
    results, how = _predict(settings.push_base, settings.model_name, [image])
    from cxr_tfp.client import format_table

    print(f"    request: {how}")
    print(f"    true findings of this test image: {', '.join(positives) or 'none'}\n")
    print(format_table(results))
    stages.end()

    print("\nWhere everything is:")
    rows = [
        ("synthetic raw dataset (span 1)", raw),
        ("tf.Examples (ExampleGen)", examples),
        ("TFX artifacts (pipeline root)", settings.resolved_pipeline_root),
        ("ML Metadata (SQLite)", settings.resolved_metadata_path),
        ("trained model (Trainer)", run.uri("Trainer", "model") or "(cached, see pipeline root)"),
        ("TFMA evaluation", evaluation),
        ("served model (TF Serving base path)", settings.push_base),
        ("predicted image", image),
        ("pipeline log", log_path),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    from pipeline import report

    o = report.outcome(settings.resolved_metadata_path)
    saved = report.save_outcome(o, settings.resolved_pipeline_root)
    print("\n" + report.format_outcome(o) + f"\n(saved: {saved})")
    print("\nServe it with TF Serving: tensorflow_model_server --port=8500 "
          f"--model_name={settings.model_name} --model_base_path={settings.push_base}")
    return 0


@cli_main
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=configs.DEMO_OUT, help="output folder (default demo_out)")
    p.add_argument("--patients", type=int, default=DEFAULT_PATIENTS,
                   help=f"synthetic patients, 2 images each (default {DEFAULT_PATIENTS})")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--config", default=None, help="training config (default configs/smoke.yaml)")
    p.add_argument("--workers", type=int, default=2, help="processes rendering the synthetic images")
    p.add_argument("--contrast", type=float, default=configs.DEMO_SYNTHETIC_CONTRAST,
                   help="synthetic lesion contrast (the dataset's own default is 1: subtle)")
    p.add_argument("--rebuild", action="store_true",
                   help="regenerate the raw images even when the last run used the same parameters")
    a = p.parse_args(argv)
    return run_demo(a.out, a.patients, a.image_size, a.config, a.workers, a.contrast, a.rebuild)


if __name__ == "__main__":
    sys.exit(main())
