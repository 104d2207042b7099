"""``random``: a seeded uniform draw - the default and the baseline every other strategy is measured
against (MONAI Label's ``Random`` is unseeded; this one reruns identically for a seed)."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from cxr_tfp.annotate.strategies.base import Scores, Strategy


class RandomStrategy(Strategy):
    name = "random"
    description = "a seeded uniform draw (the baseline)"

    def values(self, scores: Scores) -> Tuple[np.ndarray, List[str]]:
        v = np.random.default_rng(self.seed).random(len(scores))
        return v, [f"drawn at random (seed {self.seed})"] * len(scores)
