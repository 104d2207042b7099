"""Two-stage training (``python -m cxr_tfp.train``): stage 1 global labels, stage 2 annotation distillation.

``train_model`` checks everything it can before training (config, record format, a non-empty
annotated subset), then runs stage 1 and stage 2 with a checkpoint after every epoch
(``tf.train.CheckpointManager``: model, optimizer and epoch counter in one atomic TF checkpoint), so a
killed run started again with the same ``out_dir`` resumes inside the stage it was in. Each stage ends with per-finding and macro AUROC on
the eval split in ``out_dir/metrics.json``; the final model is written as ``out_dir/model.keras`` and
exported as a SavedModel (``cxr_tfp.export``). Stage 2 trains on cached frozen-backbone features by
default. Training runs under the ``tf.distribute`` strategy named by ``config.distribute``; with
``multi_worker`` (``MultiWorkerMirroredStrategy``, cluster from ``TF_CONFIG``) every worker trains, and
only the chief writes ``out_dir`` (checkpoints, metrics, history, logs, model, export).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cxr_tfp import features as F
from cxr_tfp.config import TrainConfig, add_config_arguments, load_config, overrides_from_args
from cxr_tfp.input import FilePattern, list_files, make_dataset
from cxr_tfp.cli import cli_main
from cxr_tfp.weights import check_weights_spec

STATE_FILE = "state.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.jsonl"


# ---------------------------------------------------------------------------------------- checks
def validate_records(files: Sequence[str], compression: str = "GZIP") -> Dict[str, int]:
    """Check every shard before training; return ``{path: number of records}``.

    Every record of every file is framed and CRC-checked by TensorFlow's reader (no parsing, no image
    decoding: seconds for a full dataset), so a truncated or corrupt shard fails here, naming the
    file and the record, instead of hours into training. The first record of each file is also
    parsed against the feature spec (ValueError naming the file and the field).
    """
    import tensorflow as tf

    spec = F.feature_spec()
    counts: Dict[str, int] = {}
    for path in files:
        ds = tf.data.TFRecordDataset([path], compression_type=compression, buffer_size=1 << 20)
        try:
            counts[path] = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
        except (tf.errors.DataLossError, tf.errors.OpError) as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path}: truncated or corrupt {compression} TFRecord file ({first}); "
                             f"rebuild the records") from None
        try:
            first = next(iter(ds.take(1)), None)
        except (tf.errors.DataLossError, tf.errors.OpError) as exc:
            raise ValueError(f"{path}: cannot be read as a {compression} TFRecord file "
                             f"({type(exc).__name__})") from None
        if first is None:
            continue  # an empty shard is legal
        try:
            tf.io.parse_single_example(first, spec)
        except (tf.errors.InvalidArgumentError, ValueError):
            for key, fspec in spec.items():
                try:
                    tf.io.parse_single_example(first, {key: fspec})
                except (tf.errors.InvalidArgumentError, ValueError) as exc:
                    msg = str(exc).splitlines()[0][:200]
                    raise ValueError(f"{path}: record does not match the feature spec: field "
                                     f"{key!r} ({fspec}): {msg}") from None
            raise ValueError(f"{path}: record does not match the feature spec") from None
    return counts


def check_useful(findings: Sequence[str], train_scan: Dict[str, Any], n_eval: int, train_where: str,
                 eval_where: str) -> List[str]:
    """Refuse input that can only give a useless model; return warnings for weak but usable input."""
    if train_scan["num_examples"] == 0:
        raise ValueError(f"training files {train_where} hold no examples")
    if float(np.sum(train_scan["known"])) == 0:
        raise ValueError(f"training files {train_where}: none of the {train_scan['num_examples']} examples has "
                         f"a known label for {', '.join(findings)} (every label_mask is 0); build the records "
                         f"with a label table")
    if n_eval == 0:
        raise ValueError(f"eval split {eval_where} is empty: AUROC and the operating thresholds need eval "
                         f"examples (change --split-fractions or add patients)")
    unlabelled = [f for f, k in zip(findings, train_scan["known"]) if k == 0]
    missing = [f for f, p, k in zip(findings, train_scan["positives"], train_scan["known"]) if p == 0 and k > 0]
    out = []
    if unlabelled:
        out.append(f"no training example has a known label for {', '.join(unlabelled)}: "
                   f"{'it is' if len(unlabelled) == 1 else 'they are'} not learnt")
    if missing:
        out.append(f"no positive training example for {', '.join(missing)}: the model cannot learn "
                   f"{'it' if len(missing) == 1 else 'them'}")
    return out


def scan_split(files: Sequence[str], findings: Sequence[str]) -> Dict[str, Any]:
    """Counts over a split (labels, masks, annotation flags) without decoding any image."""
    import tensorflow as tf

    from cxr_tfp.labels import indices

    spec = F.feature_spec()
    keys = (F.LABELS, F.LABEL_MASK, F.HAS_GAZE, F.HAS_BOXES, F.HAS_ANNOTATION)
    small = {k: spec[k] for k in keys}
    cols = indices(findings)
    n = 0
    pos = np.zeros(len(cols))
    known = np.zeros(len(cols))
    gaze = boxes = annotated = 0
    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP").batch(512).map(
        lambda s: tf.io.parse_example(s, small))
    for b in ds:
        lab = b[F.LABELS].numpy()[:, cols]
        msk = b[F.LABEL_MASK].numpy()[:, cols]
        n += lab.shape[0]
        pos += (lab * msk).sum(0)
        known += msk.sum(0)
        gaze += int(b[F.HAS_GAZE].numpy().sum())
        boxes += int(b[F.HAS_BOXES].numpy().sum())
        annotated += int((b[F.HAS_ANNOTATION].numpy() > 0).sum())
    return {"num_examples": n, "positives": pos, "known": known, "has_gaze": gaze,
            "has_boxes": boxes, "annotated": annotated}


def stage2_skip_reason(cfg: TrainConfig, scan: Dict[str, Any], where: str) -> Optional[str]:
    """Why stage 2 is skipped (None when it runs): nothing in the training files is annotated.

    Stage 2 distils the annotation-aware posterior into the prior; without a single annotated
    example there is nothing to distil, and the stage-1 model is the result (not an error).
    """
    if cfg.stage2_epochs <= 0 or scan["annotated"] > 0:
        return None
    return (f"no annotated example (has_annotation=1) among the {scan['num_examples']} training "
            f"examples in {where}: nothing to distil, the model is the stage-1 model")


def check_stage2_subset(cfg: TrainConfig, scan: Dict[str, Any], where: str) -> None:
    """Raise ValueError when stage 2 would have nothing (usable) to train on."""
    if cfg.stage2_epochs == 0:
        return
    if scan["annotated"] == 0:
        raise ValueError(f"stage 2: no annotated examples (has_annotation=1) in the training files "
                         f"{where}; add gaze/box annotations or set stage2_epochs: 0")
    usable = {"gaze+boxes": scan["annotated"], "gaze": scan["has_gaze"], "boxes": scan["has_boxes"],
              "none": scan["annotated"]}[cfg.annotation]
    if usable == 0:
        raise ValueError(f"stage 2: annotation={cfg.annotation!r} but no training example carries that "
                         f"kind of annotation ({scan['has_gaze']} with gaze, {scan['has_boxes']} with "
                         f"boxes) in {where}")


# ---------------------------------------------------------------------------------------- strategy
def make_strategy(name: str):
    """The ``tf.distribute`` strategy for ``config.distribute``."""
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown distribute strategy {name!r}")


def worker_task() -> Tuple[str, int]:
    """``(task type, index)`` of this process from ``TF_CONFIG`` (``("chief", 0)`` without one)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task") or {}
    return str(task.get("type", "chief")), int(task.get("index", 0))


def is_chief() -> bool:
    """True for the process that writes outputs: the ``chief`` task, or worker 0 of a cluster without one."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    kind, index = worker_task()
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in (tf_config.get("cluster") or {})


def _distributable(ds, cfg: TrainConfig):
    """Shard by data (not by file) across workers: every worker walks the same global batches and
    takes its slice of each, so the result does not depend on the number of workers or of files
    (file sharding would give each worker different batches). The cost: each worker reads and
    parses the whole split."""
    if cfg.distribute != "multi_worker":
        return ds
    import tensorflow as tf

    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(opts)


# ---------------------------------------------------------------------------------------- data
def with_batch_count(ds, num_examples: Optional[int], batch_size: int):
    """Declare the number of batches the split scan counted (``num_examples`` None: ``ds`` as it is).

    Why: TFRecord and filtered datasets have unknown cardinality, so Keras prints ``1/Unknown`` for
    every epoch. The scan reads the same files (the cosine schedule's step count relies on it too);
    should they change under a running job, the epoch fails with "Input dataset was expected to
    contain N elements" instead of training on something else.
    """
    import tensorflow as tf

    if num_examples is None:
        return ds
    return ds.apply(tf.data.experimental.assert_cardinality(int(math.ceil(num_examples / batch_size))))


def stage1_dataset(cfg: TrainConfig, files: Sequence[str], num_examples: Optional[int] = None):
    """Shuffled, augmented batches of all training images: ``(x, y)`` (``num_examples``: the scan's count)."""
    import tensorflow as tf

    ds = make_dataset(files, cfg.image_size, cfg.finding_names, cfg.batch_size, shuffle=cfg.shuffle,
                      seed=cfg.seed)
    ds = with_batch_count(ds, num_examples, cfg.batch_size)
    if cfg.augment:
        from cxr_tfp.augment import make_augmenter

        aug = make_augmenter(cfg.seed)
        ds = ds.map(lambda x, y: (aug(x), y), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def stage2_image_dataset(cfg: TrainConfig, files: Sequence[str], shuffle: Optional[bool] = None,
                         num_examples: Optional[int] = None):
    """Annotated-subset batches with images (the frozen backbone is recomputed each step)."""
    ds = make_dataset(files, cfg.image_size, cfg.finding_names, cfg.batch_size,
                      shuffle=cfg.shuffle if shuffle is None else shuffle, seed=cfg.seed,
                      annotated_only=True)
    return with_batch_count(ds, num_examples, cfg.batch_size)


def cache_stage2_features(model, cfg: TrainConfig, files: Sequence[str],
                          total: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Frozen-backbone feature maps and grid annotations of the annotated subset (one pass);
    ``total`` (the annotated images, from the data scan) gives the progress bar its end."""
    import keras
    import tensorflow as tf

    size = cfg.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32),
                                  tf.TensorSpec([None, size, size, 2], tf.float32)])
    def compute(image, annotation):
        return model.features(image, training=False), model.annotation_grid(annotation)

    parts: Dict[str, List[np.ndarray]] = {k: [] for k in
                                          (F.X_FEATURES, F.X_ANN_GRID, F.X_HAS_GAZE, F.X_HAS_BOXES,
                                           F.Y_LABELS, F.Y_MASK)}
    if cfg.verbose:
        print(f"[train] stage2: caching backbone features of {total if total is not None else 'the'} "
              f"annotated image(s)", flush=True)
    bar = keras.utils.Progbar(total, unit_name="image", verbose=1 if cfg.verbose else 0)
    seen = 0
    for x, y in stage2_image_dataset(cfg, files, shuffle=False):
        fmap, grid = compute(x[F.X_IMAGE], x[F.X_ANNOTATION])
        parts[F.X_FEATURES].append(fmap.numpy())
        parts[F.X_ANN_GRID].append(grid.numpy())
        for k in (F.X_HAS_GAZE, F.X_HAS_BOXES):
            parts[k].append(x[k].numpy())
        parts[F.Y_LABELS].append(y[F.Y_LABELS].numpy())
        parts[F.Y_MASK].append(y[F.Y_MASK].numpy())
        seen += int(fmap.shape[0])
        bar.update(seen)
    if not parts[F.X_FEATURES]:
        raise ValueError("stage 2: the annotated subset is empty")
    return {k: np.concatenate(v, 0) for k, v in parts.items()}


def cached_dataset(cache: Dict[str, np.ndarray], cfg: TrainConfig):
    """Batches ``(x, y)`` over cached features, x = {features, ann_grid, has_gaze, has_boxes}."""
    import tensorflow as tf

    x = {k: cache[k] for k in (F.X_FEATURES, F.X_ANN_GRID, F.X_HAS_GAZE, F.X_HAS_BOXES)}
    y = {k: cache[k] for k in (F.Y_LABELS, F.Y_MASK)}
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if cfg.shuffle:
        ds = ds.shuffle(len(cache[F.Y_LABELS]), seed=cfg.seed, reshuffle_each_iteration=True)
    return ds.batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE)



def prepare_cached_stage2(model, cfg: TrainConfig) -> None:
    """Set a loaded stage-1 model up for repeated stage-2 runs (:func:`train_stage2_cached`).

    Why once: re-compiling for every run re-traces the train step (seconds each, more than the
    training itself on cached features). beta is applied through the KL-scale variable instead (the
    loss is ``bce + model.beta * kl_scale * kl`` with ``model.beta = 1``), so it changes without a
    retrace. Used by studies that run stage 2 several ways from one stage-1 model.
    """
    import keras

    model.beta = 1.0
    model.set_stage(2, cfg.freeze)
    model.compile(optimizer=keras.optimizers.Adam(cfg.stage2_lr))


def train_stage2_cached(model, stage1_weights: Sequence[np.ndarray], cache: Dict[str, np.ndarray],
                        cfg: TrainConfig, beta: Optional[float] = None) -> None:
    """Stage 2 from ``stage1_weights`` on cached features with a fresh optimizer state.

    ``model`` went through :func:`prepare_cached_stage2`; ``beta`` defaults to ``cfg.beta``. The KL
    warm-up is the trainer's (``cfg.kl_warmup_epochs``) times beta; no checkpoints (seconds per run).
    """
    import keras

    beta = cfg.beta if beta is None else float(beta)
    model.set_weights(stage1_weights)
    for v in model.optimizer.variables:   # a fresh Adam: zero moments and step count, same rate
        if not v.path.endswith("learning_rate"):
            v.assign(np.zeros(v.shape, v.dtype))
    model.init_posterior_from_prior()
    warmup = cfg.kl_warmup_epochs
    if warmup <= 1:
        # No ramp: all epochs in one fit() over the repeated, reshuffled data. Why: Keras' per-epoch
        # overhead exceeds a cached-feature epoch.
        model.kl_scale.assign(beta)
        model.fit(cached_dataset(cache, cfg).repeat(cfg.stage2_epochs), epochs=1, verbose=0, shuffle=False)
        return

    class Warmup(keras.callbacks.Callback):   # the trainer's KL warm-up (_callbacks) x beta
        def on_epoch_begin(self, epoch, logs=None):
            model.kl_scale.assign(beta * min(1.0, (epoch + 1) / warmup))

    model.fit(cached_dataset(cache, cfg), epochs=cfg.stage2_epochs, verbose=0, shuffle=False,
              callbacks=[Warmup()])


def learning_rate_for(cfg: TrainConfig, stage: int, scan: Dict[str, Any]):
    """The stage's learning rate: a float, or a cosine decay to 0 over the stage's optimizer steps.

    The schedule reads ``optimizer.iterations``, which the epoch checkpoints restore, so a resumed
    stage continues the same curve.
    """
    import keras

    lr = cfg.stage1_lr if stage == 1 else cfg.stage2_lr
    epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs
    if cfg.lr_schedule == "constant" or epochs == 0:
        return lr
    n = scan["num_examples"] if stage == 1 else scan["annotated"]
    steps = max(1, epochs * int(math.ceil(n / cfg.batch_size)))
    return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.0)


# ---------------------------------------------------------------------------------------- evaluation
def predict_split(model, cfg: TrainConfig, files: Sequence[str]) -> Tuple[np.ndarray, ...]:
    """``(probabilities, uncertainty, labels, mask)`` over a split, prior-only prediction."""
    fn = model._predict_fn(int(cfg.num_samples))
    P, U, Y, M = [], [], [], []
    for x, y in make_dataset(files, cfg.image_size, cfg.finding_names, max(cfg.batch_size, 64)):
        m, s = fn(x[F.X_IMAGE])
        P.append(m.numpy())
        U.append(s.numpy())
        Y.append(y[F.Y_LABELS].numpy())
        M.append(y[F.Y_MASK].numpy())
    L = len(cfg.finding_names)
    cat = lambda a: np.concatenate(a, 0) if a else np.zeros((0, L), np.float32)  # noqa: E731
    return cat(P), cat(U), cat(Y), cat(M)


def auroc_report(findings: Sequence[str], probs, labels, mask) -> Dict[str, Any]:
    """Per-finding AUROC (None where undefined) and their macro mean."""
    from cxr_tfp import metrics as M

    per = {f: M.auroc(labels[:, j], probs[:, j], mask[:, j]) for j, f in enumerate(findings)}
    defined = [v for v in per.values() if v is not None]
    return {"auroc": per, "macro_auroc": float(np.mean(defined)) if defined else None,
            "num_eval": int(len(labels))}


# ---------------------------------------------------------------------------------------- checkpoints
def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, default=_json_default)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _read_json(path: str, default: Any) -> Any:
    if not os.path.exists(path):
        return default
    with open(path) as fh:
        return json.load(fh)


class StageCheckpoint:
    """Epoch checkpoints of one training stage: model and optimizer variables plus the epoch counter.

    A ``tf.train.CheckpointManager`` writes TF checkpoints (the ``checkpoint`` index file is updated
    last, so a kill mid-write leaves the previous checkpoint in force). Under
    ``MultiWorkerMirroredStrategy`` every worker saves (TF's documented pattern), but only the chief
    into ``directory``; the others write to a throw-away folder. Every worker restores from the
    chief's ``directory``, so a restarted cluster resumes from one state. (Keras 3's
    ``BackupAndRestore`` has no multi-worker handling: every worker would write the same file.)
    """

    def __init__(self, model, directory: str, chief: bool, max_to_keep: int = 2):
        import tensorflow as tf

        self.model, self.directory, self.chief = model, directory, chief
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                              epochs_done=self.epochs_done)
        self._write_dir = directory if chief else None
        self.max_to_keep = max_to_keep

    def restore(self) -> int:
        """Restore the latest checkpoint of the stage, if any; return the number of epochs done."""
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(self.directory)
        if latest is None:
            return 0
        # Optimizer slots exist only after build: create them so that the restore fills them now
        # (Keras 3 variables are not restored lazily).
        self.model.optimizer.build(self.model.trainable_variables)
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            raise ValueError(f"checkpoint {latest} does not match the model/optimizer: "
                             f"{str(exc).splitlines()[0][:200]}") from None
        return int(self.epochs_done.numpy())

    def save(self, epochs_done: int) -> None:
        """Write the checkpoint after ``epochs_done`` epochs (non-chief workers: into a temp folder)."""
        import tensorflow as tf

        self.epochs_done.assign(epochs_done)
        directory = self._write_dir or tempfile.mkdtemp(prefix="cxr-tfp-worker-ckpt-")
        tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=self.max_to_keep).save(
            checkpoint_number=epochs_done)
        if not self.chief:
            shutil.rmtree(directory, ignore_errors=True)


def _callbacks(model, cfg: TrainConfig, stage: int, out_dir: str, ckpt: StageCheckpoint, chief: bool,
               extra: Sequence[Any]) -> List[Any]:
    """Stage bookkeeping (KL warm-up, epoch checkpoint, history line), TensorBoard, then ``extra``.

    The checkpoint is written before any ``extra`` callback runs, so an ``extra`` callback that
    stops the process at an epoch end (tests simulate a kill that way) loses nothing.
    """
    import keras

    warmup = cfg.kl_warmup_epochs if stage == 2 else 0

    class StageCallback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            model.kl_scale.assign(min(1.0, (epoch + 1) / warmup) if warmup > 0 else 1.0)
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self._t0   # training only, before the checkpoint write
            ckpt.save(epoch + 1)
            if not chief:
                return
            rec = {"stage": stage, "epoch": epoch, "seconds": seconds,
                   "kl_scale": float(model.kl_scale.numpy()),
                   **{k: float(v) for k, v in (logs or {}).items()}}
            with open(os.path.join(out_dir, HISTORY_FILE), "a") as fh:
                fh.write(json.dumps(rec) + "\n")

    out = [StageCallback()]
    if chief:
        out.append(keras.callbacks.TensorBoard(log_dir=os.path.join(out_dir, "logs", f"stage{stage}"),
                                               write_graph=False, update_freq="epoch"))
    return out + list(extra)


# ---------------------------------------------------------------------------------------- main entry
def train_model(config: TrainConfig, train_files: FilePattern, eval_files: FilePattern, out_dir: str,
                export_dir: Optional[str] = None, *, callbacks: Sequence[Any] = ()) -> Dict[str, Any]:
    """Run stage 1 then stage 2 (resuming from ``out_dir``), evaluate, save and export.

    ``callbacks``: extra Keras callbacks for both stages' ``fit`` (after the epoch checkpoint).
    Returns the metrics dict also written to ``out_dir/metrics.json``: ``stage1`` / ``stage2`` entries
    with per-finding ``auroc``, ``macro_auroc`` and ``num_eval``, plus ``thresholds`` and ``findings``.
    On a non-chief worker of a multi-worker cluster nothing is written (the chief writes).
    A second training into the same ``out_dir`` is refused while this one runs (:mod:`cxr_tfp.staging`).
    """
    if not is_chief():
        return _train_model(config, train_files, eval_files, out_dir, export_dir, callbacks=callbacks)
    from cxr_tfp.staging import OutputLock

    with OutputLock(out_dir, "training"):
        return _train_model(config, train_files, eval_files, out_dir, export_dir, callbacks=callbacks)


def _train_model(config: TrainConfig, train_files: FilePattern, eval_files: FilePattern, out_dir: str,
                 export_dir: Optional[str] = None, *, callbacks: Sequence[Any] = ()) -> Dict[str, Any]:
    import keras
    import tensorflow as tf

    from cxr_tfp.export import export_saved_model
    from cxr_tfp.model import build_model

    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    cfg = config
    cfg.validate()
    # MultiWorkerMirroredStrategy configures the collective ops of the TF runtime: it must exist
    # before the first TF op below runs.
    if cfg.deterministic:
        # Process-wide and one-way in TensorFlow; with the seeded init, shuffles and latent noise it makes
        # a rerun reproduce the weights and metrics exactly (tested on the smoke config).
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(cfg.distribute)
    chief = is_chief()
    findings = cfg.finding_names
    train = list_files(train_files)
    evals = list_files(eval_files)
    # --- everything that can be wrong is checked before any training starts
    counts = validate_records(train + evals)
    scan = scan_split(train, findings)
    for warning in check_useful(findings, scan, sum(counts[f] for f in evals), str(train_files),
                                str(eval_files)):
        print(f"[train] warning: {warning}", file=sys.stderr)
    skip2 = stage2_skip_reason(cfg, scan, str(train_files))
    if skip2 is None:
        check_stage2_subset(cfg, scan, str(train_files))
    check_weights_spec(cfg.weights)

    if chief:
        os.makedirs(out_dir, exist_ok=True)
    save_json = _write_json if chief else (lambda path, obj: None)
    export_dir = export_dir or os.path.join(out_dir, "saved_model")
    state = _read_json(os.path.join(out_dir, STATE_FILE), {})
    comparable = lambda d: {k: v for k, v in (d or {}).items() if k != "verbose"}  # noqa: E731
    # A run refused before it trained anything (no checkpoint, no finished stage) holds nothing to
    # resume: its state does not bind the next run into the same folder.
    trained = state.get("stage1_done") or state.get("stage2_done") or any(
        files for _, _, files in os.walk(os.path.join(out_dir, "checkpoints")))
    if trained and state.get("config") is not None and \
            comparable(state["config"]) != comparable(cfg.to_dict()):
        changed = sorted(k for k in comparable(cfg.to_dict())
                         if comparable(state["config"]).get(k) != getattr(cfg, k))
        raise ValueError(f"{out_dir} holds a run with a different config (changed: {', '.join(changed)}); "
                         f"use a new --out directory to start over")
    state["config"] = cfg.to_dict()
    save_json(os.path.join(out_dir, STATE_FILE), state)
    metrics = _read_json(os.path.join(out_dir, METRICS_FILE), {})
    metrics["findings"] = list(findings)
    metrics["train_examples"] = scan["num_examples"]
    metrics["annotated_examples"] = scan["annotated"]

    with strategy.scope():
        model = build_model(cfg)
    pos_weight = None
    if cfg.pos_weight:   # a loss setting known only from the split scan: given to compile()
        neg = scan["known"] - scan["positives"]
        pos_weight = [float(np.clip(n / max(p, 1.0), 1.0, 100.0)) for n, p in zip(neg, scan["positives"])]
    metrics["weights"] = model.weights_source   # what the backbone started from (None: random init)

    def run_stage(stage: int, dataset_fn, on_fresh_start=None) -> None:
        key = f"stage{stage}"
        epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs
        ckpt_dir = os.path.join(out_dir, "checkpoints", key)
        with strategy.scope():
            model.set_stage(stage, cfg.freeze)
            optimizer = keras.optimizers.Adam(learning_rate_for(cfg, stage, scan))
            if cfg.precision == "mixed_float16":   # float16 gradients underflow without loss scaling
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            model.compile(optimizer=optimizer, pos_weight=pos_weight)
            ckpt = StageCheckpoint(model, ckpt_dir, chief)
            done = ckpt.restore()
            if done == 0 and on_fresh_start is not None:
                on_fresh_start()
        if done < epochs:
            print(f"[train] {key}: epochs {done + 1}..{epochs} "
                  f"({'resumed' if done else 'from the start'})", file=sys.stderr)
            t0 = time.perf_counter()
            model.fit(_distributable(dataset_fn(), cfg), epochs=epochs, initial_epoch=done,
                      verbose=cfg.verbose, shuffle=False,
                      callbacks=_callbacks(model, cfg, stage, out_dir, ckpt, chief, callbacks))
            train_seconds = time.perf_counter() - t0
        else:
            train_seconds = 0.0
        probs, _, labels, mask = predict_split(model, cfg, evals)
        rep = auroc_report(findings, probs, labels, mask)
        rep["epochs"] = epochs
        rep["train_seconds_this_run"] = round(train_seconds, 3)
        metrics[key] = rep
        if chief:
            model.save_weights(os.path.join(out_dir, f"{key}.weights.h5"))
        state[f"{key}_done"] = True
        save_json(os.path.join(out_dir, METRICS_FILE), metrics)
        save_json(os.path.join(out_dir, STATE_FILE), state)
        print(f"[train] {key}: eval macro AUROC = {rep['macro_auroc']}", file=sys.stderr)

    # Stage 1 ------------------------------------------------------------------------------------
    if state.get("stage1_done"):
        model.load_weights(os.path.join(out_dir, "stage1.weights.h5"))
    else:
        run_stage(1, lambda: stage1_dataset(cfg, train, scan["num_examples"]))

    # Stage 2 ------------------------------------------------------------------------------------
    metrics.pop("stage2_skipped", None)
    if skip2 is not None:
        metrics["stage2_skipped"] = skip2
        print(f"[train] stage 2 skipped: {skip2}", file=sys.stderr)
    elif cfg.stage2_epochs > 0:
        if state.get("stage2_done"):
            model.load_weights(os.path.join(out_dir, "stage2.weights.h5"))
        else:
            use_cache = cfg.cache_features and cfg.freeze != "none"

            def stage2_data():
                if use_cache:
                    cache = cache_stage2_features(model, cfg, train, total=scan["annotated"])
                    metrics["stage2_cached_examples"] = int(len(cache[F.Y_LABELS]))
                    return cached_dataset(cache, cfg)
                return stage2_image_dataset(cfg, train, num_examples=scan["annotated"])

            run_stage(2, stage2_data, on_fresh_start=model.init_posterior_from_prior)

    # Final: thresholds, .keras, SavedModel ------------------------------------------------------
    final = "stage2" if cfg.stage2_epochs > 0 and skip2 is None else "stage1"
    probs, _, labels, mask = predict_split(model, cfg, evals)
    from cxr_tfp.metrics import choose_thresholds, threshold_provenance

    # Youden on eval; 0.5 where undefined (the model must always carry a threshold per finding),
    # recorded as a fallback so nobody reads it as the model's operating point.
    chosen = choose_thresholds(findings, probs, labels, mask, "youden", default=0.5)
    model.set_thresholds(chosen, threshold_provenance(findings, chosen, labels, mask, "youden", "eval"))
    metrics["final_stage"] = final
    metrics["thresholds"] = model.thresholds
    metrics["threshold_provenance"] = model.threshold_provenance
    if chief:
        # Written aside, then renamed: a kill never leaves a half-written model.keras or SavedModel.
        from cxr_tfp.staging import replace_file

        tmp_keras = os.path.join(out_dir, ".model.partial.keras")
        model.save(tmp_keras)
        replace_file(tmp_keras, os.path.join(out_dir, "model.keras"))
        export_saved_model(model, export_dir, cfg.num_samples)
    metrics["export_dir"] = export_dir
    save_json(os.path.join(out_dir, METRICS_FILE), metrics)
    return json.loads(json.dumps(metrics, default=_json_default))


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The CLI parser: data/out/config paths plus one flag per config field."""
    p = argparse.ArgumentParser(
        prog="python -m cxr_tfp.train",
        description="Two-stage training of the CXR latent-variable model (stage 1: all labelled "
                    "images; stage 2: frozen backbone, annotated subset, KL distillation). Writes "
                    "metrics.json, model.keras, TensorBoard logs and a SavedModel to --out.")
    p.add_argument("--data", required=True, help="data build output with train/ and eval/ subfolders")
    p.add_argument("--out", required=True, help="output directory (re-run with the same one to resume)")
    p.add_argument("--config", default=None, help="YAML config (e.g. configs/smoke.yaml); flags override it")
    p.add_argument("--export-dir", default=None, help="SavedModel directory [OUT/saved_model]")
    add_config_arguments(p)
    return p


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, overrides_from_args(args))
        check_weights_spec(cfg.weights)   # a bad --weights file is named before any data is read
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    splits = {}
    for split in (F.TRAIN_SPLIT, F.EVAL_SPLIT):
        d = os.path.join(args.data, split)
        if not os.path.isdir(d):
            print(f"error: --data {args.data} has no {split}/ subfolder", file=sys.stderr)
            return 2
        splits[split] = d
    try:
        metrics = train_model(cfg, splits[F.TRAIN_SPLIT], splits[F.EVAL_SPLIT], args.out, args.export_dir)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: metrics[k]["macro_auroc"] for k in ("stage1", "stage2") if k in metrics}
    print(json.dumps({"macro_auroc": summary, "final_stage": metrics["final_stage"],
                      "out": args.out, "export_dir": metrics["export_dir"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
