"""What are the annotations worth on your own records? (``python -m cxr_tfp.annotate study``)

    python -m cxr_tfp.annotate study --data RECORDS --out DIR [--seeds 3] [--control across|within]
        [--max-train N] [--max-eval N] [--config YAML] [--stage1-epochs E] [--stage2-epochs E] ...

For each seed, stage 1 is trained once on the training split (it never sees annotations); then
stage 2 runs from that stage-1 model in three arms, on the frozen-backbone features of the
annotated training images (cached once per seed):

- ``real``: the annotations as they are;
- ``control``: the same annotations on the wrong images: ``across`` (default) moves them to other
  annotated images of the training split (a random derangement: no image keeps its own; the
  counts of gaze / box annotations are unchanged); ``within`` shuffles the cells of each image's
  annotation on the feature grid (same image, same amount of annotation, no anatomy);
- ``none``: no stage 2 at all, the stage-1 model as it is (what you would deploy without
  annotations). ``real - none`` therefore also contains the effect of extra training of the
  prior head on the annotated images; ``real - control`` isolates what the annotation's
  *content* adds.

Every arm is scored on the eval split (``--split``) with the prior alone, as deployed. The report
gives, per finding and macro, the paired gains ``real - none`` and ``real - control`` with 95%
intervals from a two-level bootstrap (seeds with replacement x eval patients with replacement,
:func:`cxr_tfp.metrics.paired_gain_over_seeds`), so the interval reflects both the training
seeds and the eval split's size; with 3 or more seeds the t-interval over the per-seed macro gains
is printed beside it. A finding with fewer than ``--min-positives`` (10) positive eval images
reads "too few positives" instead of an interval and is left out of the macro.

Output (``DIR``, one writer at a time, :mod:`cxr_tfp.staging`)::

    DIR/work/config.json              what the study was started with (a changed one is refused)
    DIR/work/data/                    the --max-train / --max-eval subsets, when asked for
    DIR/work/eval.npz                 eval labels, mask and patient keys (salted hashes)
    DIR/work/seed<S>/stage1/          stage-1 training (resumable: cxr_tfp.train)
    DIR/work/seed<S>/<arm>.npz        eval predictions of each arm, written as it finishes
    DIR/report/study.md|json|png      the report, swapped in complete

A re-run with the same options skips the work that is done; ``--seeds`` may grow to add seeds.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cxr_tfp import features as F
from cxr_tfp.cli import UsageError, cli_main
from cxr_tfp.config import TrainConfig, add_config_arguments, load_config, overrides_from_args

ARMS = ("none", "real", "control")
CONTROLS = ("across", "within")
COMPARISONS = (("real", "none"), ("real", "control"))
MIN_POSITIVES = 10
REPORT_FILES = ("study.md", "study.json", "study.png")
# Fields of the config that do not change what is computed.
_NOT_COMPARED = ("verbose",)


# ---------------------------------------------------------------------------------------- controls
def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``range(n)`` with no fixed point (n >= 2): a random cycle."""
    if n < 2:
        raise ValueError("moving annotations to other images needs at least 2 annotated images")
    order = rng.permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)   # order[i] takes the annotation of order[i+1]
    return perm


def control_annotations(cache: Dict[str, np.ndarray], mode: str, seed: int) -> Dict[str, np.ndarray]:
    """The cached stage-2 subset with its annotations on the wrong images (features, labels kept).

    ``across``: each image gets the annotation (grid, has_gaze, has_boxes) of another annotated
    image (a derangement), so the set of annotations is unchanged. ``within``: the cells of each
    image's annotation grid are permuted (one permutation per image), keeping its amount and kind.
    """
    rng = np.random.default_rng(10_000 + seed)
    out = dict(cache)
    grid = np.asarray(cache[F.X_ANN_GRID])
    if mode == "across":
        perm = derangement(len(grid), rng)
        for key in (F.X_ANN_GRID, F.X_HAS_GAZE, F.X_HAS_BOXES):
            out[key] = np.asarray(cache[key])[perm]
    elif mode == "within":
        n, h, w, c = grid.shape
        flat = grid.reshape(n, h * w, c)
        cells = np.stack([rng.permutation(h * w) for _ in range(n)]) if n else np.zeros((0, h * w), int)
        out[F.X_ANN_GRID] = np.take_along_axis(flat, cells[:, :, None], axis=1).reshape(grid.shape)
    else:
        raise ValueError(f"unknown control {mode!r} (choose from {', '.join(CONTROLS)})")
    return out


# ---------------------------------------------------------------------------------------- statistics
def positives(labels: np.ndarray, mask: np.ndarray) -> List[int]:
    """Positive eval images per finding (known labels only)."""
    return [int(v) for v in ((np.asarray(labels) > 0.5) & (np.asarray(mask) > 0.5)).sum(0)]


def summarise(findings: Sequence[str], labels: np.ndarray, mask: np.ndarray, groups: Sequence,
              preds: Dict[str, np.ndarray], n_resamples: int = 1000, min_positives: int = MIN_POSITIVES,
              seed: int = 0) -> Dict[str, Any]:
    """Per-arm AUROC and the paired gains with 95% intervals, per finding and macro.

    ``preds[arm]``: ``[S, N, L]`` eval probabilities (seeds in the same order for every arm).
    Findings with fewer than ``min_positives`` positives (or no negatives) get no interval and are
    left out of the macro.
    """
    from cxr_tfp.metrics import auroc, paired_gain_over_seeds, t_interval

    pos = positives(labels, mask)
    known = [int(v) for v in (np.asarray(mask) > 0.5).sum(0)]
    enough = [p >= min_positives and k - p >= min_positives for p, k in zip(pos, known)]
    n_seeds = int(next(iter(preds.values())).shape[0])
    arms = {}
    for arm, p in preds.items():
        per = [[auroc(labels[:, j], p[s][:, j], mask[:, j]) for j in range(len(findings))] for s in range(n_seeds)]
        mean = [None if any(v[j] is None for v in per) else float(np.mean([v[j] for v in per]))
                for j in range(len(findings))]
        macro_seed = [float(np.mean([v[j] for j in range(len(findings)) if enough[j]])) if any(enough) else None
                      for v in per]
        arms[arm] = {"auroc": dict(zip(findings, mean)),
                     "macro_auroc": float(np.mean(macro_seed)) if any(enough) else None,
                     "macro_auroc_per_seed": macro_seed}
    gains = {}
    for a, b in COMPARISONS:
        if a not in preds or b not in preds:
            continue
        res = paired_gain_over_seeds(labels, preds[a], preds[b], mask, groups, n_resamples=n_resamples,
                                     seed=seed, findings_in_macro=enough)
        per = {}
        for j, f in enumerate(findings):
            e = dict(res["per_finding"][j])
            e["positives"] = pos[j]
            if not enough[j]:
                e.update(ci_low=None, ci_high=None, note="too few positives")
            per[f] = e
        macro = dict(res["macro"])
        if not any(enough):
            macro.update(gain=None, ci_low=None, ci_high=None,
                         note=f"too few positives (no finding has {min_positives} positive and "
                              f"{min_positives} negative eval images)")
        seeds_macro = [v for v in res["per_seed_macro"] if v is not None]
        if any(enough) and len(seeds_macro) >= 3:
            m, half = t_interval(seeds_macro)
            macro["t_over_seeds"] = {"gain": m, "ci_low": m - half, "ci_high": m + half, "seeds": len(seeds_macro)}
        gains[f"{a}-{b}"] = {"per_finding": per, "macro": macro, "per_seed_macro": res["per_seed_macro"]}
    return {"findings": list(findings), "positives": dict(zip(findings, pos)), "known": dict(zip(findings, known)),
            "enough_positives": dict(zip(findings, enough)), "min_positives": min_positives, "seeds": n_seeds,
            "n_resamples": n_resamples, "arms": arms, "gains": gains}


def _ci(e: Dict[str, Any]) -> str:
    if e.get("gain") is None:
        return e.get("note") or "undefined"
    if e.get("note"):
        return f"{e['gain']:+.3f} ({e['note']})"
    if e.get("ci_low") is None:
        return f"{e['gain']:+.3f}"
    return f"{e['gain']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}]"


def markdown(report: Dict[str, Any]) -> str:
    """The report as markdown: sizes, the verdict, and one table of gains per finding and macro."""
    s = report["summary"]
    sizes = report["sizes"]
    lines = [f"# Annotation study: {report['data_name']}", "",
             f"- records: `{report['data_name']}`; eval split `{report['split']}`: {sizes['eval_images']} images of "
             f"{sizes['eval_patients']} patients; training split: {sizes['train_images']} images, "
             f"{sizes['train_annotated']} of them annotated ({sizes['train_gaze']} with gaze, "
             f"{sizes['train_boxes']} with boxes)" + (f", {sizes['note']}" if sizes.get("note") else ""),
             f"- seeds: {s['seeds']} ({', '.join(map(str, report['seeds']))}); stage 1: {report['config']['stage1_epochs']} "
             f"epochs, stage 2: {report['config']['stage2_epochs']} epochs on the annotated images, beta "
             f"{report['config']['beta']:g}, backbone `{report['config']['backbone']}`, "
             f"{report['config']['image_size']} px; control: `{report['control']}`",
             f"- intervals: 95% percentile bootstrap, {s['n_resamples']} resamples of seeds x eval patients "
             f"(both with replacement); findings with fewer than {s['min_positives']} positive (or negative) eval "
             f"images read 'too few positives' and are left out of the macro", "",
             f"**Verdict:** {report['verdict']}", "",
             "| finding | eval positives | AUROC none | AUROC real | AUROC control | real - none (95% CI) | "
             "real - control (95% CI) |", "|---|---|---|---|---|---|---|"]
    g = s["gains"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for f in s["findings"]:
        # An AUROC over a handful of positives looks surer than it is: shown only with enough of them.
        auc = [fmt(s["arms"][a]["auroc"][f]) if s["enough_positives"][f] else "-" for a in ("none", "real", "control")]
        lines.append(f"| {f} | {s['positives'][f]} | {' | '.join(auc)} | "
                     f"{_ci(g['real-none']['per_finding'][f])} | {_ci(g['real-control']['per_finding'][f])} |")
    used = sum(s["enough_positives"].values())
    lines.append(f"| **macro** ({used} findings) | - | {fmt(s['arms']['none']['macro_auroc'])} | "
                 f"{fmt(s['arms']['real']['macro_auroc'])} | {fmt(s['arms']['control']['macro_auroc'])} | "
                 f"{_ci(g['real-none']['macro'])} | {_ci(g['real-control']['macro'])} |")
    for key in ("real-none", "real-control"):
        t = g[key]["macro"].get("t_over_seeds")
        if t:
            lines.append(f"\nMacro {key}, t-interval over the {t['seeds']} per-seed gains (training variation "
                         f"only): {t['gain']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}].")
    lines.append(f"\nArms: `none` = the stage-1 model, no stage 2; `real` = stage 2 with the annotations; "
                 f"`control` = stage 2 with the same annotations {CONTROL_WORDS[report['control']]}. "
                 f"AUROC columns are means over seeds ('-' where a finding has too few positives). Made by `python -m cxr_tfp.annotate study` "
                 f"({report['created']}).")
    return "\n".join(lines) + "\n"


CONTROL_WORDS = {"across": "moved to other annotated training images",
                 "within": "shuffled over the feature grid within each image"}


def verdict(summary: Dict[str, Any]) -> str:
    """One plain sentence on what the evidence says (and whether there is enough of it)."""
    used = sum(summary["enough_positives"].values())
    if used == 0:
        return (f"the evidence is too small to say anything: no finding has {summary['min_positives']} positive and "
                f"{summary['min_positives']} negative eval images, so no interval is given; annotate and "
                f"evaluate on more images.")
    parts = []
    for key, words in (("real-control", "the annotations' content"), ("real-none", "stage 2 with annotations")):
        m = summary["gains"][key]["macro"]
        if m.get("gain") is None or m.get("ci_low") is None:
            parts.append(f"{words}: undefined")
        elif m["ci_low"] > 0 or m["ci_high"] < 0:
            sign = "helps" if m["ci_low"] > 0 else "hurts"
            t = m.get("t_over_seeds")
            if t and t["ci_low"] <= 0 <= t["ci_high"]:
                # Few seeds: resampling them understates training variation; the t-interval does not.
                parts.append(f"{words} {sign} by the bootstrap interval (macro {m['gain']:+.3f}) but the "
                             f"t-interval over the {t['seeds']} seeds covers 0 ([{t['ci_low']:+.3f}, "
                             f"{t['ci_high']:+.3f}]): not established")
            else:
                parts.append(f"{words} {sign} (macro {m['gain']:+.3f}, interval {'above' if sign == 'helps' else 'below'} 0)")
        else:
            parts.append(f"no detectable effect of {words} (macro {m['gain']:+.3f}, the interval covers 0)")
    return "; ".join(parts) + f" - over {summary['seeds']} seeds and {used} findings with enough positives."


def figure(report: Dict[str, Any], path: str) -> str:
    """Gains per finding and macro with 95% intervals, both comparisons side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    s = report["summary"]
    names = list(s["findings"]) + ["macro"]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 0.42 * len(names) + 1.6), sharey=True, squeeze=False)
    for ax, key, color in zip(axes[0], ("real-none", "real-control"), ("#1f77b4", "#2ca02c")):
        g = s["gains"][key]
        entries = [g["per_finding"][f] for f in s["findings"]] + [g["macro"]]
        reach = 0.0
        for i, e in enumerate(entries):
            y = len(names) - 1 - i
            if e.get("gain") is None or e.get("ci_low") is None:
                # No interval, no dot: a point without its interval would look surer than the data.
                ax.text(0.5, y, "too few positives" if "too few" in (e.get("note") or "") else "undefined",
                        transform=ax.get_yaxis_transform(), va="center", ha="center", fontsize=7, color="0.4")
                continue
            reach = max(reach, abs(e["ci_low"]), abs(e["ci_high"]))
            ax.errorbar(e["gain"], y, xerr=[[e["gain"] - e["ci_low"]], [e["ci_high"] - e["gain"]]], fmt="o",
                        color="k" if names[i] == "macro" else color, capsize=3, ms=4)
        reach = 1.1 * reach if reach > 0 else 0.1
        ax.set_xlim(-reach, reach)
        ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.axvline(0, color="0.5", lw=0.8, ls=":")
        ax.set_title(f"{key} (AUROC gain)", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    labels = [f"{n} ({s['positives'][n]} pos)" if n in s["positives"] else n for n in names]
    axes[0, 0].set_yticks(range(len(names)), labels[::-1], fontsize=8)
    sz = report["sizes"]
    fig.suptitle(f"{report['data_name']}: {s['seeds']} seeds, eval {sz['eval_images']} images / "
                 f"{sz['eval_patients']} patients, {sz['train_annotated']} annotated training images; "
                 f"95% intervals", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------- data
def _split_dir(data: str, split: str) -> str:
    d = os.path.join(data, split)
    if not os.path.isdir(d):
        raise UsageError(f"--data {data} has no {split}/ subfolder (a records folder from cxr_tfp.records.build)")
    return d


def _findings_for(data: str, config: Optional[str], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Default the findings to the records' vocabulary (``summary.json``'s dataset) unless the flags or
    the YAML chose them."""
    from cxr_tfp.labels import VOCABULARIES

    if "findings" in overrides or load_config(config, {}).findings != TrainConfig().findings:
        return overrides
    try:
        with open(os.path.join(data, "summary.json")) as fh:
            dataset = json.load(fh).get("dataset")
    except (OSError, ValueError):
        dataset = None
    if dataset in VOCABULARIES:
        return {**overrides, "findings": dataset}
    return overrides


def _subset(files: Sequence[str], out_dir: str, limit: int, seed: int) -> Tuple[str, str]:
    """Write a seeded subset of at most ``limit`` examples (annotated share kept) as one gzip shard.

    Returns ``(folder, note)``. Examples are chosen by a hash of their (already salted) example key
    and the seed, so the subset does not depend on the shard layout.
    """
    import tensorflow as tf

    spec = {F.EXAMPLE_KEY: F.feature_spec()[F.EXAMPLE_KEY], F.HAS_ANNOTATION: F.feature_spec()[F.HAS_ANNOTATION]}
    rows = []
    for rec in tf.data.TFRecordDataset(list(files), compression_type="GZIP"):
        p = tf.io.parse_single_example(rec, spec)
        key = p[F.EXAMPLE_KEY].numpy()
        rank = hashlib.sha256(key + str(seed).encode()).hexdigest()
        rows.append((int(p[F.HAS_ANNOTATION].numpy() > 0), rank, rec.numpy()))
    n, n_ann = len(rows), sum(r[0] for r in rows)
    os.makedirs(out_dir, exist_ok=True)
    if n <= limit:
        keep = rows
    else:
        k_ann = min(n_ann, max(1 if n_ann else 0, int(round(limit * n_ann / n))))
        ann = sorted((r for r in rows if r[0]), key=lambda r: r[1])[:k_ann]
        rest = sorted((r for r in rows if not r[0]), key=lambda r: r[1])[:limit - k_ann]
        keep = sorted(ann + rest, key=lambda r: r[1])
    tmp = os.path.join(out_dir, ".data.partial.tfrecord.gz")
    with tf.io.TFRecordWriter(tmp, options="GZIP") as w:
        for r in keep:
            w.write(r[2])
    os.replace(tmp, os.path.join(out_dir, "data-00000-of-00001.tfrecord.gz"))
    return out_dir, f"{len(keep)} of {n} examples kept"


def _eval_arrays(files: Sequence[str], cfg: TrainConfig) -> Dict[str, np.ndarray]:
    from cxr_tfp.input import make_dataset

    Y, M, G = [], [], []
    spec_ds = make_dataset(files, cfg.image_size, cfg.finding_names, 64, with_meta=True)
    for _, y, meta in spec_ds:
        Y.append(y[F.Y_LABELS].numpy())
        M.append(y[F.Y_MASK].numpy())
        G.append(meta[F.PATIENT_KEY].numpy())
    L = len(cfg.finding_names)
    return {"labels": np.concatenate(Y) if Y else np.zeros((0, L)), "mask": np.concatenate(M) if M else np.zeros((0, L)),
            "groups": np.concatenate(G).astype(str) if G else np.zeros(0, str)}


def _predict(model, cfg: TrainConfig, files: Sequence[str]) -> np.ndarray:
    from cxr_tfp.train import predict_split

    return predict_split(model, cfg, files)[0]


def _save_npz(path: str, **arrays) -> None:
    tmp = path + ".partial.npz"
    np.savez(tmp, **arrays)
    from cxr_tfp.staging import replace_file

    replace_file(tmp, path)


def _comparable(d: Dict[str, Any]) -> Dict[str, Any]:
    """``d`` without the fields that do not change the result (also inside ``d["config"]``)."""
    out = {k: v for k, v in d.items() if k not in _NOT_COMPARED}
    if isinstance(out.get("config"), dict):
        out["config"] = _comparable(out["config"])
    return out


def _check_config(path: str, fingerprint: Dict[str, Any], out: str) -> None:
    """Refuse (one line) to continue a study started with other settings."""
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
        old, new = _comparable(old), _comparable(json.loads(json.dumps(fingerprint)))  # as stored
        if old != new:
            keys = sorted(set(old) | set(new))
            changed = [k for k in keys if old.get(k) != new.get(k)]
            if "config" in changed:
                changed.remove("config")
                oc, nc = old.get("config") or {}, new.get("config") or {}
                changed += sorted(k for k in set(oc) | set(nc) if oc.get(k) != nc.get(k))
            raise UsageError(f"{out} holds a study started with other settings (changed: {', '.join(changed)}); "
                             f"use a new --out to start over")
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(fingerprint, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _files_fingerprint(files: Sequence[str]) -> List[List[Any]]:
    return [[os.path.basename(f), os.path.getsize(f)] for f in files]


# ---------------------------------------------------------------------------------------- the study
def run_study(data: str, out: str, config: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
              seeds: int = 3, control: str = "across", split: str = F.EVAL_SPLIT, max_train: Optional[int] = None,
              max_eval: Optional[int] = None, n_resamples: int = 1000, min_positives: int = MIN_POSITIVES,
              log=None) -> Dict[str, Any]:
    """Run (or resume) the study; write ``out/report/`` and return the report dict (see module doc)."""
    from cxr_tfp.input import list_files
    from cxr_tfp.staging import OutputLock, make_staging, recover, swap_in
    from cxr_tfp.train import scan_split

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if control not in CONTROLS:
        raise UsageError(f"--control {control!r}: choose from {', '.join(CONTROLS)}")
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: need at least 1")
    if not os.path.isdir(data):
        raise UsageError(f"--data {data}: no such records folder")
    overrides = _findings_for(data, config, dict(overrides or {}))
    overrides.setdefault("deterministic", True)   # a measurement: a re-run must give the same numbers
    cfg = load_config(config, overrides)
    if cfg.stage2_epochs < 1:
        raise UsageError("stage2_epochs must be at least 1: the study compares stage-2 arms")
    train_dir, eval_dir = _split_dir(data, F.TRAIN_SPLIT), _split_dir(data, split)
    train_files, eval_files = list_files(train_dir), list_files(eval_dir)
    scan = scan_split(train_files, cfg.finding_names)
    if scan["annotated"] == 0:
        raise UsageError(f"--data {data}: none of the {scan['num_examples']} training images carries an annotation "
                         f"(has_annotation=0 everywhere); the study needs some boxes or gaze (see "
                         f"python -m cxr_tfp.annotate requests)")
    if scan["annotated"] < 2 and control == "across":
        raise UsageError(f"--data {data}: only 1 annotated training image; --control across needs 2 (use --control within)")
    data_name = os.path.basename(os.path.normpath(data))
    out = os.path.abspath(out)
    with OutputLock(out, "annotation study"):
        work = os.path.join(out, "work")
        os.makedirs(work, exist_ok=True)
        for note in recover(os.path.join(out, "report")):
            log(f"[study] {note}")
        fingerprint = {"config": _comparable(cfg.to_dict()), "control": control, "split": split,
                       "max_train": max_train, "max_eval": max_eval,
                       "train_files": _files_fingerprint(train_files), "eval_files": _files_fingerprint(eval_files)}
        _check_config(os.path.join(work, "config.json"), fingerprint, out)
        size_note = []
        if max_train and scan["num_examples"] > max_train:
            d, note = _subset(train_files, os.path.join(work, "data", "train"), max_train, cfg.seed)
            train_files = list_files(d)
            scan = scan_split(train_files, cfg.finding_names)
            size_note.append(f"training subset {note}")
        if max_eval:
            n_eval = scan_split(eval_files, cfg.finding_names)["num_examples"]
            if n_eval > max_eval:
                d, note = _subset(eval_files, os.path.join(work, "data", split), max_eval, cfg.seed)
                eval_files = list_files(d)
                size_note.append(f"eval subset {note}")
        eval_path = os.path.join(work, "eval.npz")
        if not os.path.exists(eval_path):
            ev = _eval_arrays(eval_files, cfg)
            _save_npz(eval_path, **ev)
        ev = dict(np.load(eval_path))
        seed_list = [cfg.seed + i for i in range(seeds)]
        total = seeds * (1 + len(ARMS))
        step = 0
        t_start = time.perf_counter()
        for i, seed in enumerate(seed_list):
            sdir = os.path.join(work, f"seed{seed}")
            paths = {arm: os.path.join(sdir, f"{arm}.npz") for arm in ARMS}
            if all(os.path.exists(p) for p in paths.values()):
                step += 1 + len(ARMS)
                log(f"[study] {step}/{total} seed {seed} ({i + 1}/{seeds}): done earlier, skipped")
                continue
            _run_seed(cfg, seed, sdir, paths, train_files, eval_files, control, log,
                      lambda: f"{step}/{total}", i, seeds)
            step += 1 + len(ARMS)
            log(f"[study] {step}/{total} seed {seed} ({i + 1}/{seeds}) finished "
                f"({time.perf_counter() - t_start:.0f}s so far)")
        preds = {arm: np.stack([np.load(os.path.join(work, f"seed{s}", f"{arm}.npz"))["probs"] for s in seed_list])
                 for arm in ARMS}
        summary = summarise(cfg.finding_names, ev["labels"], ev["mask"], ev["groups"], preds,
                            n_resamples=n_resamples, min_positives=min_positives)
        report = {"data_name": data_name, "split": split, "control": control, "seeds": seed_list,
                  "config": cfg.to_dict(),
                  "sizes": {"train_images": int(scan["num_examples"]), "train_annotated": int(scan["annotated"]),
                            "train_gaze": int(scan["has_gaze"]), "train_boxes": int(scan["has_boxes"]),
                            "eval_images": int(len(ev["labels"])), "eval_patients": int(len(np.unique(ev["groups"]))),
                            "note": "; ".join(size_note)},
                  "summary": summary, "verdict": verdict(summary),
                  "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        from cxr_tfp.metrics import sanitize

        report = sanitize(report)
        stage = make_staging(os.path.join(out, "report"))
        with open(stage / "study.json", "w") as fh:
            json.dump(report, fh, indent=2)
        with open(stage / "study.md", "w") as fh:
            fh.write(markdown(report))
        figure(report, str(stage / "study.png"))
        swap_in(stage, os.path.join(out, "report"))
    return report


def _run_seed(cfg: TrainConfig, seed: int, sdir: str, paths: Dict[str, str], train_files, eval_files,
              control: str, log, progress, i: int, seeds: int) -> None:
    """Stage 1 once, then the three arms; each arm's eval predictions saved as it finishes."""
    import tensorflow as tf

    from cxr_tfp.model import load_model
    from cxr_tfp.train import (cache_stage2_features, prepare_cached_stage2, train_model,
                               train_stage2_cached)

    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    base = {**cfg.to_dict(), "seed": seed}
    cfg1 = TrainConfig.from_dict({**base, "stage2_epochs": 0})   # Keras' "Epoch k/E" lines as configured
    cfg2 = TrainConfig.from_dict({**base, "verbose": 0})         # seconds per arm: no bars
    t0 = time.perf_counter()
    log(f"[study] {progress()} seed {seed} ({i + 1}/{seeds}): stage 1, {cfg1.stage1_epochs} epochs")
    m1 = train_model(cfg1, list(train_files), list(eval_files), os.path.join(sdir, "stage1"))
    log(f"[study] seed {seed}: stage 1 eval macro AUROC {m1['stage1']['macro_auroc']} "
        f"({time.perf_counter() - t0:.0f}s)")
    model = load_model(os.path.join(sdir, "stage1", "model.keras"))
    w1 = model.get_weights()
    if not os.path.exists(paths["none"]):
        _save_npz(paths["none"], probs=_predict(model, cfg2, eval_files))
    prepare_cached_stage2(model, cfg2)
    cache = cache_stage2_features(model, cfg2, list(train_files))
    for arm in ("real", "control"):
        if os.path.exists(paths[arm]):
            continue
        t0 = time.perf_counter()
        data = cache if arm == "real" else control_annotations(cache, control, seed)
        train_stage2_cached(model, w1, data, cfg2)
        _save_npz(paths[arm], probs=_predict(model, cfg2, eval_files))
        log(f"[study] seed {seed}: stage 2 '{arm}' on {len(data[F.Y_LABELS])} annotated images, "
            f"{cfg2.stage2_epochs} epochs ({time.perf_counter() - t0:.0f}s)")


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cxr_tfp.annotate study",
        description="What the annotations are worth on your records: per seed, stage 1 once, then stage 2 "
                    "with the real annotations, with a control (the same annotations on the wrong images) "
                    "and not at all; paired gains per finding and macro with 95%% intervals (seeds x eval "
                    "patients bootstrap) as markdown, JSON and PNG in OUT/report/. Re-run to resume.")
    p.add_argument("--data", required=True, help="records folder (train/ and eval/ from cxr_tfp.records.build)")
    p.add_argument("--out", required=True, help="study folder (re-run with the same one to resume)")
    p.add_argument("--config", default=None, help="training YAML (e.g. configs/smoke.yaml); flags override it")
    p.add_argument("--seeds", type=int, default=3, help="training seeds: config seed, +1, ... [3]")
    p.add_argument("--control", choices=CONTROLS, default="across",
                   help="across: annotations moved to other annotated training images; within: shuffled over "
                        "each image's feature grid [across]")
    p.add_argument("--split", choices=(F.EVAL_SPLIT, F.TEST_SPLIT), default=F.EVAL_SPLIT,
                   help="split the arms are scored on [eval]")
    p.add_argument("--max-train", type=int, default=None, help="cap on training images (annotated share kept)")
    p.add_argument("--max-eval", type=int, default=None, help="cap on scored images")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples [1000]")
    p.add_argument("--min-positives", type=int, default=MIN_POSITIVES,
                   help=f"positive (and negative) eval images a finding needs for an interval [{MIN_POSITIVES}]")
    add_config_arguments(p)
    return p


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``python -m cxr_tfp.annotate study``)."""
    args = build_parser().parse_args(argv)
    for name in ("max_train", "max_eval"):
        v = getattr(args, name)
        if v is not None and v < 4:
            raise UsageError(f"--{name.replace('_', '-')} {v}: need at least 4")
    report = run_study(args.data, args.out, args.config, overrides_from_args(args), seeds=args.seeds,
                       control=args.control, split=args.split, max_train=args.max_train, max_eval=args.max_eval,
                       n_resamples=args.bootstrap, min_positives=args.min_positives)
    print(markdown(report))
    print(f"report: {os.path.join(os.path.abspath(args.out), 'report')} (study.md, study.json, study.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
