"""Fixture data for the Label Studio round trip: a raw folder with span 1 in NIH's layout, and a
requests folder in the contract of ``annotate requests`` (i23a's command writes the same files)."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from cxr_tfp import labels as L

DATA_ENTRY_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                     "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
                     "OriginalImagePixelSpacing[x", "y]"]


def make_raw_span(root: Path, sizes: Dict[str, Tuple[int, int]], boxes: Sequence[Sequence] = (),
                  span: str = "1") -> Path:
    """``root/span/`` with synthetic PNGs of the given sizes, a label table and a box table."""
    span_dir = root / span
    (span_dir / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, (name, (w, h)) in enumerate(sorted(sizes.items())):
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(span_dir / "images" / name)
        rows.append([name, "Effusion" if i % 2 else "No Finding", "0", str(100 + i), "50", "F", "PA",
                     str(w), str(h), "0.14", "0.14"])
    with open(span_dir / "Data_Entry_2017_v2020.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([DATA_ENTRY_HEADER] + rows)
    with open(span_dir / "BBox_List_2017.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]] + list(boxes))
    return span_dir


def link_nih_sample(shared: Path, root: Path, span: str = "1") -> Path:
    """``root/span/`` = the real NIH sample (tables copied, images hard-linked or copied)."""
    span_dir = root / span
    (span_dir / "images").mkdir(parents=True)
    for f in ("Data_Entry_2017_v2020.csv", "BBox_List_2017.csv"):
        shutil.copyfile(shared / "nih-sample" / f, span_dir / f)
    for p in sorted((shared / "nih-sample" / "images").glob("*.png")):
        try:
            os.link(p, span_dir / "images" / p.name)
        except OSError:
            shutil.copyfile(p, span_dir / "images" / p.name)
    return span_dir


def write_requests(out: Path, raw_root: Path, images: List[Tuple[str, int, int]],
                   boxes: Optional[List[Optional[Tuple[str, float, float, float, float]]]] = None,
                   findings: Sequence[str] = L.NIH_FINDINGS) -> Path:
    """``out/requests.csv`` and ``requests.json`` for ``images`` = [(path under raw_root, w, h)]."""
    out.mkdir(parents=True, exist_ok=True)
    header = ["rank", "image", "strategy", "score", "reason", "width", "height", "suggest_finding",
              "suggest_x", "suggest_y", "suggest_w", "suggest_h"]
    for n in findings:
        header += [f"p_{n}", f"u_{n}"]
    rows = []
    for k, (image, w, h) in enumerate(images):
        box = (boxes or [None] * len(images))[k]
        probs = [round(0.05 + 0.9 * ((k + 3 * j) % 7) / 7, 4) for j in range(len(findings))]
        top = findings[int(np.argmax(probs))] if box is None else box[0]
        row = [k + 1, image, "uncertainty", round(1.0 - 0.1 * k, 4),
               "the model's samples disagree most on this image", w, h, top]
        row += [""] * 4 if box is None else list(box[1:])
        for p in probs:
            row += [p, 0.1]
        rows.append(row)
    with open(out / "requests.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header] + rows)
    (out / "requests.json").write_text(json.dumps({
        "raw_root": str(raw_root), "dataset": "nih", "model": "/models/run1", "strategy": "uncertainty",
        "budget": len(images), "seed": 0, "findings": list(findings), "created": "2026-12-07T00:00:00+00:00",
        "candidates": 10 * len(images)}))
    return out
