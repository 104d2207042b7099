"""The strategy interface: candidate ids + their precomputed scores + k -> ranked ids, scores, reasons.

A strategy never calls the model. :mod:`cxr_tfp.annotate.scoring` scores every candidate once
(probabilities, uncertainty over latent samples, the prior's attention-pooled embedding, the
posterior shift measured on already-annotated images) into a :class:`Scores`; each strategy turns
those arrays into one value per candidate, so strategies are pure numpy and testable without
TensorFlow (shape after MONAI Label's ``Strategy`` / ``ScoringMethod`` split).

The shared diversity term lives here too: with ``diversity > 0`` the K are picked greedily, each
pick's rank-normalised value minus ``diversity`` x its largest cosine similarity (in the embedding)
to the images already picked, so the K are not near-copies of one another.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np


@dataclasses.dataclass
class Scores:
    """What the model says about N candidates (row i = candidate i) and, optionally, about the M
    images that already carry an annotation (the fit set of learned strategies).

    probabilities, uncertainty: ``[N, L]`` mean and std of p(y|z) over latent samples z ~ p(z|x).
    embedding: ``[N, K]`` the prior's attention-pooled backbone features (what the prior reads).
    annotated_embedding, annotated_probabilities, annotated_uncertainty: the same for the M
    annotated images; annotated_shift: ``[M]`` KL(q(z|x,a) || p(z|x)) in nats, how far each one's
    annotation moved the posterior away from the prior.
    """

    findings: Tuple[str, ...]
    probabilities: np.ndarray
    uncertainty: np.ndarray
    embedding: np.ndarray
    annotated_embedding: Optional[np.ndarray] = None
    annotated_probabilities: Optional[np.ndarray] = None
    annotated_uncertainty: Optional[np.ndarray] = None
    annotated_shift: Optional[np.ndarray] = None

    def __post_init__(self):
        self.findings = tuple(self.findings)
        n, L = len(self.probabilities), len(self.findings)
        self.probabilities = np.asarray(self.probabilities, np.float64).reshape(n, L)
        self.uncertainty = np.asarray(self.uncertainty, np.float64).reshape(n, L)
        emb = np.asarray(self.embedding, np.float64)
        self.embedding = emb.reshape(n, -1) if n else emb.reshape(0, emb.shape[-1] if emb.ndim > 1 else 0)

    def __len__(self) -> int:
        return len(self.probabilities)

    def take(self, rows: Sequence[int]) -> "Scores":
        """The candidates at ``rows`` (the annotated fit set is kept)."""
        rows = np.asarray(rows, int)
        return dataclasses.replace(self, probabilities=self.probabilities[rows], uncertainty=self.uncertainty[rows],
                                   embedding=self.embedding[rows])

    @property
    def n_annotated(self) -> int:
        return 0 if self.annotated_shift is None else int(len(self.annotated_shift))


@dataclasses.dataclass(frozen=True)
class Ranking:
    """At most k picks, best first: their ids, the strategy's value (higher = more worth annotating)
    and one short human sentence each."""

    ids: List[object]
    scores: np.ndarray
    reasons: List[str]

    def __len__(self) -> int:
        return len(self.ids)


class Strategy(abc.ABC):
    """Rank candidates for annotation. Subclasses set ``name`` and ``description`` and implement
    :meth:`values`; :meth:`rank` is the one public call."""

    name: str = ""
    description: str = ""

    def __init__(self, seed: int = 0, diversity: float = 0.0):
        if diversity < 0:
            raise ValueError(f"diversity must be >= 0, got {diversity}")
        self.seed = int(seed)
        self.diversity = float(diversity)

    @abc.abstractmethod
    def values(self, scores: Scores) -> Tuple[np.ndarray, List[str]]:
        """One value per candidate (higher = annotate first) and one reason each."""

    def rank(self, ids: Sequence[object], scores: Scores, k: int) -> Ranking:
        """The best ``min(k, len(ids))`` distinct candidates, best first."""
        ids = list(ids)
        if len(ids) != len(scores):
            raise ValueError(f"{len(ids)} candidate ids but scores for {len(scores)}")
        if len(set(ids)) != len(ids):
            raise ValueError("candidate ids must be distinct")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        k = min(int(k), len(ids))
        if k == 0:
            return Ranking([], np.zeros(0), [])
        vals, reasons = self.values(scores)
        vals = np.asarray(vals, np.float64)
        if self.diversity > 0:
            rows, sims = diverse_top_k(vals, scores.embedding, k, self.diversity)
            reasons = [reasons[r] + (f" (kept for diversity: similarity {s:.2f} to a higher pick)"
                                     if s is not None and s > 0.9 else "")
                       for r, s in zip(rows, sims)]
        else:
            rows = top_k(vals, k)
            reasons = [reasons[r] for r in rows]
        return Ranking([ids[r] for r in rows], vals[rows], reasons)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, diversity={self.diversity:g})"


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k largest values, ties broken by row order (deterministic)."""
    return np.argsort(-np.asarray(values, np.float64), kind="stable")[:k]


def diverse_top_k(values: np.ndarray, embedding: np.ndarray, k: int, weight: float):
    """Greedy picks maximising rank-normalised value - weight x max cosine similarity to earlier picks.

    Why rank-normalised: the penalty then means the same for every strategy, whatever the scale of
    its values. Returns the rows and each pick's largest similarity to an earlier pick (None first).
    """
    n = len(values)
    order = np.argsort(-np.asarray(values, np.float64), kind="stable")
    norm = np.empty(n)
    norm[order] = 1.0 - np.arange(n) / max(n - 1, 1)
    e = np.asarray(embedding, np.float64).reshape(n, -1)
    e = e - e.mean(axis=0, keepdims=True)   # centred: similarity of what differs between images
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    best_sim = np.full(n, -np.inf)
    chosen: List[int] = []
    sims: List[Optional[float]] = []
    free = np.ones(n, bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(best_sim), np.maximum(best_sim, 0.0), 0.0)
        gain = np.where(free, norm - weight * penalty, -np.inf)
        r = int(np.argmax(gain))
        chosen.append(r)
        sims.append(None if not chosen[:-1] else float(best_sim[r]))
        free[r] = False
        best_sim = np.maximum(best_sim, e @ e[r])
    return np.asarray(chosen, int), sims
