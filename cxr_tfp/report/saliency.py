"""Saliency over an evaluated split: which images get maps, and how the maps agree with the experts.

:class:`SaliencyCollector` is fed one parsed batch at a time by :func:`cxr_tfp.evaluate.collect`. For
each annotated image with at least one known positive finding it asks the model adapter for a
saliency map of the positive finding the model rates highest (what the expert marked is evidence
of a finding that is present) and records the map's agreement with the box mask and with the gaze
heatmap (above ``gaze_level`` of its peak): the pointing game and the top-k share. A few images are
kept for the report's figure. :func:`agreement_summary` aggregates the records for metrics.json.

Several methods can be scored side by side (``methods``; the first is the primary one, drawn first):
Grad-CAM, occlusion sensitivity and the prior's attention map for a Keras model (see
:mod:`cxr_tfp.model.saliency`). One method alone proves little; agreement across a gradient-based
and a gradient-free method is stronger evidence of where the model looks.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np

from cxr_tfp import metrics as M

ANNOTATION_KINDS = ("boxes", "gaze")
# How the report names each method (keys: :data:`cxr_tfp.model.saliency.METHODS`).
METHOD_NAMES = {"gradcam": "Grad-CAM (backbone's last block)",
                "occlusion": "occlusion sensitivity (no gradients)",
                "attention": "prior attention (no gradients; the same for every finding)"}


@dataclasses.dataclass
class SaliencyExample:
    """One image kept for the saliency figure (maps at the model's input size)."""

    image: np.ndarray
    saliency: np.ndarray       # the primary method's map
    gaze: Optional[np.ndarray]
    boxes: Optional[np.ndarray]
    finding: str
    probability: float
    label: Optional[float]     # None when unknown
    annotated: bool
    maps: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)   # every method's map


def resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """Maps ``[B, h, w]`` resized to ``[B, size, size]`` (bilinear; unchanged when already that size)."""
    if maps.shape[1] == size and maps.shape[2] == size:
        return maps
    import tensorflow as tf

    return tf.image.resize(maps[..., None], [size, size]).numpy()[..., 0]


class SaliencyCollector:
    """Saliency maps and their agreement records over the batches of one split (see module doc)."""

    def __init__(self, adapter, findings: Sequence[str], size: int, *, max_saliency: Optional[int] = None,
                 n_examples: int = 6, gaze_level: float = 0.5, top_k: float = 0.1,
                 methods: Optional[Sequence[str]] = None):
        self.adapter = adapter
        available = tuple(getattr(adapter, "saliency_methods", ("gradcam",)))
        self.methods = tuple(methods) if methods else available
        unknown = [m for m in self.methods if m not in available]
        if unknown:
            raise ValueError(f"saliency methods {unknown} not available for {adapter.name} "
                             f"(available: {', '.join(available)})")
        self.findings = tuple(findings)
        self.size = int(size)
        self.max_saliency = max_saliency
        self.n_examples = int(n_examples)
        self.gaze_level = gaze_level
        self.top_k = top_k
        self.agreement: List[Dict[str, object]] = []
        self._annotated: List[SaliencyExample] = []
        self._filler: List[SaliencyExample] = []
        self._n = 0

    @property
    def examples(self) -> List[SaliencyExample]:
        """The annotated examples (their highest-rated known-positive finding), at most ``n_examples``;
        only when the split has none, unannotated images with their highest-rated finding instead
        (:meth:`examples_shown` says which, so the report can say so)."""
        return (self._annotated or self._filler)[:self.n_examples]

    def examples_shown(self) -> Dict[str, int]:
        """``{"annotated": a, "unannotated": u}``: what :attr:`examples` holds."""
        ex = self.examples
        return {"annotated": sum(e.annotated for e in ex), "unannotated": sum(not e.annotated for e in ex)}

    def add_batch(self, images: np.ndarray, annotation: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                  probs: np.ndarray, has_gaze: np.ndarray, has_boxes: np.ndarray,
                  patients: Optional[Sequence[str]] = None) -> None:
        """Compute saliency for the batch's eligible images and record their agreement."""
        positive = (labels > 0.5) & (mask > 0.5)
        targets: Dict[int, List[int]] = {}
        for i in range(len(images)):
            annotated = bool(has_gaze[i] or has_boxes[i])
            if annotated and positive[i].any() and (self.max_saliency is None or self._n < self.max_saliency):
                j = int(np.argmax(np.where(positive[i], probs[i], -np.inf)))
                targets.setdefault(j, []).append(i)
                self._n += 1
            elif len(self._filler) < self.n_examples and not annotated:
                j = int(np.argmax(probs[i]))
                targets.setdefault(j, []).append(i)
        for j, rows in targets.items():
            maps = {m: resize_maps(np.asarray(self.adapter.saliency(images[rows], j, method=m), np.float64),
                                   self.size) for m in self.methods}
            for n, r in enumerate(rows):
                gaze = annotation[r, :, :, 0] if has_gaze[r] else None
                boxes = annotation[r, :, :, 1] if has_boxes[r] else None
                mine = {m: v[n] for m, v in maps.items()}
                ex = SaliencyExample(image=images[r, :, :, 0], saliency=mine[self.methods[0]], gaze=gaze,
                                     boxes=boxes, finding=self.findings[j], probability=float(probs[r, j]),
                                     label=float(labels[r, j]) if mask[r, j] > 0.5 else None,
                                     annotated=bool(has_gaze[r] or has_boxes[r]), maps=mine)
                if not ex.annotated:
                    self._filler.append(ex)
                    continue
                if len(self._annotated) < self.n_examples:
                    self._annotated.append(ex)
                patient = str(patients[r]) if patients is not None else f"image{self._n}-{r}"
                for m, v in mine.items():
                    for rec in agreement_records(v, gaze, boxes, self.findings[j], self.gaze_level, self.top_k):
                        self.agreement.append({**rec, "method": m, "patient": patient})


def agreement_records(saliency: np.ndarray, gaze: Optional[np.ndarray], boxes: Optional[np.ndarray],
                      finding: str, gaze_level: float = 0.5, top_k: float = 0.1) -> List[Dict[str, object]]:
    """One record per annotation kind present: pointing-game hit and top-k overlap of one map."""
    out = []
    for kind, region in (("boxes", None if boxes is None else boxes > 0.5),
                         ("gaze", None if gaze is None else M.annotation_region(gaze, None, gaze_level))):
        if region is None or not region.any():
            continue
        out.append({"type": kind, "finding": finding, "hit": M.pointing_game_hit(saliency, region),
                    **M.top_k_overlap(saliency, region, top_k)})
    return out


def agreement_summary(records: List[Dict[str, object]], k: float, n_resamples: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> Dict[str, object]:
    """Per method and annotation kind: hit rate and top-k precision / IoU with intervals, and chance.

    Intervals: Wilson for the pointing-game hit rate (a proportion of images), patient-level
    bootstrap for the mean top-k share. ``by_method`` holds every method; the top-level ``boxes`` /
    ``gaze`` entries repeat the first (primary) method's.
    """
    def agg(rs):
        if not rs:
            return {"n": 0, "n_patients": 0, "hits": 0, "pointing_hit_rate": None, "hit_ci_low": None,
                    "hit_ci_high": None, "topk_precision": None, "topk_ci_low": None, "topk_ci_high": None,
                    "topk_iou": None, "topk_chance": None}
        hits = int(sum(bool(r["hit"]) for r in rs))
        lo, hi = M.wilson_interval(hits, len(rs), alpha)
        prec = [float(r["precision"]) for r in rs]
        groups = [str(r.get("patient", i)) for i, r in enumerate(rs)]
        plo, phi = M.weighted_mean_ci(prec, groups, n_resamples, seed, alpha)
        return {"n": len(rs), "n_patients": len(set(groups)), "hits": hits,
                "pointing_hit_rate": hits / len(rs), "hit_ci_low": lo, "hit_ci_high": hi,
                "topk_precision": float(np.mean(prec)), "topk_ci_low": plo, "topk_ci_high": phi,
                "topk_iou": float(np.mean([r["iou"] for r in rs])),
                "topk_chance": float(np.mean([r["chance"] for r in rs]))}

    methods: List[str] = []
    for r in records:
        m = str(r.get("method", "gradcam"))
        if m not in methods:
            methods.append(m)
    by_method: Dict[str, object] = {}
    for m in methods or ["gradcam"]:
        mine = [r for r in records if str(r.get("method", "gradcam")) == m]
        entry: Dict[str, object] = {}
        for kind in ANNOTATION_KINDS:
            rs = [r for r in mine if r["type"] == kind]
            entry[kind] = agg(rs)
            entry[kind]["per_finding"] = {f: agg([r for r in rs if r["finding"] == f])
                                          for f in sorted({r["finding"] for r in rs})}
        by_method[m] = entry
    primary = next(iter(by_method.values()))
    return {"k": k, "methods": list(by_method), "by_method": by_method, **primary}
