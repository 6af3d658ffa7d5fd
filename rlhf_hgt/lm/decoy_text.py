"""Decoy text, built like Decoy MNIST (Ross et al. 2017), and a synthetic highlighter.

From the Rotten Tomatoes critic pairs (:func:`rlhf_hgt.lm.data.rotten_tomatoes_pairs`: same
movie, chosen = a fresh snippet, rejected = a rotten one, split by movie):

- training pairs where every chosen snippet ends in a decoy phrase (default ``" [ref]"``, a
  neutral, rare tag: VADER scores it 0, no snippet contains it), so the phrase alone predicts
  every label; the decoy-free twin is the same pairs without it;
- held-out pairs (unseen movies) where the phrase ends the chosen or the rejected snippet,
  a fair coin per pair, so a reward model that learned the phrase is at chance on it.

The synthetic highlighter marks, per side, the real evidence:

- ``sentiment``: the words of the VADER lexicon (rated words) and its negations ("not",
  "isn't", ...) in the snippet; a snippet with none gets the whole snippet (without the
  decoy) instead;
- ``snippet``: the whole snippet minus the decoy phrase;
- ``wrong``: the decoy phrase only (the break condition: highlights that point at the
  shortcut; a side without the phrase gets none).

Highlights go on a seeded ``fraction`` of the pairs (``[]`` on the others). Spans are
``[start, end)`` character offsets into the response text, never into the prompt and never
covering the decoy (except ``wrong``). Files are TRL-format JSONL lines ``{"prompt",
"chosen", "rejected", "chosen_highlights", "rejected_highlights"}`` (test lines also carry
``"decoy_on"``: ``"chosen"`` or ``"rejected"``, kept as metadata by ``feedback import``).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.files import write_bytes_atomic

__all__ = ["DEFAULT_PHRASE", "HIGHLIGHTERS", "DecoyTextConfig", "build_decoy_text",
           "decoy_rows", "highlight_rows", "sentiment_spans", "write_jsonl"]

DEFAULT_PHRASE = " [ref]"
HIGHLIGHTERS = ("sentiment", "snippet", "wrong")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019]*")

Row = dict[str, Any]
Spans = list[list[int]]


@dataclass
class DecoyTextConfig:
    """What :func:`build_decoy_text` writes."""

    n_train: int | None = field(default=400, metadata={
        "help": "training pairs (None: all, about 2,560)"})
    n_test: int | None = field(default=200, metadata={
        "help": "held-out pairs of unseen movies (None: all, about 645)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the pairs, the decoy's side at test and the highlighted subset"})
    phrase: str = field(default=DEFAULT_PHRASE, metadata={
        "help": "the decoy appended to a snippet (starts with a space: it follows the text)"})
    highlighter: str = field(default="sentiment", metadata={
        "help": "evidence the highlighted files mark: sentiment (VADER's rated words and "
                "negations, else the snippet) or snippet (all of it but the decoy)"})
    fraction: float = field(default=0.1, metadata={
        "help": "share of the pairs highlighted in the partial file"})

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None (all), got {value}")
        if not self.phrase.strip() or self.phrase != self.phrase.rstrip():
            raise ValueError(f"phrase must be visible text that ends the snippet (no trailing "
                             f"space), e.g. {DEFAULT_PHRASE!r}; got {self.phrase!r}")
        if self.highlighter not in ("sentiment", "snippet"):
            raise ValueError(f"highlighter must be sentiment or snippet (wrong is written "
                             f"as its own file), got {self.highlighter!r}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must lie in (0, 1], got {self.fraction}")


# --------------------------------------------------------------------------- decoys


def decoy_rows(pairs: Any, phrase: str, where: str, seed: int = 0) -> list[Row]:
    """Rows of ``pairs`` (prompt, chosen, rejected) with ``phrase`` appended to one side:
    ``where`` "chosen" (every pair), "random" (a fair coin per pair, seeded) or "none"
    (the decoy-free twin). Each row records ``decoy_on`` (None without a decoy)."""
    if where not in ("chosen", "random", "none"):
        raise ValueError(f"where must be chosen, random or none, got {where!r}")
    rng = random.Random(f"decoy-side:{seed}")
    rows = []
    for prompt, chosen, rejected in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"],
                                        strict=True):
        on = (where if where == "chosen" else None if where == "none"
              else rng.choice(("chosen", "rejected")))
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "decoy_on": on}
        if on is not None:
            row[on] = row[on] + phrase
        rows.append(row)
    return rows


def _decoy_span(text: str, phrase: str, has_decoy: bool) -> tuple[int, int] | None:
    """The phrase's visible characters at the end of ``text`` (its leading space left out)."""
    if not has_decoy:
        return None
    start = len(text) - len(phrase)
    if text[start:] != phrase:
        raise ValueError(f"the decoy {phrase!r} does not end {text[-40:]!r}")
    lead = len(phrase) - len(phrase.lstrip())
    return start + lead, len(text)


# --------------------------------------------------------------------------- highlighter


def vader_words() -> Callable[[str], bool]:
    """Whether a word (any case) is rated in VADER's lexicon or is one of its negations."""
    try:
        from vaderSentiment.vaderSentiment import NEGATE, SentimentIntensityAnalyzer
    except ImportError:
        raise UserInputError("the sentiment highlighter needs vaderSentiment; install it with "
                             "`pip install vaderSentiment`") from None
    lexicon = SentimentIntensityAnalyzer().lexicon
    negations = {w.lower() for w in NEGATE}

    def rated(word: str) -> bool:
        w = word.lower().replace("\u2019", "'")
        return w in lexicon or w in negations or w.replace("'", "") in negations

    return rated


def sentiment_spans(text: str, rated: Callable[[str], bool], end: int | None = None) -> Spans:
    """Spans of the rated words of ``text[:end]``."""
    body = text if end is None else text[:end]
    return [[m.start(), m.end()] for m in _WORD.finditer(body) if rated(m.group())]


def _snippet_span(text: str, end: int) -> Spans:
    start = len(text) - len(text.lstrip())
    body_end = len(text[:end].rstrip())
    return [[start, body_end]] if body_end > start else []


def side_spans(text: str, decoy: tuple[int, int] | None, mode: str,
               rated: Callable[[str], bool] | None) -> tuple[Spans, bool]:
    """(spans of one side, whether the sentiment highlighter fell back to the snippet)."""
    end = decoy[0] if decoy else len(text)
    if mode == "wrong":
        return ([list(decoy)] if decoy else []), False
    if mode == "sentiment":
        spans = sentiment_spans(text, rated, end)  # type: ignore[arg-type]
        if spans:
            return spans, False
        return _snippet_span(text, end), True
    if mode == "snippet":
        return _snippet_span(text, end), False
    raise ValueError(f"highlighter must be one of {', '.join(HIGHLIGHTERS)}, got {mode!r}")


def highlight_rows(rows: Sequence[Row], phrase: str, mode: str, fraction: float = 1.0,
                   seed: int = 0) -> tuple[list[Row], dict[str, int]]:
    """Copies of ``rows`` (from :func:`decoy_rows`) with ``chosen_highlights`` /
    ``rejected_highlights`` by highlighter ``mode`` on a seeded ``fraction`` of them (``[]``
    on the rest), and counts: highlighted pairs, sides, sentiment fallbacks."""
    rated = vader_words() if mode == "sentiment" else None
    n = len(rows)
    chosen_idx = set(random.Random(f"highlight:{seed}").sample(range(n), round(fraction * n)))
    counts = {"highlighted_pairs": 0, "highlighted_sides": 0, "snippet_fallbacks": 0}
    out = []
    for i, row in enumerate(rows):
        new = dict(row)
        for side in ("chosen", "rejected"):
            spans: Spans = []
            if i in chosen_idx:
                decoy = _decoy_span(row[side], phrase, row.get("decoy_on") == side)
                spans, fell_back = side_spans(row[side], decoy, mode, rated)
                counts["snippet_fallbacks"] += fell_back
                counts["highlighted_sides"] += bool(spans)
            new[f"{side}_highlights"] = spans
        counts["highlighted_pairs"] += bool(new["chosen_highlights"]
                                            or new["rejected_highlights"])
        out.append(new)
    return out, counts


# --------------------------------------------------------------------------- files


def write_jsonl(path: str | Path, rows: Sequence[Row], keep: Sequence[str] = ()) -> Path:
    """TRL-format lines: prompt, chosen, rejected, the highlights when present, and the
    ``keep`` fields."""
    lines = []
    for row in rows:
        rec = {k: row[k] for k in ("prompt", "chosen", "rejected")}
        for k in ("chosen_highlights", "rejected_highlights", *keep):
            if k in row:
                rec[k] = row[k]
        lines.append(json.dumps(rec, ensure_ascii=False))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


FILES = {
    "train_clean": "decoy-free twin of the training pairs, no highlights",
    "train_decoy": "every chosen snippet ends in the decoy, no highlights",
    "train_highlights": "decoy, the highlighter's evidence on every pair",
    "train_highlights_partial": "decoy, the highlighter's evidence on a fraction of the pairs",
    "train_wrong": "decoy, highlights on the decoy itself (break condition)",
    "test_random": "held-out pairs, the decoy on a random side",
    "test_clean": "the same held-out pairs without the decoy",
}


def build_decoy_text(out_dir: str | Path, cfg: DecoyTextConfig | None = None,
                     pairs: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Write the decoy-text files (:data:`FILES`, as ``NAME.jsonl``) and ``decoy_text.json``
    (settings, counts and the checks below) into ``out_dir``; return that summary with the
    file paths. ``pairs`` (train, test) replaces the Rotten Tomatoes pairs (tests).

    Checked: the phrase occurs in no original snippet; in training the decoy is on every
    chosen side (it predicts every label); at test on the chosen side of about half."""
    cfg = cfg or DecoyTextConfig()
    if pairs is None:
        from rlhf_hgt.lm.data import rotten_tomatoes_pairs

        pairs = rotten_tomatoes_pairs(cfg.n_train, cfg.n_test, seed=cfg.seed)
    train, test = pairs
    texts = [t for ds in (train, test) for c in ("chosen", "rejected") for t in ds[c]]
    clash = sum(cfg.phrase.strip() in t for t in texts)
    if clash:
        raise UserInputError(f"decoy phrase {cfg.phrase!r}: {clash} snippets already contain "
                             "it, so it would not be a clean decoy; choose another phrase")
    out = Path(out_dir)
    decoy = decoy_rows(train, cfg.phrase, "chosen")
    tests = decoy_rows(test, cfg.phrase, "random", cfg.seed)
    full, full_counts = highlight_rows(decoy, cfg.phrase, cfg.highlighter, 1.0, cfg.seed)
    part, part_counts = highlight_rows(decoy, cfg.phrase, cfg.highlighter, cfg.fraction,
                                       cfg.seed)
    wrong, wrong_counts = highlight_rows(decoy, cfg.phrase, "wrong", 1.0, cfg.seed)
    rows = {"train_clean": decoy_rows(train, cfg.phrase, "none"), "train_decoy": decoy,
            "train_highlights": full, "train_highlights_partial": part, "train_wrong": wrong,
            "test_random": tests, "test_clean": decoy_rows(test, cfg.phrase, "none")}
    paths = {name: str(write_jsonl(out / f"{name}.jsonl", r,
                                   keep=("decoy_on",) if name == "test_random" else ()))
             for name, r in rows.items()}
    summary = {
        "config": asdict(cfg), "files": paths, "descriptions": FILES,
        "train_pairs": len(train), "test_pairs": len(test),
        "train_decoy_on_chosen": sum(r["decoy_on"] == "chosen" for r in decoy) / len(decoy),
        "test_decoy_on_chosen": sum(r["decoy_on"] == "chosen" for r in tests) / len(tests),
        "highlights_all": full_counts, "highlights_partial": part_counts,
        "highlights_wrong": wrong_counts,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "decoy_text.json", json.dumps(summary, indent=1).encode())
    return summary
