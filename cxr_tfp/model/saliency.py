"""Where the model looks: Grad-CAM, occlusion sensitivity and the prior's attention map.

All three return maps ``[B, S, S]`` in [0, 1] at the model's input size.

- :func:`grad_cam` (Selvaraju et al. 2017) on the backbone's last feature map, for one finding.
- :func:`occlusion` (Zeiler & Fergus 2014): how much the finding's probability drops when a patch of
  the image is replaced by the image's mean grey; no gradients, so it checks Grad-CAM independently.
- :func:`attention_map`: the prior's learned spatial attention over the feature cells (what the
  pooled feature vector reads; the same for every finding, no gradients).

Feature-map cells are placed where their receptive field is centred (:func:`feature_geometry`), not
where a naive resize of the ``h x w`` map assumes. Why: backbones with strided odd kernels (and
TensorFlow's asymmetric "same" padding) shift each cell's receptive-field centre by half an input
pixel per stride-2 layer; over the five of a ResNet-50 that is up to half a cell (15.5 px), enough to
move a Grad-CAM peak off the lesion. The test with a fixed-weight stand-in whose output depends only
on a known square (tests/model/test_saliency.py) caught it.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional, Tuple

import numpy as np

log = logging.getLogger("cxr_tfp.saliency")


# ------------------------------------------------------------------------------ feature geometry
@dataclasses.dataclass(frozen=True)
class Axis:
    """One spatial axis of a feature map: cell ``i`` is centred at input coordinate ``start + step * i``.

    Input coordinates are continuous: pixel ``k`` covers ``[k, k + 1)``, so its centre is ``k + 0.5``.
    """

    start: float
    step: float
    size: int


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the cells of a ``[h, w]`` feature map are centred in the input image."""

    y: Axis
    x: Axis

    @staticmethod
    def naive(h: int, w: int, size: int) -> "Geometry":
        """What a half-pixel-centre resize assumes: cells tile the image evenly."""
        return Geometry(Axis(size / h / 2, size / h, h), Axis(size / w / 2, size / w, w))


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window(a: Axis, k: int, s: int, d: int, padding: str) -> Axis:
    """Geometry after a sliding window (kernel ``k``, stride ``s``, dilation ``d``) along one axis."""
    extent = d * (k - 1) + 1
    if padding == "same":
        out = int(math.ceil(a.size / s))
        before = max((out - 1) * s + extent - a.size, 0) // 2   # TensorFlow pads the extra pixel after
    else:
        out = (a.size - extent) // s + 1
        before = 0
    return Axis(a.start + a.step * (d * (k - 1) / 2 - before), a.step * s, out)


def _apply(op, geoms):
    """Geometry of ``op``'s output given its inputs' geometries (spatial layers, else pass-through)."""
    import keras

    g = geoms[0]
    if isinstance(op, keras.Model) and hasattr(op, "_run_through_graph"):   # a nested functional model
        return op._run_through_graph([g], operation_fn=lambda o: (lambda *a, **k: _dispatch(o, a, k)))
    name = type(op).__name__
    if hasattr(op, "kernel_size") and hasattr(op, "strides") and "Conv" in name and "Transpose" not in name:
        k, s, d = _pair(op.kernel_size), _pair(op.strides), _pair(getattr(op, "dilation_rate", 1))
        pad = str(op.padding).lower()
        return Geometry(_window(g.y, k[0], s[0], d[0], pad), _window(g.x, k[1], s[1], d[1], pad))
    if hasattr(op, "pool_size") and hasattr(op, "strides") and "Global" not in name:
        k, s = _pair(op.pool_size), _pair(op.strides or op.pool_size)
        pad = str(op.padding).lower()
        return Geometry(_window(g.y, k[0], s[0], 1, pad), _window(g.x, k[1], s[1], 1, pad))
    if name == "ZeroPadding2D":
        (t, b), (l, r) = op.padding
        return Geometry(Axis(g.y.start - t * g.y.step, g.y.step, g.y.size + t + b),
                        Axis(g.x.start - l * g.x.step, g.x.step, g.x.size + l + r))
    if name == "Cropping2D":
        (t, b), (l, r) = op.cropping
        return Geometry(Axis(g.y.start + t * g.y.step, g.y.step, g.y.size - t - b),
                        Axis(g.x.start + l * g.x.step, g.x.step, g.x.size - l - r))
    if any(s in name for s in ("UpSampling", "Resizing", "Transpose", "Flatten", "Reshape", "Global")):
        raise NotImplementedError(f"layer {op.name!r} ({name}) changes the spatial layout in a way "
                                  "the geometry trace does not model")
    if len(geoms) > 1:   # Add / Concatenate of branches: cells read both; take the mean centre
        return Geometry(Axis(float(np.mean([q.y.start for q in geoms])), g.y.step, g.y.size),
                        Axis(float(np.mean([q.x.start for q in geoms])), g.x.step, g.x.size))
    return g


def _dispatch(op, args, kwargs):
    from keras import tree

    geoms = [a for a in tree.flatten((args, kwargs)) if isinstance(a, Geometry)]
    return _apply(op, geoms) if geoms else None


def feature_geometry(backbone, image_size: int) -> Geometry:
    """Receptive-field centres of the cells of ``backbone``'s output, traced through its layers.

    Convolutions and poolings move the centre by ``dilation * (kernel - 1) / 2 - pad_before`` input
    steps and multiply the step by the stride; explicit zero padding moves it back; merges of
    branches take the mean of their centres. Raises ``NotImplementedError`` for a layer that changes
    the layout in another way (resizing, transposed convolution).
    """
    a = Axis(0.5, 1.0, int(image_size))
    out = backbone._run_through_graph([Geometry(a, a)],
                                      operation_fn=lambda o: (lambda *args, **kw: _dispatch(o, args, kw)))
    out = out[0] if isinstance(out, (list, tuple)) else out
    h, w = (int(d) for d in backbone.output_shape[1:3])
    if not isinstance(out, Geometry) or (out.y.size, out.x.size) != (h, w):
        raise NotImplementedError(f"geometry trace of {backbone.name!r} gave {out}, expected a {h}x{w} grid")
    return out


def model_geometry(model) -> Geometry:
    """:func:`feature_geometry` of a :class:`~cxr_tfp.model.CxrModel`'s backbone (cached on the model).

    Falls back to the naive even tiling, with a warning, when the trace cannot follow a layer.
    """
    cache = model.__dict__.setdefault("_saliency_geometry", {})
    if "g" not in cache:
        try:
            cache["g"] = feature_geometry(model.backbone, model.image_size)
        except NotImplementedError as exc:
            log.warning("saliency maps use even cell placement: %s", exc)
            cache["g"] = Geometry.naive(*model.grid_hw, model.image_size)
    return cache["g"]


EDGE_FALLOFF = 0.1   # relative decrease per cell step beyond the outermost cell centres


def _interp_matrix(axis: Axis, size: int) -> np.ndarray:
    """``[size, cells]`` linear-interpolation weights from cell centres to pixel centres.

    Beyond the outermost centres the value is the outermost cell's, decreasing by ``EDGE_FALLOFF``
    per cell step. Why: a plain clamp makes a flat plateau from a border cell's centre to the image
    edge, so the map's maximum is a band reaching the edge rather than the point the cell reads
    (on a 2x2 grid, a quarter of the image); the small fall-off keeps the peak at the centre.
    """
    raw = ((np.arange(size) + 0.5) - axis.start) / axis.step
    u = np.clip(raw, 0.0, axis.size - 1)
    i0 = np.floor(u).astype(int)
    i1 = np.minimum(i0 + 1, axis.size - 1)
    frac = u - i0
    fade = 1.0 - EDGE_FALLOFF * np.abs(raw - u)
    m = np.zeros((size, axis.size), np.float64)
    m[np.arange(size), i0] += (1.0 - frac) * fade
    m[np.arange(size), i1] += frac * fade
    return m


def cells_to_image(maps: np.ndarray, geometry: Geometry, size: int) -> np.ndarray:
    """Cell maps ``[B, h, w]`` -> ``[B, size, size]``, each cell's value placed at its receptive-field
    centre and linearly interpolated between centres (slowly fading beyond the outermost ones)."""
    my, mx = _interp_matrix(geometry.y, size), _interp_matrix(geometry.x, size)
    return np.einsum("yh,bhw,xw->byx", my, np.asarray(maps, np.float64), mx)


def _normalise(maps: np.ndarray) -> np.ndarray:
    maps = np.maximum(np.asarray(maps, np.float64), 0.0)
    peak = maps.reshape(len(maps), -1).max(axis=1) if len(maps) else np.zeros(0)
    out = np.where(peak[:, None, None] > 0, maps / np.maximum(peak, 1e-12)[:, None, None], 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _check(model, finding_index: int) -> None:
    if not 0 <= finding_index < len(model.findings):
        raise IndexError(f"finding_index {finding_index} out of range for {len(model.findings)} findings")


def _images(model, images) -> np.ndarray:
    return np.asarray(images, np.float32).reshape(-1, model.image_size, model.image_size, 1)


# ------------------------------------------------------------------------------------ the methods
def grad_cam_cells(model, images: np.ndarray, finding_index: int) -> np.ndarray:
    """Grad-CAM on the feature grid ``[B, h, w]`` (ReLU applied, not normalised)."""
    import tensorflow as tf

    _check(model, finding_index)
    x = tf.constant(_images(model, images))
    with tf.GradientTape() as tape:
        fmap = model.features(x, training=False)
        tape.watch(fmap)
        mu, _ = model.head.prior(fmap)
        score = tf.sigmoid(model.head.classifier(mu))[:, finding_index]
    grads = tape.gradient(score, fmap)                                  # [B, h, w, K]
    weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()


def grad_cam(model, images: np.ndarray, finding_index: int, geometry: Optional[Geometry] = None) -> np.ndarray:
    """Class activation maps ``[B, S, S]`` in [0, 1] for ``model.findings[finding_index]``.

    The score is the finding's probability at the prior mean (deterministic); channel weights are
    the spatially averaged gradients of that score w.r.t. the backbone's last feature map. Cells are
    placed at their receptive-field centres (``geometry``, default :func:`model_geometry`).
    """
    cells = grad_cam_cells(model, images, finding_index)
    geometry = geometry or model_geometry(model)
    return _normalise(cells_to_image(cells, geometry, model.image_size))


def attention_map(model, images: np.ndarray, finding_index: Optional[int] = None,
                  geometry: Optional[Geometry] = None) -> np.ndarray:
    """The prior's spatial attention ``[B, S, S]`` in [0, 1] (peak = 1); the same for every finding."""
    import tensorflow as tf

    if finding_index is not None:
        _check(model, finding_index)
    fmap = model.features(tf.constant(_images(model, images)), training=False)
    att = model.head.prior.pool.attention(fmap).numpy()
    return _normalise(cells_to_image(att, geometry or model_geometry(model), model.image_size))


def _score_fn(model, finding_index: int):
    """One traced ``images -> probability of the finding at the prior mean`` per model and finding
    (cached on the model: a new tf.function per call would retrace every batch)."""
    import tensorflow as tf

    cache = model.__dict__.setdefault("_saliency_score_fns", {})
    if finding_index not in cache:
        size = model.image_size

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)])
        def score(batch):
            mu, _ = model.head.prior(model.features(batch, training=False))
            return tf.sigmoid(model.head.classifier(mu))[:, finding_index]

        cache[finding_index] = score
    return cache[finding_index]


def occlusion(model, images: np.ndarray, finding_index: int, patch: Optional[int] = None,
              stride: Optional[int] = None, batch_size: int = 64) -> np.ndarray:
    """Occlusion sensitivity ``[B, S, S]`` in [0, 1] for ``model.findings[finding_index]``.

    A ``patch`` x ``patch`` square (default S/4) slides with ``stride`` (default S/8) and is filled with
    the image's mean grey; each pixel gets the mean drop of the finding's probability (at the prior
    mean, as Grad-CAM) over the patches covering it. Increases are clipped to 0: a map of evidence for
    the finding, comparable with Grad-CAM.
    """
    import tensorflow as tf

    _check(model, finding_index)
    x = _images(model, images)
    size = model.image_size
    patch = int(patch or max(2, size // 4))
    stride = int(stride or max(1, size // 8))
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)   # cover the last rows / columns too
    windows = [(r, c) for r in starts for c in starts]

    score = _score_fn(model, finding_index)

    out = np.zeros((len(x), size, size), np.float64)
    for b, img in enumerate(x):
        base = float(score(tf.constant(img[None]))[0])
        fill = float(img.mean())
        drops = []
        for i in range(0, len(windows), batch_size):
            chunk = windows[i:i + batch_size]
            batch = np.repeat(img[None], len(chunk), axis=0)
            for k, (r, c) in enumerate(chunk):
                batch[k, r:r + patch, c:c + patch, :] = fill
            drops.append(base - score(tf.constant(batch)).numpy())
        drops = np.concatenate(drops)
        total = np.zeros((size, size))
        count = np.zeros((size, size))
        for d, (r, c) in zip(drops, windows):
            total[r:r + patch, c:c + patch] += d
            count[r:r + patch, c:c + patch] += 1
        out[b] = total / np.maximum(count, 1)
    return _normalise(out)


METHODS = {"gradcam": grad_cam, "occlusion": occlusion, "attention": attention_map}
