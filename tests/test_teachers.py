"""Synthetic teachers: each answers with the statistics its B-Pref definition says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.store import PreferenceStore, StoreError, TextPair
from rlhf_hgt.feedback.teachers import (
    EqualTeacher,
    MistakeTeacher,
    MyopicTeacher,
    OracleTeacher,
    SkipTeacher,
    StochasticTeacher,
    answer_pending,
    make_teacher,
)


def _binomial_ok(k: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(k / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def _random_pairs(n: int, seed: int = 0, steps: int = 5):
    rng = np.random.default_rng(seed)
    left = [rng.normal(size=steps) for _ in range(n)]
    right = [rng.normal(size=steps) for _ in range(n)]
    return left, right


# ----------------------------------------------------------------------------- oracle


def test_oracle_prefers_higher_return_and_ties_on_equal():
    t = OracleTeacher()
    left = [np.array([1.0, 2.0]), np.array([0.0, 0.0]), np.array([0.1, 0.2, 0.3]), [-1.0]]
    right = [np.array([0.5, 0.5]), np.array([1.0, -0.5]), np.array([0.3, 0.2, 0.1]), [-2.0]]
    assert t.answer_batch(left, right, np.random.default_rng(0)) == \
        ["left", "right", "tie", "left"]
    assert t.name == "oracle"


def test_answer_batch_checks_its_input():
    t = OracleTeacher()
    with pytest.raises(ValueError, match="as many left"):
        t.answer_batch([np.zeros(2)], [], np.random.default_rng(0))
    with pytest.raises(ValueError, match="NaN"):
        t.answer_batch([np.array([np.nan])], [np.zeros(1)], np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        t.answer_batch([np.zeros((3, 2))], [np.zeros(3)], np.random.default_rng(0))
    assert t.answer_batch([], [], np.random.default_rng(0)) == []
    # (T, 1) rewards are per-step rewards too
    assert t.answer_batch([np.ones((3, 1))], [np.zeros(3)], np.random.default_rng(0)) == ["left"]


# ----------------------------------------------------------------------------- stochastic


@pytest.mark.parametrize("beta,gap", [(1.0, 1.0), (0.5, 2.0), (2.0, -0.5)])
def test_stochastic_left_rate_matches_sigmoid(beta, gap):
    n = 20000
    t = StochasticTeacher(beta=beta)
    left = [np.array([gap, 0.0])] * n
    right = [np.zeros(2)] * n
    answers = t.answer_batch(left, right, np.random.default_rng(1))
    assert set(answers) <= {"left", "right"}
    p = 1.0 / (1.0 + math.exp(-beta * gap))
    assert _binomial_ok(answers.count("left"), n, p)


def test_stochastic_is_a_coin_flip_on_equal_returns_and_near_oracle_for_large_beta():
    n = 20000
    equal = StochasticTeacher().answer_batch([np.ones(3)] * n, [np.ones(3)] * n,
                                             np.random.default_rng(2))
    assert _binomial_ok(equal.count("left"), n, 0.5)
    left, right = _random_pairs(2000, seed=3)
    sharp = StochasticTeacher(beta=1e4).answer_batch(left, right, np.random.default_rng(3))
    assert sharp == OracleTeacher().answer_batch(left, right, np.random.default_rng(3))


def test_stochastic_is_reproducible_with_the_same_rng_seed():
    left, right = _random_pairs(200, seed=4)
    t = StochasticTeacher(beta=0.3)
    a = t.answer_batch(left, right, np.random.default_rng(7))
    b = t.answer_batch(left, right, np.random.default_rng(7))
    assert a == b and a != t.answer_batch(left, right, np.random.default_rng(8))


# ----------------------------------------------------------------------------- mistake


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_mistake_flips_about_eps_of_oracle_answers(eps):
    n = 20000
    left, right = _random_pairs(n, seed=5)
    oracle = OracleTeacher().answer_batch(left, right, np.random.default_rng(0))
    noisy = MistakeTeacher(eps=eps).answer_batch(left, right, np.random.default_rng(6))
    flipped = sum(o != m for o, m in zip(oracle, noisy, strict=True))
    assert _binomial_ok(flipped, n, eps)
    # a flip turns left into right and right into left, never anything else
    assert all({o, m} == {"left", "right"} for o, m in zip(oracle, noisy, strict=True) if o != m)


def test_mistake_keeps_ties_and_default_eps():
    t = MistakeTeacher()
    assert t.eps == 0.1 and t.name == "mistake(eps=0.1)"
    n = 2000
    answers = MistakeTeacher(eps=1.0).answer_batch([np.ones(2)] * n + [np.ones(2)],
                                                   [np.ones(2)] * n + [np.zeros(2)],
                                                   np.random.default_rng(0))
    assert answers[:n] == ["tie"] * n and answers[n] == "right"


# ----------------------------------------------------------------------------- skip


def test_skip_absolute_threshold_skips_only_when_both_returns_small():
    t = SkipTeacher(threshold=1.0)
    left, right = _random_pairs(5000, seed=9, steps=3)
    answers = t.answer_batch(left, right, np.random.default_rng(0))
    oracle = OracleTeacher().answer_batch(left, right, np.random.default_rng(0))
    rl = np.array([x.sum() for x in left])
    rr = np.array([x.sum() for x in right])
    small = np.maximum(rl, rr) < 1.0
    assert 0 < small.sum() < len(small)  # both cases occur
    for a, o, s in zip(answers, oracle, small, strict=True):
        assert a == ("skip" if s else o)


def test_skip_relative_threshold_works_with_negative_rewards():
    # returns: -100 .. -10; spread 90, threshold = -100 + 0.1 * 90 = -91
    left = [np.array([-100.0]), np.array([-95.0]), np.array([-92.0]), np.array([-10.0])]
    right = [np.array([-99.0]), np.array([-50.0]), np.array([-91.5]), np.array([-60.0])]
    t = SkipTeacher()
    assert t.name == "skip(fraction=0.1)"
    rl = np.array([-100.0, -95.0, -92.0, -10.0])
    rr = np.array([-99.0, -50.0, -91.5, -60.0])
    assert t.threshold_for(rl, rr) == pytest.approx(-91.0)
    assert t.answer_batch(left, right, np.random.default_rng(0)) == \
        ["skip", "right", "skip", "left"]
    # all returns equal: nothing is skipped, the oracle ties
    assert SkipTeacher().answer_batch([np.ones(2)] * 3, [np.ones(2)] * 3,
                                      np.random.default_rng(0)) == ["tie"] * 3


# ----------------------------------------------------------------------------- equal


def test_equal_ties_within_the_margin_and_is_oracle_outside():
    t = EqualTeacher(margin=0.5)
    left, right = _random_pairs(5000, seed=11, steps=2)
    answers = t.answer_batch(left, right, np.random.default_rng(0))
    oracle = OracleTeacher().answer_batch(left, right, np.random.default_rng(0))
    gap = np.abs(np.array([x.sum() for x in left]) - np.array([x.sum() for x in right]))
    assert 0 < (gap < 0.5).sum() < len(gap)
    for a, o, g in zip(answers, oracle, gap, strict=True):
        assert a == ("tie" if g < 0.5 else o)
        assert a != "skip"


def test_equal_relative_margin_uses_the_batch_spread():
    # returns span 0..10: margin = 0.2 * 10 = 2
    t = EqualTeacher(fraction=0.2)
    left = [np.array([10.0]), np.array([5.0]), np.array([3.0])]
    right = [np.array([0.0]), np.array([3.5]), np.array([6.0])]
    assert t.answer_batch(left, right, np.random.default_rng(0)) == ["left", "tie", "right"]


# ----------------------------------------------------------------------------- myopic


def test_myopic_prefers_the_side_with_better_recent_rewards():
    # left: a big reward at the start (return 4); right: small rewards at the end (return 2)
    left = np.zeros(10)
    left[0] = 4.0
    right = np.zeros(10)
    right[-2:] = 1.0
    rng = np.random.default_rng(0)
    assert OracleTeacher().answer_batch([left], [right], rng) == ["left"]
    t = MyopicTeacher()
    assert t.gamma == 0.9 and t.name == "myopic(gamma=0.9)"
    # weighted: 4 * 0.9**9 = 1.55 < 1 + 0.9 = 1.9
    assert t.answer_batch([left], [right], rng) == ["right"]
    # gamma = 1 weighs every step alike: the oracle
    assert MyopicTeacher(gamma=1.0).answer_batch([left], [right], rng) == ["left"]


def test_myopic_weights_align_to_the_end_of_segments_of_different_length():
    t = MyopicTeacher(gamma=0.5)
    # last steps equal; left has one more (earlier) step
    assert t._returns([np.array([8.0, 1.0]), np.array([1.0])]).tolist() == [5.0, 1.0]


# ----------------------------------------------------------------------------- factory


@pytest.mark.parametrize("spec,cls,name", [
    ("oracle", OracleTeacher, "oracle"),
    ("stochastic", StochasticTeacher, "stochastic(beta=1)"),
    ("stochastic:beta=0.5", StochasticTeacher, "stochastic(beta=0.5)"),
    ("mistake:eps=0.2", MistakeTeacher, "mistake(eps=0.2)"),
    ("skip", SkipTeacher, "skip(fraction=0.1)"),
    ("skip:threshold=3", SkipTeacher, "skip(threshold=3)"),
    ("equal", EqualTeacher, "equal(fraction=0.1)"),
    ("equal:margin=0.25", EqualTeacher, "equal(margin=0.25)"),
    ("myopic:gamma=0.8", MyopicTeacher, "myopic(gamma=0.8)"),
    (" Myopic : gamma = 0.8 ", MyopicTeacher, "myopic(gamma=0.8)"),
])
def test_make_teacher_parses_specs(spec, cls, name):
    t = make_teacher(spec)
    assert isinstance(t, cls) and t.name == name


@pytest.mark.parametrize("spec,fragment", [
    ("", "empty"),
    ("psychic", "unknown teacher 'psychic'"),
    ("oracle:beta=1", "oracle has no parameter 'beta'"),
    ("stochastic:temperature=2", "parameters: beta"),
    ("stochastic:beta", "has no value"),
    ("stochastic:beta=abc", "not a number"),
    ("stochastic:beta=0", "beta"),
    ("mistake:eps=1.5", "0 <= eps <= 1"),
    ("myopic:gamma=0", "gamma"),
    ("skip:fraction=2", "fraction"),
    ("equal:margin=-1", "margin >= 0"),
])
def test_make_teacher_rejects_bad_specs_with_the_valid_names(spec, fragment):
    with pytest.raises(UserInputError) as info:
        make_teacher(spec)
    msg = str(info.value)
    assert fragment in msg
    for valid in ("oracle", "stochastic", "mistake", "skip", "equal", "myopic", "beta=",
                  "eps=", "gamma=", "margin=", "threshold="):
        assert valid in msg


def test_config_checks_raise_value_error():
    with pytest.raises(ValueError):
        StochasticTeacher(beta=float("inf"))
    with pytest.raises(ValueError):
        MistakeTeacher(eps=-0.1)
    with pytest.raises(ValueError):
        SkipTeacher(threshold=float("nan"))


# ----------------------------------------------------------------------------- answer_pending


def _segment(rewards) -> dict:
    r = np.asarray(rewards, dtype=np.float32)
    return {"obs": np.zeros((len(r), 2), np.float32), "actions": np.zeros(len(r), np.int64),
            "true_rewards": r}


def test_answer_pending_writes_synthetic_answers_through_the_store(tmp_path):
    path = tmp_path / "prefs.db"
    rng = np.random.default_rng(0)
    with PreferenceStore(path) as store:
        pairs = [(_segment(rng.normal(size=4)), _segment(rng.normal(size=4)))
                 for _ in range(12)]
        ids = store.add_segment_queries(pairs, env_id="Toy-v0")
        n = answer_pending(store, make_teacher("oracle"), rng=np.random.default_rng(1))
        assert n == 12
        answers = store.answers()
        assert [a.query_id for a in answers] == ids
        for a, (left, right) in zip(answers, pairs, strict=True):
            assert a.synthetic is True
            assert a.annotator == "teacher:oracle"
            assert a.interface == "teacher/1"
            assert a.shown_at == a.answered_at
            expected = "left" if left["true_rewards"].sum() > right["true_rewards"].sum() \
                else "right"
            assert a.answer == expected
        assert store.pending_ids("teacher:oracle") == []
        # nothing left: a second run answers nothing
        assert answer_pending(store, make_teacher("oracle")) == 0
        assert store.events("teacher")[-1]["data"]["answered"] == 12


def test_answer_pending_limit_per_query_and_store_path(tmp_path):
    path = tmp_path / "prefs.db"
    with PreferenceStore(path) as store:
        for i in range(5):
            store.add_segment_query(_segment([i, 0.0]), _segment([0.0, 1.0]))
    assert answer_pending(path, make_teacher("mistake"), limit=2,
                          rng=np.random.default_rng(0)) == 2
    # per_query=2: a second teacher answers all five; the first one finishes its three
    assert answer_pending(path, make_teacher("oracle"), per_query=2) == 5
    assert answer_pending(path, make_teacher("mistake"), per_query=2,
                          rng=np.random.default_rng(0)) == 3
    assert answer_pending(path, make_teacher("equal"), annotator="third", per_query=2) == 0
    with PreferenceStore(path, create=False) as store:
        names = {a.annotator for a in store.answers()}
        assert names == {"teacher:mistake(eps=0.1)", "teacher:oracle"}
        assert len(store.answers()) == 10


def _distinct(i: int, reward: float) -> dict:
    """A one-step segment whose observation (what the store tells pairs apart by) is i."""
    return {"obs": np.full((1, 2), i, np.float32), "actions": np.zeros(1, np.int64),
            "true_rewards": np.array([reward], np.float32)}


def test_answer_pending_keeps_to_the_queries_it_is_given(tmp_path):
    """In a shared store a teacher answers its own round's pairs, not other people's."""
    with PreferenceStore(tmp_path / "prefs.db") as store:
        theirs = store.add_segment_queries(
            [(_distinct(i, 1.0), _distinct(-1, 0.0)) for i in range(3)], round=0)
        mine = store.add_segment_queries(
            [(_distinct(-1, 0.0), _distinct(i + 10, 1.0)) for i in range(2)], round=1)
        assert answer_pending(store, make_teacher("oracle"), among=store.query_ids(round=1)) == 2
        assert sorted(a.query_id for a in store.answers()) == mine
        assert store.unanswered_ids() == theirs


def test_record_answers_is_one_transaction_with_the_single_answer_checks(tmp_path):
    from rlhf_hgt.feedback.store import StoreError

    with PreferenceStore(tmp_path / "prefs.db") as store:
        ids = store.add_segment_queries([(_distinct(i, 1.0), _distinct(-1, 0.0))
                                         for i in range(3)])
        assert store.record_answer(ids[0], "left", "ann") is not None
        saved = store.record_answers([(ids[0], "right"), (ids[1], "tie"), (ids[2], "skip")],
                                     "ann", synthetic=True)
        assert saved[0] is None and all(isinstance(x, int) for x in saved[1:])  # already answered
        assert [a.answer for a in store.answers()] == ["left", "tie", "skip"]
        with pytest.raises(StoreError):  # an unknown query: nothing of the batch is written
            store.record_answers([(ids[1], "left"), (999, "left")], "other")
        assert len(store.answers()) == 3
        with pytest.raises(StoreError, match="answer must be one of"):
            store.record_answers([(ids[1], "maybe")], "other")


def test_answer_pending_text_queries_need_a_score_function(tmp_path):
    path = tmp_path / "prefs.db"
    with PreferenceStore(path) as store:
        store.add_text_queries([TextPair("Say hi", "hi", "hello there"),
                                TextPair("Count", "one two", "one two three four")])
        with pytest.raises(UserInputError, match="score function"):
            answer_pending(store, make_teacher("oracle"))
        assert store.answers() == []  # nothing half written
        n = answer_pending(store, make_teacher("oracle"), annotator="len-judge",
                           score_fn=lambda prompt, response: len(response))
        assert n == 2
        by_query = {a.query_id: a for a in store.answers()}
        for q in store.queries("text"):
            a = by_query[q.id]
            assert a.annotator == "len-judge" and a.synthetic
            assert a.answer == ("left" if len(q.left) > len(q.right) else "right")


def test_answer_pending_refuses_segments_without_true_rewards(tmp_path):
    with PreferenceStore(tmp_path / "prefs.db") as store:
        store.add_segment_query({"obs": np.zeros((3, 2))}, {"obs": np.ones((3, 2))})
        with pytest.raises(StoreError, match="true_rewards"):
            answer_pending(store, make_teacher("oracle"))
        assert store.answers() == []


def test_answer_pending_on_a_missing_store_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        answer_pending(tmp_path / "nope.db", make_teacher("oracle"))
    assert not (tmp_path / "nope.db").exists()


# ----------------------------------------------------------------------------- drift diffusion


def _ddm_batch(spec: str, n: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    left, right = rng.normal(size=n), rng.normal(size=n)
    answers, seconds = make_teacher(spec).answer_batch_timed(
        [np.array([x]) for x in left], [np.array([x]) for x in right], rng)
    right_answer = np.array([(a == "left") == (d > 0)
                             for a, d in zip(answers, left - right, strict=True)])
    return np.abs(left - right), right_answer, np.asarray(seconds)


def test_drift_diffusion_close_pairs_are_slow_and_error_prone():
    diff, ok, secs = _ddm_batch("ddm")
    assert secs.min() >= 0.4  # the non-decision time
    hard, easy = diff < np.quantile(diff, 0.25), diff > np.quantile(diff, 0.75)
    assert ok[hard].mean() < 0.75 < 0.95 < ok[easy].mean()
    assert secs[hard].mean() > secs[easy].mean() + 0.3
    slow = secs > np.median(secs)
    assert ok[~slow].mean() > ok[slow].mean() + 0.05  # fast answers are the surer ones
    # the break condition: the same answers' accuracy, times that carry nothing
    diff0, ok0, secs0 = _ddm_batch("ddm:informative=0")
    assert abs(np.corrcoef(secs0, diff0)[0, 1]) < 0.05
    assert abs(ok0.mean() - ok.mean()) < 0.03


def test_drift_diffusion_times_are_stored_with_the_answers(tmp_path):
    rng = np.random.default_rng(0)
    with PreferenceStore(tmp_path / "p.db") as store:
        pairs = [(_segment(rng.normal(size=4)), _segment(rng.normal(size=4)))
                 for _ in range(20)]
        store.add_segment_queries(pairs, env_id="Toy-v0")
        assert answer_pending(store, make_teacher("ddm"), rng=np.random.default_rng(1)) == 20
        took = [a.answered_at - a.shown_at for a in store.answers()]
        assert min(took) >= 0.4 and len(set(np.round(took, 3))) > 10
        assert all(a.annotator.startswith("teacher:ddm(") for a in store.answers())
    assert make_teacher("ddm").answer_batch([np.ones(2)], [np.zeros(2)],
                                            np.random.default_rng(0)) in (["left"], ["right"])
    for bad in ("ddm:drift=0", "ddm:bound=-1", "ddm:ndt=-0.1", "ddm:informative=0.5"):
        with pytest.raises(UserInputError, match="ddm"):
            make_teacher(bad)
