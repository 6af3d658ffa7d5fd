"""Attention marks: where a person says the evidence is in an image, as cells of a coarse grid.

A mark names one image of a data set (``dataset``: a string such as ``decoy-mnist`` or a file
name, and the image's index in it) and the cells of a ``grid`` of (rows, cols) laid over the
image that hold the evidence, or says that the person skipped the image. It carries the
provenance of a comparison answer: the annotator, whether it is synthetic, when the image
was shown and when the mark was given (so the time taken), the interface version, and
optionally the hash of the picture shown (so a mark can be checked against the data later).

Append-only (the ``marks`` table of the store, schema 2): marking an image again adds a row
that supersedes the earlier one; an undo adds a row of kind ``undo`` that names the row it
takes back, after which that annotator's previous mark of the image, if any, counts again.
Nothing is ever updated or deleted.

Reading, as training reads it (:func:`load_marks`)
- per annotator and image, the latest active row counts: a mark or a skip;
- a skip, or a mark with no cell, says nothing about where the evidence is: left out;
- several annotators: ``combine="union"`` (the default) marks a cell when any of them marked
  it (people tend to mark too little rather than too much, and one person's miss should not
  erase another's evidence); ``"latest"`` takes the most recent mark of any annotator. A grid
  of another shape than the image's most recent mark is first resampled to it by cell
  centres. ``annotator=NAME`` reads one annotator's marks only.

Grid geometry (:func:`cell_edges`): a side of ``size`` pixels split into ``n`` cells has
its boundaries at ``floor(i * size / n + 1/2)`` for i = 0..n (rounded to the nearest pixel,
halves up), so 28 pixels in 7 cells are 4 each, and 28 in 8 cells are 4,3,4,3,... (3.5 on
average). A grid needs at least one pixel per cell.

The synthetic marker (:func:`synthetic_marks`) marks a cell when the true mask covers at
least half of it (the mean of the mask over the cell's pixels is at least 0.5; a graded map
is clipped to [0, 1] first), then flips each cell independently with probability ``noise``.

This module imports nothing of ours outside ``feedback/`` and no torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .errors import UserInputError
from .records import Mark, StoreError
from .store import PreferenceStore

API_INTERFACE = "api/1"
SYNTHETIC_INTERFACE = "synthetic-marker/1"
SYNTHETIC_MARKER = "marker:synthetic"
COMBINE = ("union", "latest")
COVER_THRESHOLD = 0.5  # the synthetic marker's rule: a cell at least half covered is marked

StoreLike = PreferenceStore | str | os.PathLike
Cells = Iterable[tuple[int, int] | str] | np.ndarray

_MARK_COLUMNS = ("id, dataset, image, grid_rows, grid_cols, kind, cells, annotator, synthetic, "
                 "shown_at, answered_at, interface, image_hash")


@contextlib.contextmanager
def _opened(store: StoreLike, create: bool = False) -> Iterator[PreferenceStore]:
    if isinstance(store, PreferenceStore):
        yield store
        return
    st = PreferenceStore(store, create=create)
    try:
        yield st
    finally:
        st.close()


# ----------------------------------------------------------------------------- cells


def check_grid(grid: int | tuple[int, int] | Iterable[int]) -> tuple[int, int]:
    """A grid as (rows, cols): an int n means n x n."""
    if isinstance(grid, int | np.integer):
        rows = cols = int(grid)
    else:
        try:
            rows, cols = (int(x) for x in grid)
        except (TypeError, ValueError):
            raise UserInputError(f"a grid is cells per side (an int) or (rows, cols), "
                                 f"got {grid!r}") from None
    if rows < 1 or cols < 1:
        raise UserInputError(f"a grid needs at least one cell per side, got {rows}x{cols}")
    return rows, cols


def cell_name(row: int, col: int) -> str:
    """The name of a cell as the prompt shows it: column letter, row number (B3: 2nd column,
    3rd row). Columns past Z go on as AA, AB, ..."""
    letters, c = "", col
    while True:
        letters = chr(ord("A") + c % 26) + letters
        c = c // 26 - 1
        if c < 0:
            return f"{letters}{row + 1}"


_NAME = re.compile(r"^([A-Za-z]+)(\d+)$")


def parse_cell(name: str, grid: int | tuple[int, int]) -> tuple[int, int]:
    """(row, col) of a cell name such as ``B3`` (case does not matter)."""
    rows, cols = check_grid(grid)
    m = _NAME.match(name.strip())
    if not m:
        raise UserInputError(f"{name!r} is not a cell name: a column letter and a row number, "
                             "e.g. B3")
    col = 0
    for ch in m.group(1).upper():
        col = col * 26 + ord(ch) - ord("A") + 1
    col, row = col - 1, int(m.group(2)) - 1
    if not (0 <= row < rows and 0 <= col < cols):
        raise UserInputError(f"{name!r} is outside the grid: columns {cell_name(0, 0)[0]}.."
                             f"{cell_name(0, cols - 1)[:-1]}, rows 1..{rows}")
    return row, col


def parse_cells(text: str, grid: int | tuple[int, int]) -> list[tuple[int, int]]:
    """Cells named in a line of text: names (``B3 C3``, commas allowed) and rectangles
    (``B3-C5``: every cell from B3 to C5). Raises UserInputError naming every bad word."""
    out: list[tuple[int, int]] = []
    bad = []
    for word in re.split(r"[\s,;]+", text.strip()):
        if not word:
            continue
        try:
            if "-" in word:
                a, b = word.split("-", 1)
                (r0, c0), (r1, c1) = parse_cell(a, grid), parse_cell(b, grid)
                out += [(r, c) for r in range(min(r0, r1), max(r0, r1) + 1)
                        for c in range(min(c0, c1), max(c0, c1) + 1)]
            else:
                out.append(parse_cell(word, grid))
        except (UserInputError, ValueError):
            bad.append(word)
    if bad:
        raise UserInputError(f"not a cell of the grid: {' '.join(bad)} (use names like B3, "
                             "or B3-C5 for a rectangle)")
    return out


def normalise_cells(cells: Cells, grid: int | tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Cells as sorted, distinct (row, col) pairs: from a (rows, cols) bool array, (row, col)
    pairs (a list, or an integer (K, 2) array), or cell names."""
    rows, cols = check_grid(grid)
    if isinstance(cells, np.ndarray) and cells.dtype == bool:
        if cells.shape != (rows, cols):
            raise UserInputError(f"a cell array must have the grid's shape {(rows, cols)}, "
                                 f"got {cells.shape}")
        return tuple((int(r), int(c)) for r, c in zip(*np.nonzero(cells), strict=True))
    out = set()
    for cell in cells:
        if isinstance(cell, str):
            out.add(parse_cell(cell, (rows, cols)))
            continue
        try:
            r, c = (int(x) for x in cell)
        except (TypeError, ValueError):
            raise UserInputError(f"a cell is (row, col) or a name like B3, got {cell!r}") \
                from None
        if not (0 <= r < rows and 0 <= c < cols):
            raise UserInputError(f"cell {(r, c)} is outside the {rows}x{cols} grid")
        out.add((r, c))
    return tuple(sorted(out))


# ----------------------------------------------------------------------------- writing


def record_mark(store: StoreLike, dataset_id: str, index: int, grid: int | tuple[int, int],
                cells: Cells, annotator: str, shown_at: float | None = None,
                answered_at: float | None = None, synthetic: bool = False,
                skipped: bool = False, *, interface: str = API_INTERFACE,
                image_hash: str | None = None, token: str | None = None) -> int:
    """Save one mark (or, with ``skipped=True`` and no cells, a skip) durably; returns its id.

    It supersedes this annotator's earlier mark of the same image. A repeated ``token``
    returns the id saved the first time (a retry after a crash adds nothing); so does the
    transaction run again after a team store's lost connection (:mod:`.db`)."""
    token = token or uuid.uuid4().hex  # chosen once, before any retry
    with _opened(store, create=True) as st:
        return st.conn.transact(lambda cur: _insert(
            cur, st, dataset_id, index, grid, cells, annotator, shown_at, answered_at,
            synthetic, skipped, interface, image_hash, token))


def _insert(cur: Any, st: PreferenceStore, dataset_id: str, index: int,
            grid: int | tuple[int, int], cells: Cells, annotator: str,
            shown_at: float | None, answered_at: float | None, synthetic: bool,
            skipped: bool, interface: str, image_hash: str | None,
            token: str | None) -> int:
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise UserInputError(f"a mark needs a data set id (a non-empty string), "
                             f"got {dataset_id!r}")
    if not isinstance(annotator, str) or not annotator.strip():
        raise UserInputError("a mark needs an annotator: give a non-empty name")
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
        raise UserInputError(f"an image index is an int >= 0, got {index!r}")
    rows, cols = check_grid(grid)
    pairs = normalise_cells(cells, (rows, cols))
    if skipped and pairs:
        raise UserInputError("a skip has no cells: give cells=() with skipped=True")
    token = token or uuid.uuid4().hex
    row = cur.execute("SELECT id FROM marks WHERE token = ?", (token,)).fetchone()
    if row:
        return row[0]
    cur.execute(
        "INSERT INTO marks (dataset, image, grid_rows, grid_cols, kind, cells, annotator, "
        "synthetic, shown_at, answered_at, interface, image_hash, token) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (dataset_id, int(index), rows, cols, "skip" if skipped else "mark",
         json.dumps([list(p) for p in pairs]), annotator, int(synthetic), shown_at,
         time.time() if answered_at is None else answered_at, interface, image_hash, token))
    return cur.lastrowid


def undo_mark(store: StoreLike, mark_id: int, annotator: str | None = None,
              interface: str = API_INTERFACE) -> int:
    """Take a mark (or skip) back with an ``undo`` row; returns the undo row's id. The
    annotator's previous mark of that image, if any, counts again."""
    token = uuid.uuid4().hex  # chosen once: a retry after a lost connection finds its row
    with _opened(store) as st:
        return st.conn.transact(lambda cur: _undo(cur, st, mark_id, annotator, interface,
                                                  token))


def _undo(cur: Any, st: PreferenceStore, mark_id: int, annotator: str | None,
          interface: str, token: str) -> int:
    done = cur.execute("SELECT id FROM marks WHERE token = ?", (token,)).fetchone()
    if done:
        return done[0]
    row = cur.execute("SELECT dataset, image, grid_rows, grid_cols, kind, annotator FROM "
                      "marks WHERE id = ?", (mark_id,)).fetchone()
    if row is None or row[4] == "undo":
        raise StoreError(f"{st.path}: no mark with id {mark_id}")
    if cur.execute("SELECT 1 FROM marks WHERE undoes = ?", (mark_id,)).fetchone():
        raise StoreError(f"{st.path}: mark {mark_id} is already undone")
    now = time.time()
    cur.execute(
        "INSERT INTO marks (dataset, image, grid_rows, grid_cols, kind, undoes, annotator, "
        "shown_at, answered_at, interface, token) VALUES (?,?,?,?,'undo',?,?,?,?,?,?)",
        (*row[:4], mark_id, annotator or row[5], None, now, interface, token))
    return cur.lastrowid


# ----------------------------------------------------------------------------- reading


def list_marks(store: StoreLike, dataset_id: str | None = None, annotator: str | None = None,
               include_undone: bool = False) -> list[Mark]:
    """Marks and skips, oldest first; undone ones only with ``include_undone``."""
    table = "marks" if include_undone else "active_marks"
    sql = f"SELECT {_MARK_COLUMNS} FROM {table} WHERE kind IN ('mark', 'skip')"
    args: list[Any] = []
    if dataset_id is not None:
        sql += " AND dataset = ?"
        args.append(dataset_id)
    if annotator is not None:
        sql += " AND annotator = ?"
        args.append(annotator)
    with _opened(store) as st:
        rows = st.conn.execute(sql + " ORDER BY id", args).fetchall()
    return [Mark(r[0], r[1], r[2], (r[3], r[4]), tuple(tuple(p) for p in json.loads(r[6])),
                 r[5] == "skip", r[7], bool(r[8]), r[9], r[10], r[11], r[12]) for r in rows]


def latest_marks(store: StoreLike, dataset_id: str,
                 annotator: str | None = None) -> dict[tuple[str, int], Mark]:
    """(annotator, image) -> that annotator's latest active mark or skip of the image."""
    out: dict[tuple[str, int], Mark] = {}
    for m in list_marks(store, dataset_id, annotator):  # oldest first: the latest wins
        out[(m.annotator, m.image)] = m
    return out


def resample_grid(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A bool grid on another grid shape: a new cell is marked when its centre lies in a
    marked cell of the old grid."""
    rows, cols = shape
    r_src = ((np.arange(rows) + 0.5) * grid.shape[0] / rows).astype(int)
    c_src = ((np.arange(cols) + 0.5) * grid.shape[1] / cols).astype(int)
    return grid[np.ix_(r_src, c_src)]


def load_marks(store: StoreLike, dataset_id: str, annotator: str | None = None,
               combine: str = "union") -> dict[int, np.ndarray]:
    """image index -> (rows, cols) bool grid of the marked cells, for every image with a mark
    (skips and marks with no cell left out). Several annotators: see the module docstring
    (``combine`` is ``"union"`` or ``"latest"``)."""
    if combine not in COMBINE:
        raise UserInputError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    by_image: dict[int, list[Mark]] = {}
    for m in latest_marks(store, dataset_id, annotator).values():
        if not m.skipped and m.cells:
            by_image.setdefault(m.image, []).append(m)
    out = {}
    for image, ms in sorted(by_image.items()):
        ms.sort(key=lambda m: m.id)
        newest = ms[-1].as_grid()
        if combine == "union":
            for m in ms[:-1]:
                g = m.as_grid()
                newest |= g if g.shape == newest.shape else resample_grid(g, newest.shape)
        out[image] = newest
    return out


def pending_images(store: StoreLike, dataset_id: str, n_images: int,
                   annotator: str) -> list[int]:
    """Indices 0..n_images-1 this annotator has neither marked nor skipped (undone ones count
    as not done), in order: where a session resumes."""
    with _opened(store) as st:
        done = {r[0] for r in st.conn.execute(
            "SELECT DISTINCT image FROM active_marks WHERE dataset = ? AND annotator = ?",
            (dataset_id, annotator))}
    return [i for i in range(int(n_images)) if i not in done]


# ----------------------------------------------------------------------------- masks


def cell_edges(size: int, n: int) -> np.ndarray:
    """The n+1 pixel boundaries of n cells over ``size`` pixels: floor(i * size / n + 1/2)."""
    if n < 1 or n > size:
        raise UserInputError(f"a grid of {n} cells over {size} pixels: need 1 to {size} cells "
                             "(at least one pixel per cell)")
    return (np.arange(n + 1) * size * 2 + n) // (2 * n)


def grid_to_mask(grid: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """A (rows, cols) bool grid as an (H, W) float32 mask: 1 on the pixels of marked cells."""
    h, w = (int(x) for x in image_shape)
    rows, cols = grid.shape
    r_of = np.repeat(np.arange(rows), np.diff(cell_edges(h, rows)))
    c_of = np.repeat(np.arange(cols), np.diff(cell_edges(w, cols)))
    return np.asarray(grid, dtype=bool)[np.ix_(r_of, c_of)].astype(np.float32)


def marks_to_masks(marks: Mapping[int, np.ndarray], image_shape: tuple[int, int],
                   n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask (N, H, W) float32, has_mask (N,) bool) from :func:`load_marks`' grids: each
    marked cell becomes its block of pixels (:func:`cell_edges`); images without a mark get
    an all-zero mask and ``has_mask`` False."""
    h, w = (int(x) for x in image_shape)
    mask = np.zeros((int(n_images), h, w), dtype=np.float32)
    has = np.zeros(int(n_images), dtype=bool)
    for image, grid in marks.items():
        if not 0 <= image < n_images:
            raise UserInputError(f"a mark names image {image}, but the data has {n_images} "
                                 "images: were the marks made on other data?")
        mask[image] = grid_to_mask(np.asarray(grid, dtype=bool), (h, w))
        has[image] = True
    return mask, has


def cell_coverage(mask: np.ndarray, grid: int | tuple[int, int]) -> np.ndarray:
    """(rows, cols) share of each cell that an (H, W) mask covers: the mean of the mask over
    the cell's pixels, the mask clipped to [0, 1]."""
    m = np.clip(np.nan_to_num(np.asarray(mask, dtype=np.float64)), 0.0, 1.0)
    if m.ndim != 2:
        raise UserInputError(f"a mask is (H, W), got shape {m.shape}")
    rows, cols = check_grid(grid)
    er, ec = cell_edges(m.shape[0], rows), cell_edges(m.shape[1], cols)
    sums = np.add.reduceat(np.add.reduceat(m, er[:-1], axis=0), ec[:-1], axis=1)
    return sums / np.outer(np.diff(er), np.diff(ec))


def mask_to_cells(mask: np.ndarray, grid: int | tuple[int, int],
                  threshold: float = COVER_THRESHOLD) -> np.ndarray:
    """The synthetic marker's rule: the cells the mask covers at least ``threshold`` of."""
    return cell_coverage(mask, grid) >= threshold


def synthetic_marks(store: StoreLike, dataset_id: str, masks: np.ndarray,
                    grid: int | tuple[int, int], indices: Iterable[int] | None = None,
                    noise: float = 0.0, seed: int = 0,
                    annotator: str = SYNTHETIC_MARKER) -> int:
    """Mark images as a synthetic annotator would: the cells the true mask (N, H, W) covers
    at least half of (:func:`mask_to_cells`), each flipped with probability ``noise``.

    Recorded in one transaction as synthetic marks (interface ``synthetic-marker/1``, shown
    and answered at the same instant), with an event ``synthetic_marks`` that keeps the
    grid, noise, seed and rule; marking again supersedes the earlier marks. Returns how
    many marks were recorded."""
    m = np.asarray(masks)
    if m.ndim != 3 or m.shape[0] == 0:
        raise UserInputError(f"masks must be (N, H, W) with N >= 1, got shape {m.shape}")
    if not 0.0 <= float(noise) <= 1.0:
        raise UserInputError(f"noise is a flip probability in [0, 1], got {noise}")
    rows, cols = check_grid(grid)
    idx = list(range(m.shape[0])) if indices is None else [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < m.shape[0]]
    if bad:
        raise UserInputError(f"indices {bad[:5]} are outside the {m.shape[0]} masks")
    rng = np.random.default_rng(seed)
    flips = rng.random((len(idx), rows, cols)) < float(noise)
    now = time.time()
    with _opened(store, create=True) as st, st.transaction() as cur:
        for k, i in enumerate(idx):
            cells = mask_to_cells(m[i], (rows, cols)) ^ flips[k]
            _insert(cur, st, dataset_id, i, (rows, cols), cells, annotator, now, now, True,
                    False, SYNTHETIC_INTERFACE, None, None)
        st.log_event("synthetic_marks", annotator, {
            "dataset": dataset_id, "images": len(idx), "grid": [rows, cols],
            "noise": float(noise), "seed": int(seed),
            "rule": f"cell marked when the mask covers at least {COVER_THRESHOLD} of it, "
                    "then flipped with probability noise"}, cur=cur)
    return len(idx)


# ----------------------------------------------------------------------------- statistics


def mark_stats(store: StoreLike) -> dict[str, Any]:
    """Counts of marks for ``feedback stats``: active marks and skips, undone, per annotator
    (with the median seconds per mark of those that record when the image was shown)."""
    every = list_marks(store, include_undone=True)
    active = {m.id for m in list_marks(store)}
    per: dict[str, dict[str, Any]] = {}
    secs: dict[str, list[float]] = {}
    for m in every:
        if m.id not in active:
            continue
        s = per.setdefault(m.annotator, {"marks": 0, "skips": 0, "synthetic": True,
                                         "datasets": []})
        s["skips" if m.skipped else "marks"] += 1
        s["synthetic"] = s["synthetic"] and m.synthetic
        if m.dataset not in s["datasets"]:
            s["datasets"].append(m.dataset)
        if m.seconds is not None and m.seconds >= 0 and not m.synthetic:
            secs.setdefault(m.annotator, []).append(m.seconds)
    for name, s in per.items():
        t = secs.get(name)
        s["median_seconds_per_mark"] = float(np.median(t)) if t else None
    return {"total": sum(s["marks"] for s in per.values()),
            "skipped": sum(s["skips"] for s in per.values()),
            "undone": len(every) - len(active),
            "datasets": sorted({m.dataset for m in every if m.id in active}),
            "by_annotator": dict(sorted(per.items()))}
