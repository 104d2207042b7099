"""Does stage 2 (annotation distillation) raise held-out macro AUROC over stage 1?

Builds the embedded synthetic dataset twice with the data build CLI - informative annotations
(boxes / gaze on the findings) and control annotations (same statistics, random places) - from the
same generator seed (same images and labels), then runs the two-stage training for several seeds on
each and prints stage-1 / stage-2 macro AUROC on the eval split and the gain, per seed and averaged.

    .venv/bin/python benchmarks/bench_annotation_gain.py [--seeds 3] [--patients 300] [--work DIR]
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def build(root: str, control: bool, args) -> str:
    out = os.path.join(root, "control" if control else "informative")
    if os.path.exists(os.path.join(out, "summary.json")):
        return out
    cmd = [sys.executable, "-m", "cxr_tfp.data.build", "--dataset", "synthetic",
           "--root", out + "_raw", "--out", out, "--image-size", str(args.image_size),
           "--synthetic-patients", str(args.patients), "--synthetic-seed", "0",
           "--synthetic-annotated-fraction", str(args.annotated_fraction),
           "--split-fractions", "0.6,0.3,0.1", "--quiet"]
    if args.contrast is not None:
        cmd += ["--synthetic-contrast", str(args.contrast)]
    if control:
        cmd.append("--synthetic-control")
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--patients", type=int, default=300)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--annotated-fraction", type=float, default=0.5)
    p.add_argument("--contrast", type=float, default=None, help="synthetic finding contrast multiplier")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "smoke.yaml"))
    p.add_argument("--stage1-epochs", type=int, default=12)
    p.add_argument("--stage2-epochs", type=int, default=8)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--prior-bce", type=float, default=None, help="stage2_prior_bce override")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)

    from cxr_tfp.config import load_config
    from cxr_tfp.train import train_model

    work = args.work or tempfile.mkdtemp(prefix="bench_gain_")
    rows = []
    for control in (False, True):
        data = build(work, control, args)
        name = "control" if control else "informative"
        for seed in range(args.seeds):
            over = {"seed": seed, "stage1_epochs": args.stage1_epochs, "stage2_epochs": args.stage2_epochs,
                    "image_size": args.image_size, "verbose": 0}
            if args.beta is not None:
                over["beta"] = args.beta
            if args.prior_bce is not None:
                over["stage2_prior_bce"] = args.prior_bce
            cfg = load_config(args.config, over)
            out = os.path.join(work, f"run_{name}_{seed}")
            shutil.rmtree(out, ignore_errors=True)   # a fresh run, never a resumed one
            t0 = time.perf_counter()
            m = train_model(cfg, os.path.join(data, "train"), os.path.join(data, "eval"), out)
            rows.append({"annotations": name, "seed": seed, "stage1": m["stage1"]["macro_auroc"],
                         "stage2": m["stage2"]["macro_auroc"], "num_eval": m["stage1"]["num_eval"],
                         "annotated_train": m["annotated_examples"], "train_examples": m["train_examples"],
                         "seconds": time.perf_counter() - t0})
            r = rows[-1]
            print(f"{name:12s} seed {seed}: stage1 {r['stage1']:.4f}  stage2 {r['stage2']:.4f}  "
                  f"gain {r['stage2'] - r['stage1']:+.4f}  ({r['seconds']:.0f}s)", flush=True)

    print()
    print(f"train {rows[0]['train_examples']} images ({rows[0]['annotated_train']} annotated), "
          f"eval {rows[0]['num_eval']} images, {args.image_size}px, config {os.path.basename(args.config)}, "
          f"stage1 {args.stage1_epochs} / stage2 {args.stage2_epochs} epochs, overrides "
          f"beta={args.beta} stage2_prior_bce={args.prior_bce} contrast={args.contrast}")
    print(f"| annotations | seeds | stage-1 macro AUROC | stage-2 macro AUROC | gain (mean ± sd) |")
    print(f"|---|---|---|---|---|")
    summary = {}
    for name in ("informative", "control"):
        rs = [r for r in rows if r["annotations"] == name]
        s1 = np.array([r["stage1"] for r in rs])
        s2 = np.array([r["stage2"] for r in rs])
        g = s2 - s1
        summary[name] = {"stage1": float(s1.mean()), "stage2": float(s2.mean()), "gain": float(g.mean()),
                         "gain_sd": float(g.std(ddof=1)) if len(g) > 1 else 0.0}
        print(f"| {name} | {len(rs)} | {s1.mean():.4f} | {s2.mean():.4f} | "
              f"{g.mean():+.4f} ± {summary[name]['gain_sd']:.4f} |")
    diff = summary["informative"]["gain"] - summary["control"]["gain"]
    print(f"\ngain(informative) - gain(control) = {diff:+.4f}")
    with open(os.path.join(work, "bench_annotation_gain.json"), "w") as fh:
        json.dump({"rows": rows, "summary": summary, "args": vars(args)}, fh, indent=2)
    print(f"results: {os.path.join(work, 'bench_annotation_gain.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
