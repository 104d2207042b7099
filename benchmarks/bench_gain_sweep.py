"""The annotation-gain study as a sweep: gain of stage 2 over stage 1 by annotated fraction and beta.

For each setting - without and with the spurious cue (``--synthetic-shortcut``) - the embedded
synthetic dataset is built twice from one generator seed with EVERY training image annotated:
informative annotations (boxes / gaze on the findings) and control annotations (same statistics,
random places in the lungs). Images and labels are identical in the two builds.

Per setting and seed, stage 1 is trained once (it never sees annotations, so it is the same for both
arms and all fractions). Then, for every annotated fraction, beta and arm, stage 2 starts from that
stage-1 model and trains on the cached frozen-backbone features of a seeded subset of the training
images (the same images in both arms) carrying their annotation. "Gain" is stage-2 minus stage-1
macro AUROC on the eval split. Intervals are 95% t-intervals over seeds; "informative - control"
is the paired (same seed, same subset) difference.

Why this design (bounded time on 2 cores): stage 1 dominates the cost and is shared; stage 2 on
cached features costs well under a second per epoch. Training is deterministic for a seed (op
determinism on, shards read in content order), so a rerun gives the same table.

    .venv/bin/python benchmarks/bench_gain_sweep.py                       # full sweep
    .venv/bin/python benchmarks/bench_gain_sweep.py --reduced             # ~2 min smoke version
    .venv/bin/python benchmarks/bench_gain_sweep.py --figure docs/annotation_gain_sweep.png \\
        --table docs/annotation_gain_sweep.md

Writes ``WORK/gain_sweep.json`` (every run), and the figure / markdown table where asked.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

ARMS = ("informative", "control")
BUILD_MODULE = "cxr_tfp.records.build"


def build(work: str, control: bool, shortcut: float, args) -> str:
    """Build one synthetic dataset (every image annotated) with the data-build CLI; reuse it if present."""
    out = os.path.join(work, f"{'control' if control else 'informative'}_shortcut{shortcut:g}")
    if os.path.exists(os.path.join(out, "summary.json")):
        return out
    cmd = [sys.executable, "-m", BUILD_MODULE, "--dataset", "synthetic", "--root", out + "_raw",
           "--out", out, "--image-size", str(args.image_size), "--synthetic-patients", str(args.patients),
           "--synthetic-seed", "0", "--synthetic-annotated-fraction", "1.0",
           "--synthetic-contrast", str(args.contrast), "--synthetic-decoys", str(args.decoys),
           "--split-fractions", "0.6,0.3,0.1", "--workers", "1", "--quiet"]
    if shortcut:
        cmd += ["--synthetic-shortcut", str(shortcut)]
    if control:
        cmd.append("--synthetic-control")
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
    return out


def canonical_shards(split_dir: str) -> List[str]:
    """Shards ordered by their smallest example key (independent of the build's file names)."""
    import glob

    import tensorflow as tf

    from cxr_tfp import features as F

    def first_key(path: str) -> bytes:
        keys = [tf.train.Example.FromString(r.numpy()).features.feature[F.EXAMPLE_KEY].bytes_list.value[0]
                for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
        return min(keys) if keys else b""

    return sorted(glob.glob(os.path.join(split_dir, "*.tfrecord*")), key=first_key)


def canonical_cache(cache: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Cache rows sorted by a hash of their feature map, so both arms (same images) align row by row."""
    keys = [hashlib.sha256(np.round(f, 4).tobytes()).hexdigest() for f in cache["features"]]
    order = np.argsort(np.asarray(keys), kind="stable")
    return {k: v[order] for k, v in cache.items()}


def subset(cache: Dict[str, np.ndarray], fraction: float, seed: int) -> Dict[str, np.ndarray]:
    """A seeded subset (``fraction`` of the rows, at least 2) - the same rows for a seed in both arms."""
    n = len(cache["labels"])
    k = min(n, max(2, int(round(fraction * n))))
    rows = np.sort(np.random.default_rng(1000 + seed).permutation(n)[:k])
    return {key: v[rows] for key, v in cache.items()}


def sweep(args) -> Dict[str, object]:
    import tensorflow as tf

    from cxr_tfp.config import load_config
    from cxr_tfp.model import load_model
    from cxr_tfp.train import (auroc_report, cache_stage2_features, predict_split, prepare_cached_stage2,
                               train_model, train_stage2_cached)

    tf.config.experimental.enable_op_determinism()
    work = args.work or tempfile.mkdtemp(prefix="gain_sweep_")
    os.makedirs(work, exist_ok=True)
    rows: List[Dict[str, object]] = []
    t_start = time.perf_counter()
    for shortcut in args.shortcuts:
        data = {arm: build(work, arm == "control", shortcut, args) for arm in ARMS}
        shards = {arm: canonical_shards(os.path.join(data[arm], "train")) for arm in ARMS}
        eval_dir = os.path.join(data["informative"], "eval")
        for seed in range(args.seeds):
            over = {"seed": seed, "stage1_epochs": args.stage1_epochs, "stage2_epochs": 0,
                    "image_size": args.image_size, "verbose": 0}
            cfg1 = load_config(args.config, over)
            out = os.path.join(work, f"stage1_shortcut{shortcut:g}_seed{seed}")
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            m1 = train_model(cfg1, shards["informative"], eval_dir, out)
            s1 = m1["stage1"]["macro_auroc"]
            print(f"shortcut {shortcut:g} seed {seed}: stage 1 macro AUROC {s1:.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
            cfg2 = load_config(args.config, {**over, "stage2_epochs": args.stage2_epochs})
            model = load_model(os.path.join(out, "model.keras"))
            w1 = model.get_weights()
            prepare_cached_stage2(model, cfg2)
            caches = {arm: canonical_cache(cache_stage2_features(model, cfg2, shards[arm])) for arm in ARMS}
            if not np.allclose(caches["informative"]["features"], caches["control"]["features"], atol=1e-4):
                raise RuntimeError("the informative and control builds hold different images")
            for fraction in args.fractions:
                for beta in args.betas:
                    for arm in ARMS:
                        sub = subset(caches[arm], fraction, seed)
                        t0 = time.perf_counter()
                        train_stage2_cached(model, w1, sub, cfg2, beta)
                        probs, _, labels, mask = predict_split(model, cfg2, eval_dir)
                        s2 = auroc_report(cfg2.finding_names, probs, labels, mask)["macro_auroc"]
                        rows.append({"shortcut": shortcut, "seed": seed, "fraction": fraction, "beta": beta,
                                     "arm": arm, "stage1": s1, "stage2": s2, "gain": s2 - s1,
                                     "n_annotated": int(len(sub["labels"])),
                                     "n_train": int(m1["train_examples"]), "n_eval": int(m1["stage1"]["num_eval"]),
                                     "seconds": round(time.perf_counter() - t0, 2)})
                        print(f"  fraction {fraction:g} beta {beta:g} {arm:11s}: stage 2 {s2:.4f} gain "
                              f"{s2 - s1:+.4f} ({len(sub['labels'])} annotated, {rows[-1]['seconds']:.0f}s)",
                              flush=True)
    result = {"rows": rows, "summary": summarise(rows), "args": {k: v for k, v in vars(args).items()},
              "seconds": round(time.perf_counter() - t_start, 1)}
    with open(os.path.join(work, "gain_sweep.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"results: {os.path.join(work, 'gain_sweep.json')} (total {result['seconds']:.0f}s)")
    return result


def summarise(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Per (shortcut, fraction, beta): mean gain and 95% interval per arm, and the paired difference."""
    from cxr_tfp.metrics import t_interval

    out = []
    keys = sorted({(r["shortcut"], r["fraction"], r["beta"]) for r in rows})
    for sc, fr, beta in keys:
        rs = [r for r in rows if (r["shortcut"], r["fraction"], r["beta"]) == (sc, fr, beta)]
        entry: Dict[str, object] = {"shortcut": sc, "fraction": fr, "beta": beta,
                                    "n_annotated": rs[0]["n_annotated"]}
        by_seed = {}
        for arm in ARMS:
            g = {r["seed"]: r["gain"] for r in rs if r["arm"] == arm}
            by_seed[arm] = g
            mean, half = t_interval(list(g.values()))
            entry[arm] = {"gain": mean, "ci_half": half, "seeds": len(g)}
        seeds = sorted(set(by_seed["informative"]) & set(by_seed["control"]))
        mean, half = t_interval([by_seed["informative"][s] - by_seed["control"][s] for s in seeds])
        entry["difference"] = {"gain": mean, "ci_half": half, "seeds": len(seeds)}
        out.append(entry)
    return out


def _ci(v: Dict[str, object]) -> str:
    if v["ci_half"] is None:
        return f"{v['gain']:+.3f}"
    return f"{v['gain']:+.3f} [{v['gain'] - v['ci_half']:+.3f}, {v['gain'] + v['ci_half']:+.3f}]"


def table(result: Dict[str, object]) -> str:
    """Markdown table of the summary (one row per setting, fraction and beta)."""
    lines = ["| spurious cue | annotated fraction (images) | beta | gain, informative (95% CI) | "
             "gain, control (95% CI) | informative - control (95% CI) |",
             "|---|---|---|---|---|---|"]
    for e in result["summary"]:
        lines.append(f"| {'yes' if e['shortcut'] else 'no'} | {100 * e['fraction']:g}% ({e['n_annotated']}) | "
                     f"{e['beta']:g} | {_ci(e['informative'])} | {_ci(e['control'])} | {_ci(e['difference'])} |")
    return "\n".join(lines) + "\n"


def figure(result: Dict[str, object], path: str) -> str:
    """Gain against annotated fraction, one panel per (setting, beta), both arms with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = result["summary"]
    shortcuts = sorted({e["shortcut"] for e in summ})
    betas = sorted({e["beta"] for e in summ})
    fig, axes = plt.subplots(len(shortcuts), len(betas), figsize=(3.6 * len(betas), 3.2 * len(shortcuts)),
                             squeeze=False, sharey=True)
    colors = {"informative": "#1f77b4", "control": "#d62728"}
    seeds = max(e["informative"]["seeds"] for e in summ)
    for i, sc in enumerate(shortcuts):
        for j, beta in enumerate(betas):
            ax = axes[i, j]
            es = sorted((e for e in summ if e["shortcut"] == sc and e["beta"] == beta), key=lambda e: e["fraction"])
            x = np.array([100 * e["fraction"] for e in es])
            for k, arm in enumerate(ARMS):
                y = np.array([e[arm]["gain"] for e in es])
                err = np.array([e[arm]["ci_half"] or 0.0 for e in es])
                ax.errorbar(x * (1.04 if k else 0.96), y, yerr=err, marker="o", ms=4, capsize=3, lw=1.4,
                            color=colors[arm], label=arm)
            ax.axhline(0, color="0.5", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_xticks(x, [f"{v:g}" for v in x])
            ax.minorticks_off()
            ax.set_title(f"{'spurious cue' if sc else 'no spurious cue'}, beta {beta:g}", fontsize=9)
            if i == len(shortcuts) - 1:
                ax.set_xlabel("annotated training images (%)")
            if j == 0:
                ax.set_ylabel("stage 2 - stage 1 macro AUROC")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower left")
    a = result["args"]
    fig.suptitle(f"Annotation gain on the synthetic set: mean and 95% interval over {seeds} seeds "
                 f"({a['patients']} patients, {a['image_size']} px)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--fractions", default="0.05,0.1,0.25,0.5", help="annotated fractions of the train split")
    p.add_argument("--betas", default="1,3", help="stage-2 KL weights")
    p.add_argument("--shortcuts", default="0,1", help="spurious-cue probabilities (0 = off)")
    p.add_argument("--patients", type=int, default=240)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--contrast", type=float, default=3.0)
    p.add_argument("--decoys", type=float, default=1.5)
    p.add_argument("--stage1-epochs", type=int, default=20)
    p.add_argument("--stage2-epochs", type=int, default=40)
    p.add_argument("--config", default=os.path.join(REPO, "configs", "smoke.yaml"))
    p.add_argument("--reduced", action="store_true",
                   help="a ~2-minute version: 2 seeds, fractions 0.1 and 0.5, beta 1, spurious cue only, "
                        "small data and few epochs")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--figure", default=None, help="write the PNG figure here")
    p.add_argument("--table", default=None, help="write the markdown table here")
    args = p.parse_args(argv)
    if args.reduced:
        args.seeds, args.fractions, args.betas, args.shortcuts = 2, "0.1,0.5", "1", "1"
        args.patients, args.image_size, args.stage1_epochs, args.stage2_epochs = 80, 32, 3, 5
    args.fractions = [float(v) for v in str(args.fractions).split(",")]
    args.betas = [float(v) for v in str(args.betas).split(",")]
    args.shortcuts = [float(v) for v in str(args.shortcuts).split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result = sweep(args)
    text = table(result)
    print(text)
    if args.table:
        with open(args.table, "w") as fh:
            fh.write(text)
    if args.figure:
        print(f"figure: {figure(result, args.figure)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
