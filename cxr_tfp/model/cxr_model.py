"""The assembled model: backbone -> feature map -> TFP latent head, with a two-stage train step.

Stage 1 (``model.stage = 1``): backbone + prior + classifier, loss = masked BCE of p(y|z), z ~ p(z|x).
Stage 2 (``model.stage = 2``): lower layers frozen; z ~ q(z|x,a); loss = masked BCE +
beta_t * KL(q || p) + prior_bce * masked BCE of z ~ p (the hybrid objective of conditional VAEs,
Sohn et al. 2015: it keeps the image-only prior path, the one used at test time, trained on the
labels while the KL pulls it toward the annotation-informed posterior). Gradients of the KL flow
into the prior: that is the distillation of the
annotation into the image-only prior. The posterior is new in stage 2 and trains. The classifier
stays trainable by default (``freeze='backbone'``, as in the paper: only the backbone is frozen)
because it must learn to read the sharper, annotation-informed z; ``freeze='backbone+classifier'``
keeps it fixed. Stage-2 batches may carry cached feature maps (``x['features']``, ``x['ann_grid']``)
instead of images: the frozen backbone would compute exactly those.
Prediction uses only the image: S samples from the prior with fixed, seeded noise.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from cxr_tfp import features as F
from cxr_tfp import model_dir as MD
from cxr_tfp.labels import FINDINGS, resolve_vocabulary
from cxr_tfp.model.backbones import build_backbone
from cxr_tfp.weights import DEFAULT_SCALING
from cxr_tfp.model.latent_head import (LatentHead, annotation_to_grid, combine_annotation,
                                       kl_diag_gaussians)


def scale_loss_for_distribution(loss):
    """Divide by the replica count: the optimizer sums gradients over replicas."""
    n = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / float(n) if n > 1 else loss


def _replica_info():
    """``(replica_id, num_replicas)`` inside a tf.distribute replica context, else ``(0, 1)``."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return 0, 1
    return ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync


def _global_sum(x):
    """Sum of ``x`` over all replicas (identity without a strategy)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce("sum", x)


def prediction_noise(num_samples: int, latent_dim: int, seed: int) -> np.ndarray:
    """Fixed standard-normal noise ``[S, D]`` used for every prediction (deterministic for a seed)."""
    return np.random.default_rng(seed + 7919).standard_normal((num_samples, latent_dim)).astype(np.float32)


# Constructor argument -> TrainConfig field: TrainConfig is the one source of the defaults.
CONFIG_FIELDS = {"backbone": "backbone", "image_size": "image_size", "channels": "channels",
                 "findings": "finding_names", "latent_dim": "latent_dim", "hidden_dim": "hidden_dim",
                 "num_samples": "num_samples", "seed": "seed", "annotation": "annotation", "beta": "beta",
                 "train_samples": "train_samples", "prior_kl": "prior_kl", "prior_bce": "stage2_prior_bce",
                 "posterior_attention": "posterior_attention", "attention_hidden": "attention_hidden",
                 "precision": "precision", "weights": "weights"}


def model_arguments(config=None) -> Dict[str, Any]:
    """The constructor arguments a :class:`cxr_tfp.config.TrainConfig` gives (defaults: ``TrainConfig()``)."""
    from cxr_tfp.config import TrainConfig  # local: config imports model.backbones

    config = config if config is not None else TrainConfig()
    return {arg: getattr(config, field) for arg, field in CONFIG_FIELDS.items()}


@keras.saving.register_keras_serializable(package="cxr_tfp")
class CxrModel(keras.Model):
    """Multi-label CXR classifier with a latent-variable head (van Sonsbeek et al., WACV 2023).

    Shaped like a keras-hub task: a backbone (``cxr_tfp.model.backbones``) and this task model, which
    owns the head, its loss (the ELBO of :meth:`compute_losses`, with :meth:`compile`'s settings) and a
    config that round-trips through :meth:`get_config`. An argument left at ``None`` takes its
    :class:`~cxr_tfp.config.TrainConfig` default (:data:`CONFIG_FIELDS`); :func:`build_model` passes
    a whole TrainConfig.
    """

    def __init__(self, backbone: Optional[str] = None, image_size: Optional[int] = None,
                 channels: Optional[int] = None, findings: Sequence[str] | str | None = None,
                 latent_dim: Optional[int] = None, hidden_dim: Optional[int] = None,
                 num_samples: Optional[int] = None, seed: Optional[int] = None,
                 annotation: Optional[str] = None, beta: Optional[float] = None,
                 train_samples: Optional[int] = None, prior_kl: Optional[float] = None,
                 prior_bce: Optional[float] = None, posterior_attention: Optional[bool] = None,
                 attention_hidden: Optional[int] = None,
                 pos_weight: Optional[Sequence[float]] = None,
                 thresholds: Optional[Dict[str, float]] = None,
                 threshold_provenance: Optional[Dict[str, Dict[str, Any]]] = None,
                 weights: Optional[str] = None, precision: Optional[str] = None,
                 input_scale: Optional[float] = None, input_offset: Optional[float] = None,
                 weights_source: Optional[Dict[str, Any]] = None, **kwargs):
        super().__init__(**kwargs)
        given = dict(backbone=backbone, image_size=image_size, channels=channels, findings=findings,
                     latent_dim=latent_dim, hidden_dim=hidden_dim, num_samples=num_samples, seed=seed,
                     annotation=annotation, beta=beta, train_samples=train_samples, prior_kl=prior_kl,
                     prior_bce=prior_bce, posterior_attention=posterior_attention,
                     attention_hidden=attention_hidden, precision=precision)
        if any(v is None for v in given.values()):
            defaults = model_arguments()
            given = {k: defaults[k] if v is None else v for k, v in given.items()}
        (backbone, image_size, channels, findings, latent_dim, hidden_dim, num_samples, seed, annotation,
         beta, train_samples, prior_kl, prior_bce, posterior_attention, attention_hidden,
         precision) = given.values()
        self.backbone_name = backbone
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.findings = tuple(resolve_vocabulary(findings))
        self.latent_dim = int(latent_dim)
        self.hidden_dim = int(hidden_dim)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.annotation = annotation
        self.beta = float(beta)
        self.train_samples = int(train_samples)
        self.prior_kl = float(prior_kl)
        self.prior_bce = float(prior_bce)
        self.posterior_attention = bool(posterior_attention)
        self.attention_hidden = int(attention_hidden)
        self.pos_weight = None if pos_weight is None else [float(v) for v in pos_weight]
        self.thresholds = {f: 0.5 for f in self.findings}
        # How each threshold was set (cxr_tfp.metrics.threshold_provenance); {} until thresholds are chosen.
        self.threshold_provenance: Dict[str, Dict[str, Any]] = {}
        if thresholds:
            self.set_thresholds(thresholds, threshold_provenance)
        self.stage = 1
        self.precision = str(precision)
        self.backbone = build_backbone(backbone, self.image_size, self.channels, self.precision)
        # Starting weights are applied once, at build; a saved model keeps only their record and
        # input scale (reloading never re-reads or re-downloads them).
        self.weights_source = dict(weights_source) if weights_source else None
        scale, offset = DEFAULT_SCALING
        if weights:
            from cxr_tfp.weights import apply_weights

            info = apply_weights(self.backbone, backbone, weights)
            self.weights_source = info.record()
            scale, offset = info.input_scale, info.input_offset
        self.input_scale = float(scale if input_scale is None else input_scale)
        self.input_offset = float(offset if input_offset is None else input_offset)
        # The input scale the starting weights expect, a layer of the model (saved with it).
        self.scaling = keras.layers.Rescaling(self.input_scale, self.input_offset, dtype="float32",
                                              name="input_scaling")
        self.grid_hw = tuple(int(d) for d in self.backbone.output_shape[1:3])
        self.feature_dim = int(self.backbone.output_shape[-1])
        self.head = LatentHead(self.latent_dim, self.hidden_dim, len(self.findings),
                               posterior_attention=self.posterior_attention,
                               attention_hidden=self.attention_hidden, name="latent_head")
        self.head.build((None,) + self.grid_hw + (self.feature_dim,))
        # KL warm-up factor in [0, 1], set per epoch by the trainer (a variable: no retracing).
        self.kl_scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="kl_scale")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.bce_tracker = keras.metrics.Mean(name="bce")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.built = True

    # ------------------------------------------------------------------ forward pieces
    def features(self, images, training: bool = False):
        """Backbone feature map ``[B, h, w, K]`` (float32) of images ``[B, S, S, 1]`` in [0, 1]."""
        x = self.scaling(tf.cast(images, tf.float32))
        if self.channels == 3:
            x = tf.tile(x, [1, 1, 1, 3])
        # Under a mixed policy the backbone computes in float16/bfloat16; the TFP head, the KL and
        # the loss stay float32.
        return tf.cast(self.backbone(x, training=training), tf.float32)

    def annotation_grid(self, annotation):
        """The annotation ``[B, S, S, 2]`` area-downsampled to the feature grid ``[B, h, w, 2]``."""
        return annotation_to_grid(annotation, self.grid_hw)

    def predict_from_features(self, fmap, num_samples: Optional[int] = None):
        """Mean and std of p(y|z) over S fixed-noise samples z ~ p(z|x): two ``[B, L]`` tensors."""
        s = int(num_samples or self.num_samples)
        eps = tf.constant(prediction_noise(s, self.latent_dim, self.seed))
        mu, logvar = self.head.prior(fmap)
        z = mu[None] + tf.exp(0.5 * logvar)[None] * eps[:, None, :]           # [S, B, D]
        probs = tf.sigmoid(self.head.classifier(z))                           # [S, B, L]
        mean = tf.reduce_mean(probs, axis=0)
        std = tf.sqrt(tf.maximum(tf.reduce_mean(tf.square(probs - mean[None]), axis=0), 0.0))
        return mean, std

    def call(self, inputs, training: bool = False):
        images = inputs[F.X_IMAGE] if isinstance(inputs, dict) else inputs
        mean, std = self.predict_from_features(self.features(images, training=False))
        return {MD.PROBABILITIES: mean, MD.UNCERTAINTY: std}

    def predict_with_uncertainty(self, images: np.ndarray, num_samples: Optional[int] = None,
                                 batch_size: int = 64) -> Dict[str, np.ndarray]:
        """Per-finding probability (mean) and uncertainty (std) over prior samples, numpy ``[B, L]``."""
        images = np.asarray(images, np.float32)
        if images.ndim == 3:
            images = images[..., None]
        if images.shape[1:] != (self.image_size, self.image_size, 1):
            raise ValueError(f"images must be [B, {self.image_size}, {self.image_size}, 1], "
                             f"got {images.shape}")
        fn = self._predict_fn(int(num_samples or self.num_samples))
        means, stds = [], []
        for i in range(0, len(images), batch_size):
            m, s = fn(tf.constant(images[i:i + batch_size]))
            means.append(m.numpy())
            stds.append(s.numpy())
        L = len(self.findings)
        cat = (lambda xs: np.concatenate(xs, 0)) if means else (lambda xs: np.zeros((0, L), np.float32))
        return {MD.PROBABILITIES: cat(means), MD.UNCERTAINTY: cat(stds)}

    def _predict_fn(self, num_samples: int):
        cache = self.__dict__.setdefault("_predict_fns", {})
        if num_samples not in cache:
            @tf.function(input_signature=[tf.TensorSpec([None, self.image_size, self.image_size, 1],
                                                        tf.float32)], reduce_retracing=True)
            def fn(images):
                return self.predict_from_features(self.features(images, training=False), num_samples)
            cache[num_samples] = fn
        return cache[num_samples]

    @property
    def full_scatter(self) -> np.ndarray:
        """``[L, NUM_FINDINGS]`` one-hot matrix placing model outputs in their FINDINGS columns."""
        m = np.zeros((len(self.findings), len(FINDINGS)), np.float32)
        for i, name in enumerate(self.findings):
            m[i, FINDINGS.index(name)] = 1.0
        return m

    def set_thresholds(self, thresholds: Dict[str, float],
                       provenance: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        """Operating thresholds (chosen on eval data after training); unknown findings are refused.

        ``provenance``: how each was chosen (:func:`cxr_tfp.metrics.threshold_provenance`); it ships
        in the export's thresholds.json and signature so a fallback threshold is never shown as chosen.
        """
        unknown = sorted(set(thresholds) - set(self.findings))
        if unknown:
            raise ValueError(f"thresholds for findings the model does not predict: {unknown}")
        bad = {k: v for k, v in thresholds.items() if not 0.0 <= float(v) <= 1.0}
        if bad:
            raise ValueError(f"thresholds must lie in [0, 1], got {bad}")
        self.thresholds.update({k: float(v) for k, v in thresholds.items()})
        for k in thresholds:
            if provenance and k in provenance:
                self.threshold_provenance[k] = dict(provenance[k])
            else:
                self.threshold_provenance.pop(k, None)

    # ------------------------------------------------------------------ training
    def compile(self, optimizer="adam", *, pos_weight: Optional[Sequence[float]] = None, **kwargs):
        """Keras ``compile`` with the task's own loss (keras-hub shape: the task owns its loss defaults).

        The loss is the model's ELBO (:meth:`compute_losses`; its weights ``beta``, ``prior_kl``,
        ``prior_bce``, ``train_samples`` come from the constructor, i.e. from TrainConfig), so no
        ``loss=`` is taken. ``pos_weight`` (per-finding positive weights counted on the training
        split) is a loss setting known only once the data is scanned: it is given here and saved.
        """
        if "loss" in kwargs:
            raise ValueError("CxrModel computes its own loss (the ELBO); do not pass loss=")
        if pos_weight is not None:
            if len(pos_weight) != len(self.findings):
                raise ValueError(f"pos_weight has {len(pos_weight)} values for {len(self.findings)} findings")
            self.pos_weight = [float(v) for v in pos_weight]
        super().compile(optimizer=optimizer, **kwargs)

    def set_stage(self, stage: int, freeze: str = "backbone") -> None:
        """Set trainability for ``stage`` (1 or 2) and which layers stage 2 freezes."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.stage = stage
        self.backbone.trainable = True
        self.head.classifier.trainable = True
        self.head.prior.trainable = True
        # The posterior is unused in stage 1 (no annotation yet): keep it out of the optimizer.
        self.head.posterior.trainable = stage == 2
        if stage == 2:
            if freeze in ("backbone", "backbone+classifier"):
                self.backbone.trainable = False
            if freeze == "backbone+classifier":
                self.head.classifier.trainable = False
            elif freeze not in ("backbone", "none"):
                raise ValueError(f"unknown freeze option {freeze!r}")
        # Re-trace train_function with the new python-level stage (compile() also resets it).
        self.train_function = None

    def init_posterior_from_prior(self) -> None:
        """Start stage 2 with a zero posterior residual: q(z|x,a) = N(g(pool_annotation F)).

        Why: the residual network is new in stage 2; starting it at zero makes q the prior's own MLP
        applied to what the expert looked at, so the KL starts moderate (the stage-1 prior is sharp,
        and a randomly initialised posterior would start with a KL that swamps the BCE).
        """
        post = self.head.posterior
        post.gauss.out.kernel.assign(tf.zeros_like(post.gauss.out.kernel))
        post.gauss.out.bias.assign(tf.zeros_like(post.gauss.out.bias))

    @property
    def metrics(self):
        return [self.loss_tracker, self.bce_tracker, self.kl_tracker]

    def masked_bce(self, logits, labels, mask):
        """Mean BCE over known labels; logits ``[S, B, L]``, labels/mask ``[B, L]``."""
        labels = tf.broadcast_to(labels[None], tf.shape(logits))
        ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        if self.pos_weight is not None:
            pw = tf.constant(self.pos_weight, tf.float32)
            ce = ce * (labels * pw + (1.0 - labels))
        m = mask[None] * tf.ones_like(ce)
        # Normalise by the GLOBAL count of known labels, so that the replicas' gradients (summed by
        # the optimizer after scale_loss_for_distribution) equal single-device training exactly.
        _, n = _replica_info()
        total = _global_sum(tf.reduce_sum(m))
        return tf.reduce_sum(ce * m) / tf.maximum(total, 1.0) * float(n)

    def posterior_or_prior(self, fmap, ann_grid, has_gaze, has_boxes, mu_p, logvar_p):
        """``(mu, logvar)`` of q(z|x,a) for rows with a usable annotation (per ``self.annotation``),
        and the prior's ``(mu_p, logvar_p)`` for the others (q = p there, so their KL is 0)."""
        w, has = combine_annotation(ann_grid, has_gaze, has_boxes, self.annotation)
        mu_q, logvar_q = self.head.posterior_params(fmap, w)
        sel = has[:, None] > 0
        return tf.where(sel, mu_q, mu_p), tf.where(sel, logvar_q, logvar_p)

    def compute_losses(self, x, y, training: bool = True):
        """``(loss, bce, kl)`` for a batch; ``x`` carries images or cached features (stage 2)."""
        labels = tf.cast(y[F.Y_LABELS], tf.float32)
        mask = tf.cast(y[F.Y_MASK], tf.float32)
        if F.X_FEATURES in x:
            fmap = tf.cast(x[F.X_FEATURES], tf.float32)
            ann_grid = x.get(F.X_ANN_GRID)
        else:
            fmap = self.features(x[F.X_IMAGE], training=training and self.backbone.trainable)
            ann_grid = self.annotation_grid(x[F.X_ANNOTATION]) if self.stage == 2 else None
        mu_p, logvar_p = self.head.prior(fmap)
        b = tf.shape(mu_p)[0]
        it = tf.cast(self.optimizer.iterations, tf.int32) if self.optimizer is not None else 0
        # Noise for the GLOBAL batch, sliced to this replica's rows: with a distribute strategy
        # each example gets the same draw as in single-device training (stateless, seeded by step).
        rid, n = _replica_info()
        noise = tf.random.stateless_normal([self.train_samples, b * n, self.latent_dim],
                                           seed=tf.stack([tf.constant(self.seed, tf.int32), it]))
        noise = noise[:, rid * b:(rid + 1) * b]
        if self.stage == 1:
            mu, logvar = mu_p, logvar_p
            # Stage-1 regulariser KL(p(z|x) || N(0, I)): keeps the prior's spread meaningful
            # (BCE alone shrinks it to the floor, leaving no uncertainty and a sharp prior).
            kl = kl_diag_gaussians(mu_p, logvar_p, tf.zeros_like(mu_p), tf.zeros_like(logvar_p))
        else:
            mu, logvar = self.posterior_or_prior(fmap, ann_grid, x[F.X_HAS_GAZE], x[F.X_HAS_BOXES], mu_p, logvar_p)
            kl = kl_diag_gaussians(mu, logvar, mu_p, logvar_p)
        z = mu[None] + tf.exp(0.5 * logvar)[None] * noise
        bce = self.masked_bce(self.head.classifier(z), labels, mask)
        kl_mean = tf.reduce_mean(kl)
        if self.stage == 1:
            return bce + self.prior_kl * kl_mean, bce, kl_mean
        loss = bce + self.beta * self.kl_scale * kl_mean
        if self.prior_bce > 0:
            z_p = mu_p[None] + tf.exp(0.5 * logvar_p)[None] * noise
            loss = loss + self.prior_bce * self.masked_bce(self.head.classifier(z_p), labels, mask)
        return loss, bce, kl_mean

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras hook run by ``fit`` before training under a distribute strategy.

        Keras 3 builds from the first distributed batch reduced with ``strategy.reduce``, which
        ``MultiWorkerMirroredStrategy`` refuses for nested (dict) batches (keras-team/keras#20329).
        Only the shapes matter there: hand Keras this worker's first replica batch instead.
        """
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and strategy is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(
                    lambda v: (strategy.experimental_local_results(v)[0]
                               if isinstance(v, tf.distribute.DistributedValues) else v), batch)
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _logs(self) -> Dict[str, Any]:
        """The step's logs. Across workers Keras 3 averages them with ``reduce(MEAN, axis=0)``,
        which needs an axis: give each value a leading axis of 1 there (the mean is a scalar again)."""
        out = {m.name: m.result() for m in self.metrics}
        strategy = tf.distribute.get_strategy()
        multi_worker = getattr(getattr(strategy, "extended", None), "_in_multi_worker_mode", None)
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and multi_worker and multi_worker():
            out = {k: tf.reshape(v, [1]) for k, v in out.items()}
        return out

    def train_step(self, data):
        x, y = data[0], data[1]
        with tf.GradientTape() as tape:
            loss, bce, kl = self.compute_losses(x, y, training=True)
            # Loss scaling under mixed_float16 (a LossScaleOptimizer; identity for other optimizers).
            scaled = self.optimizer.scale_loss(scale_loss_for_distribution(loss))
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        self.optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
        self.loss_tracker.update_state(loss)
        self.bce_tracker.update_state(bce)
        self.kl_tracker.update_state(kl)
        return self._logs()

    def test_step(self, data):
        x, y = data[0], data[1]
        loss, bce, kl = self.compute_losses(x, y, training=False)
        self.loss_tracker.update_state(loss)
        self.bce_tracker.update_state(bce)
        self.kl_tracker.update_state(kl)
        return self._logs()

    # ------------------------------------------------------------------ serialisation
    def get_config(self) -> Dict[str, Any]:
        return {
            "name": self.name, "backbone": self.backbone_name, "image_size": self.image_size,
            "channels": self.channels, "findings": list(self.findings), "latent_dim": self.latent_dim,
            "hidden_dim": self.hidden_dim, "num_samples": self.num_samples, "seed": self.seed,
            "annotation": self.annotation, "beta": self.beta, "train_samples": self.train_samples,
            "prior_kl": self.prior_kl, "prior_bce": self.prior_bce,
            "posterior_attention": self.posterior_attention, "attention_hidden": self.attention_hidden,
            "pos_weight": self.pos_weight, "thresholds": dict(self.thresholds),
            "threshold_provenance": {k: dict(v) for k, v in self.threshold_provenance.items()},
            "precision": self.precision, "input_scale": self.input_scale,
            "input_offset": self.input_offset, "weights_source": self.weights_source,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "CxrModel":
        return cls(**config)


def build_model(config) -> CxrModel:
    """Build the model described by a :class:`cxr_tfp.config.TrainConfig` (untrained)."""
    import keras as _k

    _k.utils.set_random_seed(int(config.seed))
    return CxrModel(**model_arguments(config), name="cxr_model")


def load_model(path: str) -> CxrModel:
    """Load a ``.keras`` model saved by :func:`cxr_tfp.train.train_model` (custom objects registered)."""
    import os

    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    model = keras.saving.load_model(path, compile=False)
    if not isinstance(model, CxrModel):
        raise ValueError(f"{path} does not hold a CxrModel (got {type(model).__name__})")
    return model
