"""Where the served signature's time goes: decode + resize, backbone, latent head + samples, the rest.

    python benchmarks/bench_signature_breakdown.py                       # float32 and bfloat16, 3 rounds
    python benchmarks/bench_signature_breakdown.py --precisions float32 --rounds 5 --jit

Times, in one process and interleaved round by round (so machine load hits every stage alike), the
pieces ``cxr_tfp.export`` puts in the ``predict_images`` signature, each as its own ``tf.function``:
``decode+resize`` (``decode_image_tensor`` mapped over PNG bytes), ``backbone`` (``model.features``:
input scale, DenseNet-121, cast to float32), ``head+samples`` (``predict_from_features``: prior, S
latent samples through the classifier in one batched matmul, mean and std), and the whole exported
signature loaded back from a SavedModel; ``rest`` = whole - the three (output assembly, map_fn and
signature call overhead; negative values mean it is inside the noise). ``--jit`` adds the backbone
compiled with XLA. Medians over ``--rounds``, batch 1 (ms) and batch 16 (ms per batch).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(REPO))


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="densenet121")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--png-size", type=int, default=None,
                   help="pixels of the PNGs sent (default: the model's size; NIH images are 1024)")
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jit", action="store_true", help="also time the backbone compiled with XLA")
    p.add_argument("--chunks", default="",
                   help="also time the backbone run over the batch in sequential chunks of these sizes")
    p.add_argument("--json", default=None, help="also write the medians to this file")
    a = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from cxr_tfp import features as F
    from cxr_tfp import model_dir as MD
    from cxr_tfp.export import cpu_has_bfloat16, export_saved_model, with_serving_precision
    from cxr_tfp.model.cxr_model import CxrModel
    from cxr_tfp.preprocess import decode_image_tensor

    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    size, png_size = a.image_size, a.png_size or a.image_size
    batches = [int(b) for b in a.batches.split(",")]
    base = CxrModel(backbone=a.backbone, image_size=size, findings="nih", seed=0)
    rng = np.random.default_rng(0)
    pngs = [F.encode_png(rng.uniform(0, 255, (png_size, png_size)).astype(np.uint8))
            for _ in range(max(batches))]

    stages = {}   # (precision, stage) -> fn(batch) ; inputs prepared per batch below
    work = tempfile.mkdtemp(prefix="breakdown-")
    for prec in a.precisions.split(","):
        model = with_serving_precision(base, prec)
        s = int(model.num_samples)
        decode = tf.function(lambda b: tf.map_fn(lambda x: decode_image_tensor(x, size), b,
                                                 fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32)),
                             reduce_retracing=True)
        backbone = tf.function(lambda x, m=model: m.features(x, training=False), reduce_retracing=True)
        head = tf.function(lambda f, m=model: m.predict_from_features(f, s), reduce_retracing=True)
        export_saved_model(model, os.path.join(work, prec), precision=prec)
        whole = tf.saved_model.load(os.path.join(work, prec)).signatures[MD.IMAGE_SIGNATURE]
        stages[(prec, "decode+resize")] = (decode, "png")
        stages[(prec, "backbone")] = (backbone, "image")
        if a.jit:
            stages[(prec, "backbone (XLA)")] = (tf.function(lambda x, m=model: m.features(x, training=False),
                                                            jit_compile=True), "image")
        for k in [int(c) for c in a.chunks.split(",") if c]:
            def chunked(x, m=model, k=k):
                # [B, ...] -> [B/k, k, ...] (B < k or a multiple of k here), one backbone call per chunk.
                xs = tf.reshape(x, tf.concat([[-1, tf.minimum(k, tf.shape(x)[0])], tf.shape(x)[1:]], 0))
                ys = tf.map_fn(lambda c: m.features(c, training=False), xs, parallel_iterations=1,
                               fn_output_signature=tf.float32)
                return tf.reshape(ys, tf.concat([[-1], tf.shape(ys)[2:]], 0))
            stages[(prec, f"backbone, chunks of {k}")] = (tf.function(chunked, reduce_retracing=True), "image")
        stages[(prec, "head+samples")] = (head, "fmap")
        stages[(prec, "whole signature")] = (lambda b, w=whole: w(**{MD.IMAGES_INPUT: b})[MD.PROBABILITIES],
                                             "png")
    inputs = {}
    for b in batches:
        png_b = tf.constant(pngs[:b])
        img_b = tf.map_fn(lambda x: decode_image_tensor(x, size), png_b,
                          fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))
        inputs[b] = {"png": png_b, "image": img_b, "fmap": base.features(img_b)}
    times = {(k, b): [] for k in stages for b in batches}
    total = len(stages) * len(batches) * (a.rounds + 1)
    done = 0
    for r in range(a.rounds + 1):                       # round 0 warms up (traces, XLA compiles)
        for b in batches:
            for key, (fn, kind) in stages.items():
                t = time.perf_counter()
                out = fn(inputs[b][kind])
                (out[0] if isinstance(out, (tuple, list)) else out).numpy()
                if r:
                    times[(key, b)].append((time.perf_counter() - t) * 1000)
                done += 1
        print(f"round {r}/{a.rounds} done ({done}/{total} timings)", file=sys.stderr)

    med = {f"{p}|{st}|{b}": _median(v) for ((p, st), b), v in times.items()}
    print(f"CPU bfloat16 units: {cpu_has_bfloat16()}; threads {a.threads}; {a.backbone} {size} px, "
          f"PNGs {png_size} px, {base.num_samples} latent samples; medians of {a.rounds} rounds (ms)")
    cols = [f"batch {b}" for b in batches]
    print("| precision | stage | " + " | ".join(cols) + " | share of batch 1 |")
    print("|---|---|" + "---|" * len(cols) + "---|")
    for prec in a.precisions.split(","):
        whole1 = med[f"{prec}|whole signature|{batches[0]}"]
        parts = ["decode+resize", "backbone", "head+samples"]
        for st in [k[1] for k in stages if k[0] == prec] + ["rest"]:
            vals = []
            for b in batches:
                if st == "rest":
                    v = med[f"{prec}|whole signature|{b}"] - sum(med[f"{prec}|{x}|{b}"] for x in parts)
                    med[f"{prec}|rest|{b}"] = v
                else:
                    v = med[f"{prec}|{st}|{b}"]
                vals.append(v)
            share = "" if st == "whole signature" else f"{100 * vals[0] / whole1:.0f} %"
            print(f"| {prec} | {st} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {share} |")
    if a.json:
        Path(a.json).write_text(json.dumps(med, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
