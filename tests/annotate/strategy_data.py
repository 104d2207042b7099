"""Synthetic :class:`Scores` for the strategy tests (no TensorFlow)."""
import numpy as np

from cxr_tfp.annotate.strategies import Scores


def make_scores(n: int = 30, m: int = 12, L: int = 3, K: int = 6, seed: int = 0) -> Scores:
    rng = np.random.default_rng(seed)
    return Scores(tuple(f"F{j}" for j in range(L)), rng.random((n, L)), 0.3 * rng.random((n, L)),
                  rng.normal(size=(n, K)), rng.normal(size=(m, K)), rng.random((m, L)), 0.3 * rng.random((m, L)),
                  rng.random(m))
