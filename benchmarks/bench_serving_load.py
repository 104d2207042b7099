"""Bounded load test of the served model under hostile traffic (loopback only).

    python benchmarks/bench_serving_load.py                    # 8 clients, 2000 requests, 30% hostile
    python benchmarks/bench_serving_load.py --requests 400     # quick look

Serves the REAL export (tiny backbone, 64 px) with the development stand-in server in its own process
(``serving.standin``; no tensorflow_model_server binary here) and:

1. baseline: the same clients send only valid 256 px PNGs (batch 1), in this run;
2. burst: 8 concurrent clients send ``--requests`` requests, ``--hostile`` of them hostile: real PNG
   decompression bombs (20000 x 20000, ~400 KB), header-only bombs, JPEG headers announcing
   30000 x 30000, garbage bytes, colour pictures, truncated PNGs, and garbage to the tf.Example
   signature.

Checks (exit 1 if one fails): the server never crashes, every valid request is answered OK, every
hostile one is INVALID_ARGUMENT, and the server's peak RSS stays under ``--max-rss-growth-mb`` above its
warm baseline. Prints p50/p99 latency of valid requests in both phases and their ratio, and, with
``--unguarded``, the peak memory of decoding one bomb the way the signature did before the pixel limit
(``tf.io.decode_image`` + resize) against the guarded signature, each in a fresh process.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

MODEL = "cxr_tfp"


def _export(base: Path) -> None:
    from cxr_tfp.config import load_config
    from cxr_tfp.export import export_saved_model
    from cxr_tfp.model import build_model

    cfg = load_config(overrides={"backbone": "tiny", "image_size": 64, "findings": "synthetic", "num_samples": 4})
    export_saved_model(build_model(cfg), str(base / MODEL / "1"), model_name=MODEL)


def _payloads():
    from cxr_tfp import features
    from tests.faults import hostile

    rng = np.random.default_rng(0)
    valid = [features.encode_png(np.clip(rng.normal(120, 30, (256, 256)), 0, 255).astype(np.uint8))
             for _ in range(8)]
    bad = [("image", hostile.png_bomb(20000, 20000)), ("image", hostile.png_header_only(50000, 50000)),
           ("image", hostile.jpeg_with_size(30000, 30000)), ("image", hostile.garbage(4096)),
           ("image", hostile.small_png(64, colour=True)), ("image", hostile.truncated(valid[0])),
           ("examples", hostile.garbage(800, seed=3))]
    return valid, bad


def _request(kind: str, payload: bytes):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from cxr_tfp import model_dir

    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    if kind == "image":
        req.model_spec.signature_name = model_dir.IMAGE_SIGNATURE
        req.inputs[model_dir.IMAGES_INPUT].CopyFrom(tf.make_tensor_proto([payload], dtype=tf.string))
    else:
        req.model_spec.signature_name = model_dir.SERVING_SIGNATURE
        req.inputs[model_dir.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto([payload], dtype=tf.string))
    return req


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2 ** 20


def _run_phase(address: str, jobs, clients: int, server_pid: int):
    """jobs: list of (is_valid, request). Returns (results, peak server RSS MB)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    results = [None] * len(jobs)
    nxt = iter(range(len(jobs)))
    lock = threading.Lock()
    peak = [_rss_mb(server_pid)]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            try:
                peak[0] = max(peak[0], _rss_mb(server_pid))
            except Exception:  # noqa: BLE001  (server gone: reported by the checks)
                return

    def worker():
        ch = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                break
            valid, req = jobs[i]
            t = time.perf_counter()
            for attempt in range(6):  # as the project client: RESOURCE_EXHAUSTED (load shed) is retried
                try:
                    stub.Predict(req, timeout=120)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                if code != "RESOURCE_EXHAUSTED":
                    break
                time.sleep(0.05 * 2 ** attempt)
            results[i] = (valid, code, time.perf_counter() - t)
        ch.close()

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    stop.set()
    th.join()
    return results, peak[0]


def _unguarded_peak_mb(bomb_path: str, guarded: bool) -> float:
    """Peak RSS (MB) of a fresh process decoding one bomb as the signature does (or did)."""
    code = f"""
import resource, sys, tensorflow as tf
sys.path.insert(0, {str(REPO)!r})
data = open({bomb_path!r}, 'rb').read()
tf.io.decode_image(tf.constant(open({bomb_path!r}.replace('bomb', 'small'), 'rb').read()), channels=1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    if {guarded}:
        from cxr_tfp.preprocess import decode_image_tensor as decode_image
        decode_image(tf.constant(data), 64)
    else:
        img = tf.io.decode_image(data, channels=1, expand_animations=False, dtype=tf.uint8)
        tf.image.resize(tf.cast(img, tf.float32) / 255.0, [64, 64], antialias=True)
except tf.errors.InvalidArgumentError:
    pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--baseline", type=int, default=400, help="valid-only requests in the baseline phase")
    p.add_argument("--hostile", type=float, default=0.3, help="fraction of hostile requests in the burst")
    p.add_argument("--max-rss-growth-mb", type=float, default=500.0)
    p.add_argument("--unguarded", action="store_true",
                   help="also measure one bomb decoded without / with the pixel limit (fresh processes)")
    a = p.parse_args(argv)

    import portpicker

    from tests.faults import hostile

    valid, bad = _payloads()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _export(base)
        port = portpicker.pick_unused_port()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        server = subprocess.Popen([sys.executable, "-m", "serving.standin", "--model_base_path",
                                   str(base / MODEL), "--model_name", MODEL, "--port", str(port)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            server.stdout.readline()  # "DEVELOPMENT STAND-IN ... on 127.0.0.1:PORT" once loaded
            address = f"127.0.0.1:{port}"
            warm, _ = _run_phase(address, [(True, _request("image", valid[0]))] * 20, 2, server.pid)
            rss0 = _rss_mb(server.pid)
            base_jobs = [(True, _request("image", valid[i % len(valid)])) for i in range(a.baseline)]
            base_res, base_peak = _run_phase(address, base_jobs, a.clients, server.pid)
            jobs = []
            for i in range(a.requests):
                if rng.random() < a.hostile:
                    kind, data = bad[int(rng.integers(len(bad)))]
                    jobs.append((False, _request(kind, data)))
                else:
                    jobs.append((True, _request("image", valid[int(rng.integers(len(valid)))])))
            t0 = time.perf_counter()
            res, peak = _run_phase(address, jobs, a.clients, server.pid)
            wall = time.perf_counter() - t0
            alive = server.poll() is None
        finally:
            server.terminate()
            server.wait(timeout=30)
        if a.unguarded:
            (base / "bomb.png").write_bytes(hostile.png_bomb(20000, 20000))
            (base / "small.png").write_bytes(hostile.small_png(32))
            before = _unguarded_peak_mb(str(base / "bomb.png"), guarded=False)
            after = _unguarded_peak_mb(str(base / "bomb.png"), guarded=True)

    def pct(xs, q):
        return 1000 * float(np.percentile(xs, q)) if xs else float("nan")

    base_lat = [r[2] for r in base_res if r[1] == "OK"]
    v_lat = [r[2] for r in res if r[0] and r[1] == "OK"]
    v_fail = [r for r in res if r[0] and r[1] != "OK"]
    h_codes = {}
    for r in res:
        if not r[0]:
            h_codes[r[1]] = h_codes.get(r[1], 0) + 1
    n_valid = sum(1 for r in res if r[0])
    print(f"server: warm RSS {rss0:.0f} MB; peak {base_peak:.0f} MB (valid only), {peak:.0f} MB (burst); "
          f"alive after the burst: {alive}")
    print(f"baseline ({a.baseline} valid, {a.clients} clients): p50 {pct(base_lat, 50):.1f} ms, "
          f"p99 {pct(base_lat, 99):.1f} ms")
    print(f"burst ({a.requests} requests, {n_valid} valid, {a.requests - n_valid} hostile, {a.clients} clients, "
          f"{wall:.1f} s): valid p50 {pct(v_lat, 50):.1f} ms, p99 {pct(v_lat, 99):.1f} ms; "
          f"hostile answers {h_codes}")
    print(f"ratio burst/baseline valid p99: {pct(v_lat, 99) / pct(base_lat, 99):.2f}x")
    if a.unguarded:
        print(f"one 20000x20000 PNG bomb (~400 KB): peak RSS growth {before:.0f} MB unguarded (decode_image + "
              f"resize, as before) vs {after:.0f} MB with the header pixel limit")
    problems = []
    if not alive:
        problems.append("the server died")
    if v_fail:
        problems.append(f"{len(v_fail)} valid requests failed: {sorted({r[1] for r in v_fail})}")
    if set(h_codes) - {"INVALID_ARGUMENT"}:
        problems.append(f"hostile requests answered {h_codes}")
    if peak - rss0 > a.max_rss_growth_mb:
        problems.append(f"server RSS grew {peak - rss0:.0f} MB > {a.max_rss_growth_mb:.0f} MB")
    for pr in problems:
        print(f"FAIL: {pr}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
