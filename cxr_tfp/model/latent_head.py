"""The TFP latent-variable head: prior p(z|x), posterior q(z|x,a), classifier p(y|x,z).

Design (why): both networks read the backbone's spatial feature map F [B, h, w, K].
- The prior pools F with a learned spatial attention (softmax over the h*w cells), then maps the
  pooled vector to a diagonal Gaussian with an MLP g. Attention is what stage 2 can teach: "where to
  look".
- The posterior pools F with the expert's annotation (gaze heatmap and/or box mask) downsampled to
  the map's grid (area average, normalised to sum 1) and maps it with the SAME MLP g, plus a learned
  residual from the annotation-pooled features (zero at the start of stage 2):
  q(z|x,a) = N(g(pool_a F) + r(pool_a F)). Sharing g means KL(q || p) asks the prior's
  attention to pool what the expert looked at - a direct path for the distillation - and the
  posterior only needs F and the annotation on the grid, so stage 2 runs on cached feature maps.
  The posterior sees the image only where the expert looked (see :class:`PosteriorNet` for why its
  own learned attention is off by default).
- The classifier sees only z (a bottleneck), so whatever the KL term distils into the prior directly
  changes the prediction; the spread of z over samples gives the uncertainty.
Images without a usable annotation use the prior as posterior (q = p, KL = 0).
Everything is plain Keras 3 layers + ``tfp.distributions`` (``tfp.layers`` needs tf-keras).
"""
from __future__ import annotations

from typing import Tuple

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

LOGVAR_MIN, LOGVAR_MAX = -8.0, 4.0


def diag_gaussian(mu, logvar) -> "tfd.Distribution":
    """Diagonal Gaussian over the last axis (event dim = latent_dim)."""
    return tfd.Independent(tfd.Normal(loc=mu, scale=tf.exp(0.5 * logvar)), reinterpreted_batch_ndims=1)


def kl_diag_gaussians(mu_q, logvar_q, mu_p, logvar_p):
    """KL(q || p) per example ``[B]`` for diagonal Gaussians, via ``tfd.kl_divergence``."""
    return tfd.kl_divergence(diag_gaussian(mu_q, logvar_q), diag_gaussian(mu_p, logvar_p))


def annotation_to_grid(annotation, grid_hw: Tuple[int, int]):
    """Area-downsample the annotation ``[B, S, S, 2]`` (gaze, box) to the feature grid ``[B, h, w, 2]``."""
    return tf.image.resize(annotation, grid_hw, method="area")


def combine_annotation(ann_grid, has_gaze, has_boxes, mode: str):
    """Spatial pooling weights ``[B, h, w]`` (sum 1) from the annotation on the grid, and a ``[B]`` flag.

    ``mode`` selects what the posterior may see ('gaze+boxes', 'gaze', 'boxes', 'none'); each present
    map is normalised to sum 1 before the two are averaged, so gaze and boxes weigh equally.
    """
    eps = 1e-6
    gaze = ann_grid[..., 0]
    box = ann_grid[..., 1]
    gsum = tf.reduce_sum(gaze, axis=[1, 2])
    bsum = tf.reduce_sum(box, axis=[1, 2])
    use_g = tf.cast(has_gaze > 0, tf.float32) * tf.cast(gsum > eps, tf.float32)
    use_b = tf.cast(has_boxes > 0, tf.float32) * tf.cast(bsum > eps, tf.float32)
    if mode == "gaze":
        use_b = tf.zeros_like(use_b)
    elif mode == "boxes":
        use_g = tf.zeros_like(use_g)
    elif mode == "none":
        use_g = tf.zeros_like(use_g)
        use_b = tf.zeros_like(use_b)
    elif mode != "gaze+boxes":
        raise ValueError(f"unknown annotation mode {mode!r}")
    g = gaze / (gsum[:, None, None] + eps)
    b = box / (bsum[:, None, None] + eps)
    n = use_g + use_b
    w = (g * use_g[:, None, None] + b * use_b[:, None, None]) / tf.maximum(n, 1.0)[:, None, None]
    return w, tf.cast(n > 0, tf.float32)


@keras.saving.register_keras_serializable(package="cxr_tfp")
class AttentionPool(keras.layers.Layer):
    """Learned spatial attention pooling: logits per cell -> softmax over cells -> weighted sum.

    ``hidden=0``: the logits are a 1x1 conv of the features (a linear scorer). ``hidden>0``: a 3x3
    conv with ``hidden`` ReLU units over the features plus two coordinate channels, then a 1x1 conv.
    Why: a cell's own features cannot tell a lesion from a lesion-like pattern outside the lungs;
    the neighbourhood and the position can. Measured on the annotation-gain benchmark: better stage 1
    and a larger posterior lead over the prior after 60 + 100 epochs, but a worse stage 2 in short runs
    (see docs/model.md), so the default scorer stays linear.
    """

    def __init__(self, hidden: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.hidden = int(hidden)
        self.context = (keras.layers.Conv2D(self.hidden, 3, padding="same", activation="relu", name="context")
                        if self.hidden else None)
        self.score = keras.layers.Conv2D(1, 1, name="score")

    def build(self, input_shape):
        if self.context is not None:
            self.context.build(tuple(input_shape[:-1]) + (input_shape[-1] + 2,))
            self.score.build(tuple(input_shape[:-1]) + (self.hidden,))
        else:
            self.score.build(input_shape)
        self.built = True

    def attention(self, fmap):
        """Attention weights ``[B, h, w]`` (sum 1 per image)."""
        if self.context is not None:
            logits = self.score(self.context(tf.concat([fmap, grid_coordinates(fmap)], axis=-1)))[..., 0]
        else:
            logits = self.score(fmap)[..., 0]
        shape = tf.shape(logits)
        flat = tf.nn.softmax(tf.reshape(logits, [shape[0], -1]), axis=-1)
        return tf.reshape(flat, shape)

    def call(self, fmap):
        return weighted_pool(fmap, self.attention(fmap))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


def grid_coordinates(fmap):
    """``[B, h, w, 2]`` cell-centre coordinates (row, column) in [-1, 1] for a feature map."""
    shape = tf.shape(fmap)
    rows = tf.linspace(-1.0, 1.0, shape[1])
    cols = tf.linspace(-1.0, 1.0, shape[2])
    gy, gx = tf.meshgrid(rows, cols, indexing="ij")
    return tf.tile(tf.stack([gy, gx], axis=-1)[None], [shape[0], 1, 1, 1])


def weighted_pool(fmap, weights):
    """``sum_{hw} weights[b,h,w] * fmap[b,h,w,:]`` -> ``[B, K]``."""
    return tf.einsum("bhwk,bhw->bk", fmap, weights)


@keras.saving.register_keras_serializable(package="cxr_tfp")
class GaussianParams(keras.layers.Layer):
    """MLP from a pooled vector to ``(mu, logvar)`` of a diagonal Gaussian (logvar clipped)."""

    def __init__(self, latent_dim: int, hidden_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.hidden_dim = int(hidden_dim)
        self.hidden = keras.layers.Dense(self.hidden_dim, activation="relu", name="hidden")
        self.out = keras.layers.Dense(2 * self.latent_dim, name="out")

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.out.build((input_shape[0], self.hidden_dim))
        self.built = True

    def call(self, x):
        p = self.out(self.hidden(x))
        mu, logvar = tf.split(p, 2, axis=-1)
        return mu, tf.clip_by_value(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="cxr_tfp")
class PriorNet(keras.layers.Layer):
    """p(z|x): attention-pooled image features -> diagonal Gaussian."""

    def __init__(self, latent_dim: int, hidden_dim: int, attention_hidden: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.hidden_dim = int(hidden_dim)
        self.attention_hidden = int(attention_hidden)
        self.pool = AttentionPool(self.attention_hidden, name="attention")
        self.gauss = GaussianParams(latent_dim, hidden_dim, name="gaussian")

    def build(self, fmap_shape):
        self.pool.build(fmap_shape)
        self.gauss.build((fmap_shape[0], fmap_shape[-1]))
        self.built = True

    def call(self, fmap):
        return self.gauss(self.pool(fmap))

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "hidden_dim": self.hidden_dim,
                "attention_hidden": self.attention_hidden}


@keras.saving.register_keras_serializable(package="cxr_tfp")
class PosteriorNet(keras.layers.Layer):
    """The residual of q(z|x,a): features pooled by the expert's map -> ``(d_mu, d_logvar)``.

    ``use_attention=False`` (default): the posterior reads the image only where the expert looked.
    Why: with its own learned attention as a second input (``use_attention=True``) it can ignore
    the annotation and become a second image-only prior; stage 2 then raised held-out AUROC just as
    much with random (control) annotations as with real ones (a self-distillation effect, measured
    in ``benchmarks/bench_annotation_gain.py``), so the gain could not be credited to the experts.
    """

    def __init__(self, latent_dim: int, hidden_dim: int, use_attention: bool = False, attention_hidden: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.hidden_dim = int(hidden_dim)
        self.use_attention = bool(use_attention)
        self.attention_hidden = int(attention_hidden)
        self.pool = AttentionPool(self.attention_hidden, name="attention") if self.use_attention else None
        self.gauss = GaussianParams(latent_dim, hidden_dim, name="gaussian")

    def build(self, fmap_shape):
        if self.pool is not None:
            self.pool.build(fmap_shape)
        self.gauss.build((fmap_shape[0], (2 if self.use_attention else 1) * fmap_shape[-1]))
        self.built = True

    def call(self, fmap, ann_weights):
        pooled = weighted_pool(fmap, ann_weights)
        if self.pool is not None:
            pooled = tf.concat([self.pool(fmap), pooled], axis=-1)
        return self.gauss(pooled)

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "hidden_dim": self.hidden_dim,
                "use_attention": self.use_attention, "attention_hidden": self.attention_hidden}


@keras.saving.register_keras_serializable(package="cxr_tfp")
class LatentHead(keras.layers.Layer):
    """Prior, posterior and classifier on a backbone feature map (see module docstring)."""

    def __init__(self, latent_dim: int, hidden_dim: int, num_findings: int,
                 posterior_attention: bool = False, attention_hidden: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.hidden_dim = int(hidden_dim)
        self.num_findings = int(num_findings)
        self.posterior_attention = bool(posterior_attention)
        self.attention_hidden = int(attention_hidden)
        self.prior = PriorNet(latent_dim, hidden_dim, self.attention_hidden, name="prior")
        self.posterior = PosteriorNet(latent_dim, hidden_dim, use_attention=self.posterior_attention,
                                      attention_hidden=self.attention_hidden, name="posterior")
        self.classifier = keras.layers.Dense(self.num_findings, name="classifier")

    def build(self, fmap_shape):
        self.prior.build(fmap_shape)
        self.posterior.build(fmap_shape)
        self.classifier.build((None, self.latent_dim))
        self.built = True

    def posterior_params(self, fmap, ann_weights):
        """``(mu, logvar)`` of q(z|x,a): the prior's MLP on annotation-pooled features + a residual."""
        base_mu, base_logvar = self.prior.gauss(weighted_pool(fmap, ann_weights))
        d_mu, d_logvar = self.posterior(fmap, ann_weights)
        return base_mu + d_mu, tf.clip_by_value(base_logvar + d_logvar, LOGVAR_MIN, LOGVAR_MAX)

    def call(self, fmap):
        """Logits at the prior mean (a deterministic summary; sampling is done by the model)."""
        mu, _ = self.prior(fmap)
        return self.classifier(mu)

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "hidden_dim": self.hidden_dim,
                "num_findings": self.num_findings, "posterior_attention": self.posterior_attention,
                "attention_hidden": self.attention_hidden}
