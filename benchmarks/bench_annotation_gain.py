"""Does stage 2 (annotation distillation) raise held-out macro AUROC over stage 1?

Builds the embedded synthetic dataset twice with the data build CLI - informative annotations
(boxes / gaze on the findings) and control annotations (same statistics, random places) - from the
same generator seed (same images and labels), then runs the two-stage training for several seeds on
each and prints stage-1 / stage-2 macro AUROC on the eval split and the gain, per seed and averaged.

Default setting (why): 400 patients (480 train images, 240 annotated), 64 px, finding contrast 3,
and 1.5 unlabelled lesion-like decoys per image outside the lungs (``--synthetic-decoys``), so that
image-level labels leave open which local pattern explains a label while boxes / gaze mark the true
lesion. Stage 1 runs 60 epochs (after only 20, stage 2's extra head training alone raised the
control's AUROC by 0.05, crediting stage 2 with mere extra training); stage 2 runs 100 epochs,
which is cheap (it trains on cached frozen-backbone features, ~0.1 s/epoch): ~1500 steps instead of
~150 at 10 epochs, where (after 20 stage-1 epochs) stage 2 left both arms' eval AUROC within 0.001.
Training is deterministic for a seed (op determinism on, train shards read in content order:
see canonical_shards), so a rerun, even from a fresh build, gives the same numbers.

The last column is a diagnostic on the annotated eval images: macro AUROC of the stage-2 posterior
q(z|x,a), given the eval annotation, minus that of the image-only prior. Positive for informative
and not for control annotations means the annotation carries information the model can use on
held-out images; the stage-1 -> stage-2 gain says how much of it stage 2 moved into the prior.
``--shortcut P`` builds the spurious-cue variant instead (train-split decoys are copies of each
finding's pattern outside the lungs, eval decoys stay label-independent; see cxr_tfp.datasets.synthetic).
Measured results, and the designs tried, are in docs/model.md.

    .venv/bin/python benchmarks/bench_annotation_gain.py [--seeds 3] [--shortcut 1] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def build(root: str, control: bool, args) -> str:
    out = os.path.join(root, ("control" if control else "informative")
                       + (f"_shortcut{args.shortcut:g}" if args.shortcut else ""))
    if os.path.exists(os.path.join(out, "summary.json")):
        return out
    cmd = [sys.executable, "-m", "cxr_tfp.records.build", "--dataset", "synthetic",
           "--root", out + "_raw", "--out", out, "--image-size", str(args.image_size),
           "--synthetic-patients", str(args.patients), "--synthetic-seed", "0",
           "--synthetic-annotated-fraction", str(args.annotated_fraction),
           "--split-fractions", "0.6,0.3,0.1", "--quiet"]
    if args.contrast is not None:
        cmd += ["--synthetic-contrast", str(args.contrast)]
    if args.decoys:
        cmd += ["--synthetic-decoys", str(args.decoys)]
    if args.shortcut:
        cmd += ["--synthetic-shortcut", str(args.shortcut)]
    if control:
        cmd.append("--synthetic-control")
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def canonical_shards(split_dir: str) -> list:
    """The split's TFRecord shards ordered by the smallest example key each holds.

    Why: builds made before the build became byte-reproducible could give the same shards swapped
    file names from one build to the next, and the input pipeline reads files in the order given, so
    the training order (and the AUROC, by up to ~0.03 here) depended on the build. Current builds are
    identical byte for byte; the content order keeps older data folders comparable.
    """
    import glob

    import tensorflow as tf

    from cxr_tfp import features as F

    def first_key(path: str) -> bytes:
        keys = [tf.train.Example.FromString(r.numpy()).features.feature[F.EXAMPLE_KEY].bytes_list.value[0]
                for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
        return min(keys) if keys else b""

    return sorted(glob.glob(os.path.join(split_dir, "*.tfrecord*")), key=first_key)


def annotated_eval_auroc(out: str, cfg, eval_dir: str) -> dict:
    """Macro AUROC on the ANNOTATED eval images of the final (stage-2) model, two ways: the image-only
    prior (what serving uses) and the posterior q(z|x,a) given the eval annotation, both at the mean of z.

    Why: it separates "the annotation carries usable information on held-out images" (posterior >
    prior) from "stage 2 moved that information into the image-only prior" (the stage-1 -> 2 gain).
    """
    import glob

    import tensorflow as tf

    from cxr_tfp import features as F
    from cxr_tfp.input import make_dataset
    from cxr_tfp.model import load_model
    from cxr_tfp.train import auroc_report

    model = load_model(os.path.join(out, "model.keras"))
    P, Q, Y, M = [], [], [], []
    for x, y in make_dataset(sorted(glob.glob(os.path.join(eval_dir, "*"))), cfg.image_size, cfg.finding_names,
                             64, annotated_only=True):
        f = model.features(x[F.X_IMAGE])
        mu_p, logvar_p = model.head.prior(f)
        mu_q, _ = model.posterior_or_prior(f, model.annotation_grid(x[F.X_ANNOTATION]), x[F.X_HAS_GAZE],
                                           x[F.X_HAS_BOXES], mu_p, logvar_p)
        P.append(tf.sigmoid(model.head.classifier(mu_p)).numpy())
        Q.append(tf.sigmoid(model.head.classifier(mu_q)).numpy())
        Y.append(y[F.Y_LABELS].numpy())
        M.append(y[F.Y_MASK].numpy())
    P, Q, Y, M = (np.concatenate(a, 0) for a in (P, Q, Y, M))
    return {"prior": auroc_report(cfg.finding_names, P, Y, M)["macro_auroc"],
            "posterior": auroc_report(cfg.finding_names, Q, Y, M)["macro_auroc"], "n": int(len(Y))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--patients", type=int, default=400)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--annotated-fraction", type=float, default=0.5)
    p.add_argument("--contrast", type=float, default=3.0, help="synthetic finding contrast multiplier")
    p.add_argument("--decoys", type=float, default=1.5,
                   help="mean unlabelled lesion-like decoys per image, outside the lungs")
    p.add_argument("--shortcut", type=float, default=0.0,
                   help="train split only: probability that a finding gets a copy of its pattern outside the "
                        "lungs (a spurious cue absent from eval); 0 = off")
    p.add_argument("--only", choices=("informative", "control"), default=None, help="run one arm only")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "smoke.yaml"))
    p.add_argument("--stage1-epochs", type=int, default=60)
    p.add_argument("--stage2-epochs", type=int, default=100)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--prior-bce", type=float, default=None, help="stage2_prior_bce override")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other training-config override (YAML value), repeatable")
    p.add_argument("--nondeterministic", action="store_true",
                   help="skip tf.config.experimental.enable_op_determinism() (faster on some machines, "
                        "but reruns of one seed then differ)")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)

    import tensorflow as tf

    from cxr_tfp.config import load_config
    from cxr_tfp.train import train_model

    if not args.nondeterministic:
        # Why: without it, long runs of one seed drifted apart on a loaded 2-core machine (stage-1
        # AUROC 0.844 vs 0.871), which is larger than the effect being measured.
        tf.config.experimental.enable_op_determinism()

    work = args.work or tempfile.mkdtemp(prefix="bench_gain_")
    t_start = time.perf_counter()
    rows = []
    for control in (False, True):
        if args.only and args.only != ("control" if control else "informative"):
            continue
        data = build(work, control, args)
        name = "control" if control else "informative"
        for seed in range(args.seeds):
            over = {"seed": seed, "stage1_epochs": args.stage1_epochs, "stage2_epochs": args.stage2_epochs,
                    "image_size": args.image_size, "verbose": 0}
            if args.beta is not None:
                over["beta"] = args.beta
            if args.prior_bce is not None:
                over["stage2_prior_bce"] = args.prior_bce
            for kv in args.set:
                key, _, value = kv.partition("=")
                over[key] = yaml.safe_load(value)
            cfg = load_config(args.config, over)
            out = os.path.join(work, f"run_{name}_{seed}")
            shutil.rmtree(out, ignore_errors=True)   # a fresh run, never a resumed one
            t0 = time.perf_counter()
            m = train_model(cfg, canonical_shards(os.path.join(data, "train")), os.path.join(data, "eval"),
                            out)
            ann = annotated_eval_auroc(out, cfg, os.path.join(data, "eval"))
            rows.append({"ann_eval_prior": ann["prior"], "ann_eval_posterior": ann["posterior"],
                         "ann_eval_n": ann["n"],
                         "annotations": name, "seed": seed, "stage1": m["stage1"]["macro_auroc"],
                         "stage2": m["stage2"]["macro_auroc"], "num_eval": m["stage1"]["num_eval"],
                         "annotated_train": m["annotated_examples"], "train_examples": m["train_examples"],
                         "seconds": time.perf_counter() - t0})
            r = rows[-1]
            print(f"{name:12s} seed {seed}: stage1 {r['stage1']:.4f}  stage2 {r['stage2']:.4f}  "
                  f"gain {r['stage2'] - r['stage1']:+.4f}  | annotated eval ({r['ann_eval_n']}): prior "
                  f"{r['ann_eval_prior']:.4f} posterior {r['ann_eval_posterior']:.4f}  ({r['seconds']:.0f}s)",
                  flush=True)

    print()
    print(f"train {rows[0]['train_examples']} images ({rows[0]['annotated_train']} annotated), "
          f"eval {rows[0]['num_eval']} images, {args.image_size}px, config {os.path.basename(args.config)}, "
          f"stage1 {args.stage1_epochs} / stage2 {args.stage2_epochs} epochs, overrides "
          f"beta={args.beta} stage2_prior_bce={args.prior_bce} contrast={args.contrast} decoys={args.decoys} "
          f"shortcut={args.shortcut} "
          f"set={args.set}, op determinism {'off' if args.nondeterministic else 'on'}")
    print("| annotations | seeds | stage-1 macro AUROC | stage-2 macro AUROC | gain (mean ± sd) | "
          "annotated eval: posterior - prior (mean ± sd) |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for name in ("informative", "control"):
        rs = [r for r in rows if r["annotations"] == name]
        if not rs:
            continue
        s1 = np.array([r["stage1"] for r in rs])
        s2 = np.array([r["stage2"] for r in rs])
        g = s2 - s1
        d = np.array([r["ann_eval_posterior"] - r["ann_eval_prior"] for r in rs])
        sd = lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0  # noqa: E731
        summary[name] = {"stage1": float(s1.mean()), "stage2": float(s2.mean()), "gain": float(g.mean()),
                         "gain_sd": sd(g), "posterior_minus_prior": float(d.mean()),
                         "posterior_minus_prior_sd": sd(d)}
        print(f"| {name} | {len(rs)} | {s1.mean():.4f} | {s2.mean():.4f} | "
              f"{g.mean():+.4f} ± {sd(g):.4f} | {d.mean():+.4f} ± {sd(d):.4f} |")
    if len(summary) == 2:
        diff = summary["informative"]["gain"] - summary["control"]["gain"]
        print(f"\ngain(informative) - gain(control) = {diff:+.4f}")
    with open(os.path.join(work, "bench_annotation_gain.json"), "w") as fh:
        json.dump({"rows": rows, "summary": summary, "args": vars(args),
                   "seconds": time.perf_counter() - t_start}, fh, indent=2)
    print(f"results: {os.path.join(work, 'bench_annotation_gain.json')}  "
          f"(total {time.perf_counter() - t_start:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
