"""The embedded synthetic dataset: chest-like images with faint, small findings, in real file layouts.

:func:`generate` writes, deterministically from ``seed`` (and the salt in force, see below):

    ROOT/
      Data_Entry_2017.csv        NIH label table (2017 header, trailing commas and all)
      BBox_List_2017.csv         NIH box table: one box per finding of each *annotated* image
      images/00000001_000.png    8-bit grey PNGs, image_size x image_size
      egd/master_sheet.csv       EGD-CXR layout: one row per annotated image (dicom_id = image stem)
      egd/fixations.csv          EGD-CXR layout: fixations (X_ORIGINAL, Y_ORIGINAL, FPOGD) of annotated images
      decoys.csv                 unlabelled lesion-like decoys per image (only when decoys > 0)
      synthetic.json             the generation parameters

and :class:`SyntheticAdapter` reads it back through the real NIH adapter plus the EGD-CXR fixation
reader, so the synthetic build exercises the same code as the real datasets.

Images: a body silhouette, two dark lung fields with faint curved ribs, a bright heart, spine and
mediastinum, a smooth random illumination field and pixel noise, with per-patient anatomy and
per-image jitter. Findings are exactly :data:`cxr_tfp.labels.SYNTHETIC_FINDINGS`; each present
finding is a small, low-contrast local pattern at a random place inside the lungs:

- ``Nodule``: a small round bright blob,
- ``Mass``: a larger, fainter, lobulated blob,
- ``Effusion``: a disc of fine horizontal stripes (a texture, not a brightness change),
- ``Cardiomegaly``: a thin bright ring.

Decoys (``decoys > 0``, off by default): each image also gets Poisson(``decoys``) lesion-like
patterns that carry no label - copies of the four finding patterns, at the same contrast, placed in
the soft tissue OUTSIDE the lung fields (below the diaphragm, over the heart and the chest wall).
Image-level labels alone then leave open which bright local pattern explains a label, while the
expert's boxes / gaze mark the true lesion: the setting where knowing where to look helps. Decoys
are the same in the informative and control builds (they are part of the image), never labelled,
never boxed, never fixated on, and listed in ``decoys.csv`` (image, pattern, x, y in pixels).

Shortcut (``shortcut > 0``, off by default): a spurious cue of the kind that makes real CXR models
fail (tubes, markers). In the train split, each finding gets, with probability ``shortcut``, a copy of
its pattern outside the lungs, and no other decoys; a model that fires on the pattern anywhere is never
penalised in training. Eval and test keep the label-independent ``decoys``, where that model raises
false alarms. Boxes and gaze mark only the lesion in the lungs.

Sizes are fractions of the image side, so the task looks the same at 64 and 1024 pixels. The
contrast (``contrast=1.0``) is chosen so that a lesion is near the noise / rib-texture level: a small
CNN trained on image-level labels only learns them partly, while the location is the missing piece.

Annotations, for ``annotated_fraction`` of the images (chosen per split so that train, eval and test
all have annotated images):

- ``informative=True``: a box around each finding, and gaze fixations that dwell on each finding
  (3-6 long fixations near it) among short scanning fixations over the lungs (normal images get
  scanning fixations only).
- ``informative=False`` (control): the same numbers and sizes of boxes and the same fixation
  statistics, but centred on random places in the lungs, so annotations say nothing about where
  the findings are.

Splits: the build assigns each patient to train/eval/test by the salted hash of its id. The
generator picks which patient ids exist so that the split sizes come out at the requested fractions
(80/10/10 by default) for the salt in force at generation time (``--salt`` / ``$CXR_TFP_SALT``);
build with the same salt.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from cxr_tfp.datasets.base import DatasetLayoutError, Item, SourceRecord
from cxr_tfp.datasets.egd import attach_gaze, read_fixations
from cxr_tfp.datasets.nih import LABEL_TABLES, NIHAdapter
from cxr_tfp.datasets.base import find_first
from cxr_tfp.features import EVAL_SPLIT, SPLITS, TEST_SPLIT, TRAIN_SPLIT
from cxr_tfp.labels import SYNTHETIC_FINDINGS
from cxr_tfp.privacy import assign_split, get_salt, parse_fractions, salt_fingerprint

NAMESPACE = "synthetic"
GAZE_SIGMA_FRAC = 0.05   # EGD-CXR's 150 px on a ~3000 px radiograph, as a fraction of the side
LESION_EXTENT = {"Nodule": 0.075, "Mass": 0.095, "Effusion": 0.08, "Cardiomegaly": 0.07}
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
EGD_FIX_COLUMNS = ("SESSION_ID", "MEDIA_ID", "DICOM_ID", "CNT", "Time (in secs)", "FPOGX", "FPOGY",
                   "FPOGS", "FPOGD", "FPOGID", "FPOGV", "X_ORIGINAL", "Y_ORIGINAL")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _soft_ellipse(u, v, cx, cy, ax, ay, edge):
    r = np.sqrt(((u - cx) / ax) ** 2 + ((v - cy) / ay) ** 2)
    return _sigmoid_down((r - 1.0) / edge)


def _sigmoid_down(z):
    """1 / (1 + exp(z)) without overflow."""
    return 0.5 * (1.0 - np.tanh(0.5 * z))


def _anatomy(rng: np.random.Generator) -> Dict[str, float]:
    return {
        "body_w": rng.uniform(0.40, 0.46), "body_h": rng.uniform(0.50, 0.56),
        "lung_dx": rng.uniform(0.155, 0.185), "lung_w": rng.uniform(0.115, 0.14),
        "lung_h": rng.uniform(0.24, 0.29), "lung_y": rng.uniform(0.43, 0.47),
        "heart_w": rng.uniform(0.11, 0.15), "heart_h": rng.uniform(0.10, 0.13),
        "rib_period": rng.uniform(0.065, 0.085), "rib_curve": rng.uniform(0.6, 1.1),
        "brightness": rng.uniform(-0.04, 0.04),
    }


def _jitter(a: Dict[str, float], rng: np.random.Generator) -> Dict[str, float]:
    b = dict(a)
    for k in ("body_w", "body_h", "lung_w", "lung_h", "heart_w", "heart_h"):
        b[k] *= rng.uniform(0.97, 1.03)
    b["shift_x"], b["shift_y"] = rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)
    b["brightness"] += rng.uniform(-0.02, 0.02)
    return b


def _lung_fields(a: Dict[str, float]) -> List[Tuple[float, float, float, float]]:
    cx, cy = 0.5 + a.get("shift_x", 0.0), a["lung_y"] + a.get("shift_y", 0.0)
    return [(cx - a["lung_dx"], cy, a["lung_w"], a["lung_h"]), (cx + a["lung_dx"], cy, a["lung_w"], a["lung_h"])]


def _sample_in_lungs(a, rng, margin: float, avoid: Sequence[Tuple[float, float]] = (), min_dist: float = 0.0):
    lungs = _lung_fields(a)
    for _ in range(1000):
        cx, cy, ax, ay = lungs[int(rng.integers(0, 2))]
        r, t = math.sqrt(rng.uniform(0, 1)) * max(1.0 - margin, 0.2), rng.uniform(0, 2 * math.pi)
        x, y = cx + r * ax * math.cos(t), cy + r * ay * math.sin(t)
        if all(math.hypot(x - p, y - q) >= min_dist for p, q in avoid):
            return x, y
    return x, y


def _sample_decoy(a, rng, lesions: Sequence[Tuple[str, float, float]]) -> Tuple[float, float]:
    """(u, v) in the body's soft tissue outside both lung fields and clear of every lesion's box.

    Clearance from a lesion: its box half-side (:data:`LESION_EXTENT`) plus the largest pattern
    radius, so a decoy never lies inside (or spills into) an informative box.
    """
    sx, sy = a.get("shift_x", 0.0), a.get("shift_y", 0.0)
    bx, by, bw, bh = 0.5 + sx, 0.56 + sy, a["body_w"], a["body_h"]
    reach = max(LESION_EXTENT.values())
    for _ in range(1000):
        r, t = math.sqrt(rng.uniform(0, 1)) * 0.9, rng.uniform(0, 2 * math.pi)
        x, y = bx + r * bw * math.cos(t), by + r * bh * math.sin(t)
        if not (reach <= x <= 1 - reach and reach <= y <= 1 - reach):
            continue
        if any(math.hypot((x - cx) / ax, (y - cy) / ay) < 1.1 for cx, cy, ax, ay in _lung_fields(a)):
            continue
        if all(max(abs(x - lx), abs(y - ly)) > LESION_EXTENT[n] + reach for n, lx, ly in lesions):
            return x, y
    raise RuntimeError("could not place a decoy outside the lungs")


def render(a: Dict[str, float], lesions: Sequence[Tuple[str, float, float]], size: int,
           rng: np.random.Generator, contrast: float = 1.0) -> np.ndarray:
    """One chest-like image (uint8 [size, size]) with the given lesions at (u, v) in [0, 1]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    u, v = np.meshgrid(c, c)
    sx, sy = a.get("shift_x", 0.0), a.get("shift_y", 0.0)
    edge = 0.04
    body = _soft_ellipse(u, v, 0.5 + sx, 0.56 + sy, a["body_w"], a["body_h"], edge)
    img = 0.06 + 0.34 * body + a["brightness"]
    lungs = np.zeros_like(u)
    for cx, cy, ax, ay in _lung_fields(a):
        lungs = np.maximum(lungs, _soft_ellipse(u, v, cx, cy, ax, ay, 0.05))
    img -= 0.17 * lungs
    ribs = np.cos(2 * np.pi * (v + a["rib_curve"] * (u - 0.5 - sx) ** 2) / a["rib_period"])
    img += 0.045 * np.clip(ribs, 0, 1) ** 3 * lungs
    img += 0.20 * _soft_ellipse(u, v, 0.53 + sx, 0.61 + sy, a["heart_w"], a["heart_h"], 0.06)
    img += 0.16 * np.exp(-0.5 * ((u - 0.5 - sx) / 0.03) ** 2) * body
    img += 0.18 * body * _sigmoid_down(-(v - (a["lung_y"] + sy + a["lung_h"] * 0.95)) / 0.02)
    for _ in range(3):  # smooth illumination field
        fx, fy, ph = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        img += 0.012 * np.cos(2 * np.pi * (fx * u + fy * v) + ph)
    k = float(contrast)
    for name, x, y in lesions:
        d2 = (u - x) ** 2 + (v - y) ** 2
        if name == "Nodule":
            img += k * 0.10 * np.exp(-0.5 * d2 / 0.028 ** 2)
        elif name == "Mass":
            for j in range(3):
                t = 2 * np.pi * j / 3 + rng.uniform(0, 1)
                ox, oy = 0.028 * math.cos(t), 0.028 * math.sin(t)
                img += k * 0.045 * np.exp(-0.5 * ((u - x - ox) ** 2 + (v - y - oy) ** 2) / 0.04 ** 2)
        elif name == "Effusion":
            disc = _sigmoid_down((np.sqrt(d2) - 0.065) / 0.01)
            img += k * 0.09 * disc * np.cos(2 * np.pi * (v - y) / 0.045)
        elif name == "Cardiomegaly":
            img += k * 0.10 * np.exp(-0.5 * ((np.sqrt(d2) - 0.05) / 0.011) ** 2)
        else:
            raise ValueError(name)
    img += rng.normal(0.0, 0.022, size=img.shape).astype(np.float32)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _box(name: str, x: float, y: float, size: int) -> Tuple[float, float, float, float]:
    h = LESION_EXTENT[name]
    x0, y0 = max(0.0, (x - h) * size), max(0.0, (y - h) * size)
    x1, y1 = min(float(size), (x + h) * size), min(float(size), (y + h) * size)
    return x0, y0, x1 - x0, y1 - y0


def _fixations(a, rng, targets: Sequence[Tuple[str, float, float]]) -> List[Tuple[float, float, float]]:
    """(u, v, duration): scanning fixations over the lungs + long dwells on each target."""
    out = []
    for _ in range(int(rng.integers(6, 11))):
        x, y = _sample_in_lungs(a, rng, margin=0.1)
        out.append((x, y, float(rng.uniform(0.08, 0.3))))
    for name, x, y in targets:
        spread = 0.35 * LESION_EXTENT[name]
        for _ in range(int(rng.integers(3, 7))):
            out.append((x + rng.normal(0, spread), y + rng.normal(0, spread), float(rng.uniform(0.4, 1.2))))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _choose_patients(n: int, salt: Optional[str], fractions) -> List[Tuple[int, str]]:
    """Patient ids (ints) whose salted-hash splits hit the requested split sizes."""
    f = parse_fractions(fractions)
    if n >= 3:
        n_eval = max(1, int(round(f[1] * n))) if f[1] > 0 else 0
        n_test = max(1, int(round(f[2] * n))) if f[2] > 0 else 0
    else:
        n_eval = n_test = 0
    quota = {TRAIN_SPLIT: n - n_eval - n_test, EVAL_SPLIT: n_eval, TEST_SPLIT: n_test}
    out: List[Tuple[int, str]] = []
    pid = 0
    while len(out) < n:
        pid += 1
        s = assign_split(str(pid), NAMESPACE, salt, f)
        if quota[s] > 0:
            quota[s] -= 1
            out.append((pid, s))
        if pid > 1000 * (n + 10):
            raise RuntimeError("could not fill the split quotas (check the split fractions)")
    return out


def generate(root: Union[str, Path], n_patients: int = 60, images_per_patient: int = 2,
             image_size: int = 256, annotated_fraction: float = 0.35, informative: bool = True,
             seed: int = 0, prevalence: float = 0.3, contrast: float = 1.0, salt: Optional[str] = None,
             split_fractions=None, processes: int = 1, decoys: float = 0.0, shortcut: float = 0.0) -> Path:
    """Write the synthetic dataset into ``root`` (see module docstring) and return ``root``.

    ``processes > 1`` renders the images in parallel (same bytes: each image has its own seed).
    ``decoys``: mean number of unlabelled lesion-like patterns per image outside the lungs (Poisson);
    0 (default) leaves the images exactly as without the option.
    ``shortcut``: in the TRAIN split only, the decoys become a spurious cue: each finding gets, with this
    probability, a copy of its pattern outside the lungs, and no other decoys are drawn; eval and test
    keep ``decoys`` independent of the labels (see the module docstring). 0 (default) = off.
    """
    if decoys < 0:
        raise ValueError(f"decoys must be >= 0, got {decoys}")
    if not 0.0 <= shortcut <= 1.0:
        raise ValueError(f"shortcut must be in [0, 1], got {shortcut}")
    root = Path(root)
    if n_patients < 1 or images_per_patient < 1 or image_size < 32:
        raise ValueError("need n_patients >= 1, images_per_patient >= 1, image_size >= 32")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "egd").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patients = _choose_patients(n_patients, salt, split_fractions)
    images = []  # dicts
    for pid, split in patients:
        anat = _anatomy(rng)
        age, sex = int(rng.integers(20, 85)), ("M" if rng.uniform() < 0.5 else "F")
        for k in range(images_per_patient):
            a = _jitter(anat, rng)
            found = [n for n in SYNTHETIC_FINDINGS if rng.uniform() < prevalence]
            lesions, placed = [], []
            for n in found:
                x, y = _sample_in_lungs(a, rng, margin=0.3, avoid=placed, min_dist=0.16)
                placed.append((x, y))
                lesions.append((n, x, y))
            images.append({"name": f"{pid:08d}_{k:03d}.png", "pid": pid, "split": split, "k": k,
                           "age": age + k, "sex": sex, "anat": a, "lesions": lesions,
                           "seed": int(rng.integers(0, 2 ** 31 - 1))})
    # Annotated subset, chosen within each split so that every non-empty split has some.
    for s in SPLITS:
        idx = [i for i, im in enumerate(images) if im["split"] == s]
        if not idx:
            continue
        n_ann = min(len(idx), max(1, int(round(annotated_fraction * len(idx))))) if annotated_fraction > 0 else 0
        for i in rng.permutation(idx)[:n_ann]:
            images[int(i)]["annotated"] = True
    for im in images:
        # Own stream per image (seed + 2): the labelled content and annotations do not change with decoys.
        drng = np.random.default_rng(im["seed"] + 2)
        if shortcut > 0 and im["split"] == TRAIN_SPLIT:
            copies = [n for n, _, _ in im["lesions"] if drng.uniform() < shortcut]
            im["decoys"] = [(n,) + _sample_decoy(im["anat"], drng, im["lesions"]) for n in copies]
            continue
        n_dec = int(drng.poisson(decoys)) if decoys > 0 else 0
        im["decoys"] = [(SYNTHETIC_FINDINGS[int(drng.integers(0, len(SYNTHETIC_FINDINGS)))],)
                        + _sample_decoy(im["anat"], drng, im["lesions"]) for _ in range(n_dec)]
    # Decoys are drawn after the lesions, so the lesions' rendering stream is unchanged by them.
    jobs = [(str(root / "images" / im["name"]), im["anat"], im["lesions"] + im["decoys"], image_size,
             im["seed"], contrast) for im in images]
    if processes and processes > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(int(processes)) as pool:
            pool.map(_render_to_file, jobs, chunksize=8)
    else:
        for job in jobs:
            _render_to_file(job)
    for im in images:
        if not im.get("annotated"):
            continue
        arng = np.random.default_rng(im["seed"] + 1)
        if informative:
            targets = im["lesions"]
        else:  # control: same sizes / counts at random places in the lungs
            targets = []
            for n, _, _ in im["lesions"]:
                x, y = _sample_in_lungs(im["anat"], arng, margin=0.3)
                targets.append((n, x, y))
        im["boxes"] = [(n, _box(n, x, y, image_size)) for n, x, y in targets]
        im["fix"] = _fixations(im["anat"], arng, targets)
    _write_tables(root, images, image_size, informative)
    if decoys > 0 or shortcut > 0:
        with open(root / "decoys.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["Image Index", "Pattern", "x", "y"])
            for im in images:
                for n, x, y in im["decoys"]:
                    w.writerow([im["name"], n, f"{x * image_size:.3f}", f"{y * image_size:.3f}"])
    meta = {"generator": "cxr_tfp.datasets.synthetic", "version": 1, "n_patients": n_patients,
            "images_per_patient": images_per_patient, "image_size": image_size,
            "annotated_fraction": annotated_fraction, "informative": bool(informative), "seed": seed,
            "prevalence": prevalence, "contrast": contrast, "decoys": float(decoys),
            "shortcut": float(shortcut), "findings": list(SYNTHETIC_FINDINGS),
            "salt_fingerprint": salt_fingerprint(salt), "n_images": len(images),
            "n_annotated": sum(1 for im in images if im.get("annotated")),
            "gaze_sigma_fraction": GAZE_SIGMA_FRAC}
    (root / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def _render_to_file(job) -> None:
    from PIL import Image

    path, anat, lesions, size, seed, contrast = job
    arr = render(anat, lesions, size, np.random.default_rng(seed), contrast)
    Image.fromarray(arr, mode="L").save(path, format="PNG", compress_level=1)


def _write_tables(root: Path, images, size: int, informative: bool) -> None:
    with open(root / "Data_Entry_2017.csv", "w", newline="") as fh:
        fh.write(NIH_HEADER + "\n")
        for im in images:
            labels = "|".join(n for n, _, _ in im["lesions"]) or "No Finding"
            fh.write(f"{im['name']},{labels},{im['k']},{im['pid']},{im['age']},{im['sex']},PA,"
                     f"{size},{size},0.143,0.143,\n")
    with open(root / "BBox_List_2017.csv", "w", newline="") as fh:
        fh.write(BBOX_HEADER + "\n")
        for im in images:
            for n, (x, y, w, h) in im.get("boxes", []):
                fh.write(f"{im['name']},{n},{x:.4f},{y:.4f},{w:.4f},{h:.4f}\n")
    with open(root / "egd" / "master_sheet.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dicom_id", "path", "study_id", "patient_id", "gender", "anchor_age",
                    "image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad"])
        for im in images:
            if im.get("annotated"):
                w.writerow([im["name"][:-4], f"images/{im['name']}", f"{im['pid']}{im['k']:03d}", im["pid"],
                            im["sex"], im["age"], 0, 0, 0, 0])
    with open(root / "egd" / "fixations.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(EGD_FIX_COLUMNS)
        session = 1
        for im in images:
            if not im.get("annotated"):
                continue
            t = 0.0
            for cnt, (x, y, d) in enumerate(im["fix"]):
                t += d
                px, py = float(np.clip(x, 0, 1)) * size, float(np.clip(y, 0, 1)) * size
                w.writerow([session, 0, im["name"][:-4], cnt, f"{t:.3f}", f"{x:.5f}", f"{y:.5f}",
                            f"{t - d:.3f}", f"{d:.4f}", cnt + 1, 1, int(round(px)), int(round(py))])


# ---------------------------------------------------------------------------------------------
# Adapter
# ---------------------------------------------------------------------------------------------
class SyntheticAdapter(NIHAdapter):
    """Generates the dataset into ``root`` when it has no label table, then reads it as NIH + EGD gaze."""

    name = "synthetic"
    namespace = NAMESPACE
    label_table_hint = "any folder (the synthetic dataset is generated there when it has no label table)"

    def __init__(self, root, synthetic_patients: int = 60, synthetic_control: bool = False,
                 synthetic_images_per_patient: int = 2, synthetic_image_size: Optional[int] = None,
                 synthetic_annotated_fraction: float = 0.35, synthetic_seed: int = 0,
                 synthetic_contrast: float = 1.0, synthetic_decoys: float = 0.0,
                 synthetic_shortcut: float = 0.0,
                 image_size: int = 256, salt: Optional[str] = None,
                 split_fractions=None, **options):
        super().__init__(root, use_official_split=False, salt=salt, split_fractions=split_fractions, **options)
        self.gen_kwargs = dict(n_patients=int(synthetic_patients),
                               images_per_patient=int(synthetic_images_per_patient),
                               image_size=int(synthetic_image_size or image_size),
                               annotated_fraction=float(synthetic_annotated_fraction),
                               informative=not synthetic_control, seed=int(synthetic_seed),
                               contrast=float(synthetic_contrast), decoys=float(synthetic_decoys),
                               shortcut=float(synthetic_shortcut), salt=salt, split_fractions=split_fractions)
        self.generated = False

    def ensure(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DatasetLayoutError(f"--root {self.root} is a file, not a folder")
        if not self.root.is_dir() or find_first(self.root, LABEL_TABLES) is None:
            generate(self.root, **self.gen_kwargs)
            self.generated = True

    def check(self) -> None:
        self.ensure()
        super().check()

    def collect(self):
        records, rejected = super().collect()
        for r in records.values():
            r.dataset = self.name
        fix = self.root / "egd" / "fixations.csv"
        if fix.is_file():
            by_id = {name[:-4]: r for name, r in records.items()}
            rejected_ids = {n.rsplit(".", 1)[0]: why for n, why in self.rejected_images.items()
                            if why != "__skipped__"}
            skipped = {n.rsplit(".", 1)[0] for n, why in self.rejected_images.items() if why == "__skipped__"}
            skipped |= {n.rsplit(".", 1)[0] for n in self.absent_images}
            gazes = read_fixations(fix, skip=self.skip)
            attach_gaze(by_id, gazes, rejected, rejected_ids, "the label table", sigma_frac=GAZE_SIGMA_FRAC,
                        skipped_ids=skipped, skip=self.skip)
        return records, rejected

    def items(self) -> Iterator[Item]:
        records, rejected = self.collect()
        yield from rejected
        for name in sorted(records):
            yield records[name]
