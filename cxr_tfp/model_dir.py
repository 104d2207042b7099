"""The model directory contract: what export writes and what serving, the client and evaluation read.

One exported model is a SavedModel folder::

    <export_dir>/saved_model.pb, variables/
    <export_dir>/assets/labels.txt                       finding names, one a line, in output order
    <export_dir>/assets/thresholds.json                  {finding: {"threshold", "source", "method", "split",
                                                                    "positives", "negatives"}}
    <export_dir>/assets/serving.json                     precision (asked, chosen, why), XLA, TF Serving flags
    <export_dir>/assets.extra/tf_serving_warmup_requests PredictionLogs replayed by TF Serving at load

TF Serving serves a *base path* ``<serving_root>/<MODEL_NAME>/<version>/`` (numeric version
folders, the highest served); a folder that holds ``saved_model.pb`` itself counts as version 1.

Signatures: :data:`SERVING_SIGNATURE` takes :data:`EXAMPLES_INPUT` (serialized tf.Examples) and
returns :data:`PROBABILITIES`, :data:`UNCERTAINTY` and :data:`PROBABILITIES_FULL`;
:data:`IMAGE_SIGNATURE` takes :data:`IMAGES_INPUT` (encoded PNG/JPEG) and returns
:data:`PROBABILITIES`, :data:`UNCERTAINTY`, :data:`LABEL_NAMES` and :data:`THRESHOLDS`.

No TensorFlow import: the client, the stand-in server and TFX components read this cheaply.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

PathLike = Union[str, os.PathLike]

# The served model's name: TF Serving's --model_name, the push base path's folder, the client's default.
MODEL_NAME = "cxr_tfp"

# Signatures and their tensors.
SERVING_SIGNATURE = "serving_default"   # input: EXAMPLES_INPUT, a batch of serialized tf.Example
IMAGE_SIGNATURE = "predict_images"      # input: IMAGES_INPUT, a batch of encoded PNG/JPEG bytes
EXAMPLES_INPUT = "examples"
IMAGES_INPUT = "images"
PROBABILITIES = "probabilities"        # float[B, L]: mean over latent samples
UNCERTAINTY = "uncertainty"            # float[B, L]: std over latent samples
PROBABILITIES_FULL = "probabilities_full"  # float[B, NUM_FINDINGS]: PROBABILITIES scattered to their
                                           # FINDINGS columns, 0 elsewhere (lines up with LABELS for TFMA)
LABEL_NAMES = "label_names"            # string[B, L] (IMAGE_SIGNATURE): finding names, a copy per row so
                                       # TF Serving's batching can split it; clients need no model files
THRESHOLDS = "thresholds"              # float[B, L] (IMAGE_SIGNATURE): operating threshold per finding
THRESHOLD_SOURCES = "threshold_sources"  # string[B, L] (IMAGE_SIGNATURE): how each was set: chosen |
                                         # fallback | fixed | unknown (cxr_tfp.metrics.THRESHOLD_SOURCES)
THRESHOLD_POSITIVES = "threshold_positives"  # int32[B, L] (IMAGE_SIGNATURE): positives it was chosen from

# Files.
SAVED_MODEL_FILE = "saved_model.pb"
ASSETS_DIR = "assets"
LABELS_ASSET = "labels.txt"            # one finding per line, in model output order
THRESHOLDS_ASSET = "thresholds.json"   # {finding: {"threshold": t, "source": ..., ...}} (older: {finding: t})
WEIGHTS_ASSET = "weights.json"         # what the backbone started from (cxr_tfp.weights; null = random init)
SERVING_ASSET = "serving.json"         # how the export computes: precision asked / chosen, CPU units, XLA
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# What a SavedModel folder may hold; anything else in an existing export_dir is refused, not deleted.
SAVED_MODEL_ENTRIES = (SAVED_MODEL_FILE, "saved_model.pbtxt", "variables", ASSETS_DIR, "assets.extra",
                       "fingerprint.pb", "keras_metadata.pb")

# gRPC's 4 MiB default is too small for a batch of full-size radiographs; TF Serving accepts far more.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def is_saved_model(path: PathLike) -> bool:
    """True for a folder holding ``saved_model.pb``."""
    return Path(path, SAVED_MODEL_FILE).is_file()


def find_versions(model_base_path: PathLike) -> Dict[int, str]:
    """``{version: dir}`` for the SavedModels under a TF Serving base path.

    A folder that holds ``saved_model.pb`` itself counts as version 1 (handy for a bare export).
    Numeric folders without ``saved_model.pb`` (a push in progress) are ignored.
    """
    base = Path(model_base_path)
    if is_saved_model(base):
        return {1: str(base)}
    versions = {}
    if base.is_dir():
        for child in base.iterdir():
            if child.name.isdigit() and is_saved_model(child):
                versions[int(child.name)] = str(child)
    return versions


def pushed_versions(model_base_path: PathLike) -> List[int]:
    """Numeric version folders holding a SavedModel under a base path, ascending."""
    base = Path(model_base_path)
    if not base.is_dir():
        return []
    return sorted(int(c.name) for c in base.iterdir() if c.name.isdigit() and is_saved_model(c))


def latest(path: PathLike) -> str:
    """A SavedModel folder, or the latest numeric version under a TF Serving base path."""
    versions = find_versions(path)
    if not versions:
        raise FileNotFoundError(f"no SavedModel ({SAVED_MODEL_FILE}) in {str(path)!r} or its version folders")
    return versions[max(versions)]


def version_of(saved_model_dir: PathLike) -> Optional[int]:
    """The version number of a folder under a base path (its numeric name), else None."""
    name = Path(saved_model_dir).name
    return int(name) if name.isdigit() else None


def labels_path(export_dir: PathLike) -> Path:
    return Path(export_dir, ASSETS_DIR, LABELS_ASSET)


def thresholds_path(export_dir: PathLike) -> Path:
    return Path(export_dir, ASSETS_DIR, THRESHOLDS_ASSET)


def parse_labels(text: str) -> Tuple[str, ...]:
    """Finding names from a labels.txt text (blank lines ignored)."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def write_labels(path: PathLike, findings: Sequence[str]) -> None:
    Path(path).write_text("\n".join(findings) + "\n")


def thresholds_document(thresholds: Mapping[str, Optional[float]],
                        provenance: Optional[Mapping[str, Mapping[str, object]]] = None) -> Dict[str, dict]:
    """thresholds.json's content: per finding its threshold and how it was set (``source``: chosen,
    fallback, fixed or unknown; ``method``, ``split``, ``positives``, ``negatives`` when known)."""
    out = {}
    for k, v in thresholds.items():
        prov = dict((provenance or {}).get(k) or {})
        prov.setdefault("source", "unknown")
        out[str(k)] = {"threshold": None if v is None else float(v), **prov}
    return out


def write_thresholds(path: PathLike, thresholds: Mapping[str, float],
                     provenance: Optional[Mapping[str, Mapping[str, object]]] = None) -> None:
    Path(path).write_text(json.dumps(thresholds_document(thresholds, provenance), indent=2))


def _threshold_entries(obj) -> Dict[str, dict]:
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object {finding: threshold or {\"threshold\": ...}}")
    out = {}
    for k, v in obj.items():
        entry = dict(v) if isinstance(v, dict) else {"threshold": v, "source": "unknown"}
        out[str(k)] = entry
    return out


def read_thresholds_file(path: PathLike) -> Dict[str, float]:
    """``{finding: threshold}`` from a thresholds.json (the current per-finding objects or the older
    flat ``{finding: number}``)."""
    return {k: float(e["threshold"]) for k, e in _threshold_entries(json.loads(Path(path).read_text())).items()
            if e.get("threshold") is not None}


def read_threshold_provenance_file(path: PathLike) -> Dict[str, Dict[str, object]]:
    """``{finding: {"source", ...}}`` from a thresholds.json (``source: unknown`` for the older format)."""
    return {k: {kk: vv for kk, vv in e.items() if kk != "threshold"}
            for k, e in _threshold_entries(json.loads(Path(path).read_text())).items()}


def read_labels(export_dir: PathLike) -> Tuple[str, ...]:
    """Label names stored with an exported model, in output order."""
    return parse_labels(labels_path(export_dir).read_text())


def read_thresholds(export_dir: PathLike) -> Dict[str, float]:
    """Operating thresholds stored with an exported model."""
    return read_thresholds_file(thresholds_path(export_dir))


def read_threshold_provenance(export_dir: PathLike) -> Dict[str, Dict[str, object]]:
    """How each stored threshold was set ({} when the model has no thresholds.json)."""
    path = thresholds_path(export_dir)
    return read_threshold_provenance_file(path) if path.is_file() else {}


def read_assets(export_dir: PathLike) -> Tuple[Optional[List[str]], Optional[Dict[str, float]]]:
    """``(labels, thresholds)`` of a local SavedModel, None for the ones absent."""
    labels = list(read_labels(export_dir)) if labels_path(export_dir).is_file() else None
    thresholds = read_thresholds(export_dir) if thresholds_path(export_dir).is_file() else None
    return labels, thresholds


def serving_info_path(export_dir: PathLike) -> Path:
    return Path(export_dir, ASSETS_DIR, SERVING_ASSET)


def read_serving_info(export_dir: PathLike) -> Optional[Dict[str, object]]:
    """The export's ``assets/serving.json`` (precision chosen and why, XLA), None for older exports."""
    path = serving_info_path(export_dir)
    return json.loads(path.read_text()) if path.is_file() else None
