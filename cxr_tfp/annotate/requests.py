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


CHUNK = 128   # images decoded and scored at a time: memory stays bounded on a hospital-sized folder


@dataclasses.dataclass
class Pool:
    """What ranking needs, scored chunk by chunk as the images are read (no image is kept):
    the candidates (unannotated) and the annotated fit set's scores and posterior shift."""

    names: List[str]                          # candidate names (relative paths or example keys)
    sizes: List[Optional[Tuple[int, int]]]    # original (width, height) per candidate, None if unknown
    windows: List[Optional[Tuple[float, float, float, float]]]  # source window of the stored square
    scores: Dict[str, List[np.ndarray]]       # candidates: scoring.score_features outputs, per chunk
    ann_scores: Dict[str, List[np.ndarray]]   # annotated images: the same
    shift: List[np.ndarray]                   # annotated images: KL(q || p) per chunk
    raw_root: Optional[str] = None
    dataset: Optional[str] = None
    skipped: int = 0                          # images that could not be read (counted, never named)
    paths: List[Optional[str]] = dataclasses.field(default_factory=list)  # per candidate (never logged)

    @staticmethod
    def empty() -> "Pool":
        return Pool([], [], [], {}, {}, [], paths=[])

    def add(self, net, images, names, sizes, windows, paths, ann_images, ann_maps, ann_gaze, ann_boxes) -> None:
        """Score one chunk: candidates ``images`` [n, S, S, 1]; annotated ``ann_*``."""
        from cxr_tfp.annotate import scoring

        if len(images):
            for k, v in scoring.score_images(net, np.asarray(images, np.float32)).items():
                self.scores.setdefault(k, []).append(v)
            self.names += list(names)
            self.sizes += list(sizes)
            self.windows += list(windows)
            self.paths.extend(paths)
        if len(ann_images):
            sc, kl = scoring.annotated_scores(net, np.asarray(ann_images, np.float32), np.asarray(ann_maps, np.float32),
                                              np.asarray(ann_gaze, np.float32), np.asarray(ann_boxes, np.float32))
            for k, v in sc.items():
                self.ann_scores.setdefault(k, []).append(v)
            self.shift.append(kl)

    def to_scores(self, net):
        from cxr_tfp.annotate import scoring

        L, K = len(net.findings), int(net.feature_dim)

        def cat(d):
            return {k: (np.concatenate(d[k], 0) if d.get(k) else np.zeros((0, K if k == "embedding" else L)))
                    for k in ("probabilities", "uncertainty", "embedding")}

        ann = cat(self.ann_scores) if self.shift else None
        return scoring.make_scores(net, cat(self.scores), ann, np.concatenate(self.shift) if self.shift else None)

    @property
    def n_annotated(self) -> int:
        return int(sum(len(v) for v in self.shift))


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


def read_raw(net, raw: Union[str, os.PathLike], dataset: str, resize_mode: str = "stretch",
             quiet: bool = False) -> Pool:
    """Decode and score every image of a raw dataset at the model's size, a chunk at a time."""
    from cxr_tfp.annotations import gaze_heatmap, region_mask

    raw = Path(raw)
    if not raw.is_dir():
        raise UsageError(f"--data {raw}: not a folder")
    S = int(net.image_size)
    records = _adapter_records(raw, dataset, S)
    if not records:
        raise UsageError(f"--data {raw}: the {dataset} adapter found no images")
    # an image with a box or gaze in any table row is annotated, not a candidate
    annotated = {os.path.abspath(r.image_path) for r in records if r.regions or r.gaze is not None}
    pool = Pool.empty()
    pool.raw_root, pool.dataset = os.path.abspath(raw), dataset
    seen = set()
    cand: List[tuple] = []
    ann: List[tuple] = []
    _say(f"reading {len(records)} {dataset} records", quiet)

    def flush():
        pool.add(net, [c[0] for c in cand], [c[1] for c in cand], [c[2] for c in cand], [c[3] for c in cand],
                 [c[4] for c in cand], [a[0] for a in ann], [a[1] for a in ann], [a[2] for a in ann],
                 [a[3] for a in ann])
        cand.clear()
        ann.clear()

    for i, rec in enumerate(records, 1):
        path = os.path.abspath(rec.image_path)
        is_annotated = bool(rec.regions or rec.gaze is not None)
        if not is_annotated and (path in annotated or path in seen):
            continue
        seen.add(path)
        try:
            image, geo = _decode(path, S, resize_mode)
            mask = region_mask(rec.regions, geo, rec.frame) if rec.regions else None
            gaze = gaze_heatmap(rec.gaze, geo, rec.frame) if rec.gaze is not None else None
        except Exception:  # noqa: BLE001  (an unreadable image is counted, never named: no paths in logs)
            pool.skipped += 1
            continue
        if is_annotated:
            zeros = np.zeros((S, S), np.float32)
            ann.append((image, np.stack([zeros if gaze is None else gaze.astype(np.float32),
                                         zeros if mask is None else (mask > 0).astype(np.float32)], -1),
                        float(gaze is not None), float(mask is not None)))
        else:
            cand.append((image, _relative(path, raw), (int(geo.src_w), int(geo.src_h)),
                         tuple(float(v) for v in geo.window), path))
        if len(cand) + len(ann) >= CHUNK:
            flush()
        if i % 500 == 0:
            _say(f"read {i}/{len(records)} records", quiet)
    flush()
    _say(f"read {len(records)}/{len(records)} records", quiet)
    return pool


def _decode(path: str, size: int, resize_mode: str):
    """A model input ``[S, S, 1]`` in [0, 1] and the resize geometry, as the build stores the image."""
    from cxr_tfp.io.images import decode_image, read_bytes, resize_to_square

    stored, geo = resize_to_square(decode_image(read_bytes(path)).pixels, size, resize_mode)
    return stored.astype(np.float32)[..., None] / 255.0, geo


def _record_batches(records: Path, net, splits: Sequence[str]):
    from cxr_tfp.input import list_files, make_dataset

    patterns = [str(records / sp) for sp in splits if (records / sp).is_dir()]
    if not patterns:
        raise UsageError(f"--data {records}: no split folder {'/'.join(splits)} with TFRecords (a build's output)")
    return make_dataset(list_files(patterns), int(net.image_size), net.findings, CHUNK, with_meta=True)


def read_records(net, records: Union[str, os.PathLike], splits: Sequence[str] = ("train",),
                 quiet: bool = False) -> Pool:
    """Score the examples of a build's splits, a batch at a time; unannotated ones are candidates,
    named by example_key."""
    from cxr_tfp import features as F

    pool = Pool.empty()
    n = 0
    for x, _, meta in _record_batches(Path(records), net, splits):
        keys = [k.decode() for k in meta[F.EXAMPLE_KEY].numpy()]
        g, b = x[F.X_HAS_GAZE].numpy(), x[F.X_HAS_BOXES].numpy()
        im, amap = x[F.X_IMAGE].numpy(), x[F.X_ANNOTATION].numpy()
        a = (g > 0) | (b > 0)
        c = ~a
        pool.add(net, im[c], [k for k, keep in zip(keys, c) if keep], [None] * int(c.sum()), [None] * int(c.sum()),
                 [None] * int(c.sum()), im[a], amap[a], g[a], b[a])
        n += len(keys)
        _say(f"read {n} examples", quiet)
    return pool


def _record_images(net, records: Path, splits: Sequence[str], keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """The model inputs of the examples with these keys (a second pass; only the picks are kept)."""
    from cxr_tfp import features as F

    want, out = set(keys), {}
    for x, _, meta in _record_batches(records, net, splits):
        for k, im in zip(meta[F.EXAMPLE_KEY].numpy(), x[F.X_IMAGE].numpy()):
            if k.decode() in want:
                out[k.decode()] = im
    return out


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
    pool.paths = [os.path.abspath(by_key[k]) if k in by_key else None for k in pool.names]
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
    mode = resize_mode or "stretch"
    if records_mode:
        if (data / "summary.json").is_file():
            summary = json.loads((data / "summary.json").read_text())
        mode = resize_mode or summary.get("resize_mode", "stretch")
        pool = read_records(net, data, splits, quiet)
        keys = list(pool.names)
        if raw_root:
            ds = dataset or summary.get("dataset")
            if not ds:
                raise UsageError("--raw-root needs --dataset (the records folder has no summary.json naming it)")
            resolve_keys(pool, raw_root, ds, S, salt, summary)
        dataset = dataset or summary.get("dataset")
    else:
        pool = read_raw(net, data, dataset, mode, quiet)
    n, m = len(pool.names), pool.n_annotated
    _say(f"{n} unannotated candidates, {m} annotated images"
         + (f", {pool.skipped} unreadable images skipped" if pool.skipped else ""), quiet)
    scores = pool.to_scores(net)
    ranking = strat.rank(pool.names, scores, budget)
    index = {name: r for r, name in enumerate(pool.names)}
    rows = [index[i] for i in ranking.ids]
    _say(f"ranked {n} candidates with {strat.name!r}; writing the top {len(rows)}", quiet)

    # Only the picks are read again: their model inputs (for the suggested box) and original sizes.
    sizes, windows = list(pool.sizes), list(pool.windows)
    images = np.zeros((len(rows), S, S, 1), np.float32)
    if records_mode:
        by_key = _record_images(net, data, splits, [keys[r] for r in rows])
        images = np.asarray([by_key[keys[r]] for r in rows], np.float32).reshape(-1, S, S, 1)
    for i, r in enumerate(rows):
        path = pool.paths[r] if pool.paths else None
        if path is None:
            continue
        image, geo = _decode(path, S, mode)
        if not records_mode:
            images[i] = image
        sizes[r], windows[r] = (int(geo.src_w), int(geo.src_h)), tuple(float(v) for v in geo.window)
    probs, unc = scores.probabilities, scores.uncertainty
    top = [int(np.argmax(probs[r])) for r in rows]
    boxes = scoring.suggest_boxes(net, images, top, [windows[r] for r in rows]) if rows else []
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
