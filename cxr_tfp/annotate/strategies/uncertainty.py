"""``uncertainty``: the model's own uncertainty, the spread of p(y|z) over latent samples z ~ p(z|x)
(``CxrModel.predict_with_uncertainty``), averaged over findings."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from cxr_tfp.annotate.strategies.base import Scores, Strategy


class UncertaintyStrategy(Strategy):
    name = "uncertainty"
    description = "largest spread of the predicted probabilities over latent samples (mean over findings)"

    def values(self, scores: Scores) -> Tuple[np.ndarray, List[str]]:
        u = scores.uncertainty
        v = u.mean(axis=1) if u.size else np.zeros(len(scores))
        worst = u.argmax(axis=1) if u.size else np.zeros(len(scores), int)
        reasons = [f"the model is least sure about {scores.findings[j]} "
                   f"(p {scores.probabilities[i, j]:.2f} +/- {u[i, j]:.2f} over latent samples)"
                   for i, j in enumerate(worst)]
        return v, reasons
