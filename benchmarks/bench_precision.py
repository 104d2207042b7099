"""Served speed in float32 and bfloat16 against torchxrayvision's DenseNet-121, ratios in one run.

    python benchmarks/bench_precision.py                                    # ours only (no torch here)
    python benchmarks/bench_precision.py --torch-python /tmp/torchenv/bin/python   # + torchxrayvision

Ours: the exported ``predict_images`` signature (PNG decode, resize, DenseNet-121 at 224 px, 20
latent samples) at batch 16 (images/s) and batch 1 (ms, median), in three modes, each in its own
process: ``float32``; ``bfloat16`` (exported with ``--precision bfloat16``: Keras mixed_bfloat16
backbone); ``onednn_bf16`` (the float32 export with oneDNN's automatic bfloat16 graph rewrite
switched on in the serving process). Theirs: torchxrayvision's DenseNet-121 forward on tensors,
float32 and bfloat16 autocast, run by ``benchmarks/txrv_worker.py`` under ``--torch-python`` (torch
is not a project dependency and never shares a process with TensorFlow); skipped with a message
when no such interpreter is given or found. All sides use ``--threads`` intra-op threads.

Goal (issue 13): our best served throughput >= 1.2x torchxrayvision's best, and our best batch-1
latency no worse than its best.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(REPO))


def _export(work: str, backbone: str, size: int) -> None:
    from cxr_tfp.export import export_saved_model
    from cxr_tfp.model.cxr_model import CxrModel

    model = CxrModel(backbone=backbone, image_size=size, findings="nih", seed=0)
    export_saved_model(model, os.path.join(work, "float32"))
    export_saved_model(model, os.path.join(work, "bfloat16"), precision="bfloat16")


def _worker(saved: str, mode: str, threads: int, rounds: int, size: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from cxr_tfp import features as F
    from cxr_tfp import model_dir as MD

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    if mode == "onednn_bf16":
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    fn = tf.saved_model.load(saved).signatures[MD.IMAGE_SIGNATURE]
    rng = np.random.default_rng(0)
    pngs = [F.encode_png((rng.uniform(0, 255, (size, size))).astype(np.uint8)) for _ in range(16)]
    b16, b1 = tf.constant(pngs), tf.constant(pngs[:1])
    fn(**{MD.IMAGES_INPUT: b16})
    fn(**{MD.IMAGES_INPUT: b1})
    tput, lat = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        fn(**{MD.IMAGES_INPUT: b16})[MD.PROBABILITIES].numpy()
        tput.append(16 / (time.perf_counter() - t))
        t = time.perf_counter()
        fn(**{MD.IMAGES_INPUT: b1})[MD.PROBABILITIES].numpy()
        lat.append((time.perf_counter() - t) * 1000)
    return {"images_per_s": float(np.median(tput)), "batch1_ms": float(np.median(lat))}


def _run(cmd, env=None) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="densenet121")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--torch-python", default=os.environ.get("CXR_TFP_TORCH_PYTHON", "/tmp/torchenv/bin/python"))
    p.add_argument("--worker", nargs=2, metavar=("SAVED", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(_worker(a.worker[0], a.worker[1], a.threads, a.rounds, a.image_size)))
        return 0
    from cxr_tfp.export import cpu_has_bfloat16

    with tempfile.TemporaryDirectory() as work:
        _export(work, a.backbone, a.image_size)
        ours = {}
        for mode, folder in (("float32", "float32"), ("bfloat16", "bfloat16"), ("onednn_bf16", "float32")):
            ours[mode] = _run([sys.executable, __file__, "--worker", os.path.join(work, folder), mode,
                               "--threads", str(a.threads), "--rounds", str(a.rounds),
                               "--image-size", str(a.image_size)])
    theirs = None
    if a.torch_python and os.path.exists(a.torch_python):
        try:
            theirs = _run([a.torch_python, str(REPO / "benchmarks" / "txrv_worker.py"), "--threads",
                           str(a.threads), "--rounds", str(a.rounds), "--image-size", str(a.image_size)])
        except RuntimeError as exc:
            print(f"torchxrayvision side skipped: {exc}")
    else:
        print(f"torchxrayvision side skipped: no torch interpreter at {a.torch_python!r} "
              f"(pass --torch-python or set CXR_TFP_TORCH_PYTHON)")
    print(f"CPU bfloat16 units: {cpu_has_bfloat16()}; threads {a.threads}; {a.backbone} {a.image_size} px")
    print(f"{'':28s}{'batch 16 img/s':>16s}{'batch 1 ms':>12s}")
    for mode, r in ours.items():
        print(f"{'cxr-tfp ' + mode:28s}{r['images_per_s']:16.2f}{r['batch1_ms']:12.1f}")
    best_tput = max(r["images_per_s"] for r in ours.values())
    best_lat = min(r["batch1_ms"] for r in ours.values())
    print(f"ours: bfloat16 / float32 throughput {ours['bfloat16']['images_per_s'] / ours['float32']['images_per_s']:.2f}x, "
          f"oneDNN bf16 / float32 {ours['onednn_bf16']['images_per_s'] / ours['float32']['images_per_s']:.2f}x")
    if theirs:
        for mode in ("float32", "bfloat16"):
            r = theirs[mode]
            print(f"{'torchxrayvision ' + mode:28s}{r['images_per_s']:16.2f}{r['batch1_ms']:12.1f}")
        t_best = max(theirs[m]["images_per_s"] for m in ("float32", "bfloat16"))
        l_best = min(theirs[m]["batch1_ms"] for m in ("float32", "bfloat16"))
        print(f"ratio ours float32 / txrv float32 throughput: {ours['float32']['images_per_s'] / theirs['float32']['images_per_s']:.2f}x")
        print(f"ratio our best / txrv best throughput: {best_tput / t_best:.2f}x (goal >= 1.2)")
        print(f"batch-1 latency our best / txrv best: {best_lat / l_best:.2f}x (goal <= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
