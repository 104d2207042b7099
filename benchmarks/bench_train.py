"""Training throughput: cached stage 2 vs stage 1, and the input pipeline vs the bare model.

In one run on this machine:
1. stage-2 epoch time per image on cached frozen-backbone features, against stage-1 epoch time per
   image (and against stage 2 recomputing the backbone, ``cache_features: false``);
2. stage-1 training images/s (TFRecords -> parse/decode -> augment -> train step, from the epochs
   after the first) against the bare backbone forward+backward on in-memory tensors, and against
   the full train step on in-memory tensors. The pipeline should not be the bottleneck (>= 0.8).

    .venv/bin/python benchmarks/bench_train.py [--backbone densenet121] [--image-size 128] [--images 256]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def epoch_seconds(out_dir: str, stage: int) -> float:
    """Mean epoch wall time of a stage, the first (tracing) epoch excluded."""
    hist = [json.loads(l) for l in open(os.path.join(out_dir, "history.jsonl"))]
    secs = [h["seconds"] for h in hist if h["stage"] == stage][1:]
    return float(np.mean(secs))


def bare_backbone_images_per_second(model, batch_size: int, steps: int) -> float:
    """Backbone forward + backward + Adam update on a constant in-memory batch."""
    import keras
    import tensorflow as tf

    x = tf.random.uniform([batch_size, model.image_size, model.image_size, 1], seed=1)
    opt = keras.optimizers.Adam(1e-4)
    variables = model.backbone.trainable_variables
    opt.build(variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.features(x, training=True))
        opt.apply(tape.gradient(loss, variables), variables)
        return loss

    step()  # trace
    t0 = time.perf_counter()
    for _ in range(steps):
        step().numpy()
    return batch_size * steps / (time.perf_counter() - t0)


def in_memory_train_step_images_per_second(model, cfg, steps: int) -> float:
    """The model's full stage-1 train step (``fit``) on in-memory tensors (no decode, no augment)."""
    import keras
    import tensorflow as tf

    from cxr_tfp import features as F

    b, s, L = cfg.batch_size, cfg.image_size, len(cfg.finding_names)
    rng = np.random.default_rng(0)
    x = {F.X_IMAGE: rng.random((b, s, s, 1), dtype=np.float32),
         F.X_ANNOTATION: np.zeros((b, s, s, 2), np.float32),
         F.X_HAS_GAZE: np.zeros(b, np.float32), F.X_HAS_BOXES: np.zeros(b, np.float32)}
    y = {F.Y_LABELS: (rng.random((b, L)) > 0.5).astype(np.float32), F.Y_MASK: np.ones((b, L), np.float32)}
    ds = tf.data.Dataset.from_tensors((x, y)).cache().repeat(steps + 1)
    model.set_stage(1)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(ds.take(1), verbose=0)  # trace
    t0 = time.perf_counter()
    model.fit(ds.take(steps), verbose=0)
    return b * steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="densenet121", choices=("densenet121", "resnet50", "tiny"))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--images", type=int, default=256, help="training images (half annotated)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3, help="epochs per stage (the first is not timed)")
    p.add_argument("--work", default=None)
    args = p.parse_args(argv)

    from cxr_tfp.config import TrainConfig
    from cxr_tfp.model import build_model
    from cxr_tfp.train import train_model
    from tests.model.synth import write_dataset

    work = args.work or tempfile.mkdtemp(prefix="bench_train_")
    data = write_dataset(os.path.join(work, "data"), n_train=args.images, n_eval=32, size=args.image_size,
                         annotated_fraction=0.5)
    base = dict(backbone=args.backbone, image_size=args.image_size, findings="synthetic",
                batch_size=args.batch_size, stage1_epochs=args.epochs, stage2_epochs=args.epochs,
                latent_dim=16, hidden_dim=64, num_samples=10, verbose=0)
    runs = {}
    for name, extra in (("cached", {}), ("recompute", {"cache_features": False})):
        out = os.path.join(work, name)
        m = train_model(TrainConfig(**base, **extra), os.path.join(data, "train"),
                        os.path.join(data, "eval"), out)
        runs[name] = {"out": out, "n1": m["train_examples"], "n2": m["annotated_examples"]}
    n1, n2 = runs["cached"]["n1"], runs["cached"]["n2"]
    s1 = epoch_seconds(runs["cached"]["out"], 1) / n1
    s2_cached = epoch_seconds(runs["cached"]["out"], 2) / n2
    s2_recompute = epoch_seconds(runs["recompute"]["out"], 2) / n2
    pipeline_ips = 1.0 / s1

    model = build_model(TrainConfig(**base))
    steps = max(4, n1 // args.batch_size)
    bare_ips = bare_backbone_images_per_second(model, args.batch_size, steps)
    step_ips = in_memory_train_step_images_per_second(model, TrainConfig(**base), steps)

    print(f"\n{args.backbone} @ {args.image_size}px, batch {args.batch_size}, {n1} training images "
          f"({n2} annotated), {os.cpu_count()} CPU cores; epoch times exclude each stage's first epoch")
    print("| measure | value |")
    print("|---|---|")
    print(f"| stage 1 s/image (TFRecord pipeline + train step) | {s1 * 1e3:.2f} ms |")
    print(f"| stage 2 s/image, cached features | {s2_cached * 1e3:.3f} ms |")
    print(f"| stage 2 s/image, recomputing the frozen backbone | {s2_recompute * 1e3:.2f} ms |")
    print(f"| **ratio stage-2 cached / stage-1 per image** | **{s2_cached / s1:.4f}** |")
    print(f"| ratio stage-2 cached / stage-2 recompute | {s2_cached / s2_recompute:.4f} |")
    print(f"| stage-1 training images/s (pipeline) | {pipeline_ips:.1f} |")
    print(f"| bare backbone fwd+bwd images/s (in memory) | {bare_ips:.1f} |")
    print(f"| full train step images/s (in memory) | {step_ips:.1f} |")
    print(f"| **ratio pipeline / bare backbone** (target >= 0.8) | **{pipeline_ips / bare_ips:.3f}** |")
    print(f"| ratio pipeline / in-memory train step | {pipeline_ips / step_ips:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
