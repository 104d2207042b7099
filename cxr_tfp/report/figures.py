"""PNG figures of an evaluation (matplotlib, Agg backend: no display needed).

Each function draws one figure from arrays and returns the path written. :func:`draw_all` draws the
set the report links and returns ``{figure_key: file name relative to the output folder}``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

from cxr_tfp import metrics as M  # noqa: E402

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
DPI = 110


def _grid(n: int, ncols: int = 4, size: float = 3.0, legend_room: float = 0.0):
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + legend_room) * nrows + 0.4),
                             squeeze=False)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _undefined_reason(y: np.ndarray) -> Optional[str]:
    if y.size == 0:
        return "n/a (no known labels)"
    if y.sum() == 0:
        return "n/a (no positives)"
    if y.sum() == y.size:
        return "n/a (no negatives)"
    return None


def _note(ax, text: str, y: float = 0.5) -> None:
    ax.text(0.5, y, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.3")


def _save(fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=DPI, bbox_inches="tight")   # legends placed outside the axes stay in the file
    plt.close(fig)
    return path


def _legend_below(ax, title: Optional[str] = None, ncol: int = 1) -> None:
    """A legend under the axes, never over the curves (low-prevalence curves sit in the corners)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.24), fontsize=7, title=title, title_fontsize=7,
                  ncol=ncol, frameon=False)


def _n_pos(pred, f) -> int:
    return int(_known(pred, pred.findings.index(f))[0].sum())


def _known(pred, j):
    keep = pred.mask[:, j] > 0.5
    return (pred.labels[keep, j] > 0.5).astype(float), pred.probs[keep, j]


def roc_figure(preds: Sequence, names: Sequence[str], findings: Sequence[str], path: Path) -> Path:
    """ROC curve per finding, one line per model, AUROC in the legend."""
    fig, axes = _grid(len(findings), legend_room=0.5 + 0.15 * len(preds))
    for ax, f in zip(axes, findings):
        ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=1)
        for k, (pred, name) in enumerate(zip(preds, names)):
            y, p = _known(pred, pred.findings.index(f))
            reason = _undefined_reason(y)
            if reason:
                _note(ax, f"{name}:\n{reason}", 0.5 - 0.15 * k)
                continue
            fpr, tpr, _ = M.roc_curve(y, p)
            ax.plot(fpr, tpr, color=COLORS[k % len(COLORS)], lw=1.6, label=f"{name} {M.auroc(y, p):.3f}")
        ax.set(title=f"{f} (n+={_n_pos(preds[0], f)})",
               xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
        _legend_below(ax, "AUROC")
    return _save(fig, path, "ROC curves per finding")


def pr_figure(preds: Sequence, names: Sequence[str], findings: Sequence[str], path: Path) -> Path:
    """Precision-recall curve per finding (step), AP in the legend, prevalence as the chance line."""
    fig, axes = _grid(len(findings), legend_room=0.5 + 0.15 * len(preds))
    for ax, f in zip(axes, findings):
        for k, (pred, name) in enumerate(zip(preds, names)):
            y, p = _known(pred, pred.findings.index(f))
            if y.sum() == 0:
                _note(ax, f"{name}:\n{_undefined_reason(y)}", 0.5 - 0.15 * k)
                continue
            prec, rec, _ = M.precision_recall_curve(y, p)
            ax.step(np.r_[0.0, rec], np.r_[prec[0], prec], where="post", color=COLORS[k % len(COLORS)],
                    lw=1.6, label=f"{name} {M.average_precision(y, p):.3f}")
            if k == 0:
                ax.axhline(y.mean(), ls=":", color="0.6", lw=1)
        ax.set(title=f"{f} (n+={_n_pos(preds[0], f)})", xlabel="recall (sensitivity)",
               ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.02))
        _legend_below(ax, "AP")
    return _save(fig, path, "Precision-recall curves per finding (dotted: prevalence)")


def reliability_figure(results: Sequence[Dict], names: Sequence[str], findings: Sequence[str],
                       path: Path) -> Path:
    """Reliability diagram per finding: observed positive rate against mean predicted probability."""
    fig, axes = _grid(len(findings))
    for ax, f in zip(axes, findings):
        ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=1)
        eces = []
        for k, (res, name) in enumerate(zip(results, names)):
            pf = res["per_finding"][f]
            bins = pf["reliability"]
            pts = [(m, r, c) for m, r, c in zip(bins["mean_predicted"], bins["observed_rate"], bins["count"]) if c]
            if not pts:
                continue
            mp, rate, cnt = map(np.asarray, zip(*pts))
            color = COLORS[k % len(COLORS)]
            ax.plot(mp, rate, "-", color=color, lw=1.4, label=name)
            ax.scatter(mp, rate, s=8 + 40 * cnt / cnt.max(), color=color, zorder=3)
            if k == 0:   # share of cases per bin, so a point from 3 images is not over-read
                edges = np.asarray(bins["edges"])
                share = np.asarray(bins["count"]) / max(sum(bins["count"]), 1)
                ax.bar(edges[:-1], share, width=np.diff(edges), align="edge", color="0.85", zorder=0)
            eces.append(f"{M.finite_or_none(pf['ece']):.3f}" if pf["ece"] is not None else "n/a")
        ax.set(title=f"{f}  ECE {' / '.join(eces)}", xlabel="mean predicted probability",
               ylabel="observed positive rate", xlim=(0, 1), ylim=(0, 1.02))
        if len(results) > 1:
            _legend_below(ax)
    return _save(fig, path, "Reliability diagrams (grey bars: share of images per bin)")


def referral_figure(results: Sequence[Dict], names: Sequence[str], path: Path) -> Path:
    """AUROC on the retained cases as the most uncertain ones are referred (macro and per finding)."""
    fig, axes = plt.subplots(1, len(results), figsize=(7.4 * len(results), 4), squeeze=False)
    for ax, res, name in zip(axes[0], results, names):
        for f, pf in res["per_finding"].items():
            pts = [(r["fraction"] * 100, r["auroc"]) for r in pf["referral"] if r["auroc"] is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, "-", lw=0.9, alpha=0.6, label=f)
        macro = [(r["fraction"] * 100, r["auroc"]) for r in res["referral"]["macro_auroc"] if r["auroc"] is not None]
        if macro:
            xs, ys = zip(*macro)
            ax.plot(xs, ys, "-o", color="black", lw=2.2, label="macro")
        ax.set(title=name, xlabel="% most uncertain referred", ylabel="AUROC on retained cases",
               xticks=[100 * f for f in res["referral"]["fractions"]])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _save(fig, path, "Uncertainty-based referral")


def _outline(ax, mask: np.ndarray, color: str) -> None:
    if mask is not None and np.any(mask > 0.5) and not np.all(mask > 0.5):
        ax.contour(mask > 0.5, levels=[0.5], colors=[color], linewidths=1.5)


FLAT_TOLERANCE = 1e-3   # a map whose values span less than this (on its 0..1 scale) has no spatial contrast


def is_flat(saliency: np.ndarray, tol: float = FLAT_TOLERANCE) -> bool:
    """True for a map without spatial contrast (constant, e.g. all zero): it has no meaningful peak."""
    m = np.asarray(saliency, np.float64)
    return bool(m.size == 0 or not np.all(np.isfinite(m)) or float(np.ptp(m)) < tol)


def saliency_figure(examples: Sequence, name: str, path: Path, gaze_level: float = 0.5,
                    per_row: int = 2, method_names: Optional[Dict[str, str]] = None,
                    note: Optional[str] = None) -> Path:
    """Per example: the image with expert gaze (heat, cyan half-peak contour) and boxes (green), then
    one panel per saliency method with its colour bar (every map of a method on the same 0..1 scale:
    share of that map's peak); x marks the peak, and a flat map (no spatial contrast) is labelled
    "flat" and gets no marker. ``note`` (what the examples are) goes under the title."""
    n = max(len(examples), 1)
    methods = list(examples[0].maps) if examples and getattr(examples[0], "maps", None) else ["saliency"]
    names = method_names or {}
    width = 1 + len(methods)
    per_row = max(1, min(per_row, n))
    nrows = math.ceil(n / per_row)
    fig, axes = plt.subplots(nrows, width * per_row, figsize=(3.0 * width * per_row, 3.0 * nrows + 0.7),
                             squeeze=False)
    flat = axes.ravel()
    for ax in flat:
        ax.axis("off")
    if not examples:
        _note(flat[0], "no examples with saliency")
    for k, ex in enumerate(examples):
        panels = flat[width * k:width * (k + 1)]
        for ax in panels:
            ax.axis("on")
            ax.imshow(ex.image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        a0 = panels[0]
        parts = []
        if ex.gaze is not None and ex.gaze.max() > 0:
            a0.imshow(np.ma.masked_less(ex.gaze, 0.05 * ex.gaze.max()), cmap="magma", alpha=0.4)
            _outline(a0, ex.gaze >= gaze_level * ex.gaze.max(), "cyan")
            parts.append("gaze")
        label = ("label unknown" if ex.label is None else
                 ("known positive" if ex.label > 0.5 else "known negative"))
        a0.set_title(f"#{k + 1} {ex.finding} p={ex.probability:.2f} ({label})\nexpert: "
                     + ("+".join(parts + (["boxes"] if ex.boxes is not None else [])) or "none"), fontsize=7)
        maps = getattr(ex, "maps", None) or {"saliency": ex.saliency}
        for ax, meth in zip(panels[1:], methods):
            m = maps[meth]
            if ex.boxes is not None:
                _outline(ax, ex.boxes, "lime")
            im = ax.imshow(m, cmap="jet", alpha=0.35, vmin=0, vmax=1)
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, ticks=[0, 0.5, 1])
            cb.ax.tick_params(labelsize=6)
            cb.solids.set_alpha(1)
            title = names.get(meth, meth).split(" (")[0]
            if is_flat(m):
                title += "\nFLAT: no spatial contrast"
                ax.text(0.5, 0.5, "flat map", ha="center", va="center", transform=ax.transAxes, fontsize=8,
                        color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 2})
            else:
                iy, ix = np.unravel_index(int(np.argmax(m)), m.shape)
                ax.plot([ix], [iy], marker="x", color="white", ms=8, mew=2)
            ax.set_title(title, fontsize=8)
        if ex.boxes is not None:
            _outline(a0, ex.boxes, "lime")
    title = (f"Saliency examples: {name}. First panel: expert gaze (cyan: half-peak) and boxes (green); then each "
             f"method's map (colour: share of its peak), x = peak")
    if note:
        title += f"\n{note}"
    return _save(fig, path, title)


def agreement_figure(results: Sequence[Dict], names: Sequence[str], path: Path) -> Optional[Path]:
    """Pointing-game hit rate and top-k share (95% intervals) against chance, per method, annotation
    type and model."""
    rows = []
    for res, name in zip(results, names):
        sal = res["saliency"]
        if not sal.get("available"):
            continue
        mnames = sal.get("method_names") or {}
        for meth in sal.get("methods") or ["gradcam"]:
            entry = sal["by_method"][meth] if sal.get("by_method") else sal
            for kind in ("boxes", "gaze"):
                a = entry[kind]
                if a["n"]:
                    rows.append((f"{name}\n{mnames.get(meth, meth).split(' (')[0]}\n{kind} "
                                 f"(n={a['n']}, {a.get('n_patients', '?')} pat.)", a))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(6.5, 2.0 * len(rows)), 4.4))
    x = np.arange(len(rows))

    def err(a, key, lo, hi):
        v = a[key]
        if a.get(lo) is None or a.get(hi) is None:
            return [0.0], [0.0]
        return [v - a[lo]], [a[hi] - v]

    for off, key, lo, hi, color, label in (
            (-0.2, "pointing_hit_rate", "hit_ci_low", "hit_ci_high", COLORS[0], "pointing-game hit rate"),
            (0.2, "topk_precision", "topk_ci_low", "topk_ci_high", COLORS[2],
             f"top-{results[0]['saliency']['k'] * 100:g}% saliency inside region")):
        vals = [a[key] for _, a in rows]
        yerr = np.array([np.concatenate(err(a, key, lo, hi)) for _, a in rows]).T
        bars = ax.bar(x + off, vals, 0.4, label=label, color=color, yerr=yerr, capsize=3,
                      error_kw={"lw": 0.9})
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.scatter(x + 0.2, [a["topk_chance"] for _, a in rows], marker="_", s=400, color="black", zorder=3,
               label="chance (region's share of image)")
    ax.set_xticks(x, [r[0] for r in rows], fontsize=7)
    ax.set(ylim=(0, 1.45), ylabel="fraction (95% interval)", yticks=np.linspace(0, 1, 6))
    ax.legend(fontsize=7, loc="upper left", ncol=1, frameon=False)
    return _save(fig, path, "Saliency agreement with expert annotations")


def examples_note(shown: Optional[Dict[str, object]]) -> str:
    """One sentence saying what the saliency examples are (the report uses it too)."""
    shown = shown or {}
    n_ann, n_other = int(shown.get("annotated", 0)), int(shown.get("unannotated", 0))
    if n_ann:
        return (f"{n_ann} annotated image(s), each with the known-positive finding the model rates highest")
    if n_other:
        return (f"No annotated image with a known positive in this split: shown instead, {n_other} unannotated "
                f"image(s) with the finding the model rates highest (its label is in each title)")
    return "No image with saliency in this split"


def draw_all(preds: Sequence, result: Dict, out_dir: Path) -> Dict[str, object]:
    """Draw every figure of the report into ``out_dir``; return their file names by key."""
    out_dir = Path(out_dir)
    names = [m["name"] for m in result["models"]]
    findings = list(result["models"][0]["findings"])
    # Curves on shared axes only make sense on findings every model predicts.
    shared = [f for f in findings if all(f in p.findings for p in preds)]
    figs: Dict[str, object] = {}
    figs["roc"] = roc_figure(preds, names, shared, out_dir / "roc.png").name
    figs["pr"] = pr_figure(preds, names, shared, out_dir / "pr.png").name
    figs["reliability"] = reliability_figure(result["models"], names, shared, out_dir / "reliability.png").name
    figs["referral"] = referral_figure(result["models"], names, out_dir / "referral.png").name
    figs["saliency_examples"] = []
    for k, (pred, name) in enumerate(zip(preds, names)):
        if pred.saliency_reason is None:
            sal = result["models"][k]["saliency"]
            p = saliency_figure(pred.examples, name,
                                out_dir / f"saliency_examples_{'ab'[k] if len(preds) > 1 else 'model'}.png",
                                method_names=sal.get("method_names"), note=examples_note(sal.get("examples")))
            figs["saliency_examples"].append(p.name)
        else:
            figs["saliency_examples"].append(None)
    agr = agreement_figure(result["models"], names, out_dir / "saliency_agreement.png")
    figs["saliency_agreement"] = agr.name if agr else None
    return figs
