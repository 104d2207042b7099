"""Evaluation metrics on plain numpy arrays: each one small enough to check by hand.

Conventions used throughout:
- ``y`` are 0/1 labels, ``s`` scores (probabilities), ``mask`` 1 where a label is known. Unknown labels
  are dropped per finding before anything is computed.
- A value that the data cannot define (AUROC with no positives, sensitivity with no positives, ...)
  is ``None``, never NaN, 0 or 0.5: the caller writes it as JSON ``null`` and the report as "n/a".
- A case is predicted positive when ``score >= threshold``.
- Bootstrap intervals resample *patients* with replacement and take all their images, so images of
  one patient (correlated) never count as independent evidence.

No sklearn / scipy here on purpose: the library stays light and the tests use sklearn as an
independent cross-check.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

Float = Optional[float]

DEFAULT_REFERRAL_FRACTIONS: Tuple[float, ...] = (0.05, 0.10, 0.20)


# --------------------------------------------------------------------------------------------- utils
def _as_1d(y, s, mask=None) -> Tuple[np.ndarray, np.ndarray]:
    """Flatten, check shapes and drop entries whose label is unknown (mask == 0)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    if mask is not None:
        m = np.asarray(mask, dtype=np.float64).reshape(-1)
        if m.shape != y.shape:
            raise ValueError(f"mask and labels differ in length: {m.shape} vs {y.shape}")
        keep = m > 0.5
        y, s = y[keep], s[keep]
    if np.any(~np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    return (y > 0.5).astype(np.float64), s


def finite_or_none(v) -> Float:
    """``float(v)`` or ``None`` when ``v`` is None / NaN / inf (for JSON and reports)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _mean_defined(values: Sequence[Float]) -> Float:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _tie_groups(s_sorted: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in an ascending-sorted array."""
    if s_sorted.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])


# ------------------------------------------------------------------------------------------- ranking
def _weighted_auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray,
                    cols: Optional[np.ndarray] = None, chunk: Optional[int] = None) -> np.ndarray:
    """AUROC (Mann-Whitney, ties count 1/2) for each row of weights ``w`` [R, M]; NaN where undefined.

    ``cols`` picks, for each of the N cases, its weight column (default: column i for case i), so one
    patient-resample matrix serves every finding without copying it. Sorting once and summing weights
    per tie group makes one bootstrap resample O(N): a resample is just a vector of how many times each
    image was drawn. Rows are processed in chunks to bound memory.
    """
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    w = np.atleast_2d(w)
    col_order = order if cols is None else np.asarray(cols)[order]
    starts = _tie_groups(s_sorted)
    out = np.full(w.shape[0], np.nan)
    if starts.size == 0:
        return out
    chunk = chunk or max(1, int(4_000_000 // max(y.size, 1)))   # ~32 MB per temporary array
    for r0 in range(0, w.shape[0], chunk):
        wc = w[r0:r0 + chunk][:, col_order].astype(np.float64)
        pos_w = np.add.reduceat(wc * y_sorted, starts, axis=1)          # positive weight per tie group
        neg_w = np.add.reduceat(wc * (1.0 - y_sorted), starts, axis=1)
        neg_below = np.cumsum(neg_w, axis=1) - neg_w                   # negatives strictly below the group
        u = np.sum(pos_w * (neg_below + 0.5 * neg_w), axis=1)
        total = pos_w.sum(axis=1) * neg_w.sum(axis=1)
        out[r0:r0 + chunk] = np.where(total > 0, u / np.where(total > 0, total, 1.0), np.nan)
    return out


def auroc(y, s, mask=None) -> Float:
    """Area under the ROC curve; ``None`` when there are no positives or no negatives."""
    y, s = _as_1d(y, s, mask)
    if y.sum() == 0 or y.sum() == y.size:
        return None
    return float(_weighted_auroc(y, s, np.ones((1, y.size)))[0])


def roc_curve(y, s, mask=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)`` from (0, 0) at threshold +inf down to each distinct score.

    Rates are NaN when the class they divide by is absent (the curve is then undefined).
    """
    y, s = _as_1d(y, s, mask)
    order = np.argsort(-s, kind="mergesort")
    s_desc, y_desc = s[order], y[order]
    # last index of each run of equal scores (descending): one ROC point per distinct threshold
    last = np.r_[np.flatnonzero(s_desc[1:] != s_desc[:-1]), s_desc.size - 1] if s_desc.size else np.zeros(0, int)
    tp = np.cumsum(y_desc)[last] if s_desc.size else np.zeros(0)
    fp = (last + 1) - tp
    p, n = y.sum(), y.size - y.sum()
    tp, fp = np.r_[0.0, tp], np.r_[0.0, fp]
    thresholds = np.r_[np.inf, s_desc[last]] if s_desc.size else np.array([np.inf])
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / p if p > 0 else np.full(tp.shape, np.nan)
        fpr = fp / n if n > 0 else np.full(fp.shape, np.nan)
    return fpr, tpr, thresholds


def precision_recall_curve(y, s, mask=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)``, one point per distinct score, highest threshold first."""
    y, s = _as_1d(y, s, mask)
    order = np.argsort(-s, kind="mergesort")
    s_desc, y_desc = s[order], y[order]
    if s_desc.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    last = np.r_[np.flatnonzero(s_desc[1:] != s_desc[:-1]), s_desc.size - 1]
    tp = np.cumsum(y_desc)[last]
    predicted = last + 1.0
    p = y.sum()
    precision = tp / predicted
    recall = tp / p if p > 0 else np.full(tp.shape, np.nan)
    return precision, recall, s_desc[last]


def average_precision(y, s, mask=None) -> Float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds (no interpolation).

    ``None`` when there are no positives (recall is undefined).
    """
    y, s = _as_1d(y, s, mask)
    if y.sum() == 0:
        return None
    precision, recall, _ = precision_recall_curve(y, s)
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


# ------------------------------------------------------------------------------- operating threshold
def confusion_at(y, s, threshold: float, mask=None) -> Dict[str, int]:
    """Counts of TP/FP/TN/FN when ``score >= threshold`` is called positive."""
    y, s = _as_1d(y, s, mask)
    pred = s >= threshold
    pos = y > 0.5
    return {"tp": int(np.sum(pred & pos)), "fp": int(np.sum(pred & ~pos)),
            "tn": int(np.sum(~pred & ~pos)), "fn": int(np.sum(~pred & pos))}


def sensitivity_specificity(y, s, threshold: Float, mask=None) -> Dict[str, Float]:
    """Sensitivity (TP/(TP+FN)), specificity (TN/(TN+FP)) and PPV at ``threshold``.

    Each is ``None`` when its denominator is zero, or all are ``None`` when there is no threshold.
    """
    if threshold is None:
        return {"sensitivity": None, "specificity": None, "ppv": None}
    c = confusion_at(y, s, threshold, mask)
    def ratio(a: int, b: int) -> Float:
        return a / b if b > 0 else None
    return {"sensitivity": ratio(c["tp"], c["tp"] + c["fn"]),
            "specificity": ratio(c["tn"], c["tn"] + c["fp"]),
            "ppv": ratio(c["tp"], c["tp"] + c["fp"])}


def choose_threshold(y, s, method: str = "youden", target_sensitivity: float = 0.9, mask=None) -> Float:
    """Operating threshold chosen on (eval-split) data.

    - ``youden``: the score threshold maximising sensitivity + specificity - 1 (ties: the highest
      threshold, i.e. the fewest positive calls).
    - ``sensitivity``: the highest threshold whose sensitivity is at least ``target_sensitivity``.
    ``None`` when the data has no positives (or, for Youden, no negatives).
    """
    y, s = _as_1d(y, s, mask)
    n_pos, n_neg = y.sum(), y.size - y.sum()
    if n_pos == 0 or (method == "youden" and n_neg == 0):
        return None
    fpr, tpr, thr = roc_curve(y, s)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]   # drop the +inf point: it never calls anything positive
    if method == "youden":
        j = tpr - fpr
        return float(thr[int(np.argmax(j))])      # argmax takes the first, i.e. highest threshold
    if method in ("sensitivity", "target_sensitivity"):
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
        ok = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
        return float(thr[ok[0]])                  # tpr reaches 1 at the lowest score, so ok is never empty
    raise ValueError(f"unknown threshold method {method!r}; use 'youden' or 'sensitivity'")


def choose_thresholds(findings: Sequence[str], probs, labels, mask=None, method: str = "youden",
                      target_sensitivity: float = 0.9, fixed: float = 0.5,
                      default: Optional[float] = None) -> Dict[str, Optional[float]]:
    """Per-finding operating thresholds on (eval-split) arrays ``[N, L]``, columns in ``findings`` order.

    ``method`` is ``youden``, ``sensitivity`` (see :func:`choose_threshold`) or ``fixed`` (every
    finding at ``fixed``); ``default`` where a threshold is undefined (no positives/negatives).
    The one threshold rule of the project: training stores these in the model, evaluation reports them.
    """
    if method == "fixed":
        return {f: float(fixed) for f in findings}
    probs, labels = np.asarray(probs), np.asarray(labels)
    out: Dict[str, Optional[float]] = {}
    for j, f in enumerate(findings):
        t = choose_threshold(labels[:, j], probs[:, j], method, target_sensitivity,
                             None if mask is None else np.asarray(mask)[:, j]) if len(labels) else None
        out[f] = default if t is None else float(t)
    return out


# Threshold provenance: how each finding's operating threshold was set (thresholds.json, the export's
# signature, the client table, the predictor and the report all show it).
SOURCE_CHOSEN = "chosen"      # by the rule (Youden / target sensitivity) on n positives of a split
SOURCE_FALLBACK = "fallback"  # the rule was undefined there (no positives, or no negatives): a default
SOURCE_FIXED = "fixed"        # a fixed probability by request (--threshold-method fixed)
SOURCE_UNKNOWN = "unknown"    # a model saved before provenance was recorded, or never thresholded
SOURCE_UNDEFINED = "undefined"  # no threshold at all (evaluate, where the rule is undefined: shown n/a)
THRESHOLD_SOURCES = (SOURCE_CHOSEN, SOURCE_FALLBACK, SOURCE_FIXED, SOURCE_UNKNOWN, SOURCE_UNDEFINED)


def threshold_provenance(findings: Sequence[str], thresholds: Dict[str, Optional[float]], labels, mask=None,
                         method: str = "youden", split: Optional[str] = None) -> Dict[str, Dict[str, object]]:
    """Per finding ``{"source", "method", "split", "positives", "negatives"}`` for thresholds that
    :func:`choose_thresholds` returned on ``labels`` (``[N, L]``, columns in ``findings`` order).

    ``source`` is ``undefined`` where ``thresholds`` holds None, ``fixed`` for the fixed method,
    ``chosen`` when the rule was defined on the data (it needs positives, and Youden negatives too),
    else ``fallback`` (a default stood in).
    """
    labels = np.asarray(labels)
    out: Dict[str, Dict[str, object]] = {}
    for j, f in enumerate(findings):
        if labels.size:
            y, _ = _as_1d(labels[:, j], labels[:, j], None if mask is None else np.asarray(mask)[:, j])
            n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
        else:
            n_pos = n_neg = 0
        if thresholds.get(f) is None:
            source = SOURCE_UNDEFINED
        elif method == "fixed":
            source = SOURCE_FIXED
        elif n_pos == 0 or (method == "youden" and n_neg == 0):
            source = SOURCE_FALLBACK
        else:
            source = SOURCE_CHOSEN
        out[f] = {"source": source, "method": method, "split": split, "positives": n_pos, "negatives": n_neg}
    return out


def provenance_text(prov: Optional[Dict[str, object]]) -> str:
    """A short human phrase for one finding's threshold provenance (client table, report)."""
    if not prov:
        return "source unknown"
    source = prov.get("source")
    where = f" on {prov['split']}" if prov.get("split") else ""
    if source == SOURCE_CHOSEN:
        return f"{prov.get('method', 'rule')}, {prov.get('positives', '?')} positives{where}"
    if source == SOURCE_FALLBACK:
        why = "no positives" if not prov.get("positives") else "no negatives"
        return f"FALLBACK ({why}{where})"
    if source == SOURCE_FIXED:
        return "fixed"
    return "source unknown"


# The decision rule: a call is firm only when the margin |p - threshold| is at least the model's
# own uncertainty (std of p over latent samples) for that finding; otherwise it is "uncertain".
ABOVE, BELOW, UNCERTAIN = "above", "below", "uncertain"


def decide(probability, uncertainty, threshold):
    """``"above"`` / ``"below"`` / ``"uncertain"`` per element (numpy broadcasting; scalars give a str).

    Uncertain when ``|probability - threshold| < uncertainty``; a NaN (unknown) uncertainty never
    makes a call uncertain. ``probability >= threshold`` is above, as everywhere in the project.
    """
    p, u, t = (np.asarray(v, np.float64) for v in (probability, uncertainty, threshold))
    firm = np.where(p >= t, ABOVE, BELOW)
    out = np.where(np.nan_to_num(u, nan=0.0) > np.abs(p - t), UNCERTAIN, firm)
    return str(out) if out.ndim == 0 else out


# ------------------------------------------------------------------------------------- calibration
def reliability_bins(y, p, n_bins: int = 10, mask=None) -> Dict[str, List]:
    """Equal-width probability bins over [0, 1]: count, mean predicted probability, observed rate.

    A probability of exactly 1 falls in the last bin. Empty bins have ``None`` means.
    """
    y, p = _as_1d(y, p, mask)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    mean_p = [float(sum_p[b] / counts[b]) if counts[b] else None for b in range(n_bins)]
    rate = [float(sum_y[b] / counts[b]) if counts[b] else None for b in range(n_bins)]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"edges": [float(e) for e in edges], "count": [int(c) for c in counts],
            "mean_predicted": mean_p, "observed_rate": rate}


def expected_calibration_error(y, p, n_bins: int = 10, mask=None) -> Float:
    """ECE = sum_b (n_b / N) |observed_rate_b - mean_predicted_b| over equal-width bins.

    Defined whenever there is at least one known label (calibration of a finding with no positives is
    still meaningful: it measures how close to 0 its probabilities are); ``None`` otherwise.
    """
    bins = reliability_bins(y, p, n_bins, mask)
    n = sum(bins["count"])
    if n == 0:
        return None
    return float(sum(c / n * abs(r - m) for c, r, m in zip(bins["count"], bins["observed_rate"],
                                                          bins["mean_predicted"]) if c))


# -------------------------------------------------------------------------------------- bootstrap
def patient_resample_weights(groups: Sequence, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``[R, N]`` image weights: how often each image's patient was drawn in each patient resample.

    Patients are drawn with replacement, as many as there are patients; every image of a drawn
    patient comes along, once per draw.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError("groups must be one key per image")
    _, inverse = np.unique(groups, return_inverse=True)
    n_patients = int(inverse.max()) + 1 if inverse.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, max(n_patients, 1), size=(n_resamples, n_patients))
    counts = np.zeros((n_resamples, max(n_patients, 1)), dtype=np.float32)
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return counts[:, inverse]


def percentile_interval(values: np.ndarray, alpha: float = 0.05) -> Tuple[Float, Float]:
    """Percentile interval of the finite values; ``(None, None)`` when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None, None
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _auroc_matrix(labels: np.ndarray, scores: np.ndarray, mask: np.ndarray,
                  weights: np.ndarray) -> np.ndarray:
    """``[R, L]`` weighted AUROC per resample and finding (NaN where undefined)."""
    out = np.full((weights.shape[0], labels.shape[1]), np.nan)
    for j in range(labels.shape[1]):
        keep = mask[:, j] > 0.5
        if keep.any():
            out[:, j] = _weighted_auroc((labels[keep, j] > 0.5).astype(float), scores[keep, j],
                                        weights, cols=np.flatnonzero(keep))
    return out


def _micro_auroc(labels, scores, mask, weights) -> np.ndarray:
    keep = mask > 0.5
    rows = np.nonzero(keep)[0]    # the image each pooled (image, finding) pair belongs to
    return _weighted_auroc((labels[keep] > 0.5).astype(float), scores[keep], weights, cols=rows)


def _macro(per_finding: np.ndarray) -> np.ndarray:
    """Mean over the findings defined in each row; NaN when none is."""
    with np.errstate(invalid="ignore"):
        defined = np.isfinite(per_finding)
        n = defined.sum(axis=1)
        total = np.where(defined, per_finding, 0.0).sum(axis=1)
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _check_matrix(labels, scores, mask) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    mask = np.ones_like(labels) if mask is None else np.asarray(mask, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != scores.shape or labels.shape != mask.shape:
        raise ValueError(f"labels, scores and mask must all be [N, L]; got {labels.shape}, "
                         f"{scores.shape}, {mask.shape}")
    return labels, scores, mask


def auroc_with_ci(labels, scores, mask, groups, n_resamples: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> Dict[str, object]:
    """Per-finding, macro and micro AUROC with patient-level percentile bootstrap intervals.

    Macro = mean of the per-finding AUROCs that are defined; micro = AUROC over all known
    (image, finding) pairs pooled. A resample in which a finding happens to have no positives (or no
    negatives) is skipped for that finding; ``n_valid`` says how many resamples counted.
    """
    labels, scores, mask = _check_matrix(labels, scores, mask)
    ones = np.ones((1, labels.shape[0]))
    point = _auroc_matrix(labels, scores, mask, ones)[0]
    point_macro = _macro(point[None])[0]
    point_micro = _micro_auroc(labels, scores, mask, ones)[0]
    w = patient_resample_weights(groups, n_resamples, seed) if n_resamples > 0 else np.zeros((0, labels.shape[0]))
    boot = _auroc_matrix(labels, scores, mask, w)
    # Macro over the findings defined in the full data, so a resample never averages other findings.
    boot_macro = _macro(np.where(np.isfinite(point)[None], boot, np.nan))
    boot_micro = _micro_auroc(labels, scores, mask, w) if n_resamples > 0 else np.zeros(0)

    def entry(pt: float, samples: np.ndarray) -> Dict[str, object]:
        pt = finite_or_none(pt)
        lo, hi = percentile_interval(samples, alpha) if pt is not None else (None, None)
        return {"auroc": pt, "ci_low": lo, "ci_high": hi,
                "n_valid": int(np.isfinite(samples).sum()) if pt is not None else 0}

    return {"per_finding": [entry(point[j], boot[:, j]) for j in range(labels.shape[1])],
            "macro": entry(point_macro, boot_macro),
            "micro": entry(point_micro, boot_micro),
            "n_resamples": int(n_resamples), "alpha": float(alpha), "seed": int(seed)}


def paired_auroc_difference(labels, scores_a, scores_b, mask, groups, n_resamples: int = 1000,
                            seed: int = 0, alpha: float = 0.05) -> Dict[str, object]:
    """Macro AUROC of B minus A on the same images, with a paired patient-level bootstrap interval.

    Both models are scored on the *same* resample each time, so the interval reflects the
    difference, not the two separate uncertainties. ``p_value`` is the two-sided bootstrap
    proportion ``2 * min(P(diff <= 0), P(diff >= 0))`` (capped at 1).
    """
    labels, scores_a, mask = _check_matrix(labels, scores_a, mask)
    _, scores_b, _ = _check_matrix(labels, scores_b, mask)
    ones = np.ones((1, labels.shape[0]))
    pa = _auroc_matrix(labels, scores_a, mask, ones)[0]
    pb = _auroc_matrix(labels, scores_b, mask, ones)[0]
    defined = np.isfinite(pa) & np.isfinite(pb)
    if not defined.any():
        return {"macro_a": None, "macro_b": None, "difference": None, "ci_low": None,
                "ci_high": None, "p_value": None, "n_valid": 0, "findings_used": 0}
    diff = float(np.mean(pb[defined]) - np.mean(pa[defined]))
    w = patient_resample_weights(groups, n_resamples, seed)
    ba = _auroc_matrix(labels[:, defined], scores_a[:, defined], mask[:, defined], w)
    bb = _auroc_matrix(labels[:, defined], scores_b[:, defined], mask[:, defined], w)
    d = _macro(bb) - _macro(ba)
    lo, hi = percentile_interval(d, alpha)
    fin = d[np.isfinite(d)]
    p = min(1.0, 2.0 * min(np.mean(fin <= 0), np.mean(fin >= 0))) if fin.size else None
    return {"macro_a": float(np.mean(pa[defined])), "macro_b": float(np.mean(pb[defined])),
            "difference": diff, "ci_low": lo, "ci_high": hi, "p_value": finite_or_none(p),
            "n_valid": int(fin.size), "findings_used": int(defined.sum())}


# ---------------------------------------------------------------------------------------- referral
def referral_curve(y, p, uncertainty, fractions: Sequence[float] = DEFAULT_REFERRAL_FRACTIONS,
                   mask=None) -> List[Dict[str, object]]:
    """AUROC on the cases kept after referring the most uncertain fraction to a radiologist.

    Among the known labels of one finding, the ``round(f * n)`` cases with the highest uncertainty
    (ties: the earlier case first) are referred; AUROC is computed on the rest. Fraction 0 is
    always included as the reference.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    m = np.ones_like(y) if mask is None else np.asarray(mask, dtype=np.float64).reshape(-1)
    keep = m > 0.5
    y, s = _as_1d(y, p, m)
    u = u[keep]
    n = y.size
    order = np.argsort(-u, kind="mergesort")
    out = []
    for f in sorted({0.0, *map(float, fractions)}):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"referral fraction must be in [0, 1), got {f}")
        k = int(round(f * n))
        kept = np.ones(n, bool)
        kept[order[:k]] = False
        out.append({"fraction": f, "referred": k, "kept": int(kept.sum()),
                    "positives_kept": int(y[kept].sum()), "auroc": auroc(y[kept], s[kept])})
    return out


# --------------------------------------------------------------------------- saliency vs. annotation
def annotation_region(gaze: Optional[np.ndarray] = None, boxes: Optional[np.ndarray] = None,
                      gaze_level: float = 0.5) -> Optional[np.ndarray]:
    """Boolean region an expert marked: the box mask when there is one, else the gaze heatmap
    above ``gaze_level`` of its maximum; ``None`` when neither marks any pixel."""
    if boxes is not None and np.any(np.asarray(boxes) > 0.5):
        return np.asarray(boxes) > 0.5
    if gaze is not None:
        g = np.asarray(gaze, dtype=np.float64)
        if g.size and g.max() > 0:
            return g >= gaze_level * g.max()
    return None


def pointing_game_hit(saliency: np.ndarray, region: np.ndarray) -> bool:
    """True when the saliency maximum falls inside ``region``.

    With several pixels at the maximum, it is a hit when most of them are inside; a constant map
    points nowhere and is a miss.
    """
    sal = np.asarray(saliency, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if sal.shape != region.shape:
        raise ValueError(f"saliency {sal.shape} and region {region.shape} differ in shape")
    if sal.max() == sal.min():
        return False
    at_max = sal == sal.max()
    return bool(region[at_max].mean() > 0.5)


def top_k_overlap(saliency: np.ndarray, region: np.ndarray, k: float = 0.1) -> Dict[str, float]:
    """How the top ``k`` fraction of saliency pixels overlaps the expert region.

    ``precision``: share of the top-k pixels inside the region; ``iou``: intersection over union of
    the two pixel sets; ``chance``: the region's share of the image (the precision of a random map).
    Exactly ``ceil(k * pixels)`` pixels are taken (ties broken by pixel order).
    """
    sal = np.asarray(saliency, dtype=np.float64).reshape(-1)
    reg = np.asarray(region, dtype=bool).reshape(-1)
    if sal.shape != reg.shape:
        raise ValueError(f"saliency and region differ in size: {sal.shape} vs {reg.shape}")
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    n_top = max(1, int(math.ceil(k * sal.size - 1e-9)))
    top = np.zeros(sal.size, bool)
    top[np.argsort(-sal, kind="mergesort")[:n_top]] = True
    inter = float(np.sum(top & reg))
    union = float(np.sum(top | reg))
    return {"precision": inter / n_top, "iou": inter / union if union else 0.0,
            "chance": float(reg.mean())}


def saliency_agreement(saliency: np.ndarray, regions: Sequence[np.ndarray],
                       k: float = 0.1) -> Dict[str, object]:
    """Pointing-game hit rate and mean top-k overlap over images ``[B, H, W]`` with their regions."""
    sal = np.asarray(saliency)
    if len(sal) != len(regions):
        raise ValueError(f"{len(sal)} saliency maps but {len(regions)} regions")
    if len(sal) == 0:
        return {"n": 0, "pointing_hit_rate": None, "topk_precision": None, "topk_iou": None,
                "topk_chance": None, "k": float(k), "hits": 0}
    hits = [pointing_game_hit(s, r) for s, r in zip(sal, regions)]
    ov = [top_k_overlap(s, r, k) for s, r in zip(sal, regions)]
    return {"n": len(hits), "hits": int(sum(hits)), "pointing_hit_rate": float(np.mean(hits)),
            "topk_precision": float(np.mean([o["precision"] for o in ov])),
            "topk_iou": float(np.mean([o["iou"] for o in ov])),
            "topk_chance": float(np.mean([o["chance"] for o in ov])), "k": float(k)}


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> Tuple[Float, Float]:
    """Wilson score interval of a proportion (good at small n and near 0 or 1); ``(None, None)`` for n = 0."""
    if n <= 0:
        return None, None
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def weighted_mean_ci(values: Sequence[float], groups: Sequence, n_resamples: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> Tuple[Float, Float]:
    """Percentile interval of a mean over items, resampling their groups (patients) with replacement."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or n_resamples <= 0:
        return None, None
    w = patient_resample_weights(groups, n_resamples, seed).astype(np.float64)
    tot = w.sum(axis=1)
    means = np.where(tot > 0, (w @ v) / np.maximum(tot, 1e-12), np.nan)
    return percentile_interval(means, alpha)


def macro_threshold_metrics_ci(labels, scores, mask, thresholds: Sequence[Float], groups,
                               n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05,
                               n_bins: int = 10) -> Dict[str, Tuple[Float, Float]]:
    """Patient-bootstrap intervals of the macro AP, ECE, sensitivity and specificity.

    Each resample draws patients with replacement (all their images come along) and averages each
    metric over the findings where it is defined in that resample, as the point estimate does.
    """
    labels, scores, mask = _check_matrix(labels, scores, mask)
    keys = ("average_precision", "ece", "sensitivity", "specificity")
    if n_resamples <= 0 or labels.shape[0] == 0:
        return {k: (None, None) for k in keys}
    counts = patient_resample_weights(groups, n_resamples, seed).astype(int)
    draws = {k: [] for k in keys}
    for r in range(n_resamples):
        idx = np.repeat(np.arange(labels.shape[0]), counts[r])
        per = {k: [] for k in keys}
        for j in range(labels.shape[1]):
            y, p, m = labels[idx, j], scores[idx, j], mask[idx, j]
            yy, pp = _as_1d(y, p, m)
            per["average_precision"].append(average_precision(yy, pp))
            per["ece"].append(expected_calibration_error(yy, pp, n_bins))
            ss = sensitivity_specificity(yy, pp, thresholds[j])
            per["sensitivity"].append(ss["sensitivity"])
            per["specificity"].append(ss["specificity"])
        for k in keys:
            v = _mean_defined(per[k])
            draws[k].append(np.nan if v is None else v)
    return {k: percentile_interval(np.asarray(draws[k]), alpha) for k in keys}


# ----------------------------------------------------------------------------------- all together
def finding_summary(y, p, mask=None, threshold: Float = None, n_bins: int = 10) -> Dict[str, object]:
    """Counts, AUROC, AP, ECE and sensitivity/specificity at ``threshold`` for one finding."""
    yy, pp = _as_1d(y, p, mask)
    out: Dict[str, object] = {"positives": int(yy.sum()), "negatives": int(yy.size - yy.sum()),
                              "auroc": auroc(yy, pp), "average_precision": average_precision(yy, pp),
                              "ece": expected_calibration_error(yy, pp, n_bins),
                              "threshold": finite_or_none(threshold)}
    out.update(sensitivity_specificity(yy, pp, threshold))
    return out


def micro_average_precision(labels, scores, mask) -> Float:
    """AP over all known (image, finding) pairs pooled."""
    labels, scores, mask = _check_matrix(labels, scores, mask)
    return average_precision(labels, scores, mask)


def sanitize(obj):
    """Recursively replace NaN / inf by ``None`` and numpy scalars by Python ones (JSON-safe)."""
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return sanitize(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj


# ---------------------------------------------------------------------------------------- seeds
def t_interval(values: Sequence[float], alpha: float = 0.05) -> Tuple[float, Optional[float]]:
    """Mean and the half-width of its two-sided t-interval over ``values`` (None with one value)."""
    from scipy import stats

    a = np.asarray(values, float)
    if a.size < 2:
        return float(a.mean()), None
    return float(a.mean()), float(stats.t.ppf(1 - alpha / 2, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size))


def paired_gain_over_seeds(labels, scores_a, scores_b, mask, groups, n_resamples: int = 1000,
                           seed: int = 0, alpha: float = 0.05,
                           findings_in_macro: Optional[Sequence[bool]] = None) -> Dict[str, object]:
    """AUROC gain of A over B (per finding and macro) from several training seeds on one eval split.

    ``scores_a`` / ``scores_b``: ``[S, N, L]``, one row of predictions per seed, paired (seed s of A
    and of B share everything but the treatment). The point estimate is the mean over seeds of
    AUROC(A) - AUROC(B). The interval is a two-level percentile bootstrap: each resample draws the
    seeds with replacement (training variation) and the eval patients with replacement (the
    split's size), scores A and B on the same draw, and averages the paired differences over the
    drawn seeds. With one seed it reflects the eval split only. ``findings_in_macro``: which
    findings the macro averages (default: those whose AUROC is defined).
    """
    labels = np.asarray(labels, np.float64)
    mask = np.ones_like(labels) if mask is None else np.asarray(mask, np.float64)
    a = np.asarray(scores_a, np.float64)
    b = np.asarray(scores_b, np.float64)
    if a.ndim != 3 or a.shape != b.shape or a.shape[1:] != labels.shape or labels.shape != mask.shape:
        raise ValueError(f"scores must be [S, N, L] matching labels [N, L]; got {a.shape}, {b.shape}, "
                         f"{labels.shape}, {mask.shape}")
    n_seeds = a.shape[0]
    ones = np.ones((1, labels.shape[0]))
    point = np.stack([_auroc_matrix(labels, a[s], mask, ones)[0] - _auroc_matrix(labels, b[s], mask, ones)[0]
                      for s in range(n_seeds)])                                        # [S, L]
    defined = np.all(np.isfinite(point), axis=0)
    use = defined if findings_in_macro is None else defined & np.asarray(findings_in_macro, bool)
    w = patient_resample_weights(groups, n_resamples, seed)
    diff = np.stack([_auroc_matrix(labels, a[s], mask, w) - _auroc_matrix(labels, b[s], mask, w)
                     for s in range(n_seeds)])                                         # [S, R, L]
    draws = np.random.default_rng(seed + 1).integers(0, n_seeds, size=(n_resamples, n_seeds))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a finding undefined in every drawn seed: NaN
        boot = np.nanmean(diff[draws, np.arange(n_resamples)[:, None], :], axis=1)     # [R, L]

    def entry(pt, samples) -> Dict[str, object]:
        pt = finite_or_none(pt)
        lo, hi = percentile_interval(samples, alpha) if pt is not None else (None, None)
        return {"gain": pt, "ci_low": lo, "ci_high": hi,
                "n_valid": int(np.isfinite(samples).sum()) if pt is not None else 0}

    with np.errstate(invalid="ignore"):
        per_seed_macro = point[:, use].mean(axis=1) if use.any() else np.full(n_seeds, np.nan)
        boot_macro = _macro(np.where(use[None], boot, np.nan)) if use.any() else np.full(n_resamples, np.nan)
    return {"per_finding": [entry(point[:, j].mean(), boot[:, j]) for j in range(labels.shape[1])],
            "macro": entry(per_seed_macro.mean() if use.any() else None, boot_macro),
            "per_seed_macro": [finite_or_none(v) for v in per_seed_macro],
            "findings_in_macro": [bool(u) for u in use], "n_seeds": int(n_seeds),
            "n_resamples": int(n_resamples), "alpha": float(alpha), "seed": int(seed)}
