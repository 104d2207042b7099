"""Annotation-request strategies: which unannotated images to send to the radiologists.

=============  ==============================================  ==================================================
name           module                                          ranks by
=============  ==============================================  ==================================================
random         :mod:`cxr_tfp.annotate.strategies.random`       a seeded uniform draw (default, the baseline)
uncertainty    :mod:`cxr_tfp.annotate.strategies.uncertainty`  spread of p(y|z) over latent samples
shift          :mod:`cxr_tfp.annotate.strategies.shift`        predicted KL(q(z|x,a) || p(z|x)), learned on the
                                                               images already annotated
=============  ==============================================  ==================================================

``get_strategy(name, seed=0, diversity=0.0)`` returns one; ``strategy.rank(ids, scores, k)`` ranks.
Every strategy takes ``diversity`` (see :func:`~cxr_tfp.annotate.strategies.base.diverse_top_k`).
"""
from __future__ import annotations

import importlib
from typing import Dict, Tuple

from cxr_tfp.annotate.strategies.base import Ranking, Scores, Strategy

DEFAULT = "random"

# name -> (module, class), imported lazily (shaped like cxr_tfp.datasets._ADAPTERS)
_STRATEGIES: Dict[str, Tuple[str, str]] = {
    "random": ("cxr_tfp.annotate.strategies.random", "RandomStrategy"),
    "uncertainty": ("cxr_tfp.annotate.strategies.uncertainty", "UncertaintyStrategy"),
    "shift": ("cxr_tfp.annotate.strategies.shift", "ShiftStrategy"),
}
NAMES = tuple(_STRATEGIES)


def strategy_class(name: str):
    if name not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(NAMES)}")
    mod, cls = _STRATEGIES[name]
    return getattr(importlib.import_module(mod), cls)


def get_strategy(name: str = DEFAULT, seed: int = 0, diversity: float = 0.0) -> Strategy:
    """The strategy called ``name`` (``random`` when empty), seeded, with the diversity weight."""
    return strategy_class(name or DEFAULT)(seed=seed, diversity=diversity)


__all__ = ["DEFAULT", "NAMES", "Ranking", "Scores", "Strategy", "get_strategy", "strategy_class"]
