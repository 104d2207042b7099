"""Served speed of the default export against torchxrayvision's DenseNet-121, ratios in one run.

    python benchmarks/bench_precision.py --torch-python /work/wt/torchenv/bin/python --rounds 3
    python benchmarks/bench_precision.py --modes default,float32,bfloat16,onednn_bf16   # ours only

Ours: the exported ``predict_images`` signature (PNG decode, resize, DenseNet-121 at 224 px, 20
latent samples) at batch 16 (images/s) and batch 1 (ms), in these modes: ``default`` (what
``python -m cxr_tfp.export`` writes with no flag: ``--precision auto``, bfloat16 where the CPU has
bfloat16 units, float32 elsewhere; what ``assets/serving.json`` records); ``float32``; ``bfloat16``
(Keras mixed_bfloat16 backbone); ``onednn_bf16`` (the float32 export with oneDNN's automatic
bfloat16 graph rewrite switched on in the serving process); ``xla`` (the default precision with the
backbone compiled by XLA, ``--jit-compile``). Theirs: torchxrayvision's DenseNet-121 forward on
tensors, float32 and bfloat16 autocast, run by ``benchmarks/txrv_worker.py`` under
``--torch-python`` (torch is not a project dependency and never shares a process with TensorFlow).

Every measurement runs in its own process; the modes are interleaved round by round (round 1 runs
each mode once, then round 2, ...), so load from other jobs hits every mode alike. Reported: the
median over rounds and the spread (min-max), and each process's peak resident memory (VmHWM: the
serving process with one model loaded, after warm-up and the timed calls).

Goal (issue 22): the default export's throughput >= 1.3x torchxrayvision's best mode, its batch-1
latency <= 0.9x torchxrayvision's best.
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


def _export(work: str, backbone: str, size: int, modes) -> None:
    from cxr_tfp.export import export_saved_model
    from cxr_tfp.model.cxr_model import CxrModel

    model = CxrModel(backbone=backbone, image_size=size, findings="nih", seed=0)
    folders = {"default": {}, "float32": {"precision": "float32"}, "bfloat16": {"precision": "bfloat16"},
               "xla": {"jit_compile": True}}
    for folder in sorted({_folder(m) for m in modes}):
        export_saved_model(model, os.path.join(work, folder), **folders[folder])


def _folder(mode: str) -> str:
    return "float32" if mode == "onednn_bf16" else mode


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def _worker(saved: str, mode: str, threads: int, reps: int, size: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from cxr_tfp import features as F
    from cxr_tfp import model_dir as MD

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    if mode == "onednn_bf16":
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    rng = np.random.default_rng(0)
    pngs = [F.encode_png((rng.uniform(0, 255, (size, size))).astype(np.uint8)) for _ in range(16)]
    b16, b1 = tf.constant(pngs), tf.constant(pngs[:1])
    before = _rss_kib("VmRSS")
    fn = tf.saved_model.load(saved).signatures[MD.IMAGE_SIGNATURE]
    fn(**{MD.IMAGES_INPUT: b16})
    fn(**{MD.IMAGES_INPUT: b1})
    tput, lat = [], []
    for _ in range(reps):
        t = time.perf_counter()
        fn(**{MD.IMAGES_INPUT: b16})[MD.PROBABILITIES].numpy()
        tput.append(16 / (time.perf_counter() - t))
    for _ in range(3 * reps):
        t = time.perf_counter()
        fn(**{MD.IMAGES_INPUT: b1})[MD.PROBABILITIES].numpy()
        lat.append((time.perf_counter() - t) * 1000)
    info = MD.read_serving_info(saved) or {}
    return {"images_per_s": float(np.median(tput)), "batch1_ms": float(np.median(lat)),
            "peak_rss_mib": _rss_kib("VmHWM") / 1024, "model_rss_mib": (_rss_kib("VmRSS") - before) / 1024,
            "precision": info.get("precision")}


def _run(cmd, env=None) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="densenet121")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, one process per mode each")
    p.add_argument("--reps", type=int, default=1,
                   help="timed batch-16 calls per process (batch-1 calls: 3x this)")
    p.add_argument("--modes", default="default,float32,bfloat16,onednn_bf16",
                   help="ours, comma-separated: default,float32,bfloat16,onednn_bf16,xla")
    p.add_argument("--torch-modes", default="float32,bfloat16")
    p.add_argument("--torch-python", default=os.environ.get("CXR_TFP_TORCH_PYTHON", "/tmp/torchenv/bin/python"))
    p.add_argument("--worker", nargs=2, metavar=("SAVED", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(_worker(a.worker[0], a.worker[1], a.threads, a.reps, a.image_size)))
        return 0
    from cxr_tfp.export import cpu_has_bfloat16, resolve_precision

    modes = [m for m in a.modes.split(",") if m]
    torch_ok = bool(a.torch_python) and os.path.exists(a.torch_python)
    if not torch_ok:
        print(f"torchxrayvision side skipped: no torch interpreter at {a.torch_python!r} "
              f"(pass --torch-python or set CXR_TFP_TORCH_PYTHON)")
    runs = {m: [] for m in modes}
    theirs = {m: [] for m in a.torch_modes.split(",") if m} if torch_ok else {}
    loads = [_load()]
    common = ["--threads", str(a.threads), "--reps", str(a.reps), "--image-size", str(a.image_size)]
    # torch's OpenMP threads spin at barriers; on a shared, overloaded machine that collapses a
    # 2-thread forward by 10x or more (docs/weights.md). Passive waiting is torch's best setting there.
    torch_env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    with tempfile.TemporaryDirectory() as work:
        _export(work, a.backbone, a.image_size, modes)
        for r in range(a.rounds):
            for mode in modes:
                runs[mode].append(_run([sys.executable, __file__, "--worker",
                                        os.path.join(work, _folder(mode)), mode] + common))
            for tm in list(theirs):
                try:
                    out = _run([a.torch_python, str(REPO / "benchmarks" / "txrv_worker.py"), "--modes", tm,
                                "--threads", str(a.threads), "--rounds", str(a.reps),
                                "--image-size", str(a.image_size)], env=torch_env)
                    theirs[tm].append(out[tm])
                except RuntimeError as exc:
                    print(f"torchxrayvision {tm} skipped: {exc}")
                    theirs.pop(tm)
            loads.append(_load())
            print(f"round {r + 1}/{a.rounds} done (load average {loads[-1]})", file=sys.stderr)

    def summary(rs):
        t, l = [x["images_per_s"] for x in rs], [x["batch1_ms"] for x in rs]
        return {"images_per_s": _median(t), "tput_lo": min(t), "tput_hi": max(t), "batch1_ms": _median(l),
                "lat_lo": min(l), "lat_hi": max(l), "peak_rss_mib": max(x.get("peak_rss_mib", 0) for x in rs)}

    default_prec, why = resolve_precision("auto")
    print(f"CPU bfloat16 units: {cpu_has_bfloat16()} (default export: {default_prec}, {why}); threads "
          f"{a.threads}; {a.backbone} {a.image_size} px; medians of {a.rounds} interleaved rounds "
          f"(spread min-max); load average (1/5/15 min) before and after each round: {' | '.join(loads)}")
    print("| mode | batch 16 img/s | batch 1 ms | peak RSS MiB |")
    print("|---|---|---|---|")
    ours = {m: summary(rs) for m, rs in runs.items()}
    th = {m: summary(rs) for m, rs in theirs.items() if rs}
    for name, table in (("cxr-tfp", ours), ("torchxrayvision", th)):
        for mode, r in table.items():
            print(f"| {name} {mode} | {r['images_per_s']:.2f} ({r['tput_lo']:.2f}-{r['tput_hi']:.2f}) | "
                  f"{r['batch1_ms']:.1f} ({r['lat_lo']:.1f}-{r['lat_hi']:.1f}) | {r['peak_rss_mib']:.0f} |")
    if "float32" in ours and "bfloat16" in ours:
        print(f"ours: bfloat16 / float32 throughput {ours['bfloat16']['images_per_s'] / ours['float32']['images_per_s']:.2f}x")
    if th:
        t_best = max(r["images_per_s"] for r in th.values())
        l_best = min(r["batch1_ms"] for r in th.values())
        for mode, r in ours.items():
            print(f"ours {mode} / txrv best: throughput {r['images_per_s'] / t_best:.2f}x (goal >= 1.3), "
                  f"batch-1 latency {r['batch1_ms'] / l_best:.2f}x (goal <= 0.9)")
        # Per-round ratios (same round = same load) show how far the medians can be trusted.
        if "default" in runs:
            rt = [o["images_per_s"] / max(x[i]["images_per_s"] for x in theirs.values() if len(x) > i)
                  for i, o in enumerate(runs["default"])]
            rl = [o["batch1_ms"] / min(x[i]["batch1_ms"] for x in theirs.values() if len(x) > i)
                  for i, o in enumerate(runs["default"])]
            print(f"per-round default / txrv best: throughput {', '.join(f'{x:.2f}' for x in rt)}; "
                  f"batch-1 latency {', '.join(f'{x:.2f}' for x in rl)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
