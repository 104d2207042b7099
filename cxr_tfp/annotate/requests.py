"""Annotation requests: which unannotated images to send to the radiologists, best first.

``python -m cxr_tfp.annotate requests --model RUN --data RAW --dataset nih --budget K --out DIR``

The model scores every image ONCE (:mod:`cxr_tfp.annotate.scoring`); a strategy
(:mod:`cxr_tfp.annotate.strategies`: ``random`` - the seeded default and baseline -, ``uncertainty``,
``shift``; ``--diversity`` for any of them) ranks the unannotated ones; the top K are written through
a staging folder as ``DIR/requests.csv`` and ``DIR/requests.json`` (the table contract below, read by
``python -m cxr_tfp.annotate labelstudio``).

Data:

- a RAW folder (the primary loop): the dataset in its published layout, read by the dataset adapter
  (``--dataset``); when it holds numbered span folders (``1/``, ``2/``, ...) the latest span is the
  dataset, as in the pipeline's ExampleGen. Images are named by their path relative to RAW (POSIX),
  as the hospital knows them; images that already carry a box or gaze are not candidates, and they
  are what ``shift`` learns from.
- a RECORDS folder (the build's output): records carry salted keys, never paths, so rows are named
  by ``example_key``; give ``--raw-root`` (and the build's salt in ``$CXR_TFP_SALT``, as for the
  build) to name them by path and fill in the original size and the suggested box.

``requests.csv`` columns, in order: rank, image, strategy, score, reason, width, height,
suggest_finding, suggest_x, suggest_y, suggest_w, suggest_h (a box in original pixels around the
Grad-CAM peak of suggest_finding; empty when the map is flat or the original size is unknown), then
``p_<Finding>`` and ``u_<Finding>`` for every finding in the model's order. Nothing here logs a path:
progress lines give counts; the output folder is owner-only when it names images by path.

Python: ``request_annotations(model, data, budget=K, ...)`` returns the same table as a DataFrame.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from cxr_tfp.cli import UsageError, cli_main

CSV_NAME = "requests.csv"
JSON_NAME = "requests.json"
FIXED_COLUMNS = ("rank", "image", "strategy", "score", "reason", "width", "height", "suggest_finding",
                 "suggest_x", "suggest_y", "suggest_w", "suggest_h")
SPAN_RE = re.compile(r"^\d+$")


def columns(findings: Sequence[str]) -> List[str]:
    """The table's columns in contract order for a model's findings."""
    return list(FIXED_COLUMNS) + [c for f in findings for c in (f"p_{f}", f"u_{f}")]


@dataclasses.dataclass
class Pool:
    """Images read for ranking: candidates (unannotated) and the annotated fit set."""

    names: List[str]                          # candidate names (relative paths or example keys)
    images: np.ndarray                        # [N, S, S, 1] float32 in [0, 1]
    sizes: List[Optional[Tuple[int, int]]]    # original (width, height) per candidate, None if unknown
    windows: List[Optional[Tuple[float, float, float, float]]]  # source window of the stored square
    ann_images: np.ndarray                    # [M, S, S, 1]
    ann_maps: np.ndarray                      # [M, S, S, 2] gaze, box mask
    ann_gaze: np.ndarray                      # [M]
    ann_boxes: np.ndarray                     # [M]
    raw_root: Optional[str] = None
    dataset: Optional[str] = None
    skipped: int = 0                          # images that could not be read (counted, never named)
    paths: Optional[List[Optional[str]]] = None  # records named through --raw-root: source path per row


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[requests] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- data
def is_records_folder(path: Union[str, os.PathLike]) -> bool:
    """A build output (summary.json, or split folders of TFRecords) rather than a raw dataset."""
    p = Path(path)
    if (p / "summary.json").is_file():
        return True
    return any(p.glob("*.tfrecord*")) or any(p.glob("*/*.tfrecord*"))


def dataset_root(raw: Union[str, os.PathLike]) -> Path:
    """The folder holding the dataset: the latest numbered span folder if there are any, else ``raw``."""
    p = Path(raw)
    spans = sorted((int(c.name), c) for c in p.iterdir() if c.is_dir() and SPAN_RE.match(c.name))
    return spans[-1][1] if spans else p


def _adapter_records(raw: Path, dataset: str, image_size: int):
    from cxr_tfp.datasets import get_adapter
    from cxr_tfp.datasets.base import SourceRecord

    root = dataset_root(raw)
    adapter = get_adapter(dataset, str(root), image_size=image_size)
    adapter.check()
    return [it for it in adapter.items() if isinstance(it, SourceRecord)]


def _relative(path: str, raw: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(raw))).as_posix()


def read_raw(raw: Union[str, os.PathLike], dataset: str, image_size: int, resize_mode: str = "stretch",
             quiet: bool = False) -> Pool:
    """Decode every image of a raw dataset at the model's size; split into candidates and annotated."""
    from cxr_tfp.annotations import gaze_heatmap, region_mask
    from cxr_tfp.io.images import decode_image, read_bytes, resize_to_square

    raw = Path(raw)
    if not raw.is_dir():
        raise UsageError(f"--data {raw}: not a folder")
    records = _adapter_records(raw, dataset, image_size)
    if not records:
        raise UsageError(f"--data {raw}: the {dataset} adapter found no images")
    names, imgs, sizes, windows = [], [], [], []
    a_imgs, a_maps, a_gaze, a_boxes = [], [], [], []
    skipped = 0
    seen = set()
    _say(f"reading {len(records)} {dataset} records", quiet)
    for i, rec in enumerate(records, 1):
        name = _relative(rec.image_path, raw)
        try:
            decoded = decode_image(read_bytes(rec.image_path))
            stored, geo = resize_to_square(decoded.pixels, image_size, resize_mode)
            mask = region_mask(rec.regions, geo, rec.frame) if rec.regions else None
            gaze = gaze_heatmap(rec.gaze, geo, rec.frame) if rec.gaze is not None else None
        except Exception:  # noqa: BLE001  (an unreadable image is counted, never named: no paths in logs)
            skipped += 1
            continue
        image = stored.astype(np.float32)[..., None] / 255.0
        if mask is not None or gaze is not None:
            zeros = np.zeros((image_size, image_size), np.float32)
            a_imgs.append(image)
            a_maps.append(np.stack([zeros if gaze is None else gaze.astype(np.float32),
                                    zeros if mask is None else (mask > 0).astype(np.float32)], -1))
            a_gaze.append(float(gaze is not None))
            a_boxes.append(float(mask is not None))
        elif name not in seen:   # several table rows may name one image
            seen.add(name)
            names.append(name)
            imgs.append(image)
            sizes.append((int(geo.src_w), int(geo.src_h)))
            windows.append(tuple(float(v) for v in geo.window))
        if not quiet and (i % 200 == 0 or i == len(records)):
            _say(f"read {i}/{len(records)} images", quiet)
    # an image annotated in one table row is not a candidate even if another row has no box
    annotated_names = {_relative(r.image_path, raw) for r in records if r.regions or r.gaze is not None}
    keep = [j for j, n in enumerate(names) if n not in annotated_names]
    S = image_size
    return Pool([names[j] for j in keep], np.asarray([imgs[j] for j in keep], np.float32).reshape(-1, S, S, 1),
                [sizes[j] for j in keep], [windows[j] for j in keep],
                np.asarray(a_imgs, np.float32).reshape(-1, S, S, 1),
                np.asarray(a_maps, np.float32).reshape(-1, S, S, 2),
                np.asarray(a_gaze, np.float32), np.asarray(a_boxes, np.float32),
                raw_root=os.path.abspath(raw), dataset=dataset, skipped=skipped)


def read_records(records: Union[str, os.PathLike], image_size: int, findings: Sequence[str],
                 splits: Sequence[str] = ("train",), quiet: bool = False) -> Pool:
    """Examples of a build's splits: unannotated ones are candidates, named by example_key."""
    from cxr_tfp import features as F
    from cxr_tfp.input import list_files, make_dataset

    root = Path(records)
    patterns = []
    for s in splits:
        if (root / s).is_dir():
            patterns.append(str(root / s))
    if not patterns:
        raise UsageError(f"--data {root}: no split folder {'/'.join(splits)} with TFRecords (a build's output)")
    files = list_files(patterns)
    names, imgs = [], []
    a_imgs, a_maps, a_gaze, a_boxes = [], [], [], []
    n = 0
    for x, _, meta in make_dataset(files, image_size, findings, 64, with_meta=True):
        keys = [k.decode() for k in meta[F.EXAMPLE_KEY].numpy()]
        g, b = x[F.X_HAS_GAZE].numpy(), x[F.X_HAS_BOXES].numpy()
        im, ann = x[F.X_IMAGE].numpy(), x[F.X_ANNOTATION].numpy()
        for j, key in enumerate(keys):
            if g[j] > 0 or b[j] > 0:
                a_imgs.append(im[j]), a_maps.append(ann[j]), a_gaze.append(g[j]), a_boxes.append(b[j])
            else:
                names.append(key)
                imgs.append(im[j])
        n += len(keys)
        _say(f"read {n} examples", quiet)
    S = image_size
    return Pool(names, np.asarray(imgs, np.float32).reshape(-1, S, S, 1), [None] * len(names), [None] * len(names),
                np.asarray(a_imgs, np.float32).reshape(-1, S, S, 1),
                np.asarray(a_maps, np.float32).reshape(-1, S, S, 2),
                np.asarray(a_gaze, np.float32), np.asarray(a_boxes, np.float32))


def resolve_keys(pool: Pool, raw: Union[str, os.PathLike], dataset: str, image_size: int,
                 salt: Optional[str] = None, build_summary: Optional[dict] = None) -> None:
    """Name record rows by their path under ``raw`` (salted keys recomputed with the build's salt)."""
    from cxr_tfp.privacy import example_key, salt_fingerprint

    raw = Path(raw)
    fp = (build_summary or {}).get("salt_fingerprint")
    if fp and fp != salt_fingerprint(salt):
        raise UsageError(f"--raw-root: the salt in force (fingerprint {salt_fingerprint(salt)}) is not the "
                         f"build's ({fp}); set $CXR_TFP_SALT to the build's salt")
    by_key: Dict[str, str] = {}
    for rec in _adapter_records(raw, dataset, image_size):
        key = rec.example_key or example_key(rec.image_id or rec.source, rec.namespace, salt)
        by_key.setdefault(key, rec.image_path)
    hit = [k in by_key for k in pool.names]
    if pool.names and not any(hit):
        raise UsageError(f"--raw-root {raw}: none of the {len(pool.names)} example keys matches an image of the "
                         f"{dataset} dataset there (another dataset, or not the build's salt?)")
    pool.paths = [by_key.get(k) for k in pool.names]
    pool.names = [_relative(by_key[k], raw) if k in by_key else k for k in pool.names]
    pool.raw_root, pool.dataset = os.path.abspath(raw), dataset


# ------------------------------------------------------------------------------------------ ranking
def _load_model(model):
    """The model and its name. A run that stopped after stage 1 (its metrics.json says so) gets a zero
    posterior residual, as stage 2 would start: its residual network was never trained, and the
    ``shift`` strategy's measured posterior shift must not depend on its random initial weights."""
    if not isinstance(model, (str, os.PathLike)):
        return model, getattr(model, "name", "model")
    from cxr_tfp.model import load_model

    p = Path(model)
    path = p / "model.keras" if p.is_dir() else p
    if not path.is_file():
        raise UsageError(f"--model {model}: no model.keras (give a training output folder or a .keras file)")
    net = load_model(str(path))
    metrics = path.parent / "metrics.json"
    if metrics.is_file() and json.loads(metrics.read_text()).get("final_stage") == "stage1":
        net.init_posterior_from_prior()
    return net, str(model)


def request_annotations(model, data: Union[str, os.PathLike], budget: int, *, strategy: str = "random",
                        dataset: Optional[str] = None, seed: int = 0, diversity: float = 0.0,
                        raw_root: Optional[str] = None, salt: Optional[str] = None,
                        splits: Sequence[str] = ("train",), resize_mode: Optional[str] = None,
                        quiet: bool = True):
    """The top ``budget`` unannotated images of ``data`` (a raw folder with ``dataset``, or a records
    folder) by ``strategy``, as a DataFrame in the requests-table contract (module docstring); the
    ``requests.json`` fields are in ``df.attrs``. ``resize_mode``: how the model's training records
    were resized (default: the records' summary, else the build's default ``stretch``)."""
    import pandas as pd

    from cxr_tfp.annotate import scoring
    from cxr_tfp.annotate.strategies import get_strategy

    if budget < 1:
        raise UsageError(f"--budget must be at least 1, got {budget}")
    strat = get_strategy(strategy, seed=seed, diversity=diversity)   # unknown names fail before any work
    data = Path(data)
    if not data.is_dir():
        raise UsageError(f"--data {data}: no such folder")
    records_mode = is_records_folder(data)
    if not records_mode and not dataset:   # checked before the model is loaded: fail fast
        raise UsageError(f"--data {data} is a raw folder: give --dataset (one of the dataset adapters)")
    if raw_root and not Path(raw_root).is_dir():
        raise UsageError(f"--raw-root {raw_root}: no such folder")
    net, model_name = _load_model(model)
    S = int(net.image_size)
    summary = {}
    if records_mode:
        if (data / "summary.json").is_file():
            summary = json.loads((data / "summary.json").read_text())
        pool = read_records(data, S, net.findings, splits, quiet)
        if raw_root:
            ds = dataset or summary.get("dataset")
            if not ds:
                raise UsageError("--raw-root needs --dataset (the records folder has no summary.json naming it)")
            resolve_keys(pool, raw_root, ds, S, salt, summary)
        dataset = dataset or summary.get("dataset")
    else:
        pool = read_raw(data, dataset, S, resize_mode or "stretch", quiet)
    n, m = len(pool.names), len(pool.ann_images)
    _say(f"{n} unannotated candidates, {m} annotated images"
         + (f", {pool.skipped} unreadable images skipped" if pool.skipped else ""), quiet)
    cand = scoring.score_images(net, pool.images)
    annotated, shift = (scoring.annotated_scores(net, pool.ann_images, pool.ann_maps, pool.ann_gaze, pool.ann_boxes)
                        if m else (None, None))
    scores = scoring.make_scores(net, cand, annotated, shift)
    ranking = strat.rank(pool.names, scores, budget)
    rows = [pool.names.index(i) for i in ranking.ids]
    _say(f"ranked {n} candidates with {strat.name!r}; writing the top {len(rows)}", quiet)

    sizes = list(pool.sizes)
    windows = list(pool.windows)
    paths = pool.paths
    if paths is not None:   # records named through --raw-root: original sizes of the picks only
        from cxr_tfp.io.images import Geometry, decode_image, read_bytes

        for r in rows:
            if paths[r]:
                px = decode_image(read_bytes(paths[r])).pixels
                geo = Geometry(int(px.shape[1]), int(px.shape[0]), S,
                               resize_mode or summary.get("resize_mode", "stretch"))
                sizes[r], windows[r] = (geo.src_w, geo.src_h), tuple(float(v) for v in geo.window)
    probs, unc = scores.probabilities, scores.uncertainty
    top = [int(np.argmax(probs[r])) for r in rows]
    boxes = scoring.suggest_boxes(net, pool.images[rows], top, [windows[r] for r in rows]) if rows else []
    table = []
    for rank, (r, value, reason, f, box) in enumerate(zip(rows, ranking.scores, ranking.reasons, top, boxes), 1):
        size = sizes[r]
        row = {"rank": rank, "image": pool.names[r], "strategy": strat.name, "score": float(value),
               "reason": reason, "width": size[0] if size else None, "height": size[1] if size else None,
               "suggest_finding": net.findings[f]}
        row.update(dict(zip(("suggest_x", "suggest_y", "suggest_w", "suggest_h"), box or (None,) * 4)))
        row.update({f"p_{name}": float(probs[r, j]) for j, name in enumerate(net.findings)})
        row.update({f"u_{name}": float(unc[r, j]) for j, name in enumerate(net.findings)})
        table.append(row)
    df = pd.DataFrame(table, columns=columns(net.findings))
    for c in ("width", "height", "suggest_x", "suggest_y", "suggest_w", "suggest_h"):
        df[c] = df[c].astype("Int64")
    df.attrs.update({"raw_root": pool.raw_root, "dataset": dataset, "model": model_name, "strategy": strat.name,
                     "budget": int(budget), "seed": int(seed), "diversity": float(diversity),
                     "findings": list(net.findings),
                     "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "candidates": int(n), "annotated": int(m)})
    return df


# ------------------------------------------------------------------------------------------ writing
def write_requests(df, out: Union[str, os.PathLike], private: Optional[bool] = None) -> Path:
    """Write ``requests.csv`` and ``requests.json`` into ``out`` through a staging folder (one writer;
    a folder holding anything else is refused). ``private`` (default: when ``df`` names images by
    path): the folder is owner-only."""
    from cxr_tfp import staging as S

    out = Path(out)
    private = bool(df.attrs.get("raw_root")) if private is None else private
    with S.OutputLock(out, "annotation requests"):
        S.recover(out)
        S.check_replaceable(out, (CSV_NAME, JSON_NAME))
        stage = S.make_staging(out)
        with S.owner_only_umask():
            df.to_csv(stage / CSV_NAME, index=False, float_format="%.6g")
            meta = {k: df.attrs.get(k) for k in ("raw_root", "dataset", "model", "strategy", "budget", "seed",
                                                 "findings", "created", "candidates")}
            meta.update({k: df.attrs[k] for k in ("diversity", "annotated") if k in df.attrs})
            (stage / JSON_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        S.swap_in(stage, out, publish_mode=0o700 if private else None)
    return out


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from cxr_tfp.annotate.strategies import DEFAULT, NAMES, strategy_class

    p = argparse.ArgumentParser(
        prog="python -m cxr_tfp.annotate requests",
        description="Rank unannotated images by the value of an expert annotation; write the top K.",
        epilog="strategies:\n" + "\n".join(f"  {n:<12} {strategy_class(n).description}" for n in NAMES),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="training output folder (model.keras) or a .keras file")
    p.add_argument("--data", required=True, help="a raw dataset folder (with --dataset) or a records folder")
    p.add_argument("--dataset", default=None, help="dataset adapter of a raw folder (nih, mimic, egd, ...)")
    p.add_argument("--budget", type=int, required=True, help="how many images to request (K)")
    p.add_argument("--strategy", default=DEFAULT, help=f"one of {', '.join(NAMES)} (default {DEFAULT})")
    p.add_argument("--diversity", type=float, default=0.0,
                   help="weight of the penalty on similarity to higher picks (0 = off; 1 = strong)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy (default 0)")
    p.add_argument("--splits", default="train", help="records folder: the splits to draw from (default train)")
    p.add_argument("--raw-root", default=None,
                   help="records folder: the raw root, to name rows by path (salt from $CXR_TFP_SALT)")
    p.add_argument("--resize-mode", default=None, choices=("stretch", "crop", "pad"),
                   help="how the model's records were resized (default: the records' summary, else stretch)")
    p.add_argument("--out", required=True, help="output folder for requests.csv and requests.json")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show a traceback on error")
    return p.parse_args(argv)


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    df = request_annotations(args.model, args.data, args.budget, strategy=args.strategy, dataset=args.dataset,
                             seed=args.seed, diversity=args.diversity, raw_root=args.raw_root,
                             splits=[s.strip() for s in args.splits.split(",") if s.strip()],
                             resize_mode=args.resize_mode, quiet=args.quiet)
    out = write_requests(df, args.out)
    print(f"wrote {len(df)} requests ({df.attrs['strategy']}, {df.attrs['candidates']} candidates) to "
          f"{out / CSV_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
