"""The build's accounting: summary.json, dead_letters.jsonl and the rejected-fraction check.

Pure Python over plain values (no Beam, no TensorFlow): the Beam graph (:mod:`cxr_tfp.records.graph`)
delivers per-example stats combined into one dict and the workers' dead-letter lines; this module
turns them, with the adapter's own rejections, into the summary that :mod:`cxr_tfp.records.build`
writes. ``in == written + rejected`` always holds (see the build's docstring for the terms).
"""
from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

from cxr_tfp.datasets.base import Rejected
from cxr_tfp.features import SPLITS
from cxr_tfp.labels import FINDINGS
from cxr_tfp.privacy import pseudonym, salt_fingerprint
from cxr_tfp.records.process import dead_letter
from cxr_tfp.records.shards import SHARD_SUFFIX

# Kept out of summary.json (returned and printed only): the file is byte-reproducible.
TIMING_KEYS = ("seconds", "images_per_second")
_EMPTY_STATS: Dict[str, Any] = {"written": {}, "pos": {}, "known": {}, "gaze": {}, "boxes": {}, "any": {},
                                "ann_ok": 0}


def empty_stats() -> Dict[str, Any]:
    """The combined stats of no example (the Beam combiner's accumulator starts from it)."""
    return copy.deepcopy(_EMPTY_STATS)


def rejected_line(r: Rejected, dataset: str) -> Dict[str, str]:
    return dead_letter(r.source, r.stage, r.reason, r.kind, dataset)


def summarise(dataset, root, out, cfg, adapter, records, pre_rejected, worker_dead, stats, seconds,
               max_rejected_fraction, runner, workers) -> Dict[str, Any]:
    ex_in = len(records) + sum(1 for r in pre_rejected if r.kind == "example")
    ann_in = sum(r.n_annotation_inputs for r in records) + sum(1 for r in pre_rejected if r.kind == "annotation")
    dead_all = [rejected_line(r, dataset) for r in pre_rejected] + worker_dead
    ex_rej = sum(1 for d in dead_all if d["kind"] == "example")
    ann_rej = sum(1 for d in dead_all if d["kind"] == "annotation")
    written_per_split = {sp: int(stats["written"].get(sp, 0)) for sp in SPLITS}
    ex_written = sum(written_per_split.values())
    ann_written = int(stats["ann_ok"])
    n_in = ex_in + ann_in
    n_rej = ex_rej + ann_rej

    def per_finding(key):
        return {sp: {FINDINGS[int(i)]: n for i, n in sorted(stats[key].get(sp, {}).items(), key=lambda kv: int(kv[0]))}
                for sp in SPLITS}

    labelled = per_finding("known")
    positives = {sp: {f: per_finding("pos")[sp].get(f, 0) for f in labelled[sp]} for sp in SPLITS}
    by_stage = Counter(d["stage"] for d in dead_all)
    by_reason = Counter(f"{d['stage']}: {d['reason']}" for d in dead_all)
    return {
        "status": "ok",
        "dataset": dataset,
        "root": str(root),
        "out": str(out),
        "image_size": cfg.image_size,
        "resize_mode": cfg.resize_mode,
        "split_fractions": list(cfg.split_fractions),
        "salt_fingerprint": salt_fingerprint(cfg.salt),
        "runner": runner,
        "workers": workers,
        "in": n_in,
        "written": ex_written + ann_written,
        "rejected": n_rej,
        "rejected_fraction": (n_rej / n_in) if n_in else 0.0,
        "max_rejected_fraction": max_rejected_fraction,
        "examples": {"in": ex_in, "written": ex_written, "rejected": ex_rej},
        "annotations": {"in": ann_in, "written": ann_written, "rejected": ann_rej},
        "written_per_split": written_per_split,
        "positives": positives,
        "labelled": labelled,
        "annotated": {sp: {"gaze": int(stats["gaze"].get(sp, 0)), "boxes": int(stats["boxes"].get(sp, 0)),
                           "any": int(stats["any"].get(sp, 0))} for sp in SPLITS},
        "rejected_by_stage": dict(sorted(by_stage.items())),
        # Ties ordered by reason, not by arrival order (which the runner decides): reproducible bytes.
        "top_rejection_reasons": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
        "skipped": dict(sorted(getattr(adapter, "skipped", {}).items())),
        "files": {sp: sorted(f.name for f in (out / sp).glob(f"*{SHARD_SUFFIX}")) for sp in SPLITS},
        "seconds": round(seconds, 3),
        "images_per_second": round(ex_in / seconds, 2) if seconds > 0 else None,
    }


def annotation_line(summary: Dict[str, Any]) -> str:
    """How many written examples carry each annotation kind, per split (one line for people)."""
    ann = summary.get("annotated") or {}
    parts = [f"{sp} {ann.get(sp, {}).get('any', 0)} (gaze {ann.get(sp, {}).get('gaze', 0)}, "
             f"boxes {ann.get(sp, {}).get('boxes', 0)})" for sp in SPLITS]
    return "annotated examples: " + ", ".join(parts)


def write_dead_letters(out: Path, lines: List[Dict[str, str]], redact_sources: bool, salt) -> None:
    rows = []
    for d in lines:
        d = dict(d)
        if redact_sources:
            d["source"] = "redacted:" + pseudonym(d["source"], "source", "source", salt, 16)
        rows.append(json.dumps(d, sort_keys=True))
    rows.sort()
    (out / "dead_letters.jsonl").write_text("".join(r + "\n" for r in rows))


def check_fraction(summary: Dict[str, Any], limit: float) -> Optional[str]:
    if summary["in"] and summary["rejected"] / summary["in"] > limit:
        reasons = "; ".join(f"{k} ({v})" for k, v in list(summary["top_rejection_reasons"].items())[:3])
        return (f"rejected {summary['rejected']} of {summary['in']} inputs "
                f"({100.0 * summary['rejected'] / summary['in']:.1f}%), more than --max-rejected-fraction "
                f"{limit:g}; most common: {reasons}. See dead_letters.jsonl")
    return None
