"""Serving overhead: the gRPC Predict path against calling the SavedModel in process, same run.

    python benchmarks/bench_serving.py                        # default backbone (densenet121), 224 px
    python benchmarks/bench_serving.py --backbone tiny --image-size 64 --rounds 3   # quick look

Both paths run the exported ``predict_images`` signature on the same PNG bytes:
- in process: ``tf.saved_model.load(dir).signatures["predict_images"](images=...)``;
- gRPC: the project client (``cxr_tfp.client.PredictClient``) -> ``PredictionService/Predict`` on the
  development stand-in server (``serving.standin``; no tensorflow_model_server binary here)
  on loopback, including request building, proto (de)serialisation and the network stack.
Measurements alternate between the two paths round by round so drifting machine load hits both.
Prints batch-1 latency p50/p99, batch-16 throughput and the ratios (target: overhead < 1.2x).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _png(size: int, seed: int = 0) -> bytes:
    from cxr_tfp import features
    from cxr_tfp import model_dir

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 12, (size, size))
    return features.encode_png(np.clip(img, 0, 255).astype(np.uint8))


def _timed(fn, n: int) -> list:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default=None, help="default: the config default (densenet121)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--source-size", type=int, default=None,
                   help="side of the PNG sent (default: the model's image size)")
    p.add_argument("--rounds", type=int, default=6, help="alternating measurement rounds")
    p.add_argument("--b1-per-round", type=int, default=10, help="batch-1 calls per round and path")
    p.add_argument("--b16-per-round", type=int, default=2, help="batch-16 calls per round and path")
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args(argv)

    import tensorflow as tf

    from cxr_tfp import features, model_dir
    from cxr_tfp.client import PredictClient
    from cxr_tfp.config import load_config
    from cxr_tfp.export import export_saved_model
    from cxr_tfp.model import build_model
    from serving.standin import run_program

    overrides = {"image_size": a.image_size}
    if a.backbone:
        overrides["backbone"] = a.backbone
    cfg = load_config(overrides=overrides)
    print(f"model: backbone={cfg.backbone} image_size={cfg.image_size} "
          f"findings={len(cfg.finding_names)} num_samples={cfg.num_samples}; "
          f"tf {tf.__version__}, {os.cpu_count()} CPUs", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "cxr_tfp")
        export_saved_model(build_model(cfg), os.path.join(base, "1"), model_name="cxr_tfp")
        print(f"built + exported in {time.perf_counter() - t0:.1f}s", flush=True)
        fn = tf.saved_model.load(os.path.join(base, "1")).signatures[model_dir.IMAGE_SIGNATURE]
        # Its own program, as an operator runs it; it replays the warm-up file, like TF Serving.
        server = run_program(base, "cxr_tfp")
        address, _pid = server.__enter__()
        client = PredictClient(address, timeout_s=120.0)
        try:
            src = a.source_size or a.image_size
            one = [_png(src)]
            batch = [_png(src, seed=i) for i in range(a.batch)]
            one_t, batch_t = tf.constant(one), tf.constant(batch)

            def local(x):
                return lambda: fn(images=x)[model_dir.PROBABILITIES].numpy()

            def remote(x):
                return lambda: client.predict_encoded(x)[model_dir.PROBABILITIES]

            # Same answer through both paths (else the timing compares different work).
            np.testing.assert_allclose(local(one_t)(), remote(one)(), atol=1e-5)
            for f in (local(one_t), remote(one), local(batch_t), remote(batch)):  # warm both
                f(), f()
            lat = {"in-process": [], "gRPC": []}
            thr = {"in-process": [], "gRPC": []}
            for r in range(a.rounds):
                lat["in-process"] += _timed(local(one_t), a.b1_per_round)
                lat["gRPC"] += _timed(remote(one), a.b1_per_round)
                thr["in-process"] += _timed(local(batch_t), a.b16_per_round)
                thr["gRPC"] += _timed(remote(batch), a.b16_per_round)
                print(f"  round {r + 1}/{a.rounds} done", flush=True)
        finally:
            client.close()
            server.__exit__(None, None, None)

    rows = {}
    for k in lat:
        ms = np.array(lat[k]) * 1e3
        rows[k] = (np.percentile(ms, 50), np.percentile(ms, 99),
                   a.batch * len(thr[k]) / float(np.sum(thr[k])))
    print(f"\nbatch-1 latency over {len(lat['gRPC'])} calls per path, batch-{a.batch} throughput "
          f"over {len(thr['gRPC'])} calls per path (PNG {src}x{src})")
    print(f"{'path':<12} {'p50 ms':>9} {'p99 ms':>9} {'img/s @' + str(a.batch):>11}")
    for k, (p50, p99, ips) in rows.items():
        print(f"{k:<12} {p50:9.2f} {p99:9.2f} {ips:11.2f}")
    base_row, grpc_row = rows["in-process"], rows["gRPC"]
    ratios = {"p50 latency (gRPC / in-process)": grpc_row[0] / base_row[0],
              "p99 latency (gRPC / in-process)": grpc_row[1] / base_row[1],
              "throughput (in-process / gRPC)": base_row[2] / grpc_row[2]}
    print("\nratios (target < 1.2x):")
    for k, v in ratios.items():
        print(f"  {k:<34} {v:6.3f}x  {'OK' if v < 1.2 else 'OVER 1.2x'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
