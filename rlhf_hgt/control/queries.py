"""Which pairs to ask about, and how many per round.

:func:`select_pairs` draws distinct pairs of candidate segments, either at random or by
ensemble disagreement (PEBBLE, Lee et al. 2021; Christiano et al. 2017): draw
``oversample`` times more random pairs than needed and keep those on which the reward
models disagree most about which side is better.

:func:`query_schedule` spreads a label budget over rounds, front-loaded: a first batch
(``initial_fraction`` of the budget, asked before any policy training), then a share per
round that decays like 1/(r+1), as the reward model needs fewer new labels once it is roughly
right. Every round gets at least one label when the budget allows.

Numpy only: the ensemble is any object with ``k`` and ``disagreement(left, right)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

Segment = dict[str, np.ndarray]
METHODS = ("random", "disagreement")
_ENUMERATE_LIMIT = 2_000_000  # below this many possible pairs, draw from the full list


class Disagreeing(Protocol):
    """What disagreement-based selection needs from a reward ensemble."""

    @property
    def k(self) -> int: ...

    def disagreement(self, left: Sequence[Segment], right: Sequence[Segment]) -> np.ndarray: ...


def _check_int(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def random_pairs(n_candidates: int, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(n_pairs, 2) indices of distinct unordered pairs i != j, each in a random order."""
    total = n_candidates * (n_candidates - 1) // 2
    if n_pairs > total:
        raise ValueError(f"{n_candidates} candidate segments make only {total} distinct pairs, "
                         f"{n_pairs} were asked for: cut more segments or ask for fewer pairs")
    if n_pairs == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if total <= _ENUMERATE_LIMIT:
        rows, cols = np.triu_indices(n_candidates, k=1)
        pick = rng.choice(total, size=n_pairs, replace=False)
        pairs = np.stack([rows[pick], cols[pick]], axis=1).astype(np.int64)
    else:
        seen: set[tuple[int, int]] = set()
        while len(seen) < n_pairs:
            i, j = (int(v) for v in rng.integers(0, n_candidates, size=2))
            if i != j:
                seen.add((min(i, j), max(i, j)))
        pairs = np.asarray(sorted(seen), dtype=np.int64)
        pairs = pairs[rng.permutation(len(pairs))]
    swap = rng.random(len(pairs)) < 0.5  # no side is systematically the first one drawn
    pairs[swap] = pairs[swap][:, ::-1]
    return pairs


def select_pairs(candidates: Sequence[Segment], n_pairs: int, method: str = "random",
                 ensemble: Disagreeing | None = None, oversample: int = 10,
                 rng: np.random.Generator | int | None = None,
                 return_indices: bool = False) -> list[tuple[Any, Any]]:
    """``n_pairs`` distinct pairs of candidates to ask about, as (left, right) segments.

    ``method='random'``: uniform over distinct pairs. ``method='disagreement'``: draw
    ``oversample * n_pairs`` random pairs (at most all of them) and keep the ``n_pairs``
    with the highest ``ensemble.disagreement`` (needs an ensemble of 2 or more members),
    most uncertain first. With ``return_indices`` the pairs are (i, j) indices into
    ``candidates`` instead."""
    n_pairs = _check_int("n_pairs", n_pairs, 0)
    oversample = _check_int("oversample", oversample, 1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if n_pairs and len(candidates) < 2:
        raise ValueError(f"pairs need at least 2 candidate segments, got {len(candidates)}")
    if method == "disagreement":
        if ensemble is None or not hasattr(ensemble, "disagreement"):
            raise ValueError("method='disagreement' needs ensemble=a reward ensemble "
                             "(RewardEnsemble); use method='random' before the first fit")
        if ensemble.k < 2:
            raise ValueError(f"disagreement needs an ensemble of 2 or more members, this one "
                             f"has {ensemble.k}: raise ensemble_size or use method='random'")
    n = len(candidates)
    if method == "random" or n_pairs == 0:
        chosen = random_pairs(n, n_pairs, rng)
    else:
        total = n * (n - 1) // 2
        pool = random_pairs(n, min(oversample * n_pairs, total), rng)
        spread = np.asarray(ensemble.disagreement(  # type: ignore[union-attr]
            [candidates[i] for i in pool[:, 0]], [candidates[j] for j in pool[:, 1]]),
            dtype=np.float64)
        if spread.shape != (len(pool),):
            raise ValueError(f"ensemble.disagreement gave shape {spread.shape}, "
                             f"want ({len(pool)},)")
        chosen = pool[np.argsort(-spread, kind="stable")[:n_pairs]]
    if return_indices:
        return [(int(i), int(j)) for i, j in chosen]
    return [(candidates[i], candidates[j]) for i, j in chosen]


def query_schedule(total_labels: int, n_rounds: int,
                   initial_fraction: float = 0.25) -> list[int]:
    """Labels to ask for in each round: ints summing exactly to ``total_labels``,
    non-increasing, front-loaded.

    Round 0 gets about ``initial_fraction`` of the budget, and never less than round 1;
    the rest is shared over rounds 1..n-1 in proportion to 1/(r+1) on top of one label each
    (so every round gets at least one when ``total_labels >= n_rounds``; otherwise the first
    ``total_labels`` rounds get one each). Rounding keeps the exact total (largest
    remainders)."""
    total = _check_int("total_labels", total_labels, 1)
    rounds = _check_int("n_rounds", n_rounds, 1)
    if isinstance(initial_fraction, bool) or not 0 < float(initial_fraction) <= 1:
        raise ValueError(f"initial_fraction must lie in (0, 1] (0.25 is usual), "
                         f"got {initial_fraction!r}")
    if rounds == 1:
        return [total]
    if total < rounds:
        return [1] * total + [0] * (rounds - total)
    weights = 1.0 / np.arange(2, rounds + 1)
    # round 0 gets at least what round 1 would get from the rest (front-loaded even when
    # initial_fraction is small for few rounds): solve first = 1 + (rest - first) * share
    share = weights[0] / weights.sum()
    level = (1.0 + (total - rounds + 1) * share) / (1.0 + share)
    first = min(max(float(initial_fraction) * total, level, 1.0), float(total - rounds + 1))
    rest = total - first - (rounds - 1)  # >= 0: what is left after one label per later round
    want = np.concatenate([[first], 1.0 + rest * weights / weights.sum()])
    counts = np.floor(want).astype(int)
    short = total - int(counts.sum())
    if short > 0:
        order = np.argsort(-(want - counts), kind="stable")
        counts[order[:short]] += 1
    # ``want`` does not increase; rounding may leave a later round one above an earlier one
    out = sorted((int(c) for c in counts), reverse=True)
    if sum(out) != total or out[-1] < 1:  # pragma: no cover - guarded by the arithmetic above
        raise RuntimeError(f"query_schedule({total}, {rounds}) went wrong: {out}")
    return out

