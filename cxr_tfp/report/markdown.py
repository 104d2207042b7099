"""``report.md`` from the metrics dict: summary table first, then per-finding detail and figures.

Every number printed here is read from the metrics dict (the same one written to metrics.json);
an undefined value is written as "n/a (reason)", never as 0, 0.5 or NaN.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

NA = "n/a"


def fmt(v: Optional[float], digits: int = 3, na: str = NA) -> str:
    """A number, or ``na`` when it is undefined."""
    return na if v is None else f"{v:.{digits}f}"


def pct(v: Optional[float], na: str = NA) -> str:
    return na if v is None else f"{100 * v:.1f}%"


def _why(pf: Dict) -> str:
    """Why a per-finding rank metric is undefined."""
    if pf["positives"] == 0 and pf["negatives"] == 0:
        return "n/a (no known labels)"
    if pf["positives"] == 0:
        return "n/a (no positives)"
    if pf["negatives"] == 0:
        return "n/a (no negatives)"
    return NA


def with_ci(v: Optional[float], lo: Optional[float], hi: Optional[float], na: str = NA) -> str:
    if v is None:
        return na
    if lo is None or hi is None:
        return f"{v:.3f} (CI n/a)"
    return f"{v:.3f} ({lo:.3f}-{hi:.3f})"


def auroc_text(pf: Dict, na: str, min_positives: int) -> str:
    """AUROC with its percentile-bootstrap interval, or "too few positives" in the interval's place."""
    if pf["auroc"] is not None and 0 < pf["positives"] < min_positives:
        return f"{pf['auroc']:.3f} (too few positives for an interval: n+={pf['positives']})"
    return with_ci(pf["auroc"], pf["auroc_ci_low"], pf["auroc_ci_high"], na)


def threshold_cell(pf: Dict) -> str:
    """The threshold and how it was set (chosen on n positives, FALLBACK, fixed)."""
    how = pf.get("threshold_from")
    n = pf.get("threshold_positives")
    if pf["threshold"] is None:
        return "n/a (none on threshold split: no positives)" if not n else "n/a (none on threshold split: no negatives)"
    if how == "chosen":
        return f"{pf['threshold']:.3f} (chosen, {n} pos.)"
    if how == "fallback":
        return f"{pf['threshold']:.3f} (FALLBACK)"
    if how == "fixed":
        return f"{pf['threshold']:.3f} (fixed)"
    return fmt(pf["threshold"])


def uncertain_cell(pf: Dict) -> str:
    n = pf.get("uncertain_calls")
    total = pf["positives"] + pf["negatives"]
    return NA if n is None else f"{n} of {total}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None) -> List[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _threshold_text(th: Dict) -> str:
    if th["method"] == "youden":
        how = "Youden's J (maximum sensitivity + specificity - 1)"
    elif th["method"] == "sensitivity":
        how = f"the highest threshold reaching sensitivity >= {th['target_sensitivity']:g}"
    else:
        how = f"a fixed probability of {th['fixed']:g}"
    where = f", chosen per finding on the `{th['split']}` split" if th.get("split") else ""
    note = f" Note: {th['note']}." if th.get("note") else ""
    return f"{how}{where}.{note}"


def _referral_at(res: Dict, fraction: float) -> Optional[float]:
    for r in res["referral"]["macro_auroc"]:
        if abs(r["fraction"] - fraction) < 1e-9:
            return r["auroc"]
    return None


def _p(c: Dict) -> str:
    """Bootstrap p-value; 0 means below the resolution of the resamples, so say that."""
    if c["p_value"] is None:
        return "p n/a"
    if c["p_value"] == 0 and c["n_valid"]:
        return f"p < {1 / c['n_valid']:.2g}"
    return f"p = {c['p_value']:.3f}"


def _pct_ci(v: Optional[float], lo: Optional[float], hi: Optional[float]) -> str:
    if v is None:
        return NA
    if lo is None or hi is None:
        return pct(v)
    return f"{pct(v)} ({pct(lo)}-{pct(hi)})"


def _topk_ci(a: Dict) -> str:
    """Top-k share with its patient-bootstrap interval; under 10 images the interval is not shown."""
    if a["topk_precision"] is not None and 0 < a["n"] < 10:
        return f"{pct(a['topk_precision'])} (too few images for an interval)"
    return _pct_ci(a["topk_precision"], a.get("topk_ci_low"), a.get("topk_ci_high"))


def _hit(a: Dict) -> str:
    """Hits / images, rate and its Wilson interval."""
    if not a["n"]:
        return NA
    return f"{a['hits']}/{a['n']} = " + _pct_ci(a["pointing_hit_rate"], a.get("hit_ci_low"), a.get("hit_ci_high"))


def _img(lines: List[str], alt: str, name: Optional[str]) -> None:
    if name:
        lines += [f"![{alt}]({name})", ""]


def render(result: Dict) -> str:
    """The markdown text of the report."""
    models = result["models"]
    figs = result.get("figures") or {}
    first = models[0]
    L: List[str] = ["# Evaluation report", ""]
    L.append(f"Split `{result['split']}`: {first['n_images']} images from {first['n_patients']} patients "
             f"({first['n_with_gaze']} with expert gaze, {first['n_with_boxes']} with boxes).")
    L.append("")
    for m, tag in zip(models, "AB"):
        L.append(f"- **{tag}: {m['name']}** ({m['kind']}, `{m['path']}`), {len(m['findings'])} findings")
    L.append("")
    bs = result["bootstrap"]
    L.append(f"Operating threshold: {_threshold_text(result['threshold'])} "
             f"Intervals: 95% percentile bootstrap over {bs['n_resamples']} resamples of patients "
             f"(seed {bs['seed']}). Labels marked unknown are left out per finding.")
    L.append("")

    # ---------------------------------------------------------------- summary
    L += ["## Summary", ""]
    refer = 0.1 if any(abs(f - 0.1) < 1e-9 for f in first["referral"]["fractions"]) else None
    header = ["Model", "Macro AUROC (95% CI)", "Micro AUROC (95% CI)", "Macro AP (95% CI)",
              "Macro ECE (95% CI)", "Mean sensitivity (95% CI)", "Mean specificity (95% CI)"]
    if refer is not None:
        header.append("Macro AUROC, 10% referred")
    rows = []
    for m, tag in zip(models, "AB"):
        mac, mic = m["macro"], m["micro"]
        row = [f"{tag}: {m['name']}", with_ci(mac["auroc"], mac["ci_low"], mac["ci_high"]),
               with_ci(mic["auroc"], mic["ci_low"], mic["ci_high"])]
        row += [with_ci(mac[k], mac.get(f"{k}_ci_low"), mac.get(f"{k}_ci_high"))
                for k in ("average_precision", "ece", "sensitivity", "specificity")]
        if refer is not None:
            row.append(fmt(_referral_at(m, refer)))
        rows.append(row)
    L += _table(header, rows)
    L += [f"On {first['n_images']} images from {first['n_patients']} patients. Macro AUROC, AP, ECE, "
          "sensitivity and specificity each average the findings where that value is "
          "defined; micro AUROC pools all known (image, finding) pairs. The AUROC after referral is a "
          "point estimate (no interval).", ""]
    for m in models:
        few = (m.get("few_positives") or {}).get("findings") or []
        if few:
            n_min = m["few_positives"]["min_positives"]
            L += [f"**Warning ({m['name']}): fewer than {n_min} positives** for "
                  + ", ".join(f"{f} ({m['per_finding'][f]['positives']})" for f in few)
                  + ": their AUROC, sensitivity and calibration rest on too few cases to be read on their "
                    "own (see the width of their intervals).", ""]
    for m in models:
        undefined = [f for f, pf in m["per_finding"].items() if pf["auroc"] is None]
        if undefined:
            L.append(f"Macro AUROC of {m['name']} averages the {m['macro']['findings_defined']} findings whose "
                     f"AUROC is defined; left out: " + ", ".join(f"{f} ({_why(m['per_finding'][f])[5:-1]})" for f in undefined) + ".")
            L.append("")
    c = result.get("comparison")
    if c:
        if c["difference"] is None:
            L += [f"**B - A** macro AUROC: n/a (no finding has a defined AUROC for both models).", ""]
        else:
            verdict = ("the interval excludes 0" if c["ci_low"] is not None and (c["ci_low"] > 0 or c["ci_high"] < 0)
                       else "the interval includes 0: no clear difference")
            L += [f"**B - A** macro AUROC over the {c['findings_used']} shared findings: "
                  f"**{c['difference']:+.3f}** (95% CI {fmt(c['ci_low'])} to {fmt(c['ci_high'])}, paired patient-level "
                  f"bootstrap, {_p(c)}); {verdict}. "
                  f"A {fmt(c['macro_a'])} vs B {fmt(c['macro_b'])}.", ""]

    # ---------------------------------------------------------------- per finding
    L += ["## Per-finding detail", ""]
    for m, tag in zip(models, "AB"):
        if len(models) > 1:
            L += [f"### {tag}: {m['name']}", ""]
        rows = []
        for f, pf in m["per_finding"].items():
            na = _why(pf)
            sens_na = "n/a (no positives)" if pf["positives"] == 0 else ("n/a (no threshold)" if pf["threshold"] is None else NA)
            spec_na = "n/a (no negatives)" if pf["negatives"] == 0 else ("n/a (no threshold)" if pf["threshold"] is None else NA)
            few = 0 < pf["positives"] < ((m.get("few_positives") or {}).get("min_positives") or 0)
            min_pos = (m.get("few_positives") or {}).get("min_positives") or 0
            rows.append([f + (" (warning: few positives)" if few else ""), str(pf["positives"]),
                         str(pf["negatives"]), str(pf["unknown"]),
                         auroc_text(pf, na, min_pos),
                         fmt(pf["average_precision"], na="n/a (no positives)" if pf["positives"] == 0 else NA),
                         threshold_cell(pf),
                         fmt(pf["sensitivity"], na=sens_na), fmt(pf["specificity"], na=spec_na),
                         fmt(pf["ppv"], na="n/a (no positive calls)" if pf["threshold"] is not None else NA),
                         fmt(pf["ece"], na="n/a (no known labels)"),
                         uncertain_cell(pf)])
        L += _table(["Finding", "Pos", "Neg", "Unknown", "AUROC (95% CI)", "AP", "Threshold (set by)",
                     "Sensitivity", "Specificity", "PPV", "ECE", "Uncertain calls"], rows)
        L += [f"AUROC intervals are shown only for findings with at least {min_pos or 10} positives: with fewer, a "
              "patient bootstrap resamples the same handful of cases and its percentile interval looks far surer "
              "than the data (\"too few positives\" in its place). Threshold: `chosen` by the rule on n positives "
              "of the threshold split, `FALLBACK` where that split had no positives (or no negatives). Uncertain "
              "calls: images whose margin |p - threshold| is smaller than the model's uncertainty for that finding "
              "(the standard deviation of p over latent samples); they are counted here, and the client and the "
              "predictor show them as \"uncertain\" rather than above/below. Sensitivity, specificity and PPV use "
              "the raw comparison p >= threshold.", ""]
    L += [f"Curves below: all {first['n_images']} images from {first['n_patients']} patients of the split "
          "(per finding: the images with a known label; n+ in each panel title).", ""]
    _img(L, "ROC curves per finding", figs.get("roc"))
    _img(L, "Precision-recall curves per finding", figs.get("pr"))

    # ---------------------------------------------------------------- calibration
    L += ["## Calibration", "",
          f"On {first['n_images']} images from {first['n_patients']} patients. "
          f"Expected calibration error over {result['calibration_bins']} equal-width probability bins "
          "(per-finding values in the table above). A point below the diagonal means the model "
          "over-estimates the probability in that bin.", ""]
    _img(L, "Reliability diagrams", figs.get("reliability"))

    # ---------------------------------------------------------------- referral
    L += ["## Uncertainty: referring the most uncertain cases", "",
          "Uncertainty is the standard deviation of the predicted probability over latent samples. Per "
          "finding, the given share of cases with the highest uncertainty is referred to a radiologist and "
          "AUROC is recomputed on the cases the model keeps. A useful uncertainty raises AUROC as more is referred. "
          f"On {first['n_images']} images from {first['n_patients']} patients; point estimates without intervals.", ""]
    fr = first["referral"]["fractions"]
    header = ["Model"] + [f"{100 * f:g}% referred" for f in fr]
    L += _table(header, [[f"{tag}: {m['name']}"] + [fmt(r["auroc"]) for r in m["referral"]["macro_auroc"]]
                         for m, tag in zip(models, "AB")])
    for m, tag in zip(models, "AB"):
        rows = []
        for f, pf in m["per_finding"].items():
            rows.append([f] + [fmt(r["auroc"], na=_why(pf) if pf["auroc"] is None else "n/a (one class left)")
                               for r in pf["referral"]])
        L += [f"Per finding ({tag}):", ""] + _table(["Finding"] + header[1:], rows)
    _img(L, "AUROC against share referred", figs.get("referral"))

    # ---------------------------------------------------------------- saliency
    L += ["## Saliency and expert annotations", ""]
    examples = figs.get("saliency_examples") or [None] * len(models)
    agreement_rows = []
    for m, tag, ex in zip(models, "AB", examples):
        sal = m["saliency"]
        if not sal.get("available"):
            L += [f"{tag}: {m['name']}: saliency not available. {sal.get('reason') or ''}", ""]
            continue
        names = sal.get("method_names") or {"gradcam": sal["method"]}
        n_img = max((sal["by_method"][meth][kind]["n"] for meth in sal.get("methods", []) for kind in ("boxes", "gaze")),
                    default=0) if sal.get("by_method") else max(sal["boxes"]["n"], sal["gaze"]["n"])
        primary = sal.get("methods", ["gradcam"])[0] if sal.get("by_method") else None
        n_box = sal["by_method"][primary]["boxes"]["n"] if primary else sal["boxes"]["n"]
        n_gaze = sal["by_method"][primary]["gaze"]["n"] if primary else sal["gaze"]["n"]
        from cxr_tfp.report.figures import examples_note

        scope = (f"Maps are computed for each annotated image with at least one known positive, for the positive "
                 f"finding the model rates highest there ({n_box} image(s) with boxes, {n_gaze} with gaze; the "
                 "table gives images and patients per row)." if n_img else
                 "No annotated image with a known positive in this split, so there is no agreement to score.")
        L += [f"{tag}: {m['name']}: " + "; ".join(names.values()) + f". {scope} The figure shows: "
              f"{examples_note(sal.get('examples'))}. Each map has a colour bar (share of that map's peak, one "
              "0-1 scale per method); a map with no spatial contrast is labelled flat and has no peak marker.", ""]
        _img(L, f"Saliency examples ({m['name']})", ex)
        for meth in sal.get("methods") or ["gradcam"]:
            entry = sal["by_method"][meth] if sal.get("by_method") else sal
            for kind in ("boxes", "gaze"):
                a = entry[kind]
                agreement_rows.append([f"{tag}: {m['name']}", names.get(meth, meth).split(" (")[0], kind, "all",
                                       f"{a['n']} / {a.get('n_patients', 'n/a')}", _hit(a),
                                       _topk_ci(a),
                                       pct(a["topk_chance"]), fmt(a["topk_iou"])])
                for f, af in a["per_finding"].items():
                    agreement_rows.append(["", "", kind, f, f"{af['n']} / {af.get('n_patients', 'n/a')}", _hit(af),
                                           _topk_ci(af),
                                           pct(af["topk_chance"]), fmt(af["topk_iou"])])
    if agreement_rows:
        k = next(m["saliency"]["k"] for m in models if m["saliency"].get("available"))
        L += [f"Agreement over all annotated images of the split. Pointing game: the map's peak lies inside the "
              f"expert region (boxes; gaze above half its peak); 95% Wilson interval. Top-{100 * k:g}%: share of "
              "the most salient pixels inside the region, 95% patient-bootstrap interval (from 10 images up); chance is the region's "
              "share of the image (what a random map scores). A random peak hits with about the chance rate too. "
              "n/a: no annotated image of that kind. Fewer than 10 images: read as anecdotes.", ""]
        L += _table(["Model", "Method", "Annotation", "Finding", "Images / patients", "Pointing-game hits (95% CI)",
                     f"Top-{100 * k:g}% inside (95% CI)", "Chance", f"Top-{100 * k:g}% IoU"], agreement_rows,
                    "llllrrrrr")
        _img(L, "Saliency agreement", figs.get("saliency_agreement"))

    # ---------------------------------------------------------------- method
    L += ["## How the numbers are computed", "",
          "- AUROC: Mann-Whitney statistic (ties count one half); AP: sum over thresholds of recall step x "
          "precision, no interpolation. Undefined with no positives (or, for AUROC, no negatives): shown as n/a "
          "and left out of macro averages, never counted as 0 or 0.5.",
          "- Macro: mean over findings with a defined value; micro: all known (image, finding) pairs pooled.",
          "- A case is called positive when its probability is >= the finding's threshold; a call whose margin "
          "|p - threshold| is below the model's uncertainty for that finding is counted as uncertain.",
          "- Confidence intervals resample patients with replacement and keep all their images, so correlated "
          "images of one patient never count as independent; resamples in which a finding has one class only are "
          "skipped for that finding.",
          "- The comparison scores both models on the same resamples (paired); p is the two-sided bootstrap "
          "proportion of differences on the other side of 0.", ""]
    return "\n".join(L)


def write_report(result: Dict, path: Path) -> Path:
    """Write ``report.md``."""
    path = Path(path)
    path.write_text(render(result))
    return path
