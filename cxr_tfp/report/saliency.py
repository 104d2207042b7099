"""Saliency over an evaluated split: which images get maps, and how the maps agree with the experts.

:class:`SaliencyCollector` is fed one parsed batch at a time by :func:`cxr_tfp.evaluate.collect`. For
each annotated image with at least one known positive finding it asks the model adapter for a
saliency map of the positive finding the model rates highest (what the expert marked is evidence
of a finding that is present) and records the map's agreement with the box mask and with the gaze
heatmap (above ``gaze_level`` of its peak): the pointing game and the top-k share. A few images are
kept for the report's figure. :func:`agreement_summary` aggregates the records for metrics.json.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np

from cxr_tfp import metrics as M

ANNOTATION_KINDS = ("boxes", "gaze")


@dataclasses.dataclass
class SaliencyExample:
    """One image kept for the saliency figure (maps at the model's input size)."""

    image: np.ndarray
    saliency: np.ndarray
    gaze: Optional[np.ndarray]
    boxes: Optional[np.ndarray]
    finding: str
    probability: float
    label: Optional[float]     # None when unknown
    annotated: bool


def resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """Maps ``[B, h, w]`` resized to ``[B, size, size]`` (bilinear; unchanged when already that size)."""
    if maps.shape[1] == size and maps.shape[2] == size:
        return maps
    import tensorflow as tf

    return tf.image.resize(maps[..., None], [size, size]).numpy()[..., 0]


class SaliencyCollector:
    """Saliency maps and their agreement records over the batches of one split (see module doc)."""

    def __init__(self, adapter, findings: Sequence[str], size: int, *, max_saliency: Optional[int] = None,
                 n_examples: int = 6, gaze_level: float = 0.5, top_k: float = 0.1):
        self.adapter = adapter
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
        """Annotated examples first, then unannotated ones, at most ``n_examples``."""
        return (self._annotated + self._filler)[:self.n_examples]

    def add_batch(self, images: np.ndarray, annotation: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                  probs: np.ndarray, has_gaze: np.ndarray, has_boxes: np.ndarray) -> None:
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
            sal = resize_maps(np.asarray(self.adapter.saliency(images[rows], j), np.float64), self.size)
            for r, s in zip(rows, sal):
                gaze = annotation[r, :, :, 0] if has_gaze[r] else None
                boxes = annotation[r, :, :, 1] if has_boxes[r] else None
                ex = SaliencyExample(image=images[r, :, :, 0], saliency=s, gaze=gaze, boxes=boxes,
                                     finding=self.findings[j], probability=float(probs[r, j]),
                                     label=float(labels[r, j]) if mask[r, j] > 0.5 else None,
                                     annotated=bool(has_gaze[r] or has_boxes[r]))
                if not ex.annotated:
                    self._filler.append(ex)
                    continue
                if len(self._annotated) < self.n_examples:
                    self._annotated.append(ex)
                self.agreement.extend(agreement_records(s, gaze, boxes, self.findings[j], self.gaze_level,
                                                        self.top_k))


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


def agreement_summary(records: List[Dict[str, object]], k: float) -> Dict[str, object]:
    """Hit rate, top-k precision / IoU and chance per annotation kind, overall and per finding."""
    def agg(rs):
        if not rs:
            return {"n": 0, "hits": 0, "pointing_hit_rate": None, "topk_precision": None,
                    "topk_iou": None, "topk_chance": None}
        return {"n": len(rs), "hits": int(sum(r["hit"] for r in rs)),
                "pointing_hit_rate": float(np.mean([r["hit"] for r in rs])),
                "topk_precision": float(np.mean([r["precision"] for r in rs])),
                "topk_iou": float(np.mean([r["iou"] for r in rs])),
                "topk_chance": float(np.mean([r["chance"] for r in rs]))}

    out: Dict[str, object] = {"k": k}
    for kind in ANNOTATION_KINDS:
        rs = [r for r in records if r["type"] == kind]
        out[kind] = agg(rs)
        out[kind]["per_finding"] = {f: agg([r for r in rs if r["finding"] == f])
                                    for f in sorted({r["finding"] for r in rs})}
    return out
