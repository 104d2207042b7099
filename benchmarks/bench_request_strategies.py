"""Does ranking pay? Stage-2 gain when the annotated images are chosen by each request strategy,
against a seeded random choice of the same number, on the synthetic benchmark.

For each setting - without and with the spurious cue (``--synthetic-shortcut``) - the embedded
synthetic dataset is built once with EVERY training image annotated (informative boxes / gaze). Per
setting and seed, stage 1 is trained once and shared by every strategy and budget. Its frozen-backbone
features of all training images are cached and scored once (:mod:`cxr_tfp.annotate.scoring`). Then,
for every budget (a share of the training images) and strategy, the strategy picks that many images
(:mod:`cxr_tfp.annotate.strategies`); stage 2 starts from the stage-1 model and trains on the chosen
images only, which keep their annotation. Gain = stage-2 minus stage-1 macro AUROC on the eval split.
"- random" is the paired (same seed, same stage 1, same budget) difference from the random choice,
with a 95% t-interval over seeds.

Strategies: ``random``; ``uncertainty`` (spread over latent samples); ``shift`` (predicted posterior
shift, learned on the images already annotated: half the budget is first drawn at random - the
same images the random arm starts with - the other half is ranked by the regression fitted on them);
``+div`` variants add the diversity term (``--diversity``).

Why this design (bounded time on a shared 2-core machine): the gain sweep's machinery
(``bench_gain_sweep.py``: build, canonical shard order, stage 2 on cached features with one traced
train step); the eval split's features are cached too (the backbone is frozen in stage 2), so a
stage-2 run and its evaluation cost about a second.

    .venv/bin/python benchmarks/bench_request_strategies.py --work /tmp/req_bench \\
        --figure docs/request_strategies.png --table docs/request_strategies.md
    .venv/bin/python benchmarks/bench_request_strategies.py --reduced     # 6 to 9 minutes on a shared 2-core machine (slow test)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_gain_sweep as sweep  # noqa: E402  (build, canonical order, stage 2 on cached features)

BASELINE = "random"


def choose(name: str, scores_all, n: int, k: int, seed: int, diversity: float) -> np.ndarray:
    """Rows (of the n training images) that strategy ``name`` (``+div`` = with diversity) picks."""
    from cxr_tfp.annotate.strategies import get_strategy

    base, div = (name[:-4], diversity) if name.endswith("+div") else (name, 0.0)
    ids = list(range(n))
    if base != "shift":
        return np.asarray(get_strategy(base, seed=seed, diversity=div).rank(ids, scores_all, k).ids, int)
    # warm start: the first half exactly as the random arm draws it, then the learned ranking
    k0 = max(1, int(math.ceil(k / 2)))
    first = np.asarray(get_strategy(BASELINE, seed=seed).rank(ids, scores_all, k0).ids, int)
    rest = np.setdiff1d(np.arange(n), first)
    pool = scores_all.take(rest)
    pool.annotated_embedding = scores_all.embedding[first]
    pool.annotated_probabilities = scores_all.probabilities[first]
    pool.annotated_uncertainty = scores_all.uncertainty[first]
    pool.annotated_shift = scores_all.annotated_shift[first]
    picked = get_strategy("shift", seed=seed, diversity=div).rank(list(rest), pool, k - k0).ids
    return np.concatenate([first, np.asarray(picked, int)])


def run(args) -> Dict[str, object]:
    import tensorflow as tf

    from cxr_tfp import features as F
    from cxr_tfp.annotate import scoring
    from cxr_tfp.config import load_config
    from cxr_tfp.model import load_model
    from cxr_tfp.train import (auroc_report, cache_stage2_features, prepare_cached_stage2, train_model,
                               train_stage2_cached)

    tf.config.experimental.enable_op_determinism()
    work = args.work or tempfile.mkdtemp(prefix="request_bench_")
    os.makedirs(work, exist_ok=True)
    rows: List[Dict[str, object]] = []
    t_start = time.perf_counter()
    for shortcut in args.shortcuts:
        data = sweep.build(work, False, shortcut, args)
        shards = sweep.canonical_shards(os.path.join(data, "train"))
        eval_shards = sweep.canonical_shards(os.path.join(data, "eval"))
        eval_dir = os.path.join(data, "eval")
        for seed in range(args.seeds):
            over = {"seed": seed, "stage1_epochs": args.stage1_epochs, "stage2_epochs": 0,
                    "image_size": args.image_size, "verbose": 0}
            cfg1 = load_config(args.config, over)
            out = os.path.join(work, f"stage1_shortcut{shortcut:g}_seed{seed}")
            t0 = time.perf_counter()
            done = os.path.join(out, "metrics.json")
            if args.reuse_stage1 and os.path.exists(done) and os.path.exists(os.path.join(out, "model.keras")):
                with open(done) as fh:   # training is deterministic for a seed: the same model again
                    m1 = json.load(fh)
            else:
                shutil.rmtree(out, ignore_errors=True)
                m1 = train_model(cfg1, shards, eval_dir, out)
            s1 = m1["stage1"]["macro_auroc"]
            cfg2 = load_config(args.config, {**over, "stage2_epochs": args.stage2_epochs})
            model = load_model(os.path.join(out, "model.keras"))
            # Stage 2 starts from a zero posterior residual (q = the prior's own head on what the expert
            # looked at); the shift the strategies learn from is measured at that starting point.
            model.init_posterior_from_prior()
            w1 = model.get_weights()
            train = sweep.canonical_cache(cache_stage2_features(model, cfg2, shards))
            ev = cache_stage2_features(model, cfg2, eval_shards)
            n = len(train[F.Y_LABELS])
            cand = scoring.score_features(model, train[F.X_FEATURES])
            shift = scoring.posterior_shift(model, train[F.X_FEATURES], train[F.X_ANN_GRID],
                                            train[F.X_HAS_GAZE], train[F.X_HAS_BOXES])
            scores_all = scoring.make_scores(model, cand, cand, shift)
            # check: stage 1 evaluated from cached eval features agrees with the trainer's own number
            ev_probs = scoring.score_features(model, ev[F.X_FEATURES])["probabilities"]
            s1_cached = auroc_report(cfg2.finding_names, ev_probs, ev[F.Y_LABELS], ev[F.Y_MASK])["macro_auroc"]
            if abs(s1_cached - s1) > 0.01:
                raise RuntimeError(f"stage 1 from cached eval features {s1_cached:.4f} != trainer's {s1:.4f}")
            print(f"shortcut {shortcut:g} seed {seed}: stage 1 macro AUROC {s1:.4f} on {len(ev_probs)} eval "
                  f"images, {n} train images ({time.perf_counter() - t0:.0f}s)", flush=True)
            prepare_cached_stage2(model, cfg2)
            for fraction in args.fractions:
                k = min(n, max(2, int(round(fraction * n))))
                for name in args.strategies:
                    picked = choose(name, scores_all, n, k, seed, args.diversity)
                    if len(set(picked.tolist())) != k:
                        raise RuntimeError(f"{name} picked {len(set(picked.tolist()))} distinct images, not {k}")
                    sub = {key: v[np.sort(picked)] for key, v in train.items()}
                    t0 = time.perf_counter()
                    train_stage2_cached(model, w1, sub, cfg2, args.beta)
                    probs = scoring.score_features(model, ev[F.X_FEATURES])["probabilities"]
                    s2 = auroc_report(cfg2.finding_names, probs, ev[F.Y_LABELS], ev[F.Y_MASK])["macro_auroc"]
                    rows.append({"shortcut": shortcut, "seed": seed, "fraction": fraction, "strategy": name,
                                 "stage1": s1, "stage2": s2, "gain": s2 - s1, "n_annotated": k, "n_train": n,
                                 "n_eval": int(len(probs)),
                                 "positives_picked": int(sub[F.Y_LABELS].sum()),
                                 "mean_shift_picked": float(shift[picked].mean()),
                                 "seconds": round(time.perf_counter() - t0, 2)})
                    print(f"  {100 * fraction:g}% ({k}) {name:16s}: stage 2 {s2:.4f} gain {s2 - s1:+.4f}",
                          flush=True)
            with open(os.path.join(work, "request_strategies.partial.json"), "w") as fh:
                json.dump({"rows": rows, "args": dict(vars(args))}, fh)
    result = {"rows": rows, "summary": summarise(rows), "args": dict(vars(args)),
              "seconds": round(time.perf_counter() - t_start, 1)}
    with open(os.path.join(work, "request_strategies.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"results: {os.path.join(work, 'request_strategies.json')} (total {result['seconds']:.0f}s)")
    return result


def summarise(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Per (setting, budget, strategy): mean gain (95% CI) and the paired difference from random."""
    from cxr_tfp.metrics import t_interval

    out = []
    for sc, fr in sorted({(r["shortcut"], r["fraction"]) for r in rows}):
        rs = [r for r in rows if (r["shortcut"], r["fraction"]) == (sc, fr)]
        base = {r["seed"]: r["gain"] for r in rs if r["strategy"] == BASELINE}
        for name in dict.fromkeys(r["strategy"] for r in rs):
            g = {r["seed"]: r["gain"] for r in rs if r["strategy"] == name}
            mean, half = t_interval(list(g.values()))
            e = {"shortcut": sc, "fraction": fr, "strategy": name, "n_annotated": rs[0]["n_annotated"],
                 "n_train": rs[0]["n_train"], "n_eval": rs[0]["n_eval"],
                 "gain": {"gain": mean, "ci_half": half, "seeds": len(g)},
                 # what was picked: the actual posterior shift (nats) and positive labels, means over seeds
                 "shift_picked": float(np.mean([r["mean_shift_picked"] for r in rs if r["strategy"] == name])),
                 "positives_picked": float(np.mean([r["positives_picked"] for r in rs if r["strategy"] == name]))}
            if name != BASELINE:
                seeds = sorted(set(g) & set(base))
                d, dh = t_interval([g[s] - base[s] for s in seeds])
                e["vs_random"] = {"gain": d, "ci_half": dh, "seeds": len(seeds),
                                  "wins": int(sum(g[s] > base[s] for s in seeds))}
            out.append(e)
    return out


def _ci(v) -> str:
    return sweep._ci(v)


def table(result: Dict[str, object]) -> str:
    lines = ["| spurious cue | budget (images of train) | strategy | gain over stage 1 (95% CI) | "
             "strategy - random (95% CI) | seeds better than random | KL(q \\|\\| p) of the picks | "
             "positive labels picked |",
             "|---|---|---|---|---|---|---|---|"]
    for e in result["summary"]:
        vs = e.get("vs_random")
        wins = f"{vs['wins']}/{vs['seeds']}" if vs else ""
        lines.append(f"| {'yes' if e['shortcut'] else 'no'} | {100 * e['fraction']:g}% ({e['n_annotated']} of "
                     f"{e['n_train']}) | {e['strategy']} | {_ci(e['gain'])} | {_ci(vs) if vs else '(baseline)'} | "
                     f"{wins} | {e['shift_picked']:.1f} | {e['positives_picked']:.0f} |")
    return "\n".join(lines) + "\n"


def figure(result: Dict[str, object], path: str) -> str:
    """Per setting: each strategy's gain minus random's (paired, 95% CI) against the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = result["summary"]
    shortcuts = sorted({e["shortcut"] for e in summ})
    names = list(dict.fromkeys(e["strategy"] for e in summ))
    fig, axes = plt.subplots(1, len(shortcuts), figsize=(4.6 * len(shortcuts), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, sc in enumerate(shortcuts):
        ax = axes[0, j]
        others = [nm for nm in names if nm != BASELINE]
        for i, nm in enumerate(others):
            es = sorted((e for e in summ if e["shortcut"] == sc and e["strategy"] == nm), key=lambda e: e["fraction"])
            x = np.array([100 * e["fraction"] for e in es]) * (1 + 0.05 * (i - (len(others) - 1) / 2))
            y = np.array([e["vs_random"]["gain"] for e in es])
            err = np.array([e["vs_random"]["ci_half"] or 0.0 for e in es])
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, lw=1.3, color=colors[i % len(colors)], label=nm)
        xs = sorted({100 * e["fraction"] for e in summ})
        ax.axhline(0, color="0.4", lw=0.9, ls=":")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.minorticks_off()
        ax.set_title("spurious cue" if sc else "no spurious cue", fontsize=9)
        ax.set_xlabel("annotation budget (% of training images)")
        if j == 0:
            ax.set_ylabel("stage-2 gain, strategy - random\n(macro AUROC, paired)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    a = result["args"]
    seeds = max(e["gain"]["seeds"] for e in summ)
    fig.suptitle(f"Annotation requests on the synthetic set ({a['patients']} patients, {a['image_size']} px):\n"
                 f"stage-2 gain of each strategy minus random, mean and paired 95% interval over {seeds} seeds",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.90))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--fractions", default="0.05,0.1,0.25", help="budgets, shares of the train split")
    p.add_argument("--strategies", default="random,uncertainty,uncertainty+div,shift,shift+div",
                   help="'random' first; '+div' adds the diversity term")
    p.add_argument("--diversity", type=float, default=1.0, help="weight of the diversity term in '+div'")
    p.add_argument("--beta", type=float, default=1.0, help="stage-2 KL weight")
    p.add_argument("--shortcuts", default="0,1", help="spurious-cue probabilities (0 = off)")
    p.add_argument("--patients", type=int, default=240)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--contrast", type=float, default=3.0)
    p.add_argument("--decoys", type=float, default=1.5)
    p.add_argument("--stage1-epochs", type=int, default=20)
    p.add_argument("--stage2-epochs", type=int, default=40)
    p.add_argument("--config", default=os.path.join(REPO, "configs", "smoke.yaml"))
    p.add_argument("--reduced", action="store_true",
                   help="a few-minute version: 2 seeds, budgets 10 and 25%%, spurious cue only, small data, "
                        "few epochs")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--reuse-stage1", action="store_true",
                   help="reuse a finished stage-1 model found in --work (training is deterministic for a seed)")
    p.add_argument("--figure", default=None, help="write the PNG figure here")
    p.add_argument("--table", default=None, help="write the markdown table here")
    p.add_argument("--from-json", default=None,
                   help="no training: summarise the rows of a finished or partial run's JSON (the seeds so far)")
    args = p.parse_args(argv)
    if args.reduced:
        args.seeds, args.fractions, args.shortcuts = 2, "0.1,0.25", "1"
        args.patients, args.image_size, args.stage1_epochs, args.stage2_epochs = 80, 32, 3, 5
    args.fractions = [float(v) for v in str(args.fractions).split(",")]
    args.shortcuts = [float(v) for v in str(args.shortcuts).split(",")]
    args.strategies = [s.strip() for s in str(args.strategies).split(",") if s.strip()]
    if not args.strategies or args.strategies[0] != BASELINE:
        p.error("--strategies must start with 'random' (the baseline)")
    from cxr_tfp.annotate.strategies import NAMES
    for s in args.strategies:
        if s.removesuffix("+div") not in NAMES:
            p.error(f"unknown strategy {s!r}; choose from {', '.join(NAMES)} (optionally with '+div')")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        result = {"rows": saved["rows"], "summary": summarise(saved["rows"]),
                  "args": saved.get("args") or dict(vars(args))}
    else:
        result = run(args)
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
