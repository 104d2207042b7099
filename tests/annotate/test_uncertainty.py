"""``uncertainty``: the spread over latent samples, averaged over findings."""
import numpy as np

from cxr_tfp.annotate.strategies import Scores, get_strategy


def _scores(u):
    u = np.asarray(u, float)
    n, L = u.shape
    return Scores(tuple(f"F{j}" for j in range(L)), np.full((n, L), 0.5), u, np.eye(n))


def test_the_most_uncertain_images_come_first_by_their_mean_spread():
    u = [[0.01, 0.02], [0.30, 0.00], [0.10, 0.10], [0.25, 0.20], [0.0, 0.0]]
    r = get_strategy("uncertainty").rank(["a", "b", "c", "d", "e"], _scores(u), 3)
    assert r.ids == ["d", "b", "c"]
    np.testing.assert_allclose(r.scores, [0.225, 0.15, 0.10])


def test_the_reason_names_the_finding_the_model_is_least_sure_about():
    r = get_strategy("uncertainty").rank(["a", "b"], _scores([[0.01, 0.40], [0.0, 0.0]]), 1)
    assert r.reasons[0] == "the model is least sure about F1 (p 0.50 +/- 0.40 over latent samples)"


def test_ties_are_broken_by_candidate_order():
    r = get_strategy("uncertainty").rank(list("abcd"), _scores([[0.1]] * 4), 4)
    assert r.ids == list("abcd")
