"""The one place of training/model config defaults: a dataclass, YAML loading, CLI overrides.

Every option is declared once in :class:`TrainConfig` with its default and its help text (field
metadata); YAML keys, ``--key value`` CLI flags and ``--help`` are all generated from that.
Unknown keys and impossible values raise ``ValueError`` naming the key and the value.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from cxr_tfp.model.backbones import BACKBONE_NAMES as BACKBONES
from cxr_tfp.model.backbones import PRECISIONS
ANNOTATIONS = ("gaze+boxes", "gaze", "boxes", "none")
FREEZE = ("backbone", "backbone+classifier", "none")
DISTRIBUTE = ("none", "mirrored", "multi_worker")


def _f(default: Any, help: str, choices: Optional[Sequence[Any]] = None, **kw):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta, **kw)


@dataclass
class TrainConfig:
    """Model + two-stage training options. Defaults follow the paper's setting (DenseNet-121, 224 px)."""

    # --- model
    backbone: str = _f("densenet121", "Backbone architecture (keras-hub backbones; 'tiny' is a 3-layer "
                       "CNN and 'densenet_tiny' a 2-2-2-2 DenseNet, both for tests).", BACKBONES)
    image_size: int = _f(224, "Square input size in pixels (images are resized on decode).")
    channels: int = _f(1, "Channels fed to the backbone: 1 (grey) or 3 (grey tiled to RGB, e.g. for "
                       "ImageNet weights).", (1, 3))
    weights: Optional[str] = _f(None, "Starting weights of the backbone: 'imagenet' (keras-hub preset, "
                                "downloaded once), a local keras-hub preset folder, a .weights.h5 file, or "
                                "torchxrayvision:FILE (a torchxrayvision DenseNet checkpoint, converted). "
                                "See docs/weights.md.")
    precision: str = _f("float32", "Training precision: float32, mixed_float16 (GPUs; loss scaling) or "
                        "mixed_bfloat16 (GPUs/TPUs, CPUs with bfloat16 units). The backbone computes in "
                        "16 bits; the TFP head, the KL and the loss stay float32.", PRECISIONS)
    findings: Union[str, List[str]] = _f("nih", "Predicted findings: a vocabulary name (nih, mimic, "
                                         "synthetic, all) or a list / comma-separated finding names.")
    latent_dim: int = _f(32, "Size of the latent variable z.")
    hidden_dim: int = _f(128, "Hidden width of the prior / posterior networks.")
    attention_hidden: int = _f(0, "Units of the prior's attention scorer: 0 = a linear 1x1 scorer of the "
                               "features; N > 0 = a 3x3 conv of N units over the features and their grid "
                               "coordinates (sees context and position; see docs/model.md for measurements).")
    # --- loss
    beta: float = _f(1.0, "Weight of KL(q(z|x,a) || p(z|x)) in the stage-2 loss.")
    kl_warmup_epochs: int = _f(2, "Stage-2 epochs over which beta ramps linearly from beta/N to beta "
                               "(0 = no warm-up).")
    prior_kl: float = _f(0.01, "Stage-1 weight of KL(p(z|x) || N(0, I)), keeping the prior's spread "
                         "(uncertainty) meaningful; 0 disables it.")
    stage2_prior_bce: float = _f(1.0, "Stage-2 weight of the BCE on prior samples z ~ p(z|x) (hybrid CVAE "
                                 "objective: keeps the test-time prior path trained on labels); 0 = pure ELBO.")
    posterior_attention: bool = _f(False, "Let the posterior also pool the image with its own learned "
                                   "attention. Off by default: it can then ignore the annotation, and stage 2 "
                                   "raised AUROC as much with random annotations as with real ones.")
    pos_weight: bool = _f(False, "Weight positive labels by neg/pos counts of the training split "
                          "(class imbalance).")
    # --- optimisation
    stage1_lr: float = _f(1e-3, "Adam learning rate in stage 1 (backbone + prior + classifier).")
    stage1_epochs: int = _f(10, "Epochs of stage 1 (all globally labelled images).")
    stage2_lr: float = _f(1e-3, "Adam learning rate in stage 2 (annotated subset).")
    lr_schedule: str = _f("constant", "Learning rate over each stage: 'constant', or 'cosine' (decays from "
                          "the stage's rate to 0 over its epochs; on the synthetic annotation-gain benchmark "
                          "it measured worse for stage 2, see docs/model.md).", ("constant", "cosine"))
    stage2_epochs: int = _f(10, "Epochs of stage 2 (0 skips it).")
    batch_size: int = _f(32, "Global batch size (split over replicas under a distribute strategy).")
    num_samples: int = _f(20, "Latent samples S drawn from the prior at prediction: mean = probability, "
                          "std = uncertainty.")
    train_samples: int = _f(1, "Latent samples per example in the training loss.")
    seed: int = _f(0, "Seed for initialisation, shuffling, latent noise and prediction samples.")
    deterministic: bool = _f(False, "Turn on TensorFlow op determinism (for the whole process): with a fixed "
                             "seed, a rerun gives the same weights and metrics. Some ops get slower.")
    # --- stage 2 / ablations
    freeze: str = _f("backbone", "What stage 2 freezes: 'backbone' (paper), 'backbone+classifier', or "
                     "'none' (ablation: no freezing; disables feature caching).", FREEZE)
    annotation: str = _f("gaze+boxes", "Expert annotation seen by the posterior in stage 2 ('none' = "
                         "posterior equals prior: ablation).", ANNOTATIONS)
    cache_features: bool = _f(True, "Stage 2: compute frozen-backbone features once and train on them "
                              "(same result as recomputing, much faster).")
    augment: bool = _f(False, "Stage-1 augmentation (small rotation / translation / zoom applied to image "
                       "and annotation together). Off by default: the interpolation smooths pixel noise and "
                       "fine texture, a train/eval shift that measured worse on the 64 px synthetic set.")
    shuffle: bool = _f(True, "Shuffle training examples each epoch.")
    # --- infrastructure
    distribute: str = _f("none", "tf.distribute strategy: none, mirrored (local GPUs / devices), "
                         "multi_worker (MultiWorkerMirroredStrategy via TF_CONFIG).", DISTRIBUTE)
    verbose: int = _f(1, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.", (0, 1, 2))

    # ------------------------------------------------------------------ helpers
    def __post_init__(self) -> None:
        self.validate()

    @property
    def finding_names(self) -> Tuple[str, ...]:
        """The resolved predicted vocabulary (harmonised names)."""
        from cxr_tfp.labels import resolve_vocabulary

        return resolve_vocabulary(self.findings)

    def validate(self) -> None:
        """Raise ValueError naming the first impossible value."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            v = getattr(self, f.name)
            if choices is not None and v not in choices:
                raise ValueError(f"config: {f.name}={v!r} is not one of {list(choices)}")
        positive = ("image_size", "latent_dim", "hidden_dim", "batch_size", "num_samples",
                    "train_samples", "stage1_epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name}={getattr(self, name)!r} must be >= 1")
        for name in ("stage2_epochs", "kl_warmup_epochs", "attention_hidden"):
            if getattr(self, name) < 0:
                raise ValueError(f"config: {name}={getattr(self, name)!r} must be >= 0")
        for name in ("stage1_lr", "stage2_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"config: {name}={getattr(self, name)!r} must be > 0")
        for name in ("beta", "prior_kl", "stage2_prior_bce"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"config: {name}={getattr(self, name)!r} must be >= 0")
        if self.image_size < 16:
            raise ValueError(f"config: image_size={self.image_size} is too small (minimum 16)")
        try:
            names = self.finding_names
        except (KeyError, ValueError) as exc:
            raise ValueError(f"config: findings={self.findings!r}: {exc}") from None
        if not names:
            raise ValueError(f"config: findings={self.findings!r} resolves to no findings")

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (YAML/JSON-serialisable)."""
        d = dataclasses.asdict(self)
        if isinstance(d["findings"], tuple):
            d["findings"] = list(d["findings"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping; raises ValueError naming an unknown key or a bad value/type."""
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise ValueError(f"config must be a mapping, got {type(d).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ValueError(f"config: unknown key {key!r}; known keys: {', '.join(known)}")
            kwargs[name] = _coerce(name, value, cls._default_of(known[name]))
        return cls(**kwargs)

    @staticmethod
    def _default_of(f: dataclasses.Field) -> Any:
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory()  # type: ignore[misc]


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Coerce YAML / CLI values to the field's type, raising ValueError naming the key."""
    if name == "findings":
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        if isinstance(value, str):
            return value
        raise ValueError(f"config: findings={value!r} must be a vocabulary name or a list of findings")
    if name == "weights":
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        if not isinstance(value, str):
            raise ValueError(f"config: weights={value!r} must be a file path")
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"config: {name}={value!r} must be a boolean")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ValueError(f"config: {name}={value!r} must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"config: {name}={value!r} must be an integer")
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ValueError(f"config: {name}={value!r} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config: {name}={value!r} must be a number") from None
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"config: {name}={value!r} must be a string")
        return value
    return value


def load_config(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides`` (e.g. CLI flags)."""
    import yaml

    merged: Dict[str, Any] = {}
    if path:
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh)
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {path} is not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(f"config file {path} must hold a mapping of key: value")
        merged.update(data)
    if overrides:
        merged.update({str(k).replace("-", "_"): v for k, v in overrides.items()})
    try:
        return TrainConfig.from_dict(merged)
    except ValueError as exc:
        where = f" (in {path} or overrides)" if path else ""
        raise ValueError(f"{exc}{where}") from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--key`` flag per config field (help text and defaults from the dataclass)."""
    group = parser.add_argument_group("config overrides (default in brackets; YAML keys are the same)")
    for f in dataclasses.fields(TrainConfig):
        default = TrainConfig._default_of(f)
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"]
        if choices:
            help_text += f" Choices: {', '.join(map(str, choices))}."
        help_text += f" [{default}]"
        flag = "--" + f.name.replace("_", "-")
        # Parse as strings: from_dict coerces and validates with one set of error messages.
        flags = [flag] + (["--" + f.name] if "_" in f.name else [])
        group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS,
                           metavar=f.name.upper(), help=help_text)


def overrides_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The config flags that were actually given on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for k, v in vars(args).items():
        if k in names:
            if k == "findings" and isinstance(v, str) and "," in v:
                v = [s.strip() for s in v.split(",") if s.strip()]
            out[k] = v
    return out
