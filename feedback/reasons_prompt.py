"""Reasons at the labelling prompt (:mod:`.terminal`): why the person prefers one side, given
before the answer and saved with it (``PreferenceStore.record_reasons``, right after the
answer; an undo of the answer drops them; a skip keeps none).

Feature marks, segment pairs, key ``m``: a line at the bottom of the screen reads the
observation features that decided, as indices and inclusive ranges (``0,1,4-5``; the
sparkline rows ``obs[i]`` show them by index). A bad entry (not a number, a backward range,
an index past the observation's size) is explained on the screen and asked again; Enter alone
means none. Stored as ``{"features": [0, 1, 4, 5]}``.

Word highlights, text pairs, key ``h``: the two responses are drawn word by word with a
cursor on one word (the title of the side being edited says so). Keys:

- ``←`` / ``→`` the previous / next word; ``↑`` / ``↓`` the word on the line above / below;
  ``Tab`` the other side;
- ``space`` highlights the word under the cursor, or takes its highlight off;
- ``v`` starts a span at the cursor (shown in cyan while open); ``v`` again ends it at the
  cursor, highlighting every word between (shown in yellow);
- ``u`` or ``Backspace`` undoes the last change (a span, a word, a clear); ``c`` clears all;
- ``Enter`` keeps the highlights (saved with the answer given next); ``Esc`` closes an open
  span, and otherwise leaves without keeping the changes.

Highlights are stored as ``{"highlights": {"left": [[start, end], ...], "right": [...]}}``,
character offsets on word boundaries (a word: a run of non-whitespace characters); words
highlighted one after another make one span, the spaces between them included
(:func:`.highlights.words_to_spans`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.cells import cell_len, get_character_cell_size

from .highlights import (
    format_features,
    highlight_reasons,
    merge_spans,
    oriented,
    parse_features,
    spans_to_words,
    word_spans,
    words_to_spans,
)
from .render import CHROME_ROWS, View, column_width, columns, sanitize, text_header
from .term_io import Terminal

HIGHLIGHT_KEYS = ("←/→ word · ↑/↓ line · Tab other side · space word · v start/end span · "
                  "u undo · c clear · Enter keep · Esc cancel")
PICKED = "30;43"  # black on yellow: a highlighted word
PENDING = "30;46"  # black on cyan: the words of a span still open
CURSOR = "1;4;7"  # bold, underlined, reversed
LEFT_KEYS = ("\x1b[D", "\x1bOD", "left")
RIGHT_KEYS = ("\x1b[C", "\x1bOC", "right")
LINE_BREAKS = ("\n", "\u2028", "\u2029")

# ----------------------------------------------------------------------------- features


def n_features(query: Any) -> int:
    """How many observation features a segment pair has (per step, flattened; the smaller
    side's count if they differ; 0 without observations)."""
    counts = []
    for side in (query.left, query.right):
        obs = next((side[k] for k in ("obs", "observations") if k in side), None)
        arr = np.asarray(obs) if obs is not None else None
        if arr is None or arr.ndim == 0 or arr.shape[0] == 0:
            return 0
        counts.append(int(arr.reshape(arr.shape[0], -1).shape[1]))
    return min(counts)


def ask_features(term: Terminal, n: int, current: Sequence[int] = ()) -> list[int]:
    """Read feature indices on the bottom line until they parse (a bad entry is explained
    on the line above and asked again); an empty line is none."""
    cols, rows = term.size()
    now = f"; now {format_features(current)}" if current else ""
    prompt = (f"features that decided, 0-{n - 1} (the obs[i] rows; e.g. 0,1,4-5; Enter alone: "
              f"none{now}): ")
    while True:
        text = sanitize(term.read_line(prompt, rows)).replace("\n", " ")
        try:
            return parse_features(text, n)
        except ValueError as exc:
            cols, rows = term.size()
            term.write(f"\x1b[{rows - 1};1H\x1b[0m\x1b[K\x1b[1;31m"
                       f"{('not kept: ' + str(exc))[:cols]}\x1b[0m")


def describe(reasons: dict | None, query: Any = None, width: int = 80) -> str:
    """One line that says which reasons wait to be saved with the next answer."""
    if not reasons:
        return ""
    if "features" in reasons:
        return f"features {format_features(reasons['features'])} marked"
    left, right = oriented(reasons, "left")
    if query is None:
        return f"highlighted: {len(left)} spans left, {len(right)} right"
    parts = []
    for name, text, spans in (("left", query.left, left), ("right", query.right, right)):
        if spans:
            words = " … ".join(sanitize(text[s:e]).replace("\n", " ") for s, e in spans)
            parts.append(f"{name} “{words[:max(10, width // 3)]}”")
    return "highlighted: " + " · ".join(parts)


# ----------------------------------------------------------------------------- layout


@dataclass
class SideLayout:
    """One response laid out word by word in a column: per line, its pieces as (word index,
    or -1 for the space between words, text to show); ``where``: each word's first piece as
    (line, column)."""

    lines: list[list[tuple[int, str]]] = field(default_factory=lambda: [[]])
    where: dict[int, tuple[int, int]] = field(default_factory=dict)


def _fit(piece: str, width: int) -> tuple[str, str]:
    """The longest head of ``piece`` that fits ``width`` cells (at least one character)."""
    used = 0
    for i, ch in enumerate(piece):
        used += get_character_cell_size(ch)
        if used > width and i > 0:
            return piece[:i], piece[i:]
    return piece, ""


def layout_words(text: str, words: Sequence[tuple[int, int]], colw: int) -> SideLayout:
    """Wrap ``text`` into lines of at most ``colw`` cells at whitespace (a line break in the
    text starts a new line; other whitespace shows as one space; a word longer than a line is
    folded), keeping track of where each word lands."""
    out = SideLayout()
    col, prev_end = 0, 0
    for wi, (start, end) in enumerate(words):
        gap = text[prev_end:start]
        prev_end = end
        piece = sanitize(text[start:end])
        breaks = sum(gap.count(b) for b in LINE_BREAKS)
        if breaks:
            out.lines.extend([] for _ in range(breaks))
            col = 0
        elif gap and col > 0:
            if col + 1 + cell_len(piece) <= colw:
                out.lines[-1].append((-1, " "))
                col += 1
            else:
                out.lines.append([])
                col = 0
        while piece:
            width = cell_len(piece)
            if col + width > colw and col > 0:
                out.lines.append([])
                col = 0
                continue
            head, piece = (piece, "") if width <= colw else _fit(piece, colw)
            out.where.setdefault(wi, (len(out.lines) - 1, col))
            out.lines[-1].append((wi, head))
            col += cell_len(head)
            if piece:
                out.lines.append([])
                col = 0
    return out


def _draw_side(layout: SideLayout, colw: int, on: set[int], pending: set[int],
               cursor: int | None) -> list[str]:
    """The column's lines with ANSI styles: highlighted words (and the spaces between two of
    them) in yellow, an open span in cyan, the cursor reversed; each line ``colw`` cells."""
    def style(wi: int) -> str:
        return PENDING if wi in pending else PICKED if wi in on else ""

    lines = []
    for items in layout.lines:
        parts, used = [], 0
        for k, (wi, text) in enumerate(items):
            if wi < 0:  # the space between two words: coloured when both sides are
                before, after = items[k - 1][0], items[k + 1][0] if k + 1 < len(items) else -1
                sgr = style(before) if style(before) and style(before) == style(after) else ""
            else:
                sgr = style(wi)
                if wi == cursor:
                    sgr = f"{sgr};{CURSOR}" if sgr else CURSOR
            parts.append(f"\x1b[{sgr}m{text}\x1b[0m" if sgr else text)
            used += cell_len(text)
        lines.append("".join(parts) + " " * max(0, colw - used))
    return lines


def highlight_view(query: Any, width: int, height: int,
                   spans: tuple[Sequence, Sequence] | None = None,
                   editor: HighlightEditor | None = None) -> tuple[View, int, list[SideLayout]]:
    """A text pair drawn word by word with its highlights (``spans``: left and right
    character spans; or the state of ``editor``, with its cursor and open span). Returns the
    view, the body line of the cursor (0 without an editor) and the two layouts."""
    colw = column_width(width)
    texts = (query.left, query.right)
    words = [word_spans(t) for t in texts]
    layouts = [layout_words(t, w, colw) for t, w in zip(texts, words, strict=True)]
    if editor is not None:
        on, pending = editor.picked, [editor.open_span(i) for i in range(2)]
        cursors = [editor.cursor[i] if i == editor.side else None for i in range(2)]
        notes = [" · ◀ highlighting" if i == editor.side else "" for i in range(2)]
    else:
        on = [spans_to_words(words[i], (spans or ([], []))[i]) for i in range(2)]
        pending, cursors, notes = [set(), set()], [None, None], ["", ""]
    head = text_header(query, width, True, notes)
    body = columns(*(_draw_side(layouts[i], colw, on[i], pending[i], cursors[i])
                     for i in range(2)), colw)
    line = 0
    if editor is not None and editor.cursor[editor.side] in layouts[editor.side].where:
        line = len(head) + layouts[editor.side].where[editor.cursor[editor.side]][0]
    view = View(query.id, "text", "text · highlights", width, height, head + body, query=query)
    return view, line, layouts


# ----------------------------------------------------------------------------- the editor


class HighlightEditor:
    """What highlight mode edits: the highlighted words of each side, a cursor per side, an
    open span and the undo history. Keys go in through :meth:`handle`."""

    def __init__(self, left: str, right: str, reasons: dict | None = None):
        self.texts = (left, right)
        self.words = (word_spans(left), word_spans(right))
        given = oriented(reasons, "left")
        self.picked = [spans_to_words(self.words[i], given[i]) for i in range(2)]
        self.side = 0 if self.words[0] or not self.words[1] else 1
        self.cursor = [0, 0]
        self.anchor: int | None = None
        self.history: list[list[set[int]]] = []
        self.layouts: list[SideLayout] | None = None  # set by the drawing, for ↑/↓
        self.message = "highlight the words that decided: space marks a word, v a span"

    def open_span(self, side: int) -> set[int]:
        if self.anchor is None or side != self.side:
            return set()
        lo, hi = sorted((self.anchor, self.cursor[side]))
        return set(range(lo, hi + 1))

    def reasons(self) -> dict | None:
        return highlight_reasons(*(words_to_spans(self.words[i], self.picked[i])
                                   for i in range(2)))

    def _change(self) -> None:
        self.history.append([set(p) for p in self.picked])

    def _word(self, side: int | None = None, index: int | None = None) -> str:
        side = self.side if side is None else side
        start, end = self.words[side][self.cursor[side] if index is None else index]
        return sanitize(self.texts[side][start:end])[:30]

    def handle(self, key: str) -> str | None:
        """Apply one key; ``"keep"`` or ``"cancel"`` when highlight mode ends."""
        n = len(self.words[self.side])
        cur = self.cursor[self.side]
        if key in LEFT_KEYS or key in RIGHT_KEYS:
            self.cursor[self.side] = max(0, min(n - 1, cur + (1 if key in RIGHT_KEYS else -1)))
        elif key in ("up", "down"):
            self._line(-1 if key == "up" else 1)
        elif key == "\t":
            if self.words[1 - self.side]:
                self.side, self.anchor = 1 - self.side, None
                self.message = f"now on the {('left', 'right')[self.side]} response"
            else:
                self.message = "the other response has no words to highlight"
        elif key == " ":
            self._change()
            self.picked[self.side] ^= {cur}
            verb = "highlighted" if cur in self.picked[self.side] else "not highlighted"
            self.message = f"“{self._word()}” {verb}"
        elif key == "v":
            if self.anchor is None:
                self.anchor = cur
                self.message = f"span starts at “{self._word()}”: move to its last word, press v"
            else:
                self._change()
                self.picked[self.side] |= self.open_span(self.side)
                n = len(self.open_span(self.side))
                self.message = f"span highlighted: {n} word{'' if n == 1 else 's'}"
                self.anchor = None
        elif key in ("u", "\x7f", "\x08"):
            if self.anchor is not None:
                self.anchor, self.message = None, "open span dropped"
            elif self.history:
                self.picked = self.history.pop()
                self.message = "undone: the last change"
            else:
                self.message = "nothing to undo"
        elif key == "c":
            self._change()
            self.picked = [set(), set()]
            self.message = "cleared every highlight (u brings them back)"
        elif key in ("\n", "\r"):
            return "keep"
        elif key == "\x1b":
            if self.anchor is None:
                return "cancel"
            self.anchor, self.message = None, "open span dropped"
        else:
            self.message = (f"unknown key {key.encode('unicode_escape').decode()!r} here: "
                            "Enter keeps the highlights, Esc cancels")
        return None

    def _line(self, delta: int) -> None:
        """Move to the word on the nearest line above/below with words, closest in column."""
        if self.layouts is None:
            return
        where = self.layouts[self.side].where
        line, col = where.get(self.cursor[self.side], (0, 0))
        by_line: dict[int, list[tuple[int, int]]] = {}
        for wi, (ln, c) in where.items():
            by_line.setdefault(ln, []).append((abs(c - col), wi))
        target = line + delta
        while 0 <= target < len(self.layouts[self.side].lines):
            if target in by_line:
                self.cursor[self.side] = min(by_line[target])[1]
                return
            target += delta


def run_highlighter(term: Terminal, query: Any, reasons: dict | None,
                    draw: Callable[[View, int, str, str], int]) -> tuple[bool, dict | None]:
    """Highlight mode for a text pair: returns (kept, reasons); ``kept`` False when the
    person cancelled (the reasons given before stay). ``draw(view, offset, keys, notice)``
    puts a screen up and returns the offset it used."""
    editor = HighlightEditor(query.left, query.right, reasons)
    if not (editor.words[0] or editor.words[1]):
        return False, reasons
    offset, drawn_size, dirty = 0, None, True
    while True:
        size = term.size()
        if dirty or size != drawn_size:
            view, line, editor.layouts = highlight_view(query, *size, editor=editor)
            body_h = max(1, size[1] - CHROME_ROWS)
            offset = min(max(offset, line - body_h + 2), max(0, line - 1))
            offset = draw(view, offset, HIGHLIGHT_KEYS, editor.message)
            drawn_size, dirty = size, False
        key = term.read_key(0.25)
        if key is None:
            continue
        dirty = True
        done = editor.handle(key)
        if done == "keep":
            return True, editor.reasons()
        if done == "cancel":
            return False, reasons


def reasons_spans(reasons: dict | None) -> tuple[list, list] | None:
    """The left/right spans of stored highlight reasons, merged (None without any)."""
    if not reasons or "highlights" not in reasons:
        return None
    left, right = oriented(reasons, "left")
    return merge_spans(left), merge_spans(right)
