"""Reasons given with an answer: word highlights of text pairs and feature marks of segment
pairs, checked and put in one normal form (pure functions; no store, no terminal).

Highlights are ``[start, end)`` offsets into a response's text, counted in Python ``str``
characters (code points: an emoji or a CJK character is one, a combining mark is one of its
own), so they survive any UTF-8 round trip unchanged. Their normal form is a sorted list of
``[start, end]`` lists in which overlapping and touching spans (``[0, 4]`` and ``[4, 9]``) are
merged into one: ``[[4, 9], [0, 5]]`` and ``[[0, 9]]`` mean the same and are stored as the
latter. The store keeps them per answer as ``{"highlights": {"left": [...], "right":
[...]}}``, oriented like the query; JSONL files carry them as ``chosen_highlights`` /
``rejected_highlights`` (see :mod:`.jsonl`).

Feature marks are observation feature indices, typed as indices and inclusive ranges
(``0,1,4-5``) and stored sorted as ``{"features": [0, 1, 4, 5]}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

HIGHLIGHT_FIELDS = ("chosen_highlights", "rejected_highlights")
_WORD = re.compile(r"\S+")
_SPAN_HINT = "write a list of [start, end] character offsets, e.g. [[0, 5], [12, 20]]"


class SpanError(ValueError):
    """A span list that is not a list of [start, end) offsets inside its text; the message
    names the field (and the span) and says how to fix it."""


def merge_spans(spans: Sequence[Sequence[int]]) -> list[list[int]]:
    """Spans sorted, overlapping and touching ones merged (``[start, end)`` each)."""
    out: list[list[int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def check_spans(value: Any, text: str, field: str, text_field: str) -> list[list[int]]:
    """``value`` checked as spans into ``text`` and returned in normal form (sorted, merged).

    ``None`` is no spans. Raises :class:`SpanError` naming ``field`` (and ``text_field``, what
    the offsets count in, as it should be shown, e.g. ``"'chosen'"``) for anything else than
    a list of two-integer lists with ``0 <= start < end <= len(text)``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpanError(f"field {field!r}: must be a list of [start, end] spans, got "
                        f"{_type_name(value)}; {_SPAN_HINT}")
    n = len(text)
    for i, span in enumerate(value):
        where = f"{field}[{i}]"
        if (not isinstance(span, list) or len(span) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
            raise SpanError(f"field {where!r}: {_short(span)} is not a span of two whole "
                            f"numbers [start, end]; {_SPAN_HINT}")
        start, end = span
        if not 0 <= start < end <= n:
            why = ("start must be below end (an empty or reversed span)" if start >= end
                   else "it lies outside the text")
            raise SpanError(
                f"field {where!r}: span [{start}, {end}]: {why}; spans are [start, end) "
                f"character offsets into {text_field}, which is {n} characters long, so "
                f"0 <= start < end <= {n}")
    return merge_spans(value)


def word_spans(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` of every word (a run of non-whitespace characters) of ``text``."""
    return [m.span() for m in _WORD.finditer(text)]


def words_to_spans(words: Sequence[tuple[int, int]], picked: set[int]) -> list[list[int]]:
    """Character spans of the picked word indices: consecutive picked words make one span
    (from the first word's start to the last word's end, the spaces between included)."""
    out: list[list[int]] = []
    last = -2
    for i in sorted(picked):
        start, end = words[i]
        if i == last + 1 and out:
            out[-1][1] = end
        else:
            out.append([start, end])
        last = i
    return out


def spans_to_words(words: Sequence[tuple[int, int]], spans: Sequence[Sequence[int]]) -> set[int]:
    """The indices of the words that a span overlaps (to edit stored spans word by word)."""
    return {i for i, (ws, we) in enumerate(words)
            for s, e in spans if ws < e and s < we}


def highlight_reasons(left: Sequence[Sequence[int]],
                      right: Sequence[Sequence[int]]) -> dict | None:
    """The reasons of a text answer (``None`` when neither side has a span)."""
    if not left and not right:
        return None
    return {"highlights": {"left": merge_spans(left), "right": merge_spans(right)}}


def oriented(reasons: dict | None, chosen_side: str) -> tuple[list, list]:
    """(chosen spans, rejected spans) of stored reasons, given which side (``"left"`` or
    ``"right"``) was chosen; empty lists when there are none."""
    spans = (reasons or {}).get("highlights") or {}
    left, right = list(spans.get("left") or []), list(spans.get("right") or [])
    return (left, right) if chosen_side == "left" else (right, left)


def parse_features(spec: str, n_features: int) -> list[int]:
    """The sorted feature indices of ``"0,1,4-5"`` (indices and inclusive ranges, separated
    by commas or spaces), each below ``n_features``; raises ValueError with what to fix."""
    picked: set[int] = set()
    for item in (p for p in re.split(r"[,\s]+", re.sub(r"\s*-\s*", "-", spec.strip())) if p):
        match = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", item)
        if match is None:
            raise ValueError(f"{item!r} is not a feature index or a range a-b; give indices "
                             f"and ranges, e.g. 0,1,4-5")
        a = int(match[1])
        b = a if match[2] is None else int(match[2])
        if b < a:
            raise ValueError(f"the range {a}-{b} runs backwards; write {b}-{a}")
        if b >= n_features:
            raise ValueError(f"feature {max(a, n_features)} is out of range: this pair has "
                             f"{n_features} observation features (0 to {n_features - 1})")
        picked.update(range(a, b + 1))
    return sorted(picked)


def format_features(features: Sequence[int]) -> str:
    """``[0, 1, 4, 5]`` as ``"0,1,4-5"``."""
    parts: list[str] = []
    run: list[int] = []
    for f in sorted(set(features)):
        if run and f == run[-1] + 1:
            run.append(f)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [f]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
