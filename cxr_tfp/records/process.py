"""The per-element work of the build: one :class:`SourceRecord` -> one serialized tf.Example.

Pure Python (Pillow, numpy, pydicom; no TensorFlow: the tf.Example is written by
:mod:`cxr_tfp.records.example_codec`), so it is unit tested without Beam and is the same code the Beam
``DoFn`` and the benchmark's single-process loop run. Every failure becomes a dead-letter dict; nothing raises for a bad input.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cxr_tfp import features as F
from cxr_tfp.records.example_codec import serialize
from cxr_tfp.annotations import AnnotationError, check_region, gaze_heatmap, region_mask
from cxr_tfp.datasets.base import SourceRecord
from cxr_tfp.io.errors import InputError
from cxr_tfp.io.images import decode_image, read_bytes, resize_to_square
from cxr_tfp.privacy import assign_split, example_key, patient_key, redact, DEFAULT_FRACTIONS


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
    image_size: int = 256
    resize_mode: str = "stretch"
    salt: Optional[str] = None
    split_fractions: Tuple[float, float, float] = DEFAULT_FRACTIONS
    max_pixels: Optional[int] = None        # header-checked pixel limit (None: cxr_tfp.io.limits default)
    allow_burned_in: bool = False           # keep DICOMs with BurnedInAnnotation YES
    redact_sources: bool = False            # dead-letter reasons carry no header value at all


def dead_letter(source: str, stage: str, reason: str, kind: str, dataset: str) -> Dict[str, str]:
    return {"source": source, "stage": stage, "reason": reason, "kind": kind, "dataset": dataset}


def _reason(exc: BaseException, secrets: Sequence[Optional[str]], strict: bool = False) -> Tuple[str, str]:
    """(stage, reason) for an exception, with identifiers scrubbed (``strict``: no header value)."""
    if isinstance(exc, InputError):
        return exc.stage, redact(exc.redacted if strict else str(exc), secrets)
    if isinstance(exc, AnnotationError):
        return "annotations", redact(str(exc), secrets)
    if isinstance(exc, MemoryError):
        return "decode", "out of memory decoding the image"
    msg = str(exc).splitlines()[0][:200] if str(exc) else ""
    return "process", redact(f"{type(exc).__name__}: {msg}".rstrip(": "), secrets)


def _reject_all(rec: SourceRecord, stage: str, reason: str) -> List[Dict[str, str]]:
    out = [dead_letter(rec.source, stage, reason, "example", rec.dataset)]
    why = f"its image was rejected ({reason})"
    for r in rec.regions:
        out.append(dead_letter(r.source or rec.source, "join", why, "annotation", rec.dataset))
    if rec.gaze is not None:
        out.append(dead_letter(rec.gaze.source or rec.source, "join", why, "annotation", rec.dataset))
    for _ in range(rec.extra_inputs):
        out.append(dead_letter(rec.source, "join", why, "annotation", rec.dataset))
    return out


def process_record(rec: SourceRecord, cfg: ProcessConfig
                   ) -> Tuple[Optional[Tuple[str, bytes, Dict]], List[Dict[str, str]]]:
    """-> ((split, serialized example, stats) or None, dead letters)."""
    secrets = [rec.patient_id, rec.image_id, rec.image_path]
    try:
        decoded = decode_image(read_bytes(rec.image_path), max_pixels=cfg.max_pixels,
                               allow_burned_in=cfg.allow_burned_in)
    except Exception as exc:  # noqa: BLE001  (every failure is a dead letter)
        stage, reason = _reason(exc, secrets, cfg.redact_sources)
        return None, _reject_all(rec, stage, reason)
    secrets += [decoded.patient_id, decoded.study_id, decoded.image_id]
    dead: List[Dict[str, str]] = []
    try:
        patient = rec.patient_id or decoded.patient_id or decoded.study_id or rec.source
        image_id = rec.image_id or decoded.image_id or rec.source
        view = rec.view if rec.view is not None else (decoded.view or "UNKNOWN")
        stored, geo = resize_to_square(decoded.pixels, cfg.image_size, cfg.resize_mode)
        ok_regions = []
        for r in rec.regions:
            try:
                check_region(r, geo, rec.frame)
                ok_regions.append(r)
            except AnnotationError as exc:
                dead.append(dead_letter(r.source or rec.source, "annotations", redact(str(exc), secrets),
                                        "annotation", rec.dataset))
        mask = region_mask(ok_regions, geo, rec.frame) if ok_regions else None
        gaze = None
        if rec.gaze is not None:
            try:
                gaze = gaze_heatmap(rec.gaze, geo, rec.frame)
            except AnnotationError as exc:
                dead.append(dead_letter(rec.gaze.source or rec.source, "annotations",
                                        redact(str(exc), secrets), "annotation", rec.dataset))
        # Keys sealed on the launcher (cxr_tfp.workfiles) win: the raw ids never reached this worker.
        split = rec.split or assign_split(patient, rec.namespace, cfg.salt, cfg.split_fractions)
        er = F.ExampleRecord(
            image=stored, labels=rec.labels, label_mask=rec.label_mask,
            patient_key=rec.patient_key or patient_key(patient, rec.namespace, cfg.salt),
            example_key=rec.example_key or example_key(image_id, rec.namespace, cfg.salt),
            dataset=rec.dataset, view=view, gaze=gaze, box_mask=mask)
        data = serialize(er)
    except Exception as exc:  # noqa: BLE001
        stage, reason = _reason(exc, secrets, cfg.redact_sources)
        return None, _reject_all(rec, stage, reason)
    lab = np.asarray(rec.labels, np.float32) * np.asarray(rec.label_mask, np.float32)
    stats = {
        "split": split,
        "pos": [int(i) for i in np.flatnonzero(lab > 0.5)],
        "known": [int(i) for i in np.flatnonzero(np.asarray(rec.label_mask) > 0.5)],
        "gaze": int(gaze is not None), "boxes": int(mask is not None),
        "ann_ok": rec.n_annotation_inputs - len(dead),
    }
    return (split, data, stats), dead
