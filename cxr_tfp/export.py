"""SavedModel export for TF Serving / TFX: two signatures, label + threshold assets, warm-up file.

The layout and names it writes are the contract of :mod:`cxr_tfp.model_dir`.
- ``model_dir.SERVING_SIGNATURE`` (serving_default): ``model_dir.EXAMPLES_INPUT`` = serialized
  tf.Examples (only the image feature is read, so examples with or without labels both work);
  returns PROBABILITIES, UNCERTAINTY ``[B, L]`` and PROBABILITIES_FULL ``[B, NUM_FINDINGS]``.
- ``model_dir.IMAGE_SIGNATURE``: ``model_dir.IMAGES_INPUT`` = encoded PNG/JPEG bytes; returns
  PROBABILITIES and UNCERTAINTY.
Both decode with :func:`cxr_tfp.preprocess.decode_image_tensor` (same ops as training) and sample the
latent with fixed pre-drawn noise (deterministic; identical to ``model.predict_with_uncertainty``).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from typing import Dict, Optional, Tuple

import numpy as np

from cxr_tfp import features as F
from cxr_tfp import model_dir as MD
from cxr_tfp.cli import cli_main
from cxr_tfp.model_dir import WARMUP_FILE, WEIGHTS_ASSET


def _build_module(model, num_samples: int, label_path: str, threshold_path: str,
                  thresholds: Dict[str, float], weights_path: str, serving_path: str,
                  provenance: Optional[Dict[str, Dict[str, object]]] = None, jit_compile: bool = False):
    import tensorflow as tf

    from cxr_tfp.preprocess import decode_image_tensor

    size = int(model.image_size)
    scatter = tf.constant(model.full_scatter)
    names = tf.constant(list(model.findings), tf.string)
    thr = tf.constant([thresholds[f] for f in model.findings], tf.float32)
    prov = provenance or {}
    sources = tf.constant([str((prov.get(f) or {}).get("source", "unknown")) for f in model.findings], tf.string)
    positives = tf.constant([int((prov.get(f) or {}).get("positives", -1)) for f in model.findings], tf.int32)

    # XLA compiles the backbone alone (one cluster per batch size seen); decoding (string ops) and
    # the head stay on TensorFlow's kernels.
    features = tf.function(lambda x: model.features(x, training=False), jit_compile=True) \
        if jit_compile else (lambda x: model.features(x, training=False))

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__(name="cxr_serving")
            self.model = model
            self.labels_asset = tf.saved_model.Asset(label_path)
            self.thresholds_asset = tf.saved_model.Asset(threshold_path)
            self.weights_asset = tf.saved_model.Asset(weights_path)
            self.serving_asset = tf.saved_model.Asset(serving_path)

        def _predict_encoded(self, encoded):
            # Under a real tensorflow_model_server an empty batch would otherwise fail deep in a conv.
            tf.debugging.assert_positive(tf.size(encoded), message="empty batch: send at least one image")
            images = tf.map_fn(lambda b: decode_image_tensor(b, size), encoded,
                               fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))
            mean, std = self.model.predict_from_features(features(images), num_samples)
            return mean, std

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=MD.EXAMPLES_INPUT)])
        def serve_examples(self, examples):
            from cxr_tfp.preprocess import check_serialized_examples

            with tf.control_dependencies([check_serialized_examples(examples)]):
                parsed = tf.io.parse_example(examples, {F.IMAGE: F.feature_spec()[F.IMAGE]})
            mean, std = self._predict_encoded(parsed[F.IMAGE])
            return {MD.PROBABILITIES: mean, MD.UNCERTAINTY: std,
                    MD.PROBABILITIES_FULL: tf.matmul(mean, scatter)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=MD.IMAGES_INPUT)])
        def serve_images(self, images):
            mean, std = self._predict_encoded(images)
            rows = tf.shape(mean)[:1]
            return {MD.PROBABILITIES: mean, MD.UNCERTAINTY: std,
                    MD.LABEL_NAMES: tf.tile(names[None], tf.concat([rows, [1]], 0)),
                    MD.THRESHOLDS: tf.tile(thr[None], tf.concat([rows, [1]], 0)),
                    MD.THRESHOLD_SOURCES: tf.tile(sources[None], tf.concat([rows, [1]], 0)),
                    MD.THRESHOLD_POSITIVES: tf.tile(positives[None], tf.concat([rows, [1]], 0))}

    return ServingModule()


def _rename_inputs(fn, name: str):
    """A concrete function whose single input is called ``name`` (signature keys = argument names)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None], tf.string, name=name)
    ns: Dict[str, object] = {"fn": fn}
    exec(f"def wrapped({name}):\n    return fn({name})\n", ns)  # argument name must equal the contract key
    return tf.function(ns["wrapped"], input_signature=[spec]).get_concrete_function()


def sample_inputs(image_size: int, count: int = 2):
    """Deterministic PNG bytes and serialized tf.Examples for warm-up requests and smoke checks."""
    pngs, examples = [], []
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    for i in range(count):
        img = ((xx + yy * (i + 1)) % 256).astype(np.uint8)
        pngs.append(F.encode_png(img))
        rec = F.ExampleRecord(image=img, labels=np.zeros(F.NUM_FINDINGS, np.float32),
                              label_mask=np.zeros(F.NUM_FINDINGS, np.float32),
                              patient_key=f"warmup-{i}", example_key=f"warmup-{i}", dataset="synthetic")
        examples.append(F.to_example(rec).SerializeToString())
    return pngs, examples


def _has_serving_api() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow_serving") is not None


def write_warmup(export_dir: str, image_size: int, model_name: str = MD.MODEL_NAME) -> str:
    """Write ``assets.extra/tf_serving_warmup_requests``: PredictionLogs for both signatures."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    pngs, examples = sample_inputs(image_size)
    path = os.path.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for sig, key, payload in ((MD.SERVING_SIGNATURE, MD.EXAMPLES_INPUT, examples),
                                  (MD.IMAGE_SIGNATURE, MD.IMAGES_INPUT, pngs)):
            req = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=sig))
            req.inputs[key].CopyFrom(tf.make_tensor_proto(payload, dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req))
            writer.write(log.SerializeToString())
    return path


SERVE_PRECISIONS = ("auto", "float32", "bfloat16")
DEFAULT_SERVE_PRECISION = "auto"

# TF Serving flags the export records beside the model (assets/serving.json): one session whose
# kernels use every core (a DenseNet is a chain of concatenations: little to run side by side, so one
# inter-op thread), server-side batching as serving/batching_parameters.txt sets it.
TF_SERVING_FLAGS = ("--tensorflow_intra_op_parallelism=0", "--tensorflow_inter_op_parallelism=1",
                    "--enable_batching=true", "--batching_parameters_file=serving/batching_parameters.txt")


def cpu_has_bfloat16() -> bool:
    """Whether this x86 CPU has bfloat16 units (AVX512-BF16 or AMX); elsewhere bfloat16 is emulated."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str = DEFAULT_SERVE_PRECISION) -> Tuple[str, str]:
    """``(float32|bfloat16, why)`` for a requested serving precision; ``auto`` takes bfloat16 where
    this CPU has bfloat16 units (the export machine is taken to be the serving machine's kind)."""
    if precision not in SERVE_PRECISIONS:
        raise ValueError(f"serving precision {precision!r} is not one of {list(SERVE_PRECISIONS)}")
    if precision != "auto":
        return precision, "asked for"
    if cpu_has_bfloat16():
        return "bfloat16", "auto: this CPU has bfloat16 units (avx512_bf16/amx_bf16)"
    return "float32", "auto: this CPU has no bfloat16 units (bfloat16 would be emulated, slower)"


def with_serving_precision(model, precision: str = "float32"):
    """``model`` itself for float32 (``auto``: see :func:`resolve_precision`); for bfloat16 a copy whose backbone computes in bfloat16
    (Keras ``mixed_bfloat16``: float32 variables, bfloat16 matmuls/convs; the head stays float32)."""
    precision = resolve_precision(precision)[0]
    if precision == "float32" or getattr(model, "precision", "float32") == "mixed_bfloat16":
        return model
    cfg = model.get_config()
    cfg["precision"] = "mixed_bfloat16"
    clone = type(model).from_config(cfg)
    clone.set_weights(model.get_weights())
    clone.thresholds = dict(model.thresholds)
    clone.threshold_provenance = dict(getattr(model, "threshold_provenance", {}) or {})
    return clone


def export_saved_model(model, export_dir: str, num_samples: Optional[int] = None,
                       thresholds: Optional[Dict[str, float]] = None,
                       model_name: str = MD.MODEL_NAME, precision: str = DEFAULT_SERVE_PRECISION,
                       jit_compile: bool = False) -> str:
    """Export ``model`` (a CxrModel) as a SavedModel in ``export_dir``; returns ``export_dir``.

    ``thresholds`` (finding -> operating threshold) default to ``model.thresholds`` (0.5 each when
    the model was never evaluated). On a local file system the SavedModel is written beside
    ``export_dir`` and swapped in complete (:mod:`cxr_tfp.staging`): a killed or failed export never
    leaves a half-written model where TF Serving looks, and the previous one stays until then.
    ``precision``: ``auto`` (default) serves with a bfloat16 backbone where this CPU has bfloat16
    units (:func:`cpu_has_bfloat16`) and float32 elsewhere; ``float32`` / ``bfloat16`` force one.
    The choice and its reason are written to ``assets/serving.json``. ``jit_compile`` compiles the
    backbone with XLA inside the signatures (measured slower on CPU here: docs/weights.md).
    """
    chosen, why = resolve_precision(precision)
    info = {"precision_requested": precision, "precision": chosen, "reason": why,
            "cpu_bfloat16_units": cpu_has_bfloat16(), "backbone_jit_compile": bool(jit_compile),
            "tf_serving_flags": list(TF_SERVING_FLAGS)}
    model = with_serving_precision(model, chosen)
    if "://" in str(export_dir):  # object stores (gs://): no atomic rename, write in place
        return _export(model, str(export_dir), num_samples, thresholds, model_name, info)
    from cxr_tfp import staging as S

    final = os.path.abspath(os.fspath(export_dir))
    S.check_replaceable(final, MD.SAVED_MODEL_ENTRIES)
    stage = S.make_staging(final)
    try:
        _export(model, str(stage), num_samples, thresholds, model_name, info)
        S.swap_in(stage, final)
    finally:
        if stage.exists():
            import shutil

            shutil.rmtree(stage, ignore_errors=True)
    return export_dir


def _export(model, export_dir: str, num_samples: Optional[int], thresholds: Optional[Dict[str, float]],
            model_name: str, info: Dict[str, object]) -> str:
    import tensorflow as tf

    s = int(num_samples or model.num_samples)
    thr = dict(getattr(model, "thresholds", {}) or {})
    if thresholds:
        thr.update(thresholds)
    thr = {f: float(thr.get(f, 0.5)) for f in model.findings}
    # Thresholds passed in by the caller replace the model's, and with them its record of how they were set.
    prov = {f: v for f, v in (getattr(model, "threshold_provenance", {}) or {}).items()
            if not thresholds or f not in thresholds}
    with tempfile.TemporaryDirectory() as tmp:
        label_path = os.path.join(tmp, MD.LABELS_ASSET)
        threshold_path = os.path.join(tmp, MD.THRESHOLDS_ASSET)
        MD.write_labels(label_path, model.findings)
        MD.write_thresholds(threshold_path, thr, prov)
        weights_path = os.path.join(tmp, WEIGHTS_ASSET)
        with open(weights_path, "w") as fh:
            json.dump(getattr(model, "weights_source", None), fh, indent=2)
        serving_path = os.path.join(tmp, MD.SERVING_ASSET)
        with open(serving_path, "w") as fh:
            json.dump({**info, "num_samples": s}, fh, indent=2)
        module = _build_module(model, s, label_path, threshold_path, thr, weights_path, serving_path,
                               provenance=prov, jit_compile=bool(info.get("backbone_jit_compile")))
        signatures = {
            MD.SERVING_SIGNATURE: _rename_inputs(module.serve_examples, MD.EXAMPLES_INPUT),
            MD.IMAGE_SIGNATURE: _rename_inputs(module.serve_images, MD.IMAGES_INPUT),
        }
        tf.io.gfile.makedirs(export_dir)
        tf.saved_model.save(module, export_dir, signatures=signatures)
    if _has_serving_api():
        write_warmup(export_dir, int(model.image_size), model_name=model_name)
    else:  # a core install (pip install .) exports a servable model, without the warm-up records
        logging.getLogger("cxr_tfp.export").warning(
            "tensorflow-serving-api is not installed (pip install 'cxr-tfp[serving]'): no %s written",
            WARMUP_FILE)
    return export_dir


@cli_main
def main(argv=None) -> int:
    """CLI: ``python -m cxr_tfp.export MODEL.keras EXPORT_DIR [--num-samples S]``."""
    import argparse

    from cxr_tfp.model import load_model

    p = argparse.ArgumentParser(
        prog="python -m cxr_tfp.export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a trained .keras CxrModel as a SavedModel.",
        epilog="Layout: TF Serving serves <base_path>/<version>/saved_model.pb, with base_path =\n"
               "<serving_root>/<model_name> and an integer version. So export to\n"
               f"  <serving_root>/{MD.MODEL_NAME}/1   (then 2, 3, ...; the highest is served by default)\n"
               f"and start the server with --model_base_path <serving_root>/{MD.MODEL_NAME}. A SavedModel\n"
               "written straight into the base path is not served (TF Serving finds no version there).\n"
               "The export holds assets/labels.txt and assets/thresholds.json (each threshold with how it\n"
               "was set: chosen on n positives, or a fallback).\n"
               f"Example: python -m cxr_tfp.export runs/a/model.keras /tmp/served/{MD.MODEL_NAME}/1")
    p.add_argument("model", help="path to model.keras")
    p.add_argument("export_dir", help=f"the version folder: <serving_root>/{MD.MODEL_NAME}/<version> (see below)")
    p.add_argument("--num-samples", type=int, default=None, help="latent samples in the signatures")
    p.add_argument("--precision", choices=SERVE_PRECISIONS, default=DEFAULT_SERVE_PRECISION,
                   help="serving precision of the backbone: auto = bfloat16 where this CPU has "
                        "bfloat16 units (AVX512-BF16 / AMX), else float32; export on the kind of "
                        "machine that serves [auto]")
    p.add_argument("--jit-compile", action="store_true",
                   help="compile the backbone with XLA inside the signatures (slower on CPU here)")
    a = p.parse_args(argv)
    if a.precision == "bfloat16" and not cpu_has_bfloat16():
        print("note: this CPU has no bfloat16 units; bfloat16 serving will be emulated (slower) here",
              file=sys.stderr)
    chosen, why = resolve_precision(a.precision)
    print(export_saved_model(load_model(a.model), a.export_dir, a.num_samples, precision=a.precision,
                             jit_compile=a.jit_compile))
    # said after the export succeeded: a refused export prints its one error line and nothing else
    print(f"serving precision: {chosen} ({why})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
