"""The marking prompt: a person marks, on a coarse grid over each image, the cells where the
evidence is (``rlhf-hgt attention mark STORE --data DATA`` calls :func:`run_marking`).

Each image not yet marked or skipped by this annotator is drawn enlarged on half-block
characters (:func:`.render.halfblock_lines`, as trajectory frames are), with the grid over
it, column letters above and row numbers at the left (cell B3: second column, third row).
A cursor cell moves with the arrow keys or h j k l; space marks or unmarks it; ``:`` reads
cell names (``B3 C3``, ``B3-C5`` for a rectangle); ``c`` clears; ``u`` undoes the last
change, or, with none left on this image, takes back the last saved mark and shows that
image again; Enter saves; ``s`` skips; ``q`` quits; ``?`` shows the keys.

Every mark is committed the moment it is given (:func:`.marks.record_mark`, with annotator,
time shown, time answered, interface version and the hash of the picture shown), so
Ctrl-C, SIGTERM or a closed terminal lose at most the image on screen, and running the
same command again resumes with the images this annotator has not marked. The terminal
mode is restored on every way out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .annotators import default_annotator
from .db import is_url
from .errors import UserInputError
from .marks import (
    cell_edges,
    cell_name,
    parse_cells,
    pending_images,
    record_mark,
    undo_mark,
)
from .render import MAX_UPSCALE, halfblock_lines, rgb_uint8, sanitize
from .store import PreferenceStore
from .term_io import GuardedSession, Stop, Terminal

INTERFACE = "terminal-marks/1"
MAX_GRID = 26  # one letter per column
CHROME_ROWS = 8  # title, status, rule, column letters | marked, rule, keys, notice
MOVES = {"up": (-1, 0), "k": (-1, 0), "down": (1, 0), "j": (1, 0), "h": (0, -1), "l": (0, 1),
         "\x1b[D": (0, -1), "\x1bOD": (0, -1), "\x1b[C": (0, 1), "\x1bOC": (0, 1)}
MARK_RGB = (255, 120, 0)
CURSOR_RGB = (255, 230, 0)
LINE_RGB = (70, 110, 190)
KEYS_LINE = ("arrows/hjkl move · space mark · : type cells · c clear · u undo · Enter save · "
             "s skip · q quit · ? help")
KEYS_SHORT = "arrows move · space mark · Enter save · s skip · u undo · q quit · ? help"
HELP = """Mark where the evidence is: the cells of the grid that show what the image's label
depends on. Cells are named by column letter and row number (B3: 2nd column, 3rd row).

  arrows / h j k l   move the cursor cell
  space              mark or unmark the cell under the cursor
  :                  type cells to mark or unmark: B3 C3, or B3-C5 for a rectangle
  c                  clear every mark on this image
  u                  undo the last change; with none left here, take back the last
                     saved mark (or skip) and show that image again
  Enter              save the marks of this image (at once) and go to the next
  s                  skip this image: you cannot tell
  Ctrl-L             redraw the screen
  q                  quit; run the same command again to go on where you stopped
  ?                  this help

Press any key to go back."""


def default_grid(height: int, width: int) -> int:
    """Cells per side when none is given: min(H, W) // 4 kept within 4..14 (7 for 28x28
    digits, 4 for 8x8, 14 for large photos), and never more cells than pixels."""
    return min(max(4, min(14, min(height, width) // 4)), height, width)


@dataclass
class MarkOptions:
    """How a marking session runs (the flags of ``rlhf-hgt attention mark``)."""

    annotator: str = field(default_factory=default_annotator, metadata={
        "help": "who is marking; stored with every mark", "metavar": "NAME",
        "default_text": "your login name"})
    limit: int | None = field(default=None, metadata={
        "help": "stop after this many images marked or skipped (default: until none is left)"})
    grid: int | None = field(default=None, metadata={
        "help": "cells per side of the grid laid over each image (default: min(H, W) // 4, "
                f"kept within 4..14: 7 for 28x28 images; at most {MAX_GRID})"})

    def __post_init__(self) -> None:
        if not self.annotator or not self.annotator.strip():
            raise UserInputError("--annotator: give a non-empty name, e.g. --annotator alice")
        if self.limit is not None and self.limit < 1:
            raise UserInputError(f"--limit must be 1 or more, got {self.limit}; "
                                 "leave it out to mark until none is left")
        if self.grid is not None and not 2 <= self.grid <= MAX_GRID:
            raise UserInputError(f"--grid must be 2 to {MAX_GRID} cells per side, got "
                                 f"{self.grid}")


def prepare_images(images: Any) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) images, C = 1 or 3, floats in [0, 1] (uint8 0-255 too), as
    (N, H, W, 3) uint8 pictures; UserInputError for anything else."""
    arr = np.asarray(images)
    if arr.dtype.kind not in "biuf":
        raise UserInputError(f"images must be numbers, got dtype {arr.dtype}")
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        arr = np.moveaxis(arr, 1, -1)
    elif arr.ndim == 3:
        arr = arr[..., None]
    else:
        raise UserInputError(f"images must be (N, H, W) or (N, C, H, W) with C = 1 or 3, "
                             f"got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise UserInputError(f"no images to mark: the image array has shape {arr.shape}")
    return rgb_uint8(arr)


# ----------------------------------------------------------------------------- drawing


def fit_cells(grid: tuple[int, int], h: int, w: int, cols: int, rows: int,
              margin: int) -> tuple[int, int] | None:
    """Pixels per cell (height, even so that cells line up with text lines; width) for the
    picture to fit the screen, enlarged at most MAX_UPSCALE times; None if it cannot fit."""
    r, c = grid
    ch = min(2 * (rows - CHROME_ROWS) // r, int(MAX_UPSCALE * h / r)) // 2 * 2
    while ch >= 2:
        cw = max(1, round(ch * (w / c) / (h / r)))
        if cw * c <= cols - margin - 1:
            return ch, cw
        ch -= 2
    return None


def _spans(edges: np.ndarray, per: int) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel ranges [start, end) of ``per`` screen pixels in each cell."""
    starts, ends = [], []
    o = np.arange(per)
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        s = a + (o * (b - a)) // per
        starts.append(s)
        ends.append(np.maximum(s + 1, a + ((o + 1) * (b - a)) // per))
    return np.concatenate(starts), np.concatenate(ends)


def cell_picture(img: np.ndarray, grid: tuple[int, int], ch: int, cw: int) -> np.ndarray:
    """The (H, W, 3) picture resampled so that each grid cell (:func:`.marks.cell_edges`) is
    exactly ch x cw screen pixels (box average when shrinking, repeats when enlarging)."""
    h, w, _ = img.shape
    ys, ye = _spans(cell_edges(h, grid[0]), ch)
    xs, xe = _spans(cell_edges(w, grid[1]), cw)
    s = np.zeros((h + 1, w + 1, 3))
    s[1:, 1:] = img.astype(float).cumsum(0).cumsum(1)
    total = (s[np.ix_(ye, xe)] - s[np.ix_(ys, xe)] - s[np.ix_(ye, xs)] + s[np.ix_(ys, xs)])
    area = np.outer(ye - ys, xe - xs)[..., None]
    return np.clip(np.rint(total / area), 0, 255).astype(np.uint8)


def _blend(region: np.ndarray, rgb: tuple[int, int, int], alpha: float) -> None:
    region[...] = np.rint(region * (1 - alpha) + np.array(rgb) * alpha).astype(np.uint8)


def overlay(base: np.ndarray, grid: tuple[int, int], ch: int, cw: int,
            marked: set[tuple[int, int]], cursor: tuple[int, int] | None) -> np.ndarray:
    """The picture with grid lines (or a faint checkerboard when cells are small), marked
    cells tinted and the cursor cell framed (or tinted when small)."""
    out = base.copy()
    rows, cols = grid
    lines = ch >= 4 and cw >= 3
    if lines:
        for r in range(1, rows):
            _blend(out[r * ch], LINE_RGB, 0.6)
        for c in range(1, cols):
            _blend(out[:, c * cw], LINE_RGB, 0.6)
    else:
        for r in range(rows):
            for c in range(r % 2, cols, 2):
                _blend(out[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw], LINE_RGB, 0.15)
    for r, c in marked:
        _blend(out[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw], MARK_RGB, 0.5)
    if cursor is not None:
        r, c = cursor
        cell = out[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw]
        if lines:
            cell[0], cell[-1], cell[:, 0], cell[:, -1] = (CURSOR_RGB,) * 4
        else:
            _blend(cell, CURSOR_RGB, 0.6)
    return out


def _sgr(code: str, text: str) -> str:
    return f"\x1b[{code}m{text}\x1b[0m"


def grid_lines(pic: np.ndarray, grid: tuple[int, int], ch: int, cw: int,
               cursor: tuple[int, int]) -> list[str]:
    """Column letters, then the half-block picture with row numbers at the left; the
    cursor's letter and number in reverse video."""
    rows, cols = grid
    margin = len(str(rows)) + 1
    head = [" " * margin]
    for c in range(cols):
        name = cell_name(0, c)[:-1].center(cw)[:max(cw, 1)]
        head.append(_sgr("7", name) if c == cursor[1] else _sgr("2", name))
    out = ["".join(head)]
    per = ch // 2  # text lines per cell
    for i, line in enumerate(halfblock_lines(pic)):
        r, k = divmod(i, per)
        label = str(r + 1).rjust(margin - 1) if k == (per - 1) // 2 else " " * (margin - 1)
        label = _sgr("7", label) if r == cursor[0] and label.strip() else _sgr("2", label)
        out.append(f"{label} {line}")
    return out


# ----------------------------------------------------------------------------- the session


@dataclass
class _Saved:
    mark_id: int
    image: int
    cells: set[tuple[int, int]]
    skipped: bool
    seconds: float


class _Marker(GuardedSession):
    def __init__(self, store: PreferenceStore, path: Path, pics: np.ndarray, dataset: str,
                 opts: MarkOptions, grid: int, term: Terminal):
        self.store, self.path, self.pics, self.dataset = store, path, pics, dataset
        self.opts, self.term, self.who = opts, term, opts.annotator
        self.grid = (grid, grid)
        self.queue: deque[int] = deque(pending_images(store, dataset, len(pics), self.who))
        self.given: list[_Saved] = []
        self.undone = 0
        self.image = -1
        self.cells: set[tuple[int, int]] = set()
        self.history: list[set[tuple[int, int]]] = []
        self.cursor = (grid // 2, grid // 2)
        self.shown_at = 0.0
        self.left = 0
        self.help = False
        self.notice = ""
        self.resized = False
        self._cache: tuple[tuple, np.ndarray] | None = None
        self.init_guard()

    def run(self) -> int:
        if not self.queue:
            print(f"Nothing to mark: {self.who} has marked or skipped all {len(self.pics)} "
                  f"images of {self.dataset} in {self.path}.")
            return 0
        with self.signals():
            reason, code = self._session()
        with contextlib.suppress(OSError, ValueError):  # the terminal may be gone
            print(self._summary(reason))
        return code

    def _session(self) -> tuple[str, int]:
        reason, code, started = "quit", 0, False
        try:
            with self._protect():
                self.store.log_event("session_start", self.who, {
                    "interface": INTERFACE, "task": "marks", "dataset": self.dataset,
                    "images": len(self.pics), "grid": list(self.grid), "pid": os.getpid(),
                    "limit": self.opts.limit})
            started = True
            self.term.start()
            reason = self._loop()
        except Stop as stop:
            reason, code = stop.reason, stop.code
        finally:
            self._closing = True
            self.term.stop()
            if started:
                self._log_stop(reason)
        return reason, code

    def _loop(self) -> str:
        if not self._next():
            return "done"
        while True:
            if self.resized:
                self.resized = False
                self.term.write("\x1b[2J")
                self._draw()
            key = self.term.read_key(0.25)
            if key is None:
                continue
            if self.help:
                self.help = False
            elif key in MOVES:
                dr, dc = MOVES[key]
                r, c = self.cursor
                self.cursor = (min(max(r + dr, 0), self.grid[0] - 1),
                               min(max(c + dc, 0), self.grid[1] - 1))
            elif key == " ":
                self._change(self.cells ^ {self.cursor})
            elif key == ":":
                self._typed()
            elif key == "c":
                if self.cells:
                    self._change(set())
                else:
                    self.notice = "nothing to clear"
            elif key == "u":
                self._undo()
            elif key in ("\r", "\n", "s"):
                if key != "s" and not self.cells:
                    self.notice = ("nothing marked: mark the cells with the evidence, or "
                                   "press s to skip this image")
                else:
                    self._save(skipped=key == "s")
                    if self.opts.limit is not None and len(self.given) >= self.opts.limit:
                        return "limit"
                    if not self._next():
                        return "done"
                    continue
            elif key == "q":
                return "quit"
            elif key == "?":
                self.help = True
            elif key != "\x0c":
                self.notice = (f"unknown key {key.encode('unicode_escape').decode()!r}: "
                               "press ? for help")
            self._draw()

    def _change(self, cells: set[tuple[int, int]]) -> None:
        self.history.append(self.cells)
        self.cells = set(cells)
        self.notice = ""

    def _typed(self) -> None:
        text = self.term.read_line("cells to mark or unmark (e.g. B3 C3 or B3-C5; Enter): ",
                                   self.term.size()[1])
        text = sanitize(text).strip()
        if not text:
            self.notice = "no cells typed"
            return
        try:
            cells = parse_cells(text, self.grid)
        except UserInputError as exc:
            self.notice = str(exc)
            return
        self._change(self.cells ^ set(cells))
        self.cursor = cells[-1]

    def _save(self, skipped: bool) -> None:
        answered = time.time()
        cells = set() if skipped else set(self.cells)
        digest = hashlib.sha256(np.ascontiguousarray(self.pics[self.image]).tobytes())
        with self._protect():
            mark_id = record_mark(self.store, self.dataset, self.image, self.grid, sorted(cells),
                                  self.who, self.shown_at, answered, skipped=skipped,
                                  interface=INTERFACE, image_hash=digest.hexdigest())
            self.given.append(_Saved(mark_id, self.image, cells, skipped,
                                     answered - self.shown_at))
        names = " ".join(cell_name(*c) for c in sorted(cells))
        self.notice = (f"skipped image {self.image}" if skipped else
                       f"saved: image {self.image}, {len(cells)} cells ({names})")

    def _undo(self) -> None:
        if self.history:
            self.cells = self.history.pop()
            self.notice = "undone: the last change"
            return
        if not self.given:
            self.notice = "nothing to undo"
            return
        last = self.given[-1]
        with self._protect():
            undo_mark(self.store, last.mark_id, self.who, interface=INTERFACE)
            self.given.pop()
            self.undone += 1
        self.queue.appendleft(self.image)
        what = "skip" if last.skipped else "mark"
        self.notice = f"undone: your {what} of image {last.image}; change it and press Enter"
        self._show(last.image, last.cells)

    def _next(self) -> bool:
        while self.queue:
            image = self.queue.popleft()
            with self._protect():
                still = image in pending_images(self.store, self.dataset, image + 1, self.who)
            if still:  # not marked meanwhile by the same annotator in another session
                self._show(image, set())
                return True
        return False

    def _show(self, image: int, cells: set[tuple[int, int]]) -> None:
        self.image, self.cells, self.history = image, set(cells), []
        with self._protect():
            self.left = len(pending_images(self.store, self.dataset, len(self.pics), self.who))
        self.term.drop_typeahead()  # keys typed before this image is on screen were not for it
        self._draw()
        self.shown_at = time.time()

    def _draw(self) -> None:
        cols, rows = self.term.size()
        title = (f"rlhf-hgt attention mark · {self.path.name} · {self.dataset} · "
                 f"annotator {self.who}")
        status = (f"image {self.image} · left: {self.left} of {len(self.pics)} · saved this "
                  f"session: {len(self.given)} · grid {self.grid[0]}x{self.grid[1]} · "
                  f"cursor {cell_name(*self.cursor)}")
        body = HELP.splitlines() if self.help else self._picture(cols, rows)
        names = " ".join(cell_name(*c) for c in sorted(self.cells)) or "none"
        rule = "─" * cols
        keys = KEYS_LINE if len(KEYS_LINE) <= cols else KEYS_SHORT
        screen = [_sgr("1", title[:cols]), status[:cols], rule, *body[:rows - CHROME_ROWS + 1]]
        screen += [""] * (rows - 4 - len(screen))
        marked = f"marked ({len(self.cells)}): "
        screen += [marked + _sgr("1;38;2;255;140;0", names[:max(0, cols - len(marked))]),
                   rule, _sgr("2", keys[:cols]), _sgr("33", self.notice[:cols])]
        self.term.write("".join(f"\x1b[{r};1H\x1b[0m{line}\x1b[0m\x1b[K"
                                for r, line in enumerate(screen, 1)))

    def _picture(self, cols: int, rows: int) -> list[str]:
        h, w = self.pics.shape[1:3]
        fit = fit_cells(self.grid, h, w, cols, rows, len(str(self.grid[0])) + 1)
        if fit is None:
            need = self.grid[0] + CHROME_ROWS
            return [f"the terminal is too small for a {self.grid[0]}x{self.grid[1]} grid: "
                    f"make it at least {need} rows high and {self.grid[1] + 8} wide"]
        key = (self.image, *fit)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, cell_picture(self.pics[self.image], self.grid, *fit))
        pic = overlay(self._cache[1], self.grid, *fit, self.cells, self.cursor)
        return grid_lines(pic, self.grid, *fit, self.cursor)

    # -- the end

    def _log_stop(self, reason: str) -> None:
        secs = [g.seconds for g in self.given]
        with contextlib.suppress(Exception):
            self.store.log_event("session_stop", self.who, {
                "reason": reason, "task": "marks", "dataset": self.dataset,
                "marks": sum(not g.skipped for g in self.given),
                "skips": sum(g.skipped for g in self.given), "undone": self.undone,
                "interface": INTERFACE,
                "median_seconds_per_mark": statistics.median(secs) if secs else None})

    def _summary(self, reason: str) -> str:
        n = len(self.given)
        head = (f"{n} image{'s' if n != 1 else ''} marked or skipped by {self.who} "
                f"({self.dataset}) in {self.path}")
        if reason == "done":
            return f"All done: {head}; nothing left to mark."
        if reason == "limit":
            return f"Stopped after --limit {self.opts.limit}: {head}."
        if reason == "quit":
            return f"{head}. Run the same command again to go on."
        return f"Stopped ({reason}): {head}; every saved mark is kept."


def run_marking(store_path: str | os.PathLike, images: np.ndarray, dataset_id: str,
                opts: MarkOptions | None = None) -> int:
    """Mark, at this terminal, the images of ``dataset_id`` that this annotator has not marked
    yet; every mark is saved to the store (created if missing) at once. Returns the exit
    code: 0 (done, quit or limit), 128+N after signal N. Raises UserInputError (exit 2) for
    bad images or options, or when stdin/stdout is not a terminal; nothing is written then."""
    opts = opts or MarkOptions()
    pics = prepare_images(images)
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise UserInputError("a data set id is needed to store marks, e.g. decoy-mnist")
    h, w = pics.shape[1:3]
    grid = opts.grid or default_grid(h, w)
    if grid > min(h, w):
        raise UserInputError(f"--grid {grid} is finer than the {h}x{w} images: give at most "
                             f"{min(h, w)} cells per side")
    for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)):
        if stream is None or not stream.isatty():
            raise UserInputError(
                f"the marking prompt reads single keys and draws on a terminal, but {name} is "
                "not one (a pipe or a file); run it in an interactive terminal")
    store = PreferenceStore(store_path if is_url(store_path) else Path(store_path))
    try:
        term = Terminal(sys.stdin.fileno(), sys.stdout)
        # store.path: the file, or a team store's URL (password masked; .name the database)
        return _Marker(store, store.path, pics, dataset_id, opts, grid, term).run()
    finally:
        store.close()

