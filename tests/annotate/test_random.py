"""``random``: the seeded baseline."""
import numpy as np

from cxr_tfp.annotate.strategies import get_strategy
from tests.annotate.strategy_data import make_scores


def test_different_seeds_draw_different_images_and_every_image_can_be_drawn():
    scores = make_scores(n=40)
    ids = list(range(40))
    picks = [tuple(get_strategy("random", seed=s).rank(ids, scores, 5).ids) for s in range(60)]
    assert len(set(picks)) > 50
    drawn = {i for p in picks for i in p}
    assert len(drawn) >= 38


def test_random_ignores_the_model_scores():
    a, b = make_scores(seed=1), make_scores(seed=2)
    ids = list(range(30))
    assert get_strategy("random", seed=4).rank(ids, a, 8).ids == get_strategy("random", seed=4).rank(ids, b, 8).ids


def test_the_reason_says_it_was_drawn_at_random_with_its_seed():
    r = get_strategy("random", seed=9).rank(list(range(30)), make_scores(), 2)
    assert r.reasons == ["drawn at random (seed 9)"] * 2 and ((r.scores >= 0) & (r.scores < 1)).all()
