"""The diversity term: the K are not near-copies."""
import numpy as np

from cxr_tfp.annotate.strategies import Scores, get_strategy
from cxr_tfp.annotate.strategies.base import diverse_top_k


def _clusters():
    """Three tight clusters in the embedding; cluster 0 holds the five most uncertain images."""
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    emb = np.concatenate([centres[c] + 0.01 * rng.normal(size=(5, 3)) for c in (0, 1, 2)])
    u = np.concatenate([np.linspace(0.9, 0.8, 5), np.linspace(0.5, 0.4, 5), np.linspace(0.3, 0.2, 5)])[:, None]
    return Scores(("A",), np.full((15, 1), 0.5), u, emb)


def test_without_diversity_uncertainty_takes_one_cluster_with_it_three():
    s = _clusters()
    plain = get_strategy("uncertainty").rank(list(range(15)), s, 3).ids
    diverse = get_strategy("uncertainty", diversity=1.0).rank(list(range(15)), s, 3).ids
    assert {i // 5 for i in plain} == {0}
    assert sorted(i // 5 for i in diverse) == [0, 1, 2]
    assert diverse[0] == 0, "the best image is still picked first"


def test_a_small_weight_keeps_the_value_order():
    s = _clusters()
    ids = get_strategy("uncertainty", diversity=0.01).rank(list(range(15)), s, 3).ids
    assert ids == [0, 1, 2]


def test_diverse_top_k_reports_each_picks_similarity_to_earlier_picks():
    rows, sims = diverse_top_k(np.array([3.0, 2.0, 1.0]), np.array([[1.0, 0], [1.0, 0.01], [0, 1.0]]), 3, 0.0)
    assert rows.tolist() == [0, 1, 2] and sims[0] is None and sims[1] > 0.9
