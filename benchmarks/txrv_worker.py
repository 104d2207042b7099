"""torch side of bench_precision.py: torchxrayvision's DenseNet-121 forward, float32 and bfloat16.

Runs ONLY under an interpreter that has torch + torchxrayvision (never with TensorFlow in the same
process: importing TensorFlow before torchvision/torchxrayvision crashes in this stack). Randomly
initialised weights with recalibrated BatchNorm statistics (as for the conversion fixture: random
statistics overflow over 121 layers, and inf/denormal arithmetic is far slower than real weights;
nothing is downloaded). Denormals are flushed, as TensorFlow's CPU kernels do. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--modes", default="float32,bfloat16")
    a = p.parse_args()
    import numpy as np
    import torch

    from make_txrv_fixture import FULL, make_model

    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    model = make_model(FULL, seed=0).eval()
    rng = np.random.default_rng(0)
    x16 = torch.from_numpy(rng.uniform(-1024, 1024, (16, 1, a.image_size, a.image_size)).astype(np.float32))
    x1 = x16[:1]
    out = {}
    for mode in a.modes.split(","):
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bfloat16" else torch.autocast("cpu", enabled=False))
        with torch.inference_mode(), ctx:
            model(x16)
            model(x1)                               # warm-up
            tput, lat = [], []
            for _ in range(a.rounds):
                t = time.perf_counter()
                model(x16)
                tput.append(16 / (time.perf_counter() - t))
            for _ in range(3 * a.rounds):           # as bench_precision's worker: 3 batch-1 calls per batch 16
                t = time.perf_counter()
                model(x1)
                lat.append((time.perf_counter() - t) * 1000)
        with open("/proc/self/status") as fh:
            hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
        out[mode] = {"images_per_s": float(np.median(tput)), "batch1_ms": float(np.median(lat)),
                     "peak_rss_mib": hwm / 1024}
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, **out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
