"""``shift``: the expected posterior shift - how far an expert's annotation is predicted to move this
model's latent posterior q(z|x,a) away from its image-only prior p(z|x).

Only a latent-variable model with an annotation posterior has this. On the images that already carry
an annotation, :mod:`cxr_tfp.annotate.scoring` measures the shift, KL(q(z|x,a) || p(z|x)) in nats.
Here a ridge regression from what is known WITHOUT an annotation (the prior's attention-pooled
embedding, the probabilities and their uncertainty) is fitted to log(1 + shift) on those images and
predicts it for every candidate. Stage 2 distils the posterior into the prior, so an image whose
annotation would move the posterior far is one the prior still has to learn from.

Why ridge in numpy: a dozen to a few thousand fit rows, a closed form, no extra dependency.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from cxr_tfp.annotate.strategies.base import Scores, Strategy

MIN_ANNOTATED = 5


def _design(emb: np.ndarray, p: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(emb, np.float64), np.asarray(p, np.float64), np.asarray(u, np.float64)], 1)


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0):
    """Standardised closed-form ridge; returns ``predict(x_new) -> y_hat``."""
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 1e-9, sd, 1.0)
    z = (x - mu) / sd
    ym = y.mean()
    w = np.linalg.solve(z.T @ z + alpha * len(z) * np.eye(z.shape[1]), z.T @ (y - ym))
    return lambda xn: ((np.asarray(xn, np.float64) - mu) / sd) @ w + ym


class ShiftStrategy(Strategy):
    name = "shift"
    description = ("largest predicted posterior shift KL(q(z|x,a) || p(z|x)), learned on the images "
                   "already annotated")

    def __init__(self, seed: int = 0, diversity: float = 0.0, alpha: float = 1.0):
        super().__init__(seed, diversity)
        self.alpha = float(alpha)

    def values(self, scores: Scores) -> Tuple[np.ndarray, List[str]]:
        m = scores.n_annotated
        if m < MIN_ANNOTATED:
            raise ValueError(f"strategy 'shift' learns from the images already annotated and needs at least "
                             f"{MIN_ANNOTATED}; found {m} (use 'uncertainty' or 'random' until then)")
        x = _design(scores.annotated_embedding, scores.annotated_probabilities, scores.annotated_uncertainty)
        y = np.log1p(np.maximum(np.asarray(scores.annotated_shift, np.float64), 0.0))
        predict = fit_ridge(x, y, self.alpha)
        if len(scores) == 0:
            return np.zeros(0), []
        v = np.expm1(predict(_design(scores.embedding, scores.probabilities, scores.uncertainty)))
        top = scores.probabilities.argmax(axis=1)
        reasons = [f"an annotation is predicted to move the model's latent reading by {max(val, 0.0):.2f} nats "
                   f"(learned on {m} annotated images; it rates {scores.findings[j]} highest)"
                   for val, j in zip(v, top)]
        return v, reasons
