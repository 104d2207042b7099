"""The Trainer's ``run_fn``: a thin adapter from TFX's FnArgs to ``cxr_tfp.train.train_model``.

The Trainer references it by import path (``pipeline.trainer_module.run_fn``); all options
arrive through ``custom_config["train_config"]`` (a full ``TrainConfig`` dict resolved when the
pipeline is built).
"""
from __future__ import annotations

TRAIN_CONFIG_KEY = "train_config"


def run_fn(fn_args) -> None:
    """Two-stage training on the train split, evaluation on eval, SavedModel to serving_model_dir."""
    from cxr_tfp.config import TrainConfig
    from cxr_tfp.train import train_model

    config = TrainConfig.from_dict(dict((fn_args.custom_config or {})[TRAIN_CONFIG_KEY]))
    train_model(config, fn_args.train_files, fn_args.eval_files, fn_args.model_run_dir,
                export_dir=fn_args.serving_model_dir)
