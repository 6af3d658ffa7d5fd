"""Synthetic teachers: simulated people who answer queries from hidden true rewards.

The six teacher models of B-Pref (Lee et al. 2021, "B-Pref: Benchmarking Preference-Based
Reinforcement Learning"), each a small config dataclass with one method::

    answer_batch(left_rewards, right_rewards, rng) -> ["left" | "right" | "tie" | "skip", ...]

where ``left_rewards[i]`` and ``right_rewards[i]`` are the true per-step rewards of the two
sides of query ``i`` (the segment's ``true_rewards`` array; for a text query, the one-step
"reward" is ``score(prompt, response)``). The return of a side is the sum of its rewards.

``oracle``      prefers the higher return; equal returns give a tie.
``stochastic``  Bradley–Terry: P(left) = sigmoid(beta * (R_left - R_right)); never ties.
``mistake``     the oracle's answer, then each left/right answer is flipped with
                probability ``eps`` (ties stay ties).
``skip``        answers skip when both returns are small: max(R_left, R_right) < threshold;
                otherwise the oracle's answer.
``equal``       answers tie when |R_left - R_right| < margin; otherwise the oracle's answer.
``myopic``      weighs the reward of step t (of T) by gamma^(T-1-t), so the last steps weigh
                most; then the oracle's answer on the weighted returns.
``ddm``         a drift-diffusion decision: answers and response times, slower and more often
                wrong when the two returns are close (``answer_batch_timed``; the times are
                stored with the answers).

Thresholds (``skip``'s threshold, ``equal``'s margin) are absolute when given. Otherwise
they are relative to the returns the teacher sees in the batch it answers, which works
for any sign of reward (B-Pref scales by the mean episode return, which breaks when
returns are negative):

    lo, hi = min and max of all returns of both sides in the batch
    skip threshold = lo + fraction * (hi - lo)   (both returns in the bottom ``fraction``
                                                  of the observed range -> skip)
    equal margin   = fraction * (hi - lo)

So relative thresholds need a batch: :func:`answer_pending` answers all the queries it
takes in one call to ``answer_batch``. When every return is the same, the spread is 0:
nothing is skipped, and the oracle's tie-on-equal applies.

Returns count as equal when they differ by at most 1e-12 relative to their size (so two
sums of the same rewards in a different order still tie).

This module imports nothing of ours but the feedback package, and no torch: a teacher
simulates a person in numpy, while rlhf_hgt.preference models one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import UserInputError
from .store import PreferenceStore, StoreError

INTERFACE = "teacher/1"
_EQUAL_RTOL = 1e-12
_WRITE_BATCH = 500

ScoreFn = Callable[[str, str], float]


class Teacher(Protocol):
    """The one interface every synthetic teacher has."""

    @property
    def name(self) -> str: ...

    def answer_batch(self, left_rewards: Sequence[np.ndarray], right_rewards: Sequence[np.ndarray],
                     rng: np.random.Generator) -> list[str]: ...


# ----------------------------------------------------------------------------- helpers


def _as_rewards(x: Any, where: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim > 1:
        if all(d == 1 for d in arr.shape[1:]):
            arr = arr.reshape(arr.shape[0])
        else:
            raise ValueError(f"{where}: rewards must be one number per step (shape (T,)), "
                             f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: rewards contain NaN or infinity; store finite rewards")
    return arr


def _check_pair_lists(left: Sequence, right: Sequence) -> tuple[list[np.ndarray],
                                                                list[np.ndarray]]:
    if len(left) != len(right):
        raise ValueError(f"answer_batch needs as many left sides as right sides, got "
                         f"{len(left)} and {len(right)}")
    return ([_as_rewards(x, f"left side {i}") for i, x in enumerate(left)],
            [_as_rewards(x, f"right side {i}") for i, x in enumerate(right)])


def _oracle(ret_l: np.ndarray, ret_r: np.ndarray) -> list[str]:
    scale = np.maximum(1.0, np.maximum(np.abs(ret_l), np.abs(ret_r)))
    diff = ret_l - ret_r
    tie = np.abs(diff) <= _EQUAL_RTOL * scale
    return ["tie" if t else ("left" if d > 0 else "right") for t, d in zip(tie, diff, strict=True)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def _fmt(x: float) -> str:
    return f"{x:g}"


def _check_fraction(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} is a fraction of the spread of returns in the batch: "
                         f"use 0 <= {name} <= 1, got {value}")


def _check_finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (or left unset for a relative "
                         f"threshold), got {value}")


class _ReturnTeacher:
    """Shared steps: returns of each side, then a decision (one level of subclassing)."""

    def _returns(self, rewards: list[np.ndarray]) -> np.ndarray:
        return np.array([float(np.sum(r)) for r in rewards], dtype=np.float64)

    def _decide(self, ret_l: np.ndarray, ret_r: np.ndarray,
                rng: np.random.Generator) -> list[str]:
        return _oracle(ret_l, ret_r)

    def answer_batch(self, left_rewards: Sequence[np.ndarray], right_rewards: Sequence[np.ndarray],
                     rng: np.random.Generator) -> list[str]:
        """Answer each pair: "left", "right", "tie" or "skip"."""
        left, right = _check_pair_lists(left_rewards, right_rewards)
        if not left:
            return []
        return self._decide(self._returns(left), self._returns(right), rng)


def _spread(ret_l: np.ndarray, ret_r: np.ndarray) -> tuple[float, float]:
    both = np.concatenate([ret_l, ret_r])
    return float(both.min()), float(both.max())


# ----------------------------------------------------------------------------- the teachers


@dataclass
class OracleTeacher(_ReturnTeacher):
    """Perfectly rational: prefers the side with the higher true return; equal -> tie."""

    @property
    def name(self) -> str:
        return "oracle"


@dataclass
class StochasticTeacher(_ReturnTeacher):
    """Bradley–Terry: answers left with probability sigmoid(beta * (R_left - R_right))."""

    beta: float = field(default=1.0, metadata={
        "help": "rationality: larger is closer to the oracle, near 0 is a coin flip (> 0)"})

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta (rationality) must be a finite number > 0, got {self.beta}; "
                             "use the oracle teacher for a perfectly rational one")

    @property
    def name(self) -> str:
        return f"stochastic(beta={_fmt(self.beta)})"

    def prob_left(self, ret_l: np.ndarray, ret_r: np.ndarray) -> np.ndarray:
        return _sigmoid(self.beta * (np.asarray(ret_l, float) - np.asarray(ret_r, float)))

    def _decide(self, ret_l: np.ndarray, ret_r: np.ndarray,
                rng: np.random.Generator) -> list[str]:
        left = rng.random(len(ret_l)) < self.prob_left(ret_l, ret_r)
        return ["left" if x else "right" for x in left]


@dataclass
class MistakeTeacher(_ReturnTeacher):
    """The oracle, but each left/right answer is flipped with probability eps."""

    eps: float = field(default=0.1, metadata={
        "help": "probability of flipping each left/right answer (0 <= eps <= 1); ties stay"})

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eps) and 0.0 <= self.eps <= 1.0):
            raise ValueError(f"eps is a probability of a mistake: use 0 <= eps <= 1, "
                             f"got {self.eps}")

    @property
    def name(self) -> str:
        return f"mistake(eps={_fmt(self.eps)})"

    def _decide(self, ret_l: np.ndarray, ret_r: np.ndarray,
                rng: np.random.Generator) -> list[str]:
        answers = _oracle(ret_l, ret_r)
        flip = rng.random(len(answers)) < self.eps
        swap = {"left": "right", "right": "left", "tie": "tie"}
        return [swap[a] if f else a for a, f in zip(answers, flip, strict=True)]


@dataclass
class SkipTeacher(_ReturnTeacher):
    """Skips a pair when both returns are small: max(R_left, R_right) < threshold."""

    threshold: float | None = field(default=None, metadata={
        "help": "absolute return below which both sides count as small; unset: relative"})
    fraction: float = field(default=0.1, metadata={
        "help": "relative threshold: min + fraction * (max - min) of the batch's returns"})

    def __post_init__(self) -> None:
        _check_finite("threshold", self.threshold)
        _check_fraction("fraction", self.fraction)

    @property
    def name(self) -> str:
        if self.threshold is not None:
            return f"skip(threshold={_fmt(self.threshold)})"
        return f"skip(fraction={_fmt(self.fraction)})"

    def threshold_for(self, ret_l: np.ndarray, ret_r: np.ndarray) -> float:
        if self.threshold is not None:
            return float(self.threshold)
        lo, hi = _spread(ret_l, ret_r)
        return lo + self.fraction * (hi - lo)

    def _decide(self, ret_l: np.ndarray, ret_r: np.ndarray,
                rng: np.random.Generator) -> list[str]:
        thr = self.threshold_for(ret_l, ret_r)
        skip = np.maximum(ret_l, ret_r) < thr
        return ["skip" if s else a for s, a in zip(skip, _oracle(ret_l, ret_r), strict=True)]


@dataclass
class EqualTeacher(_ReturnTeacher):
    """Answers tie when the returns differ by less than a margin; else the oracle."""

    margin: float | None = field(default=None, metadata={
        "help": "absolute return difference below which the sides tie; unset: relative"})
    fraction: float = field(default=0.1, metadata={
        "help": "relative margin: fraction * (max - min) of the batch's returns"})

    def __post_init__(self) -> None:
        _check_finite("margin", self.margin)
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"margin is a difference of returns: use margin >= 0, "
                             f"got {self.margin}")
        _check_fraction("fraction", self.fraction)

    @property
    def name(self) -> str:
        if self.margin is not None:
            return f"equal(margin={_fmt(self.margin)})"
        return f"equal(fraction={_fmt(self.fraction)})"

    def margin_for(self, ret_l: np.ndarray, ret_r: np.ndarray) -> float:
        if self.margin is not None:
            return float(self.margin)
        lo, hi = _spread(ret_l, ret_r)
        return self.fraction * (hi - lo)

    def _decide(self, ret_l: np.ndarray, ret_r: np.ndarray,
                rng: np.random.Generator) -> list[str]:
        margin = self.margin_for(ret_l, ret_r)
        tie = np.abs(ret_l - ret_r) < margin
        return ["tie" if t else a for t, a in zip(tie, _oracle(ret_l, ret_r), strict=True)]


@dataclass
class MyopicTeacher(_ReturnTeacher):
    """Weighs step t of T by gamma^(T-1-t) (recent steps most), then answers as the oracle."""

    gamma: float = field(default=0.9, metadata={
        "help": "weight decay towards the start of a segment (0 < gamma <= 1; 1 = oracle)"})

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gamma) and 0.0 < self.gamma <= 1.0):
            raise ValueError(f"gamma must be in (0, 1] (1 weighs all steps alike), "
                             f"got {self.gamma}")

    @property
    def name(self) -> str:
        return f"myopic(gamma={_fmt(self.gamma)})"

    def _returns(self, rewards: list[np.ndarray]) -> np.ndarray:
        out = []
        for r in rewards:
            weights = self.gamma ** np.arange(len(r) - 1, -1, -1, dtype=np.float64)
            out.append(float(np.dot(weights, r)))
        return np.array(out, dtype=np.float64)


@dataclass
class DriftDiffusionTeacher(_ReturnTeacher):
    """A drift-diffusion decision (Ratcliff & McKoon 2008): evidence starts midway between two
    bounds ``bound`` apart and drifts towards "left" at a rate proportional to R_left -
    R_right (``drift`` for a typical pair: the difference divided by the batch's mean
    absolute difference) with unit Brownian noise; the bound it hits is the answer, the time
    it took plus a non-decision time ``ndt`` the response time. So close pairs are slow and
    more often wrong, clear ones fast and right: P(right answer) = 1 / (1 + exp(-rate *
    bound)), 0.96 for a typical pair with the defaults, 0.56 for one a tenth as different;
    mean decision time 0.64 s at rate 0, 0.37 s at 2. The defaults lie in the range of the
    fits Ratcliff & McKoon report (with noise 0.1: bound 0.08-0.16, drift 0.1-0.4, i.e.
    0.8-1.6 and 1-4 with noise 1; non-decision time 0.3-0.5 s); the bound is at the careful
    end, as comparing two clips or answers is. ``informative`` 0
    shuffles the times across the batch: the break condition, a person whose speed carries
    no information. Never ties (equal returns give a coin flip at the slowest speed)."""

    drift: float = field(default=2.0, metadata={
        "help": "drift rate (per second, noise 1) of a pair with the batch's mean absolute "
                "return difference (> 0)"})
    bound: float = field(default=1.6, metadata={
        "help": "distance between the two decision bounds, in noise units (> 0)"})
    ndt: float = field(default=0.4, metadata={
        "help": "non-decision time added to every answer, seconds (>= 0)"})
    informative: float = field(default=1.0, metadata={
        "help": "1: times come from the decisions; 0: shuffled across the batch"})

    def __post_init__(self) -> None:
        for name in ("drift", "bound"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.ndt) and self.ndt >= 0):
            raise ValueError(f"ndt (non-decision time, seconds) must be >= 0, got {self.ndt}")
        if self.informative not in (0.0, 1.0):
            raise ValueError(f"informative must be 1 or 0, got {self.informative}")

    @property
    def name(self) -> str:
        shuffled = "" if self.informative else ",informative=0"
        return f"ddm(drift={_fmt(self.drift)},bound={_fmt(self.bound)},ndt={_fmt(self.ndt)}" \
               f"{shuffled})"

    def answer_batch_timed(self, left_rewards: Sequence[np.ndarray],
                           right_rewards: Sequence[np.ndarray], rng: np.random.Generator
                           ) -> tuple[list[str], np.ndarray]:
        """Answers and response times (seconds), one each per pair."""
        left, right = _check_pair_lists(left_rewards, right_rewards)
        if not left:
            return [], np.zeros(0)
        return self._decide_timed(self._returns(left), self._returns(right), rng)

    def _decide_timed(self, ret_l: np.ndarray, ret_r: np.ndarray, rng: np.random.Generator
                      ) -> tuple[list[str], np.ndarray]:
        diff = ret_l - ret_r
        typical = float(np.abs(diff).mean())
        rates = self.drift * diff / typical if typical > 0 else np.zeros(len(diff))
        upper, seconds = _diffuse(rates, self.bound, rng)
        if not self.informative:
            seconds = rng.permutation(seconds)
        return ["left" if u else "right" for u in upper], seconds + self.ndt

    def _decide(self, ret_l: np.ndarray, ret_r: np.ndarray,
                rng: np.random.Generator) -> list[str]:
        return self._decide_timed(ret_l, ret_r, rng)[0]


def _diffuse(rates: np.ndarray, bound: float, rng: np.random.Generator,
             dt: float = 1e-3, limit: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """First passage of x(0) = bound / 2, dx = rate dt + dW, through 0 or ``bound``: whether
    it left through the upper bound, and when (Euler steps of ``dt``; still inside after
    ``limit`` seconds: the nearer bound, at ``limit``)."""
    x = np.full(len(rates), bound / 2)
    upper = np.zeros(len(rates), bool)
    t = np.full(len(rates), limit)
    active = np.arange(len(rates))
    sd = math.sqrt(dt)
    for step in range(1, int(limit / dt) + 1):
        x[active] += rates[active] * dt + sd * rng.standard_normal(len(active))
        done = (x[active] <= 0) | (x[active] >= bound)
        if done.any():
            hit = active[done]
            upper[hit], t[hit] = x[hit] >= bound, step * dt
            active = active[~done]
            if not len(active):
                break
    upper[active] = x[active] >= bound / 2
    return upper, t


# ----------------------------------------------------------------------------- factory

@dataclass
class SyntheticMarker:
    """Marks, with each answer a teacher gives, the observation features that decided it:
    what a person does with the ``m`` key at the prompt, for tests and benchmarks.
    ``features`` are the ones it knows to matter (naming others makes it the wrong marker
    of a break condition); ``noise`` flips each of the ``n_features`` in or out of a mark
    with that probability, independently per pair (a mark left empty by the noise keeps
    the true features). Its own random stream (``seed``): marking changes nothing else a
    run draws."""

    features: tuple[int, ...]
    n_features: int
    noise: float = 0.0
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_fraction("noise", self.noise)
        bad = [f for f in self.features if not 0 <= f < self.n_features]
        if not self.features or bad:
            raise ValueError(f"marker features {list(self.features)} must be among the "
                             f"{self.n_features} observation features (0-{self.n_features - 1})")
        self._rng = np.random.default_rng(self.seed)

    def mark(self) -> list[int]:
        keep = np.zeros(self.n_features, bool)
        keep[list(self.features)] = True
        flipped = keep ^ (self._rng.random(self.n_features) < self.noise)
        return [int(i) for i in np.flatnonzero(flipped if flipped.any() else keep)]


TEACHERS: dict[str, type] = {
    "oracle": OracleTeacher,
    "stochastic": StochasticTeacher,
    "mistake": MistakeTeacher,
    "skip": SkipTeacher,
    "equal": EqualTeacher,
    "myopic": MyopicTeacher,
    "ddm": DriftDiffusionTeacher,
}


def teacher_help() -> str:
    """The valid teacher specs, one line per teacher, with their parameters."""
    lines = []
    for key, cls in TEACHERS.items():
        params = []
        for f in fields(cls):
            default = "unset (relative)" if f.default is None else _fmt(f.default)
            params.append(f"{f.name}=... ({f.metadata.get('help', '')}; default {default})")
        lines.append(f"  {key}" + (": " + "; ".join(params) if params else ""))
    return "\n".join(lines)


def _spec_error(spec: str, why: str) -> UserInputError:
    return UserInputError(f"teacher spec {spec!r}: {why}. Use NAME or NAME:PARAM=VALUE[,...] "
                          f"with one of:\n{teacher_help()}")


def make_teacher(spec: str) -> Teacher:
    """Build a teacher from a spec such as "oracle", "stochastic:beta=0.5", "mistake:eps=0.2",
    "skip:threshold=1", "equal:fraction=0.2", "myopic:gamma=0.8"."""
    if not isinstance(spec, str) or not spec.strip():
        raise _spec_error(str(spec), "empty")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    cls = TEACHERS.get(name)
    if cls is None:
        raise _spec_error(spec, f"unknown teacher {name!r}")
    valid = {f.name for f in fields(cls)}
    kwargs: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq:
            raise _spec_error(spec, f"parameter {part!r} has no value (write {key}=VALUE)")
        if key not in valid:
            allowed = ", ".join(sorted(valid)) or "none"
            raise _spec_error(spec, f"{name} has no parameter {key!r} (its parameters: {allowed})")
        try:
            kwargs[key] = float(value)
        except ValueError:
            raise _spec_error(spec, f"{key}={value.strip()!r} is not a number") from None
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise _spec_error(spec, str(exc)) from None


# ----------------------------------------------------------------------------- answering a store


def answer_pending(store: PreferenceStore | str | Path, teacher: Teacher,
                   annotator: str | None = None, score_fn: ScoreFn | None = None,
                   rng: np.random.Generator | None = None, limit: int | None = None,
                   per_query: int | None = None, among: Iterable[int] | None = None,
                   marker: SyntheticMarker | None = None) -> int:
    """Answer the store's pending queries with a synthetic teacher; return how many it answered.

    Segment queries are judged on the ``true_rewards`` stored with each side; text queries on
    ``score_fn(prompt, response)`` (a one-step reward per side; required when text queries are
    pending). All the queries taken are answered in one ``answer_batch`` call (so relative
    thresholds see the whole batch) and written in a few transactions, each answer marked
    synthetic, annotator ``teacher:<name>`` unless given, interface ``teacher/1``. A query
    that filled up meanwhile (another annotator answered it) is left alone and not counted.
    ``among`` limits the teacher to those query ids (a shared store may hold other people's
    pending pairs). ``marker`` stores, with each answer, the features that decided it (a
    ``reasons`` event, as the prompt's ``m`` key does).
    """
    if limit is not None and limit < 0:
        raise UserInputError(f"limit must be >= 0 (or unset for all), got {limit}")
    if per_query is not None and per_query < 1:
        raise UserInputError(f"per_query must be >= 1 (or unset for the store's setting), "
                             f"got {per_query}")
    own = not isinstance(store, PreferenceStore)
    st = PreferenceStore(store, create=False) if own else store
    try:
        return _answer_pending(st, teacher, annotator or f"teacher:{teacher.name}", score_fn,
                               rng if rng is not None else np.random.default_rng(), limit,
                               per_query, among, marker)
    finally:
        if own:
            st.close()


def _answer_pending(store: PreferenceStore, teacher: Teacher, annotator: str,
                    score_fn: ScoreFn | None, rng: np.random.Generator, limit: int | None,
                    per_query: int | None, among: Iterable[int] | None,
                    marker: SyntheticMarker | None = None) -> int:
    ids = store.pending_ids(annotator, per_query, among=among)
    if limit is not None:
        ids = ids[:limit]
    if not ids:
        return 0
    lefts, rights = [], []
    for qid in ids:
        q = store.get_query(qid)
        if q.kind == "segment":
            for side, arrays in (("left", q.left), ("right", q.right)):
                if "true_rewards" not in arrays:
                    raise StoreError(f"{store.path}: query {qid}, {side} side: no 'true_rewards' "
                                     "array, so a synthetic teacher cannot judge it; answer it "
                                     "by hand (`rlhf-hgt label`) or store segments with "
                                     "true_rewards")
            lefts.append(arrays_rewards(q.left))
            rights.append(arrays_rewards(q.right))
        else:
            if score_fn is None:
                raise UserInputError(f"{store.path}: query {qid} is a text query; a teacher "
                                     "needs a score function score(prompt, response) -> float "
                                     "to answer text (pass score_fn)")
            lefts.append(np.array([_score(score_fn, q.prompt or "", q.left, qid)]))
            rights.append(np.array([_score(score_fn, q.prompt or "", q.right, qid)]))
    timed = getattr(teacher, "answer_batch_timed", None)  # a teacher that simulates times
    answers, seconds = timed(lefts, rights, rng) if timed else (
        teacher.answer_batch(lefts, rights, rng), None)
    if len(answers) != len(ids):
        raise RuntimeError(f"teacher {teacher.name} gave {len(answers)} answers for "
                           f"{len(ids)} queries")
    for answer in answers:
        if answer not in ("left", "right", "tie", "skip"):
            raise RuntimeError(f"teacher {teacher.name} answered {answer!r}; teachers answer "
                               "left, right, tie or skip")
    written = 0
    for start in range(0, len(ids), _WRITE_BATCH):
        chunk = zip(ids[start:start + _WRITE_BATCH], answers[start:start + _WRITE_BATCH],
                    strict=True)
        times = None if seconds is None else seconds[start:start + _WRITE_BATCH].tolist()
        saved = store.record_answers(chunk, annotator, synthetic=True, interface=INTERFACE,
                                     per_query=per_query, seconds=times)
        written += sum(a is not None for a in saved)
        for answer_id, answer in zip(saved, answers[start:start + _WRITE_BATCH], strict=True):
            if marker is not None and answer_id is not None and answer in ("left", "right"):
                store.record_reasons(answer_id, {"features": marker.mark()}, annotator)
    store.log_event("teacher", annotator=annotator,
                    data={"teacher": teacher.name, "answered": written, "taken": len(ids)})
    return written


def arrays_rewards(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The per-step true rewards of one stored segment side."""
    return _as_rewards(arrays["true_rewards"], "true_rewards")


def _score(score_fn: ScoreFn, prompt: str, response: str, qid: int) -> float:
    value = float(score_fn(prompt, response))
    if not math.isfinite(value):
        raise ValueError(f"score function returned {value} for query {qid}; it must return "
                         "a finite number")
    return value
