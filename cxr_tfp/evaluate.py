"""Evaluate one model (or two side by side) on a TFRecord split: metrics.json, report.md, figures.

    python -m cxr_tfp.evaluate --model runs/a/model.keras --data data/ --out eval/ [--split test]
    python -m cxr_tfp.evaluate --model runs/a/saved_model --compare runs/b/model.keras --data data/ --out eval/

Layers, each usable on its own:
1. a model adapter (``.keras`` file or SavedModel directory) turns serialized tf.Examples into
   probabilities and uncertainties (and, for ``.keras``, Grad-CAM saliency);
2. :func:`collect` runs it over a split into plain arrays (:class:`Predictions`);
3. :func:`compute_metrics` turns arrays into a JSON-safe dict (:mod:`cxr_tfp.metrics`);
4. :mod:`cxr_tfp.report` draws the figures and writes the markdown report.

Operating thresholds are chosen on the ``eval`` split and applied to the evaluated split, so the
reported sensitivity/specificity are not tuned on the data they are measured on.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from cxr_tfp import features as F
from cxr_tfp import model_dir as MD
from cxr_tfp import metrics as M
from cxr_tfp.cli import Progress, cli_main
from cxr_tfp.report.saliency import METHOD_NAMES, SaliencyCollector, SaliencyExample, agreement_summary

log = logging.getLogger("cxr_tfp.evaluate")

THRESHOLD_METHODS = ("youden", "sensitivity", "fixed")
# Below this many positives a finding's AUROC, sensitivity and calibration are too unstable to read
# on their own; the report warns next to them.
MIN_POSITIVES = 10


# ------------------------------------------------------------------------------------------ adapters
class ModelAdapter:
    """What evaluation needs from a model. Subclasses wrap a ``.keras`` file or a SavedModel."""

    kind: str = "abstract"
    name: str = "model"
    path: str = ""
    findings: Tuple[str, ...] = ()
    image_size: Optional[int] = None        # None: the model takes serialized examples at any size
    saliency_reason: Optional[str] = None   # why saliency is unavailable (None when it is available)
    saliency_methods: Tuple[str, ...] = ("gradcam",)   # names :meth:`saliency` accepts, primary first

    @property
    def supports_saliency(self) -> bool:
        return self.saliency_reason is None

    def predict(self, serialized, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(probabilities, uncertainty)``, each float ``[B, L]`` over :attr:`findings`."""
        raise NotImplementedError

    def saliency(self, images: np.ndarray, finding_index: int, method: str = "gradcam") -> np.ndarray:
        """Saliency maps ``[B, S, S]`` in [0, 1] for one finding, by one of :attr:`saliency_methods`."""
        raise NotImplementedError(self.saliency_reason or "saliency not implemented")


class KerasAdapter(ModelAdapter):
    """A ``.keras`` model from :func:`cxr_tfp.model.load_model` (Grad-CAM available)."""

    kind = "keras"
    saliency_methods = ("gradcam", "occlusion", "attention")

    def __init__(self, path: str, num_samples: Optional[int] = None, name: Optional[str] = None):
        from cxr_tfp.model import load_model

        self.path = str(path)
        self.name = name or _default_name(path)
        self.model = load_model(self.path)
        self.findings = tuple(self.model.findings)
        self.image_size = int(self.model.image_size)
        self.num_samples = num_samples

    def predict(self, serialized, images):
        out = self.model.predict_with_uncertainty(np.asarray(images, np.float32),
                                                  num_samples=self.num_samples)
        return np.asarray(out[MD.PROBABILITIES]), np.asarray(out[MD.UNCERTAINTY])

    def saliency(self, images, finding_index, method="gradcam"):
        from cxr_tfp.model.saliency import METHODS

        if method not in METHODS:
            raise ValueError(f"unknown saliency method {method!r}; choose from {', '.join(METHODS)}")
        return np.asarray(METHODS[method](self.model, np.asarray(images, np.float32), int(finding_index)))


class SavedModelAdapter(ModelAdapter):
    """An exported SavedModel called through its tf.Example serving signature (no Grad-CAM)."""

    kind = "saved_model"
    saliency_reason = ("Grad-CAM needs the Keras model's layers and gradients; a SavedModel exposes "
                       "only its serving signatures. Evaluate the .keras file to get saliency.")

    def __init__(self, path: str, name: Optional[str] = None):
        import tensorflow as tf

        self.path = str(path)
        self.name = name or _default_name(path)
        if not MD.labels_path(path).is_file():
            raise FileNotFoundError(f"{path}: no {MD.ASSETS_DIR}/{MD.LABELS_ASSET} (label names) in this SavedModel")
        self.findings = MD.read_labels(path)
        self._loaded = tf.saved_model.load(self.path)
        if MD.SERVING_SIGNATURE not in self._loaded.signatures:
            raise ValueError(f"{path}: SavedModel has no signature {MD.SERVING_SIGNATURE!r} "
                             f"(has {sorted(self._loaded.signatures)})")
        self._fn = self._loaded.signatures[MD.SERVING_SIGNATURE]

    def predict(self, serialized, images):
        out = self._fn(**{MD.EXAMPLES_INPUT: serialized})
        probs = out[MD.PROBABILITIES].numpy()
        if probs.shape[-1] != len(self.findings):
            raise ValueError(f"{self.path}: signature returns {probs.shape[-1]} probabilities but "
                             f"{MD.LABELS_ASSET} lists {len(self.findings)} findings")
        return probs, out[MD.UNCERTAINTY].numpy()


class TorchXRayVisionAdapter(ModelAdapter):
    """torchxrayvision's DenseNet classifier converted to Keras (``torchxrayvision:FILE``): its own
    outputs (sigmoid, and its operating-point normalisation when the checkpoint carries it), on the
    findings our vocabulary knows; the public baseline to compare a cxr-tfp model against."""

    kind = "torchxrayvision"
    saliency_reason = "the converted torchxrayvision classifier is evaluated without Grad-CAM"

    def __init__(self, spec: str, name: Optional[str] = None, image_size: int = 224):
        from cxr_tfp.labels import harmonise, is_known
        from cxr_tfp.weights import TXRV_PREFIX
        from cxr_tfp.weights.torchxrayvision import build_classifier

        self.path = spec[len(TXRV_PREFIX):]
        self.name = name or f"torchxrayvision/{Path(self.path).name}"
        self.model, ckpt = build_classifier(self.path, image_size)
        op = ckpt.op_threshs
        # Outputs the weights were not trained for (empty name, NaN operating point) are left out.
        self._cols = [i for i, n in enumerate(ckpt.pathologies)
                      if n and is_known(n) and not (op is not None and np.isnan(op[i]))]
        self.findings = tuple(harmonise(ckpt.pathologies[i]) for i in self._cols)
        self.image_size = int(image_size)

    def predict(self, serialized, images):
        out = self.model(np.asarray(images, np.float32), training=False)["outputs"].numpy()[:, self._cols]
        return out, np.zeros_like(out)    # a point estimate: no spread to report


def _default_name(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def load_adapter(path: str, num_samples: Optional[int] = None, name: Optional[str] = None) -> ModelAdapter:
    """A ``.keras`` file -> :class:`KerasAdapter`; a directory with ``saved_model.pb`` -> SavedModel."""
    if str(path).startswith("torchxrayvision:"):
        return TorchXRayVisionAdapter(str(path), name=name)
    p = Path(path)
    if p.is_file() and p.suffix == ".keras":
        return KerasAdapter(path, num_samples=num_samples, name=name)
    if p.is_dir() and MD.is_saved_model(p):
        return SavedModelAdapter(path, name=name)
    if p.is_dir() and (p / "model.keras").is_file():   # a training output folder
        return KerasAdapter(str(p / "model.keras"), num_samples=num_samples, name=name or _default_name(path))
    raise FileNotFoundError(f"{path}: neither a .keras file nor a SavedModel directory (saved_model.pb)")


# -------------------------------------------------------------------------------------- collection
@dataclasses.dataclass
class Predictions:
    """A model's outputs over one split, as plain arrays (row i = the i-th example in file order)."""

    findings: Tuple[str, ...]
    probs: np.ndarray           # [N, L]
    uncertainty: np.ndarray     # [N, L]
    labels: np.ndarray          # [N, L]
    mask: np.ndarray            # [N, L]
    patient_keys: np.ndarray    # [N] str
    example_keys: np.ndarray    # [N] str
    has_gaze: np.ndarray        # [N] bool
    has_boxes: np.ndarray       # [N] bool
    agreement: List[Dict[str, object]] = dataclasses.field(default_factory=list)  # one per (image, type)
    examples: List[SaliencyExample] = dataclasses.field(default_factory=list)
    saliency_reason: Optional[str] = None

    def select(self, columns: Sequence[int]) -> "Predictions":
        """The same predictions restricted to some findings (for comparing models)."""
        cols = list(columns)
        return dataclasses.replace(self, findings=tuple(self.findings[c] for c in cols),
                                   probs=self.probs[:, cols], uncertainty=self.uncertainty[:, cols],
                                   labels=self.labels[:, cols], mask=self.mask[:, cols])


def split_files(data: str, split: str) -> List[str]:
    """TFRecord files of ``data/split`` (or of ``data`` itself when it has no such sub-folder)."""
    from cxr_tfp.input import list_files

    d = Path(data) / split
    if d.is_dir():
        return list_files(str(d))
    raise FileNotFoundError(f"{data}: no '{split}' split folder (expected {d}/*.tfrecord.gz)")


def _stored_image_size(files: Sequence[str]) -> int:
    import tensorflow as tf

    for raw in tf.data.TFRecordDataset(list(files)[:1], compression_type="GZIP").take(1):
        ex = tf.io.parse_single_example(raw, {F.IMAGE_SIZE: F.feature_spec()[F.IMAGE_SIZE]})
        return int(ex[F.IMAGE_SIZE])
    raise ValueError(f"{files[0]}: no examples")


def _where(files: Sequence[str]) -> str:
    return files[0] if len(files) == 1 else f"{len(files)} files in {Path(files[0]).parent}"


def _batches(ds, files: Sequence[str]):
    """Iterate a dataset, turning unreadable files (not GZIP TFRecords) into an error naming them."""
    import tensorflow as tf

    it = iter(ds)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise ValueError(f"{_where(files)}: not readable as GZIP TFRecords: "
                             f"{e.message.splitlines()[0]}") from None


def count_records(files: Sequence[str]) -> Optional[int]:
    """Examples in a split's TFRecord files (a read without parsing), for progress with a total."""
    import tensorflow as tf

    try:
        return int(tf.data.TFRecordDataset(list(files), compression_type="GZIP").reduce(
            np.int64(0), lambda n, _: n + 1).numpy())
    except tf.errors.OpError:   # unreadable files are reported by the pass that parses them
        return None


def collect(adapter: ModelAdapter, files: Sequence[str], *, batch_size: int = 32, saliency: bool = True,
            max_saliency: Optional[int] = None, n_examples: int = 6, gaze_level: float = 0.5,
            top_k: float = 0.1, progress_every: int = 20,
            saliency_methods: Optional[Sequence[str]] = None) -> Predictions:
    """Run ``adapter`` over ``files`` and gather arrays; with ``saliency``, map the annotated images.

    Which images get saliency and how its agreement with the experts is scored:
    :class:`cxr_tfp.report.saliency.SaliencyCollector`. ``max_saliency`` caps how many images get maps.
    """
    import tensorflow as tf

    from cxr_tfp.input import parse_batch

    findings = tuple(adapter.findings)
    size = adapter.image_size or _stored_image_size(files)
    do_sal = saliency and adapter.supports_saliency
    sal = (SaliencyCollector(adapter, findings, size, max_saliency=max_saliency, n_examples=n_examples,
                             gaze_level=gaze_level, top_k=top_k, methods=saliency_methods) if do_sal else None)
    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP").batch(batch_size)
    out: Dict[str, List[np.ndarray]] = {k: [] for k in ("probs", "unc", "labels", "mask", "pk", "ek", "hg", "hb")}
    split = Path(files[0]).parent.name if files else "?"
    progress = (Progress(f"evaluate {adapter.name} {split}" + (" +saliency" if sal is not None else ""),
                         count_records(files)) if progress_every else None)
    for b, serialized in enumerate(_batches(ds, files)):
        try:
            x, y, meta = parse_batch(serialized, size, findings, with_meta=True)
        except tf.errors.InvalidArgumentError as e:
            raise ValueError(f"{_where(files)}: records do not follow the cxr_tfp tf.Example contract "
                             f"(batch {b}): {e.message.splitlines()[0]}") from None
        images = x[F.X_IMAGE].numpy()
        probs, unc = adapter.predict(serialized, images)
        probs, unc = np.asarray(probs, np.float64), np.asarray(unc, np.float64)
        labels, mask = y[F.Y_LABELS].numpy(), y[F.Y_MASK].numpy()
        hg, hb = x[F.X_HAS_GAZE].numpy() > 0.5, x[F.X_HAS_BOXES].numpy() > 0.5
        for k, v in (("probs", probs), ("unc", unc), ("labels", labels), ("mask", mask), ("hg", hg), ("hb", hb)):
            out[k].append(v)
        out["pk"].append(np.char.decode(meta[F.PATIENT_KEY].numpy().astype(bytes), "utf-8"))
        out["ek"].append(np.char.decode(meta[F.EXAMPLE_KEY].numpy().astype(bytes), "utf-8"))
        if sal is not None:
            sal.add_batch(images, x[F.X_ANNOTATION].numpy(), labels, mask, probs, hg, hb, patients=out["pk"][-1])
        if progress is not None:
            progress.update(len(probs), f"saliency maps for {sal._n} annotated image(s)" if sal is not None else "")
    if not out["probs"]:
        raise ValueError(f"no examples in {list(files)}")
    cat = {k: np.concatenate(v) for k, v in out.items()}
    return Predictions(findings=findings, probs=cat["probs"], uncertainty=cat["unc"], labels=cat["labels"],
                       mask=cat["mask"], patient_keys=cat["pk"], example_keys=cat["ek"],
                       has_gaze=cat["hg"], has_boxes=cat["hb"],
                       agreement=sal.agreement if sal else [], examples=sal.examples if sal else [],
                       saliency_reason=None if do_sal else (adapter.saliency_reason or "saliency not requested"))


# ----------------------------------------------------------------------------------------- metrics
@dataclasses.dataclass
class EvalOptions:
    """Metric options (all recorded in metrics.json)."""

    threshold_method: str = "youden"
    target_sensitivity: float = 0.9
    fixed_threshold: float = 0.5
    n_resamples: int = 1000
    seed: int = 0
    alpha: float = 0.05
    n_bins: int = 10
    referral_fractions: Tuple[float, ...] = M.DEFAULT_REFERRAL_FRACTIONS
    top_k: float = 0.1
    gaze_level: float = 0.5

    def __post_init__(self) -> None:
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, got {self.threshold_method!r}")
        if self.n_resamples < 0:
            raise ValueError(f"n_resamples must be >= 0, got {self.n_resamples}")


def thresholds_from(pred: Optional[Predictions], findings: Sequence[str], opts: EvalOptions) -> Dict[str, object]:
    """Per-finding thresholds from the threshold split's predictions (``None`` where undefined).

    The rule itself is :func:`cxr_tfp.metrics.choose_thresholds` (the one training uses too).
    """
    if pred is None:
        return {f: opts.fixed_threshold for f in findings}
    cols = [pred.findings.index(f) for f in findings]
    return M.choose_thresholds(findings, pred.probs[:, cols], pred.labels[:, cols], pred.mask[:, cols],
                               opts.threshold_method, opts.target_sensitivity, opts.fixed_threshold)


def threshold_provenance_from(pred: Optional[Predictions], findings: Sequence[str], thresholds: Dict[str, object],
                              method: str, split: Optional[str]) -> Dict[str, Dict[str, object]]:
    """How each threshold of :func:`thresholds_from` was set (:func:`cxr_tfp.metrics.threshold_provenance`)."""
    if pred is None:
        return M.threshold_provenance(findings, thresholds, np.zeros((0, len(findings))), None, "fixed", None)
    cols = [pred.findings.index(f) for f in findings]
    return M.threshold_provenance(findings, thresholds, pred.labels[:, cols], pred.mask[:, cols], method, split)


def add_decision_doubt(metrics: Dict[str, object], pred: Predictions, thresholds: Dict[str, object],
                       provenance: Dict[str, Dict[str, object]]) -> None:
    """Per finding: how its threshold was set, how many calls on the split are "uncertain"
    (``|p - threshold| < uncertainty``, :func:`cxr_tfp.metrics.decide`), and whether the AUROC
    interval rests on enough positives (``MIN_POSITIVES``) to be read as an interval."""
    for j, f in enumerate(pred.findings):
        pf = metrics["per_finding"][f]
        prov = provenance.get(f, {})
        pf["threshold_from"] = prov.get("source")
        pf["threshold_positives"] = prov.get("positives")
        known = pred.mask[:, j] > 0.5
        t = thresholds.get(f)
        pf["uncertain_calls"] = (None if t is None else
                                 int(np.sum(M.decide(pred.probs[known, j], pred.uncertainty[known, j], t)
                                            == M.UNCERTAIN)))
        pf["auroc_ci_reliable"] = bool(pf["positives"] >= MIN_POSITIVES and pf["auroc_ci_low"] is not None)
    metrics["threshold_provenance"] = provenance


def compute_metrics(pred: Predictions, thresholds: Dict[str, object], opts: EvalOptions) -> Dict[str, object]:
    """All metrics of one model on one split as a JSON-safe dict (undefined values are ``None``)."""
    ci = M.auroc_with_ci(pred.labels, pred.probs, pred.mask, pred.patient_keys, opts.n_resamples,
                         opts.seed, opts.alpha)
    per = {}
    for j, f in enumerate(pred.findings):
        y, p, m, u = pred.labels[:, j], pred.probs[:, j], pred.mask[:, j], pred.uncertainty[:, j]
        s = M.finding_summary(y, p, m, thresholds.get(f), opts.n_bins)
        c = ci["per_finding"][j]
        s.update({"auroc_ci_low": c["ci_low"], "auroc_ci_high": c["ci_high"], "auroc_ci_n_valid": c["n_valid"],
                  "unknown": int(np.sum(m <= 0.5)), "mean_uncertainty": M.finite_or_none(np.mean(u[m > 0.5])) if np.any(m > 0.5) else None,
                  "reliability": M.reliability_bins(y, p, opts.n_bins, m),
                  "referral": M.referral_curve(y, p, u, opts.referral_fractions, m)})
        per[f] = s
    fractions = [r["fraction"] for r in next(iter(per.values()))["referral"]] if per else []
    referral_macro = [{"fraction": fr, "auroc": M._mean_defined([per[f]["referral"][i]["auroc"] for f in per])}
                      for i, fr in enumerate(fractions)]
    macro = {"auroc": ci["macro"]["auroc"], "ci_low": ci["macro"]["ci_low"], "ci_high": ci["macro"]["ci_high"],
             "findings_defined": int(sum(per[f]["auroc"] is not None for f in per))}
    for key in ("average_precision", "ece", "sensitivity", "specificity"):
        macro[key] = M._mean_defined([per[f][key] for f in per])
    cis = M.macro_threshold_metrics_ci(pred.labels, pred.probs, pred.mask,
                                       [thresholds.get(f) for f in pred.findings], pred.patient_keys,
                                       opts.n_resamples, opts.seed, opts.alpha, opts.n_bins)
    for key, (lo, hi) in cis.items():
        macro[f"{key}_ci_low"], macro[f"{key}_ci_high"] = lo, hi
    micro = {"auroc": ci["micro"]["auroc"], "ci_low": ci["micro"]["ci_low"], "ci_high": ci["micro"]["ci_high"],
             "average_precision": M.micro_average_precision(pred.labels, pred.probs, pred.mask)}
    if pred.saliency_reason:
        sal = {"available": False, "reason": pred.saliency_reason}
    else:
        summ = agreement_summary(pred.agreement, opts.top_k, opts.n_resamples, opts.seed, opts.alpha)
        sal = {"available": True, "reason": None, "method": METHOD_NAMES.get(summ["methods"][0], summ["methods"][0]),
               "method_names": {m: METHOD_NAMES.get(m, m) for m in summ["methods"]}, **summ,
               "examples": {"annotated": int(sum(e.annotated for e in pred.examples)),
                            "unannotated": int(sum(not e.annotated for e in pred.examples))}}
    low = [f for f in pred.findings if 0 < per[f]["positives"] < MIN_POSITIVES]
    return M.sanitize({
        "findings": list(pred.findings),
        "n_images": int(len(pred.probs)),
        "n_patients": int(len(np.unique(pred.patient_keys))),
        "n_with_gaze": int(pred.has_gaze.sum()), "n_with_boxes": int(pred.has_boxes.sum()),
        "per_finding": per, "macro": macro, "micro": micro,
        "few_positives": {"min_positives": MIN_POSITIVES, "findings": low},
        "referral": {"fractions": fractions, "macro_auroc": referral_macro},
        "saliency": sal,
    })


def compare_metrics(a: Predictions, b: Predictions, opts: EvalOptions) -> Dict[str, object]:
    """Paired bootstrap difference (B - A) in macro AUROC over the findings both models predict."""
    if not np.array_equal(a.example_keys, b.example_keys):
        raise ValueError("the two models were evaluated on different examples; cannot pair them")
    d = M.paired_auroc_difference(a.labels, a.probs, b.probs, a.mask, a.patient_keys,
                                  opts.n_resamples, opts.seed, opts.alpha)
    return M.sanitize({"findings": list(a.findings), **d})


# --------------------------------------------------------------------------------------- top level
REPORT_MARKERS = ("metrics.json", "report.md")   # what makes a folder an earlier evaluation's


def evaluate(model: Union[str, ModelAdapter], data: str, out: str, **kwargs) -> Dict[str, object]:
    """Evaluate (see :func:`_evaluate` for the arguments) into a staging folder beside ``out`` and swap it
    in complete (:mod:`cxr_tfp.staging`): a failed or killed evaluation leaves the previous report as it
    was; a second evaluation into the same ``out`` is refused; a symlinked ``out`` is written where it
    points; a folder that is not an earlier report (and not empty) is never replaced."""
    import shutil

    from cxr_tfp import staging as S
    from cxr_tfp.cli import UsageError

    out_dir = S.real_out(out)
    with S.OutputLock(out_dir, "evaluation"):
        S.recover(out_dir)
        if out_dir.exists():
            if not out_dir.is_dir():
                raise UsageError(f"--out {out}: exists and is not a folder")
            entries = sorted(p.name for p in out_dir.iterdir())
            if entries and not all((out_dir / m).is_file() for m in REPORT_MARKERS):
                raise UsageError(f"refusing to replace {out}: it holds {', '.join(entries[:3])}"
                                 f"{' ...' if len(entries) > 3 else ''} and is not an earlier report; "
                                 f"choose an empty or new output folder")
        stage = S.make_staging(out_dir)
        try:
            result = _evaluate(model, data, str(stage), **kwargs)
            S.swap_in(stage, out_dir)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
    return result


def _evaluate(model: Union[str, ModelAdapter], data: str, out: str, *, split: str = F.TEST_SPLIT,
             compare: Union[None, str, ModelAdapter] = None, threshold_split: Optional[str] = F.EVAL_SPLIT,
             options: Optional[EvalOptions] = None, batch_size: int = 32, num_samples: Optional[int] = None,
             saliency: bool = True, max_saliency: Optional[int] = None, n_examples: int = 6,
             figures: bool = True, saliency_methods: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Evaluate ``model`` (and optionally ``compare``) on ``data/split``; write metrics.json, report.md, PNGs.

    Thresholds are chosen on ``data/threshold_split`` (``None``, or a missing folder, falls back to
    the fixed threshold and the report says so). Returns the metrics dict written to metrics.json.
    """
    opts = options or EvalOptions()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    adapters = [model if isinstance(model, ModelAdapter) else load_adapter(model, num_samples)]
    if compare is not None:
        adapters.append(compare if isinstance(compare, ModelAdapter) else load_adapter(compare, num_samples))
    if len(adapters) == 2 and adapters[0].name == adapters[1].name:
        adapters[1].name = adapters[1].name + " (B)"
    files = split_files(data, split)
    common = [f for f in adapters[0].findings if all(f in a.findings for a in adapters[1:])]
    if not common:
        raise ValueError("the models share no findings: nothing to compare")

    th_files, th_note = None, None
    if opts.threshold_method != "fixed":
        if threshold_split is None:
            th_note = f"no threshold split given: fixed threshold {opts.fixed_threshold}"
        elif not (Path(data) / threshold_split).is_dir():
            th_note = f"no '{threshold_split}' split in {data}: fixed threshold {opts.fixed_threshold}"
            log.warning(th_note)
        else:
            th_files = split_files(data, threshold_split)
            if threshold_split == split:
                th_note = "thresholds chosen on the evaluated split itself (optimistic)"
    method = opts.threshold_method if th_files is not None or opts.threshold_method == "fixed" else "fixed"

    models_out, preds = [], []
    for ad in adapters:
        log.info("evaluating %s (%s) on %s", ad.name, ad.kind, split)
        pred = collect(ad, files, batch_size=batch_size, saliency=saliency, max_saliency=max_saliency,
                       n_examples=n_examples, gaze_level=opts.gaze_level, top_k=opts.top_k,
                       saliency_methods=saliency_methods)
        th_pred = collect(ad, th_files, batch_size=batch_size, saliency=False) if th_files else None
        thresholds = thresholds_from(th_pred, ad.findings,
                                     dataclasses.replace(opts, threshold_method=method))
        m = compute_metrics(pred, thresholds, opts)
        add_decision_doubt(m, pred, thresholds, threshold_provenance_from(
            th_pred, ad.findings, thresholds, method, threshold_split if th_files else None))
        m.update({"name": ad.name, "path": ad.path, "kind": ad.kind})
        models_out.append(m)
        preds.append(pred)

    result: Dict[str, object] = {
        "split": split, "data": str(data),
        "threshold": {"method": method, "split": threshold_split if th_files else None,
                      "target_sensitivity": opts.target_sensitivity if method == "sensitivity" else None,
                      "fixed": opts.fixed_threshold if method == "fixed" else None, "note": th_note},
        "bootstrap": {"n_resamples": opts.n_resamples, "seed": opts.seed, "alpha": opts.alpha,
                      "unit": "patient"},
        "calibration_bins": opts.n_bins,
        "models": models_out,
        "comparison": None,
    }
    if len(preds) == 2:
        a = preds[0].select([preds[0].findings.index(f) for f in common])
        b = preds[1].select([preds[1].findings.index(f) for f in common])
        result["comparison"] = {"a": adapters[0].name, "b": adapters[1].name, **compare_metrics(a, b, opts)}
    result = M.sanitize(result)

    figs: Dict[str, object] = {}
    if figures:
        from cxr_tfp.report import figures as FIG

        figs = FIG.draw_all(preds, result, out_dir)
    result["figures"] = figs
    with open(out_dir / "metrics.json", "w") as fh:
        json.dump(result, fh, indent=2, allow_nan=False)
    from cxr_tfp.report.markdown import write_report

    write_report(result, out_dir / "report.md")
    # Thresholds in the export contract's shape, so a chosen operating point can ship with a model.
    with open(out_dir / MD.THRESHOLDS_ASSET, "w") as fh:
        json.dump(MD.thresholds_document({f: v["threshold"] for f, v in models_out[0]["per_finding"].items()},
                                         models_out[0].get("threshold_provenance")), fh, indent=2)
    return result


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cxr_tfp.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="a .keras file or an exported SavedModel directory")
    p.add_argument("--compare", default=None, help="a second model evaluated side by side (B - A differences): "
                   "a .keras file, a SavedModel, or torchxrayvision:FILE (a torchxrayvision DenseNet "
                   "checkpoint, converted: the public baseline on your own data)")
    p.add_argument("--data", required=True, help="data folder with train/ eval/ test/ TFRecord splits")
    p.add_argument("--out", required=True, help="output folder for metrics.json, report.md and figures")
    p.add_argument("--split", default=F.TEST_SPLIT, help="split to evaluate")
    p.add_argument("--threshold-split", default=F.EVAL_SPLIT, help="split the operating thresholds are chosen on")
    p.add_argument("--threshold-method", default="youden", choices=THRESHOLD_METHODS)
    p.add_argument("--target-sensitivity", type=float, default=0.9, help="for --threshold-method sensitivity")
    p.add_argument("--fixed-threshold", type=float, default=0.5, help="for --threshold-method fixed")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient-level bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--bins", type=int, default=10, help="calibration bins")
    p.add_argument("--referral", default="0.05,0.1,0.2", help="fractions of most-uncertain cases referred")
    p.add_argument("--top-k", type=float, default=0.1, help="top fraction of saliency pixels for overlap")
    p.add_argument("--num-samples", type=int, default=None, help="latent samples (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-saliency", type=int, default=None, help="cap on images given Grad-CAM")
    p.add_argument("--examples", type=int, default=6, help="images shown in the saliency figure")
    p.add_argument("--no-saliency", action="store_true", help="skip saliency maps")
    p.add_argument("--saliency-methods", default=None,
                   help="comma-separated saliency methods, primary first (default: all the model offers; "
                        "a .keras model: gradcam,occlusion,attention). Occlusion costs about 50 forward "
                        "passes per image: cap the images with --max-saliency on large splits")
    return p


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        fractions = tuple(float(v) for v in args.referral.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"--referral: expected comma-separated fractions, got {args.referral!r}")
    opts = EvalOptions(threshold_method=args.threshold_method, target_sensitivity=args.target_sensitivity,
                       fixed_threshold=args.fixed_threshold, n_resamples=args.bootstrap, seed=args.seed,
                       n_bins=args.bins, referral_fractions=fractions, top_k=args.top_k)
    res = evaluate(args.model, args.data, args.out, split=args.split, compare=args.compare,
                   threshold_split=args.threshold_split, options=opts, batch_size=args.batch_size,
                   num_samples=args.num_samples, saliency=not args.no_saliency,
                   max_saliency=args.max_saliency, n_examples=args.examples,
                   saliency_methods=[m.strip() for m in args.saliency_methods.split(",") if m.strip()]
                   if args.saliency_methods else None)
    for m in res["models"]:
        mac = m["macro"]
        print(f"{m['name']}: macro AUROC {_fmt(mac['auroc'])} [{_fmt(mac['ci_low'])}, {_fmt(mac['ci_high'])}] "
              f"on {m['n_images']} images / {m['n_patients']} patients")
    if res["comparison"]:
        c = res["comparison"]
        print(f"B - A macro AUROC: {_fmt(c['difference'])} [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
