"""What the preference store holds, as Python records, and how payloads become bytes: the
query and answer records, numpy segments as compressed .npz (never pickled), and the content
hashes that identify a pair. No SQL here (that is :mod:`rlhf_hgt.feedback.store`)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UserInputError


class StoreError(UserInputError):
    """A store that cannot be used as asked; the message says why and how to fix it."""


# ----------------------------------------------------------------------------- payloads


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Numpy arrays as compressed .npz bytes (no pickles: object arrays are refused)."""
    buf = io.BytesIO()
    clean = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise StoreError(f"segment field {name!r} is not numeric; store numbers only")
        clean[name] = arr
    np.savez_compressed(buf, **clean)
    return buf.getvalue()


def decode_arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def content_hash(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- records


@dataclass
class Query:
    """One pair to compare, as read back from the store."""

    id: int
    uid: str
    kind: str
    prompt: str | None
    left: Any  # str for text, dict of arrays for segments
    right: Any
    left_hash: str
    right_hash: str
    left_source: str | None
    right_source: str | None
    env_id: str | None
    round: int | None
    gold: str | None
    meta: dict = field(default_factory=dict)
    created_at: float = 0.0


@dataclass
class Answer:
    id: int
    query_id: int
    annotator: str
    synthetic: bool
    answer: str
    shown_at: float | None
    answered_at: float
    rationale: str | None
    interface: str


@dataclass
class Mark:
    """A person's (or a synthetic marker's) mark on one image of a data set, read back from
    the store: the marked cells of a ``grid`` (rows, cols), or a skip."""

    id: int
    dataset: str
    image: int
    grid: tuple[int, int]
    cells: tuple[tuple[int, int], ...]  # (row, col), 0-based, sorted; () for a skip
    skipped: bool
    annotator: str
    synthetic: bool
    shown_at: float | None
    answered_at: float
    interface: str
    image_hash: str | None = None

    @property
    def seconds(self) -> float | None:
        """Time taken: from when the image was shown to when the mark was given."""
        return None if self.shown_at is None else self.answered_at - self.shown_at

    def as_grid(self) -> np.ndarray:
        """The marked cells as a (rows, cols) bool array."""
        grid = np.zeros(self.grid, dtype=bool)
        for r, c in self.cells:
            grid[r, c] = True
        return grid


@dataclass
class TextPair:
    """A pending text comparison to add (prompt with responses a and b)."""

    prompt: str
    a: str
    b: str
    source_a: str | None = None
    source_b: str | None = None
    gold: str | None = None
    meta: dict = field(default_factory=dict)


def arrays_hash(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(np.asarray(arrays[name]))
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def query_uid(kind: str, context: str, left_hash: str, right_hash: str) -> str:
    """The same two sides in either order are the same query."""
    a, b = sorted((left_hash, right_hash))
    return content_hash(f"{kind}\x00{context}\x00{a}\x00{b}")
