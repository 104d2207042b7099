"""The contract every registered strategy keeps (STYLE.md section 6), and the registry."""
import sys

import numpy as np
import pytest

from cxr_tfp.annotate.strategies import DEFAULT, NAMES, Ranking, Scores, Strategy, get_strategy, strategy_class
from tests.annotate.strategy_data import make_scores

CASES = [(name, div) for name in NAMES for div in (0.0, 1.0)]


@pytest.mark.parametrize("name,diversity", CASES)
def test_at_most_k_distinct_ids_all_from_the_candidates_best_first(name, diversity):
    scores = make_scores()
    ids = [f"img{i:03d}.png" for i in range(len(scores))]
    r = get_strategy(name, seed=3, diversity=diversity).rank(ids, scores, 7)
    assert isinstance(r, Ranking) and len(r) == 7
    assert len(set(r.ids)) == 7 and set(r.ids) <= set(ids)
    assert r.scores.shape == (7,) and np.isfinite(r.scores).all()
    assert len(r.reasons) == 7 and all(isinstance(s, str) and 10 < len(s) < 300 for s in r.reasons)
    if diversity == 0:
        assert (np.diff(r.scores) <= 1e-12).all(), "without diversity the picks are in value order"


@pytest.mark.parametrize("name,diversity", CASES)
def test_an_empty_pool_and_k_zero_give_no_picks(name, diversity):
    s = get_strategy(name, diversity=diversity)
    empty = make_scores().take([])
    assert len(s.rank([], empty, 5)) == 0
    assert len(s.rank(list(range(30)), make_scores(), 0)) == 0


@pytest.mark.parametrize("name,diversity", CASES)
def test_k_larger_than_the_pool_returns_the_whole_pool_once(name, diversity):
    scores = make_scores(n=6)
    r = get_strategy(name, diversity=diversity).rank(list("abcdef"), scores, 50)
    assert sorted(r.ids) == list("abcdef")


@pytest.mark.parametrize("name,diversity", CASES)
def test_the_same_seed_gives_the_same_ranking(name, diversity):
    scores = make_scores()
    ids = list(range(100, 130))
    a = get_strategy(name, seed=7, diversity=diversity).rank(ids, scores, 10)
    b = get_strategy(name, seed=7, diversity=diversity).rank(ids, scores, 10)
    assert a.ids == b.ids and np.array_equal(a.scores, b.scores) and a.reasons == b.reasons


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_refused_with_a_message(name):
    s = get_strategy(name)
    with pytest.raises(ValueError, match="30 candidate ids but scores for 29"):
        s.rank(list(range(30)), make_scores(n=29), 3)
    with pytest.raises(ValueError, match="distinct"):
        s.rank([1] * 30, make_scores(), 3)
    with pytest.raises(ValueError, match="k must be"):
        s.rank(list(range(30)), make_scores(), -1)


def test_every_strategy_has_a_name_and_a_one_line_description():
    for name in NAMES:
        cls = strategy_class(name)
        assert issubclass(cls, Strategy) and cls.name == name
        assert cls.description and "\n" not in cls.description
    assert DEFAULT == "random" and NAMES[0] == "random"


def test_an_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match="unknown strategy 'entropy'; choose one of random, uncertainty, shift"):
        get_strategy("entropy")
    with pytest.raises(ValueError, match="diversity must be >= 0"):
        get_strategy("random", diversity=-1)


def test_the_strategies_need_no_tensorflow():
    import subprocess

    code = ("import sys; from cxr_tfp.annotate.strategies import get_strategy, NAMES; "
            "[get_strategy(n) for n in NAMES]; sys.exit(int('tensorflow' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_scores_check_their_shapes():
    with pytest.raises(ValueError):
        Scores(("a", "b"), np.zeros((4, 2)), np.zeros((4, 3)), np.zeros((4, 5)))
