"""``shift``: a ridge regression of the posterior shift, learned on the images already annotated."""
import numpy as np
import pytest

from cxr_tfp.annotate.strategies import Scores, get_strategy
from cxr_tfp.annotate.strategies.shift import MIN_ANNOTATED, fit_ridge


def _planted(n=40, m=30, seed=0):
    """The shift grows with the first embedding dimension; the others are noise."""
    rng = np.random.default_rng(seed)
    emb, a_emb = rng.normal(size=(n, 5)), rng.normal(size=(m, 5))
    shift = np.expm1(np.maximum(0.0, 1.0 + 0.8 * a_emb[:, 0] + 0.05 * rng.normal(size=m)))
    L = 2
    return Scores(("A", "B"), rng.random((n, L)), 0.1 * rng.random((n, L)), emb, a_emb, rng.random((m, L)),
                  0.1 * rng.random((m, L)), shift)


def test_it_picks_the_images_whose_annotation_is_predicted_to_move_the_posterior_most():
    s = _planted()
    r = get_strategy("shift").rank(list(range(40)), s, 8)
    truth = set(np.argsort(-s.embedding[:, 0])[:8].tolist())
    assert len(truth & set(r.ids)) >= 6
    assert r.scores[0] > np.median(get_strategy("shift").values(s)[0])


def test_the_ridge_fit_recovers_a_linear_relation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    y = 2.0 * x[:, 0] - x[:, 2] + 0.5
    pred = fit_ridge(x, y, alpha=1e-6)(x)
    np.testing.assert_allclose(pred, y, atol=1e-3)


def test_too_few_annotated_images_is_a_clear_error():
    s = _planted(m=MIN_ANNOTATED - 1)
    with pytest.raises(ValueError, match=f"needs at least {MIN_ANNOTATED}; found {MIN_ANNOTATED - 1}"):
        get_strategy("shift").rank(list(range(40)), s, 3)
    bare = Scores(("A",), np.zeros((3, 1)), np.zeros((3, 1)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="found 0"):
        get_strategy("shift").rank([0, 1, 2], bare, 1)


def test_the_reason_gives_the_predicted_shift_and_the_fit_size():
    r = get_strategy("shift").rank(list(range(40)), _planted(), 1)
    assert "nats" in r.reasons[0] and "learned on 30 annotated images" in r.reasons[0]
