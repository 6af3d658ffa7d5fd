"""The built-in scores of a response, in one place: what ``lm ppo --reward NAME`` optimises and
what the online loop's synthetic teacher and monitor (``lm online --teacher/--monitor NAME``)
judge by.

A score is a function ``score(prompt, response) -> float``; higher is better.

- ``vader``: VADER's compound sentiment of the response, in [-1, 1] (an offline lexicon,
  the ``vaderSentiment`` package); the prompt is ignored.
- ``length``: the number of words of the response, a word being a run of characters
  between whitespace (``len(response.split())``); the prompt is ignored. Words rather than
  characters, so that padding a response with spaces earns nothing; ``lm ppo`` and the
  online loop both use this one definition.

Imports nothing heavy: VADER is loaded when its score is made.
"""

from __future__ import annotations

from collections.abc import Callable

from rlhf_hgt.feedback.errors import UserInputError

__all__ = ["BUILTIN_SCORES", "Score", "length_score", "make_score"]

#: Names of the built-in scores (``make_score`` accepts exactly these).
BUILTIN_SCORES: tuple[str, ...] = ("vader", "length")

Score = Callable[[str, str], float]


def length_score(prompt: str, response: str) -> float:
    """Words in ``response`` (whitespace-separated; the prompt is ignored)."""
    return float(len(response.split()))


def make_score(name: str) -> Score:
    """The built-in score called ``name`` (one of :data:`BUILTIN_SCORES`).

    An unknown name raises :class:`UserInputError` (a ValueError) naming the choices."""
    if name == "vader":
        from rlhf_hgt.lm.data import vader_scorer

        return vader_scorer()
    if name == "length":
        return length_score
    raise UserInputError(f"unknown score {name!r}; use one of {', '.join(BUILTIN_SCORES)}")
