"""Test helpers for evaluation: a tiny TFRecord data folder and a model stand-in with known outputs."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from cxr_tfp import features as F
from cxr_tfp.evaluate import ModelAdapter
from cxr_tfp.labels import FINDINGS, indices

FINDS = ("Cardiomegaly", "Effusion", "Mass", "Nodule")
SIZE = 32


def _unit(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def write_split(path: Path, n_patients: int, per_patient: int, seed: int, no_positive: Sequence[str] = ("Nodule",),
                annotated_every: int = 3, size: int = SIZE) -> Dict[str, np.ndarray]:
    """Write one split of learnable toy images.

    Each positive finding ``k`` draws a bright square in its own quadrant (so a model can learn it and
    the image's brightest pixels lie inside the expert box); every ``annotated_every``-th image gets a
    gaze heatmap on its squares (or a random spot when it has none) and, when it has a positive, boxes.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    cols = indices(FINDS)
    q, sq = size // 2, max(2, size // 8)
    yy, xx = np.mgrid[:size, :size]
    n = 0
    with tf.io.TFRecordWriter(str(path / "part-00000.tfrecord.gz"), options="GZIP") as w:
        for p in range(n_patients):
            for _ in range(per_patient):
                labels = np.zeros(len(FINDINGS), np.float32)
                mask = np.zeros(len(FINDINGS), np.float32)
                img = (rng.random((size, size)) * 60).astype(np.uint8)
                box = np.zeros((size, size), np.uint8)
                gaze = np.zeros((size, size))
                for k, (c, f) in enumerate(zip(cols, FINDS)):
                    mask[c] = 1.0
                    labels[c] = 0.0 if f in no_positive else float(rng.random() < 0.4)
                    if labels[c]:
                        r0 = (k // 2) * q + rng.integers(1, q - sq - 1)
                        c0 = (k % 2) * q + rng.integers(1, q - sq - 1)
                        img[r0:r0 + sq, c0:c0 + sq] = 250
                        box[max(r0 - 1, 0):r0 + sq + 1, max(c0 - 1, 0):c0 + sq + 1] = 1
                        gaze += np.exp(-((yy - r0 - sq / 2) ** 2 + (xx - c0 - sq / 2) ** 2) / (sq * sq / 2))
                mask[cols[0]] = 0.0 if (n % 7 == 0) else 1.0    # some unknown labels
                annotated = n % annotated_every == 0
                if annotated and not gaze.any():
                    r, c = rng.integers(0, size, 2)
                    gaze = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 8.0)
                rec = F.ExampleRecord(image=img, labels=labels, label_mask=mask, patient_key=f"pat{seed}_{p}",
                                      example_key=f"ex{seed}_{n}", dataset="synthetic",
                                      gaze=gaze if annotated else None,
                                      box_mask=box if annotated and box.any() else None)
                w.write(F.to_example(rec).SerializeToString())
                n += 1
    return {"n": np.asarray(n)}


def make_data(root: Path, n_test_patients: int = 30, size: int = SIZE, n_train_patients: int = 0) -> Path:
    """``root/{train,eval,test}``; the test split has no Nodule positives (an undefined finding)."""
    if n_train_patients:
        write_split(root / "train", n_train_patients, 2, seed=0, no_positive=(), size=size, annotated_every=2)
    write_split(root / "eval", 20, 2, seed=1, no_positive=(), size=size)
    write_split(root / "test", n_test_patients, 2, seed=2, size=size)
    return root


class StubAdapter(ModelAdapter):
    """Probabilities = strength * label + noise from the example key; saliency = image brightness."""

    kind = "stub"

    def __init__(self, name: str = "stub", strength: float = 0.5, findings=FINDS, saliency: bool = True):
        self.name, self.path, self.strength = name, f"<{name}>", strength
        self.findings = tuple(findings)
        self.image_size = SIZE
        self.saliency_reason = None if saliency else "stub without saliency"
        self.calls = []

    def predict(self, serialized, images):
        feats = F.parse_examples(serialized)
        labels = feats[F.LABELS].numpy()[:, indices(self.findings)]
        keys = [k.decode() for k in feats[F.EXAMPLE_KEY].numpy()]
        noise = np.array([[_unit(f"{k}/{f}") for f in self.findings] for k in keys])
        probs = np.clip(self.strength * labels + (1 - self.strength) * noise, 0, 1)
        unc = np.abs(noise - 0.5)   # confident where the noise is extreme
        return probs, 0.5 - unc

    def saliency(self, images, finding_index, method="gradcam"):
        self.calls.append((len(images), finding_index))
        s = np.asarray(images)[..., 0]
        return s / s.max(axis=(1, 2), keepdims=True)
