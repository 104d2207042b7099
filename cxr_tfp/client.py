"""gRPC client for the served model (TensorFlow Serving ``PredictionService/Predict``).

Command line::

    python -m cxr_tfp.client --server HOST:8500 [--model cxr_tfp] [--signature predict_images] \
        [--json] FILE...

Files may be PNG, JPEG or DICOM. PNG/JPEG bytes are sent as they are; a DICOM is decoded with the
project's own reader (:mod:`cxr_tfp.io`, the ingestion's modality/VOI LUT and MONOCHROME1 handling)
into the same 8-bit grey image the ingestion stores, then sent as PNG. Inside the model the same
:func:`cxr_tfp.preprocess.decode_image_tensor` as in training turns the bytes into model input.

Programmatic use (the TFX demo)::

    results = predict_files("127.0.0.1:8500", ["a.png", "b.dcm"])
    print(format_table(results))
    results = predict_files_local("/path/to/saved_model", ["a.png"])   # no server, same shape

Each result is ``{"file", "model", "version", "signature", "threshold_source", "findings":
[{"finding", "probability", "uncertainty", "threshold", "above_threshold", "decision",
"threshold_from", "threshold_positives"}, ...]}``.

``decision`` is ``above`` / ``below`` / ``uncertain`` (:func:`cxr_tfp.metrics.decide`): a call is
uncertain when its margin ``|probability - threshold|`` is smaller than the finding's uncertainty
(the standard deviation of the probability over latent samples); ``above_threshold`` keeps the raw
comparison. ``threshold_from`` says how the threshold was set: ``chosen`` (from ``threshold_positives``
positives of the split it was chosen on), ``fallback`` (that split had no positives, or no negatives:
a default of 0.5 stands in; the table marks it FALLBACK), ``fixed`` or ``unknown`` (an older export).

Finding names and operating thresholds come, in order of preference, from the image signature's
string / float outputs ``LABEL_NAMES_OUTPUT`` / ``THRESHOLDS_OUTPUT`` (the export writes them; TF
Serving's metadata API exposes signature shapes only), from explicit ``labels`` / ``thresholds`` arguments, from a local copy of the SavedModel
(``model_dir``: ``assets/labels.txt`` and ``assets/thresholds.json``), and finally ``finding_<i>``
with threshold 0.5 (flagged by ``threshold_source`` so nobody mistakes it for the model's
operating point).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cxr_tfp import features
from cxr_tfp import metrics as M
from cxr_tfp import model_dir as MD
from cxr_tfp.cli import cli_main

DEFAULT_MODEL = MD.MODEL_NAME
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BATCH = 16
FALLBACK_THRESHOLD = 0.5
# Per-row finding names and thresholds returned by the image signature (see cxr_tfp.features).
LABEL_NAMES_OUTPUT = MD.LABEL_NAMES
THRESHOLDS_OUTPUT = MD.THRESHOLDS
MAX_MESSAGE_BYTES = MD.MAX_MESSAGE_BYTES

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class ServingError(RuntimeError):
    """A request failed; ``str(err)`` is a message meant for the user. ``code`` is the gRPC code name."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.code = code


class InputFileError(ValueError):
    """A file given to the client cannot be sent (missing, not an image, unreadable DICOM)."""


# --------------------------------------------------------------------------------------------------
# Files -> encoded image bytes
# --------------------------------------------------------------------------------------------------
def file_kind(path: str, head: Optional[bytes] = None) -> str:
    """``"png"``, ``"jpeg"`` or ``"dicom"`` from the file's magic bytes (not its extension)."""
    if head is None:
        with open(path, "rb") as f:
            head = f.read(132)
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if str(path).lower().endswith((".dcm", ".dicom")):
        return "dicom"  # DICOM without the Part-10 preamble: let the reader decide
    raise InputFileError(f"{path}: not a PNG, JPEG or DICOM file (unrecognised content)")


def dicom_to_uint8(path: str) -> np.ndarray:
    """Decode a DICOM to the 8-bit grey image the ingestion decodes (the project's reader)."""
    from cxr_tfp import io as cxr_io  # the ingestion's reader: one DICOM decoder in the project

    return cxr_io.load_image(path).pixels


def encode_file(path: str, image_size: Optional[int] = None) -> Tuple[bytes, str]:
    """``(encoded PNG/JPEG bytes, kind)`` for one input file; raises :class:`InputFileError`.

    PNG/JPEG are sent as they are; a DICOM goes through :mod:`cxr_tfp.io` and is sent as PNG.
    With ``image_size``, every file is first resized exactly as the ingestion stores it
    (:func:`cxr_tfp.io.prepare_image`), so the served pixels equal the TFRecord's.
    """
    from cxr_tfp import io as cxr_io

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{path}: no such file")
    data = p.read_bytes()
    if not data:
        raise InputFileError(f"{path}: empty file")
    kind = file_kind(path, data[:132])
    try:
        # Decoding PNG/JPEG too catches truncated files, colour photos and thumbnails here, with
        # the file's name, rather than as an anonymous INVALID_ARGUMENT for the whole batch.
        decoded = cxr_io.decode_image(data)
        if image_size is not None:
            grey, _ = cxr_io.resize_to_square(decoded.pixels, int(image_size))
            return features.encode_png(grey), kind
    except cxr_io.InputError as e:
        raise InputFileError(f"{path}: {e}") from None
    if kind in ("png", "jpeg"):
        return data, kind  # sent as-is: the model decodes it with the training preprocessing
    return features.encode_png(decoded.pixels), kind


def image_example(encoded: bytes) -> bytes:
    """A serialized tf.Example carrying ``encoded`` for the ``serving_default`` signature.

    Labels are unknown at inference time: ``labels``/``label_mask`` are zeros (mask 0 = unknown).
    """
    import tensorflow as tf

    side = int(tf.io.extract_jpeg_shape(encoded)[0]) if encoded.startswith(_JPEG_MAGIC) else \
        int.from_bytes(encoded[16:20], "big")  # PNG IHDR height
    zeros = [0.0] * features.NUM_FINDINGS
    feats = {
        features.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        features.IMAGE_SIZE: tf.train.Feature(int64_list=tf.train.Int64List(value=[side])),
        features.LABELS: tf.train.Feature(float_list=tf.train.FloatList(value=zeros)),
        features.LABEL_MASK: tf.train.Feature(float_list=tf.train.FloatList(value=zeros)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _encode_all(files: Sequence[str], image_size: Optional[int] = None) -> List[bytes]:
    return [encode_file(f, image_size)[0] for f in files]


# --------------------------------------------------------------------------------------------------
# Label names and thresholds
# --------------------------------------------------------------------------------------------------
def read_model_assets(saved_model_dir: str) -> Tuple[Optional[List[str]], Optional[Dict[str, float]]]:
    """``(labels, thresholds)`` from ``assets/`` of a local SavedModel (None where absent)."""
    return MD.read_assets(saved_model_dir)


def _resolve_saved_model_dir(path: str) -> str:
    """A SavedModel folder, or the latest numeric version under a TF Serving base path."""
    return MD.latest(path)


def _to_str_list(arr: np.ndarray) -> List[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(arr).reshape(-1)]


def _name_findings(outputs: Mapping[str, np.ndarray], n: int, labels: Optional[Sequence[str]],
                   thresholds: Optional[Mapping[str, float]]) -> Tuple[List[str], List[float], str]:
    """(names, thresholds, source) for ``n`` outputs, following the preference order in the docstring."""
    if LABEL_NAMES_OUTPUT in outputs:  # [B, L] (a copy per row) or [L]
        arr = np.asarray(outputs[LABEL_NAMES_OUTPUT])
        labels = _to_str_list(arr[0] if arr.ndim == 2 else arr)
    if THRESHOLDS_OUTPUT in outputs:
        t = np.asarray(outputs[THRESHOLDS_OUTPUT], np.float64)
        t = t[0] if t.ndim == 2 else t
        if labels is not None and len(labels) == n and t.shape == (n,):
            return list(labels), [float(x) for x in t], "model"
    if labels is not None and len(labels) != n:
        raise ServingError(f"the model returns {n} findings but {len(labels)} label names were "
                           f"given: wrong labels file for this model?", "FAILED_PRECONDITION")
    if labels is None:
        names = [f"finding_{i}" for i in range(n)]
        return names, [FALLBACK_THRESHOLD] * n, "default"
    if thresholds is None:
        return list(labels), [FALLBACK_THRESHOLD] * n, "default"
    missing = [name for name in labels if name not in thresholds]
    if missing:
        raise ServingError(f"no operating threshold for {missing}", "FAILED_PRECONDITION")
    return list(labels), [float(thresholds[name]) for name in labels], "model"


def build_results(files: Sequence[str], outputs: Mapping[str, np.ndarray], model: str,
                  version: Optional[int], signature: str,
                  labels: Optional[Sequence[str]] = None,
                  thresholds: Optional[Mapping[str, float]] = None,
                  provenance: Optional[Mapping[str, Mapping[str, object]]] = None) -> List[dict]:
    """Turn Predict outputs (``PROBABILITIES``/``UNCERTAINTY`` [B, L]) into per-file result dicts."""
    if MD.PROBABILITIES not in outputs:
        raise ServingError(f"the response has no {MD.PROBABILITIES!r} output (got "
                           f"{sorted(outputs)}): is this the cxr_tfp model?", "FAILED_PRECONDITION")
    prob = np.asarray(outputs[MD.PROBABILITIES], np.float64)
    unc = np.asarray(outputs.get(MD.UNCERTAINTY, np.full_like(prob, np.nan)), np.float64)
    if prob.ndim != 2 or prob.shape[0] != len(files) or unc.shape != prob.shape:
        raise ServingError(f"unexpected output shapes: probabilities {prob.shape}, uncertainty "
                           f"{unc.shape} for {len(files)} files", "INTERNAL")
    names, thr, source = _name_findings(outputs, prob.shape[1], labels, thresholds)
    how, positives = _threshold_provenance(outputs, names, source, provenance)
    decision = M.decide(prob, unc, np.asarray(thr, np.float64)[None, :])
    results = []
    for i, f in enumerate(files):
        results.append({
            "file": str(f), "model": model, "version": version, "signature": signature,
            "threshold_source": source,
            "findings": [{"finding": names[j], "probability": float(prob[i, j]),
                          "uncertainty": float(unc[i, j]), "threshold": thr[j],
                          "above_threshold": bool(prob[i, j] >= thr[j]),
                          "decision": str(decision[i, j]), "threshold_from": how[j],
                          "threshold_positives": positives[j]}
                         for j in range(prob.shape[1])],
        })
    return results


def _threshold_provenance(outputs: Mapping[str, np.ndarray], names: Sequence[str], source: str,
                          provenance: Optional[Mapping[str, Mapping[str, object]]]
                          ) -> Tuple[List[str], List[Optional[int]]]:
    """(how each threshold was set, positives it was chosen from) per finding: from the signature's
    outputs, else from a thresholds.json's provenance, else ``fallback`` for the client's own 0.5."""
    n = len(names)
    if source == "default":
        return [M.SOURCE_FALLBACK] * n, [None] * n
    if MD.THRESHOLD_SOURCES in outputs:
        arr = np.asarray(outputs[MD.THRESHOLD_SOURCES])
        how = _to_str_list(arr[0] if arr.ndim == 2 else arr)
        pos = np.asarray(outputs.get(MD.THRESHOLD_POSITIVES, np.full((n,), -1)))
        pos = pos[0] if pos.ndim == 2 else pos
        if len(how) == n and pos.shape == (n,):
            return how, [int(x) if int(x) >= 0 else None for x in pos]
    prov = provenance or {}
    how = [str((prov.get(name) or {}).get("source", M.SOURCE_UNKNOWN)) for name in names]
    pos = [(prov.get(name) or {}).get("positives") for name in names]
    return how, [int(x) if isinstance(x, (int, float)) and x >= 0 else None for x in pos]


# --------------------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------------------
def _make_request(encoded: Sequence[bytes], model: str, signature: str,
                  version: Optional[int] = None, version_label: Optional[str] = None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = int(version)
    elif version_label:
        req.model_spec.version_label = version_label
    if signature == MD.IMAGE_SIGNATURE:
        key, values = MD.IMAGES_INPUT, list(encoded)
    else:  # the tf.Example signature (serving_default)
        key, values = MD.EXAMPLES_INPUT, [image_example(b) for b in encoded]
    req.inputs[key].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string, shape=[len(values)]))
    return req


def _explain(err, server: str, model: str, signature: str, timeout_s: float, attempts: int,
             stub=None) -> ServingError:
    """Turn a ``grpc.RpcError`` into a message that says what to do."""
    import grpc

    code = err.code()
    detail = err.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        msg = (f"cannot reach TF Serving at {server} (UNAVAILABLE after {attempts} attempt(s)): "
               f"is the server running and is {server} its gRPC port (8500; 8501 is REST)? "
               f"[{detail}]")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        msg = (f"no answer from {server} within {timeout_s:g} s (DEADLINE_EXCEEDED): the server is "
               f"overloaded or still loading the model; raise --timeout")
    elif code == grpc.StatusCode.NOT_FOUND and "Specific(" in detail:
        # TF Serving's words for a version that is not loaded: the model name is right.
        msg = (f"model {model!r} is served at {server}, but not the version asked for (NOT_FOUND): "
               f"the version policy in models.config decides which versions are loaded; drop --version "
               f"for the latest, or use --version-label. Server said: {detail}")
    elif code == grpc.StatusCode.NOT_FOUND:
        msg = (f"model {model!r} is not served at {server} (NOT_FOUND): check --model against the "
               f"name in models.config. Server said: {detail}")
    elif code == grpc.StatusCode.INVALID_ARGUMENT and "version label" in detail.lower():
        msg = (f"model {model!r} at {server} has no such version label (INVALID_ARGUMENT): labels are "
               f"the version_labels of models.config. Server said: {detail}")
    elif code == grpc.StatusCode.FAILED_PRECONDITION and "signature" in detail.lower():
        avail = _available_signatures(stub, model, timeout_s) if stub is not None else None
        msg = (f"model {model!r} has no signature {signature!r}"
               + (f"; available: {avail}" if avail else "") + f". Server said: {detail}")
    elif code == grpc.StatusCode.INVALID_ARGUMENT:
        msg = f"the server rejected the request (INVALID_ARGUMENT): {detail}"
    else:
        msg = f"Predict failed at {server} ({code.name}): {detail}"
    return ServingError(msg, code.name)


def _available_signatures(stub, model: str, timeout_s: float) -> Optional[List[str]]:
    try:
        return sorted(get_signature_defs(stub, model, timeout_s))
    except Exception:  # best effort: only used to improve an error message
        return None


def get_signature_defs(stub, model: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Dict[str, object]:
    """``{name: SignatureDef}`` of the served model via ``GetModelMetadata``."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = model
    req.metadata_field.append("signature_def")
    resp = stub.GetModelMetadata(req, timeout=timeout_s)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sig_map)
    return dict(sig_map.signature_def)


def _call_with_retries(fn, request, timeout_s: float, retries: int, backoff_s: float):
    """Call ``fn(request)``; retry only UNAVAILABLE (server starting/restarting) and RESOURCE_EXHAUSTED
    (a server shedding load), exponential backoff."""
    import grpc

    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(request, timeout=timeout_s), attempt
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED) \
                    or attempt > retries:
                e.attempts = attempt
                raise
            time.sleep(backoff_s * (2 ** (attempt - 1)))


def make_channel(server: str):
    """An insecure gRPC channel with message limits large enough for full-size radiographs."""
    import grpc

    return grpc.insecure_channel(server, options=[
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # Reconnect quickly so our UNAVAILABLE retries can reach a server that just (re)started.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000)])


class PredictClient:
    """A reusable connection: ``predict_encoded(list_of_bytes)`` -> raw outputs (numpy)."""

    def __init__(self, server: str, model: str = DEFAULT_MODEL,
                 signature: str = MD.IMAGE_SIGNATURE, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, backoff_s: float = 0.25,
                 version: Optional[int] = None, version_label: Optional[str] = None):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.server, self.model, self.signature = server, model, signature
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.version, self.version_label = version, version_label
        self.channel = make_channel(server)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.last_version: Optional[int] = None

    def predict_encoded(self, encoded: Sequence[bytes]) -> Dict[str, np.ndarray]:
        """One Predict call for a batch of encoded images; raises :class:`ServingError`."""
        import grpc
        import tensorflow as tf

        if not encoded:
            raise ServingError("nothing to predict: empty batch", "INVALID_ARGUMENT")
        req = _make_request(encoded, self.model, self.signature, self.version, self.version_label)
        try:
            resp, _ = _call_with_retries(self.stub.Predict, req, self.timeout_s, self.retries,
                                         self.backoff_s)
        except grpc.RpcError as e:
            raise _explain(e, self.server, self.model, self.signature, self.timeout_s,
                           getattr(e, "attempts", 1), self.stub) from None
        self.last_version = resp.model_spec.version.value if resp.model_spec.HasField("version") \
            else None
        return {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "PredictClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def predict_files(server: str, files: List[str], model: str = DEFAULT_MODEL,
                  signature: str = MD.IMAGE_SIGNATURE, timeout_s: float = DEFAULT_TIMEOUT_S,
                  *, retries: int = DEFAULT_RETRIES, batch_size: int = DEFAULT_BATCH,
                  model_dir: Optional[str] = None, labels: Optional[Sequence[str]] = None,
                  thresholds: Optional[Mapping[str, float]] = None,
                  version: Optional[int] = None, version_label: Optional[str] = None,
                  image_size: Optional[int] = None, encoded: Optional[Sequence[bytes]] = None) -> List[dict]:
    """Predict every file through TF Serving's gRPC ``Predict``; one result dict per file, in order.

    ``model_dir`` (a local copy of the served SavedModel, or its base path) supplies finding names and
    operating thresholds when the model's outputs do not; ``labels``/``thresholds`` override both.
    Raises :class:`InputFileError` for a bad file (before anything is sent) and
    :class:`ServingError` for a failed call.
    """
    if not files:
        raise ServingError("no files given", "INVALID_ARGUMENT")
    provenance = None
    if model_dir is not None and thresholds is None:
        provenance = MD.read_threshold_provenance(_resolve_saved_model_dir(model_dir))
    labels, thresholds = _assets_for(model_dir, labels, thresholds)
    # ``encoded``: the files already encoded by the caller (the CLI checks each file once)
    encoded = list(encoded) if encoded is not None else _encode_all(files, image_size)
    results: List[dict] = []
    with PredictClient(server, model, signature, timeout_s, retries, version=version,
                       version_label=version_label) as client:
        for i in range(0, len(files), batch_size):
            out = client.predict_encoded(encoded[i:i + batch_size])
            results += build_results(files[i:i + batch_size], out, model, client.last_version,
                                     signature, labels, thresholds, provenance)
    return results


def _assets_for(model_dir, labels, thresholds):
    if model_dir is not None:
        a_labels, a_thr = read_model_assets(_resolve_saved_model_dir(model_dir))
        labels = labels if labels is not None else a_labels
        thresholds = thresholds if thresholds is not None else a_thr
    return labels, thresholds


def predict_files_local(saved_model_dir: str, files: List[str],
                        signature: str = MD.IMAGE_SIGNATURE,
                        batch_size: int = DEFAULT_BATCH, loaded=None,
                        image_size: Optional[int] = None,
                        encoded: Optional[Sequence[bytes]] = None) -> List[dict]:
    """In-process fallback with the result shape of :func:`predict_files` (no server involved).

    Calls the SavedModel's signature exactly as TF Serving would (same inputs, same outputs).
    ``saved_model_dir`` may be a SavedModel or a TF Serving base path (latest version).
    """
    import tensorflow as tf

    path = _resolve_saved_model_dir(saved_model_dir)
    labels, thresholds = read_model_assets(path)
    provenance = MD.read_threshold_provenance(path)
    loaded = loaded if loaded is not None else tf.saved_model.load(path)
    if signature not in loaded.signatures:
        raise ServingError(f"SavedModel {path} has no signature {signature!r}; available: "
                           f"{sorted(loaded.signatures)}", "FAILED_PRECONDITION")
    fn = loaded.signatures[signature]
    # ``encoded``: the files already encoded by the caller (the CLI checks each file once)
    encoded = list(encoded) if encoded is not None else _encode_all(files, image_size)
    version = MD.version_of(path)
    results: List[dict] = []
    for i in range(0, len(files), batch_size):
        chunk = encoded[i:i + batch_size]
        if signature == MD.IMAGE_SIGNATURE:
            out = fn(**{MD.IMAGES_INPUT: tf.constant(chunk)})
        else:
            out = fn(**{MD.EXAMPLES_INPUT: tf.constant([image_example(b) for b in chunk])})
        results += build_results(files[i:i + batch_size], {k: v.numpy() for k, v in out.items()},
                                 Path(path).parent.name if version is not None else Path(path).name,
                                 version, signature, labels, thresholds, provenance)
    return results


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
def format_table(results: Sequence[dict]) -> str:
    """A plain-text table per file: finding, probability, uncertainty, threshold, above/below."""
    lines: List[str] = []
    for r in results:
        head = f"{r['file']}  (model {r['model']}"
        head += f" v{r['version']}" if r.get("version") is not None else ""
        head += f", signature {r['signature']})"
        lines.append(head)
        width = max([len("finding")] + [len(f["finding"]) for f in r["findings"]])
        lines.append(f"  {'finding':<{width}}  {'prob':>6}  {'uncert':>6}  {'thresh':>6}  {'call':<9}  "
                     f"threshold set by")
        lines.append("  " + "-" * (width + 62))
        marks = set()
        for f in sorted(r["findings"], key=lambda f: -f["probability"]):
            decision = f.get("decision") or ("above" if f["above_threshold"] else "below")
            call = {"above": "ABOVE", "below": "below", "uncertain": "uncertain"}.get(decision, decision)
            how = f.get("threshold_from", M.SOURCE_UNKNOWN)
            marks.add(how)
            marks.add(decision)
            lines.append(f"  {f['finding']:<{width}}  {f['probability']:6.3f}  "
                         f"{f['uncertainty']:6.3f}  {f['threshold']:6.3f}  {call:<9}  "
                         f"{_threshold_phrase(how, f.get('threshold_positives'))}")
        if r.get("threshold_source") == "default":
            lines.append(f"  (no operating thresholds known: {FALLBACK_THRESHOLD} used; pass "
                         f"--model-dir or --thresholds)")
        if "uncertain" in marks:
            lines.append("  uncertain: |prob - thresh| < uncert (the model's own spread), so no call is "
                         "made; --json keeps the raw numbers")
        if M.SOURCE_FALLBACK in marks:
            lines.append("  FALLBACK: the split the thresholds were chosen on had no positives (or no "
                         "negatives) for that finding; 0.5 stands in")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _threshold_phrase(how: str, positives: Optional[int]) -> str:
    if how == M.SOURCE_CHOSEN:
        return f"chosen on {positives} positive(s)" if positives is not None else "chosen"
    if how == M.SOURCE_FALLBACK:
        return "FALLBACK (no positives)" if not positives else "FALLBACK (no negatives)"
    return how


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; exit codes: 0 ok, 2 a bad input file (the others are still sent) or bad
    --labels/--thresholds, 1 server/model error (see :mod:`cxr_tfp.cli`)."""
    p = argparse.ArgumentParser(prog="python -m cxr_tfp.client",
                                description="Classify chest X-rays (PNG/JPEG/DICOM) via TF Serving.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--server", default="127.0.0.1:8500", help="HOST:PORT of the gRPC endpoint")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name in models.config")
    p.add_argument("--signature", default=MD.IMAGE_SIGNATURE,
                   choices=[MD.IMAGE_SIGNATURE, MD.SERVING_SIGNATURE])
    p.add_argument("--version", type=int, default=None, help="a specific model version")
    p.add_argument("--version-label", default=None, help="e.g. stable or canary")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="deadline per call (s)")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries on UNAVAILABLE or RESOURCE_EXHAUSTED")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--model-dir", default=None,
                   help="local copy of the SavedModel (or base path): finding names + thresholds")
    p.add_argument("--labels", default=None, help="labels.txt: one finding per line")
    p.add_argument("--thresholds", default=None, help="thresholds.json (as export/evaluate write it, or {finding: threshold})")
    p.add_argument("--local", default=None, metavar="SAVED_MODEL",
                   help="run the SavedModel in process instead of calling a server")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize every file as the ingestion stores it before sending "
                        "(default: send PNG/JPEG as-is, DICOM at full size)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    labels = _read_labels_file(a.labels) if a.labels else None
    thresholds = _read_thresholds_file(a.thresholds) if a.thresholds else None
    # One bad file is reported (one line, naming it) and the others still go through.
    good, payloads, bad = [], [], 0
    for f in a.files:
        try:
            payloads.append(encode_file(f, a.image_size)[0])
            good.append(f)
        except InputFileError as e:
            print(f"error: {e}", file=sys.stderr)
            bad += 1
    results: List[dict] = []
    if good:
        try:
            if a.local:
                results = predict_files_local(a.local, good, a.signature, a.batch_size,
                                              image_size=a.image_size, encoded=payloads)
            else:
                results = predict_files(a.server, good, a.model, a.signature, a.timeout,
                                        retries=a.retries, batch_size=a.batch_size,
                                        model_dir=a.model_dir, labels=labels, thresholds=thresholds,
                                        version=a.version, version_label=a.version_label,
                                        image_size=a.image_size, encoded=payloads)
        except (ServingError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(json.dumps(results, indent=2) if a.json else format_table(results), end="" if not a.json
              else "\n")
    if bad:
        print(f"error: {bad} of {len(a.files)} file(s) could not be sent (see above)", file=sys.stderr)
        return 2
    return 0


def _read_labels_file(path: str) -> List[str]:
    """--labels: one finding per line (UTF-8); a bad file is a one-line user error."""
    from cxr_tfp.cli import UsageError

    try:
        labels = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise UsageError(f"--labels {path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UsageError(f"--labels {path}: {e.strerror or e}") from None
    if not labels:
        raise UsageError(f"--labels {path}: no finding names (expected one per line)")
    return labels


def _read_thresholds_file(path: str) -> Dict[str, float]:
    """--thresholds: a JSON object {finding: number}; a bad file is a one-line user error."""
    from cxr_tfp.cli import UsageError

    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UsageError(f"--thresholds {path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--thresholds {path}: not valid JSON (line {e.lineno}, column {e.colno}: "
                         f"{e.msg})") from None
    except OSError as e:
        raise UsageError(f"--thresholds {path}: {e.strerror or e}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"--thresholds {path}: expected a JSON object {{finding: threshold}}")
    out = {}
    for k, v in obj.items():
        if isinstance(v, dict):   # thresholds.json as export / evaluate write it
            v = v.get("threshold")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise UsageError(f"--thresholds {path}: {k!r} must be a number in [0, 1], got {v!r}")
        out[str(k)] = float(v)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
