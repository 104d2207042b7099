"""Score images ONCE with the model, outside the strategies (which are then pure numpy).

- :func:`score_features`: probabilities and uncertainty over latent samples, and the prior's
  attention-pooled embedding, from backbone feature maps (the benchmark scores cached features).
- :func:`posterior_shift`: KL(q(z|x,a) || p(z|x)) per annotated image, how far its annotation moves
  the model's posterior away from its image-only prior (what the ``shift`` strategy learns from).
- :func:`score_images` / :func:`annotated_scores`: the same from images ``[B, S, S, 1]`` in [0, 1].
- :func:`suggest_boxes`: a box around the Grad-CAM peak of a finding, in original pixels (the
  pre-annotation a radiologist corrects).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cxr_tfp.annotate.strategies.base import Scores

BATCH = 64
BOX_LEVEL = 0.5      # the suggested box covers the Grad-CAM region above this share of its peak
FLAT_SPREAD = 0.05   # a map whose 99th-percentile-to-median spread is below this is "flat": no box
MAX_BOX_AREA = 0.5   # a region over half the image points nowhere: no box (a radiologist would delete it)


def _batches(n: int, batch: int = BATCH):
    for i in range(0, n, batch):
        yield slice(i, min(n, i + batch))


def _feature_fn(model):
    import tensorflow as tf

    cache = model.__dict__.setdefault("_annotate_fns", {})
    if "score" not in cache:
        @tf.function(reduce_retracing=True)
        def score(fmap):
            mean, std = model.predict_from_features(fmap)
            att = model.head.prior.pool.attention(fmap)
            return mean, std, tf.einsum("bhwk,bhw->bk", fmap, att)
        cache["score"] = score
    return cache["score"]


def score_features(model, fmaps: np.ndarray) -> Dict[str, np.ndarray]:
    """``{"probabilities", "uncertainty": [N, L], "embedding": [N, K]}`` from feature maps ``[N, h, w, K]``."""
    import tensorflow as tf

    fn = _feature_fn(model)
    out = {"probabilities": [], "uncertainty": [], "embedding": []}
    for s in _batches(len(fmaps)):
        m, u, e = fn(tf.constant(np.asarray(fmaps[s], np.float32)))
        out["probabilities"].append(m.numpy())
        out["uncertainty"].append(u.numpy())
        out["embedding"].append(e.numpy())
    L, K = len(model.findings), int(model.feature_dim)
    return {k: (np.concatenate(v, 0) if v else np.zeros((0, L if k != "embedding" else K), np.float32))
            for k, v in out.items()}


def posterior_shift(model, fmaps: np.ndarray, ann_grid: np.ndarray, has_gaze: np.ndarray,
                    has_boxes: np.ndarray) -> np.ndarray:
    """KL(q(z|x,a) || p(z|x)) in nats per image ``[N]`` (0 where the annotation is unusable), with the
    model's posterior as it stands: for a model that has not been through stage 2, zero its residual
    first (``model.init_posterior_from_prior()``, stage 2's starting point), as the requests command
    and the benchmark do."""
    import tensorflow as tf

    from cxr_tfp.model.latent_head import kl_diag_gaussians

    out = []
    for s in _batches(len(fmaps)):
        f = tf.constant(np.asarray(fmaps[s], np.float32))
        mu_p, lv_p = model.head.prior(f)
        mu, lv = model.posterior_or_prior(f, tf.constant(np.asarray(ann_grid[s], np.float32)),
                                          tf.constant(np.asarray(has_gaze[s], np.float32)),
                                          tf.constant(np.asarray(has_boxes[s], np.float32)), mu_p, lv_p)
        out.append(kl_diag_gaussians(mu, lv, mu_p, lv_p).numpy())
    return np.concatenate(out, 0) if out else np.zeros(0, np.float32)


def make_scores(model, candidate: Dict[str, np.ndarray], annotated: Optional[Dict[str, np.ndarray]] = None,
                shift: Optional[np.ndarray] = None) -> Scores:
    """A :class:`Scores` from :func:`score_features` outputs (candidates, and annotated images with their shift)."""
    kw = {}
    if annotated is not None and shift is not None:
        kw = dict(annotated_embedding=annotated["embedding"], annotated_probabilities=annotated["probabilities"],
                  annotated_uncertainty=annotated["uncertainty"], annotated_shift=np.asarray(shift))
    return Scores(model.findings, candidate["probabilities"], candidate["uncertainty"], candidate["embedding"], **kw)


def features_of(model, images: np.ndarray) -> np.ndarray:
    """Backbone feature maps ``[N, h, w, K]`` of images ``[N, S, S, 1]`` in [0, 1]."""
    import tensorflow as tf

    images = np.asarray(images, np.float32).reshape(-1, model.image_size, model.image_size, 1)
    cache = model.__dict__.setdefault("_annotate_fns", {})
    if "features" not in cache:
        cache["features"] = tf.function(lambda x: model.features(x, training=False), reduce_retracing=True)
    parts = [cache["features"](tf.constant(images[s])).numpy() for s in _batches(len(images))]
    if not parts:
        return np.zeros((0,) + tuple(model.grid_hw) + (model.feature_dim,), np.float32)
    return np.concatenate(parts, 0)


def score_images(model, images: np.ndarray) -> Dict[str, np.ndarray]:
    """:func:`score_features` from images ``[N, S, S, 1]`` in [0, 1]."""
    return score_features(model, features_of(model, images))


def annotated_scores(model, images: np.ndarray, annotation: np.ndarray, has_gaze: np.ndarray,
                     has_boxes: np.ndarray) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Scores and posterior shift of annotated images (annotation ``[N, S, S, 2]``: gaze, box mask)."""
    import tensorflow as tf

    fmaps = features_of(model, images)
    grid = np.concatenate([model.annotation_grid(tf.constant(np.asarray(annotation[s], np.float32))).numpy()
                           for s in _batches(len(annotation))], 0) if len(annotation) else np.zeros(
        (0,) + tuple(model.grid_hw) + (2,), np.float32)
    return score_features(model, fmaps), posterior_shift(model, fmaps, grid, has_gaze, has_boxes)


def box_from_map(heat: np.ndarray, level: float = BOX_LEVEL) -> Optional[Tuple[int, int, int, int]]:
    """``(x, y, w, h)`` in map pixels of the connected region above ``level`` x peak that holds the
    peak, or None when the map is flat (nothing stands out) or that region covers over half the map."""
    from scipy import ndimage

    heat = np.asarray(heat, np.float64)
    if heat.size == 0 or not np.isfinite(heat).all():
        return None
    peak = heat.max()
    if peak <= 0 or np.percentile(heat, 99) - np.median(heat) < FLAT_SPREAD * peak:
        return None
    labels, _ = ndimage.label(heat >= level * peak)
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    ys, xs = np.nonzero(labels == labels[py, px])
    w, h = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    if w * h > MAX_BOX_AREA * heat.size:
        return None
    return int(xs.min()), int(ys.min()), w, h


def suggest_boxes(model, images: np.ndarray, finding_index: Sequence[int],
                  windows: Sequence[Optional[Tuple[float, float, float, float]]]):
    """One suggested box per image for its finding, ``(x, y, w, h)`` in ORIGINAL pixels, or None where
    the Grad-CAM map is flat or the image's source window is unknown. ``windows``: the source
    rectangle ``(x0, y0, x1, y1)`` that became the model's square input (``Geometry.window`` of the
    resize), so stretch, crop and pad all map back."""
    from cxr_tfp.model.saliency import grad_cam

    images = np.asarray(images, np.float32).reshape(-1, model.image_size, model.image_size, 1)
    out: List[Optional[Tuple[int, int, int, int]]] = [None] * len(images)
    S = model.image_size
    known = [i for i, w in enumerate(windows) if w is not None]
    for j in sorted({int(finding_index[i]) for i in known}):
        rows = [i for i in known if int(finding_index[i]) == j]
        for i, heat in zip(rows, grad_cam(model, images[rows], j)):
            box = box_from_map(heat)
            if box is None:
                continue
            x0, y0, x1, y1 = windows[i]
            sx, sy = (x1 - x0) / S, (y1 - y0) / S
            x, y, w, h = box
            out[i] = (int(round(x0 + x * sx)), int(round(y0 + y * sy)), max(1, int(round(w * sx))),
                      max(1, int(round(h * sy))))
    return out
