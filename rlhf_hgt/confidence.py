"""How sure was a person? Response times turned into per-comparison confidence.

Slow answers are the uncertain ones: in the drift-diffusion account of a two-choice
decision (Ratcliff & McKoon 2008), evidence drifts towards one of two bounds at a rate that
grows with how different the two options are, so a close pair takes longer and is more
often answered wrong. A time says little on its own (people differ in speed, and one
person's speed drifts), so it is normalised per annotator first: each answer's time becomes
its rank among that annotator's times (0 the fastest, 1 the slowest), which needs no model of
the time distribution and is the same for a quick and a slow person. The confidence of an
answer is then

    c = 1 - (1 - floor) * rank        in [floor, 1]

and training uses it in one of two ways (``mode``):

- ``weight``: the comparison's term in the Bradley–Terry loss is multiplied by c;
- ``soft``: the target becomes 0.5 + (target - 0.5) * c (a tie stays 0.5), so a slow answer
  pulls less towards its choice.

Answers without a time (imported from a file, no ``shown_at``), annotators with fewer than
``min_answers`` timed answers (too few to rank), and annotators whose times are all equal (a
teacher that records none: shown and answered at once) get confidence 1. numpy only; imports
nothing of ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MODES = ("weight", "soft")
#: the slowest answer's confidence; chosen on the drift-diffusion teacher (BENCHMARKS.md)
DEFAULT_FLOOR = 0.2
MIN_ANSWERS = 5


def time_ranks(seconds: Sequence[float], annotators: Sequence[str],
               min_answers: int = MIN_ANSWERS) -> np.ndarray:
    """Per answer, the rank of its time among its annotator's timed answers, scaled to [0, 1]
    (ties share their mean rank); NaN where there is no time or too few to rank."""
    t = np.asarray(seconds, dtype=float)
    who = np.asarray(annotators, dtype=object)
    if t.shape != who.shape or t.ndim != 1:
        raise ValueError(f"seconds {t.shape} and annotators {who.shape} must be two equal "
                         "1-D sequences")
    ranks = np.full(t.shape, np.nan)
    for name in dict.fromkeys(who.tolist()):
        idx = np.flatnonzero((who == name) & np.isfinite(t) & (t >= 0))
        if len(idx) < max(2, min_answers) or np.ptp(t[idx]) == 0:
            continue  # too few to rank, or all alike (a source that records no real times)
        order = t[idx].argsort(kind="stable")
        r = np.empty(len(idx))
        r[order] = np.arange(len(idx), dtype=float)
        for value in np.unique(t[idx]):  # ties share their mean rank
            same = t[idx] == value
            if same.sum() > 1:
                r[same] = r[same].mean()
        ranks[idx] = r / (len(idx) - 1)
    return ranks


def time_confidence(seconds: Sequence[float], annotators: Sequence[str],
                    floor: float = DEFAULT_FLOOR, min_answers: int = MIN_ANSWERS) -> np.ndarray:
    """Per answer, c = 1 - (1 - floor) * rank in [floor, 1]; 1 where there is no rank."""
    if not 0 <= floor <= 1:
        raise ValueError(f"floor must lie in [0, 1], got {floor}")
    ranks = time_ranks(seconds, annotators, min_answers)
    return np.where(np.isnan(ranks), 1.0, 1.0 - (1.0 - floor) * ranks)


def apply_confidence(targets: Sequence[float], confidence: Sequence[float], mode: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(targets, weights) for the Bradley–Terry loss: ``weight`` keeps the targets and weighs
    each comparison by its confidence; ``soft`` moves each target towards 0.5 by it and
    weighs all alike."""
    y = np.asarray(targets, dtype=float)
    c = np.asarray(confidence, dtype=float)
    if y.shape != c.shape:
        raise ValueError(f"targets {y.shape} and confidence {c.shape} differ in shape")
    if mode == "weight":
        return y, c
    if mode == "soft":
        return 0.5 + (y - 0.5) * c, np.ones_like(c)
    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
