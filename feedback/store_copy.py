"""``rlhf-hgt feedback copy SRC DST [--merge]``: a whole store from either back end to either.

What is copied: queries, answers, events, marks, the claims that still hold (a lease not yet
run out) and the settings (meta, but not what describes the destination itself: its app,
schema version and migration times). The source is read in one read transaction (one
snapshot); the destination is written in one transaction: all of it lands or none.

Into an empty destination the rows keep their ids, so a run's lineage (which names answers
by id) reads the copy as it read the original. A destination that holds anything is refused
unless ``merge``: then what is already there is skipped by its unique tokens (queries by
their uid, answers and marks by their token, events by their token or, for an event
without one, by all its fields), new rows get new ids and the references between rows
(an answer's query, an event's answer, an undo's mark) follow them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from .records import StoreError
from .store import PreferenceStore

QUERY_COLS = ("id", "uid", "kind", "prompt", "left_payload", "right_payload", "left_hash",
              "right_hash", "left_source", "right_source", "env_id", "round", "gold", "meta",
              "created_at")
ANSWER_COLS = ("id", "query_id", "annotator", "synthetic", "answer", "shown_at",
               "answered_at", "rationale", "interface", "token")
EVENT_COLS = ("id", "at", "kind", "annotator", "answer_id", "token", "data")
MARK_COLS = ("id", "dataset", "image", "grid_rows", "grid_cols", "kind", "cells", "undoes",
             "annotator", "synthetic", "shown_at", "answered_at", "interface", "image_hash",
             "token")
TABLES = {"queries": QUERY_COLS, "answers": ANSWER_COLS, "events": EVENT_COLS,
          "marks": MARK_COLS}
OWN_META = ("app", "schema_version")  # the destination's own, never copied


@dataclass
class CopySummary:
    source: str
    destination: str
    merged: bool
    copied: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        what = ", ".join(f"{n} {t}" for t, n in self.copied.items())
        lines = [f"copied {self.source} -> {self.destination}: {what}"]
        if self.merged and any(self.skipped.values()):
            lines.append("already there, skipped: " + ", ".join(
                f"{n} {t}" for t, n in self.skipped.items() if n))
        return "\n".join(lines)


def _read(store: PreferenceStore) -> dict[str, list[tuple]]:
    """Every row to copy, from one snapshot of the source."""
    conn = store.conn
    conn.execute("BEGIN")
    try:
        rows = {t: conn.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY id").fetchall()
                for t, cols in TABLES.items()}
        rows["claims"] = conn.execute(
            "SELECT query_id, annotator, expires_at FROM claims WHERE expires_at > ?",
            (time.time(),)).fetchall()
        rows["meta"] = [r for r in conn.execute("SELECT key, value FROM meta").fetchall()
                        if r[0] not in OWN_META and not str(r[0]).startswith("migrated_")]
    finally:
        conn.execute("COMMIT")
    return rows


def copy_store(src: str | os.PathLike, dst: str | os.PathLike,
               merge: bool = False) -> CopySummary:
    """Copy the store at ``src`` into ``dst`` (created when missing); see the module
    docstring. Raises StoreError (nothing written) for a non-empty destination without
    ``merge``."""
    if str(src) == str(dst):
        raise StoreError(f"{src}: the source and the destination are the same store")
    source = PreferenceStore(src, create=False)
    try:
        rows = _read(source)
        dest = PreferenceStore(dst)
        try:
            summary = CopySummary(str(source.path), str(dest.path), merge)
            with dest.transaction() as cur:
                if dest.is_postgres:  # no other writer while we look and write
                    cur.execute("LOCK TABLE queries, answers, events, marks, claims, meta "
                                "IN SHARE ROW EXCLUSIVE MODE")
                held = {t: cur.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                        for t in TABLES}
                if any(held.values()) and not merge:
                    raise StoreError(
                        f"{dest.path}: the destination is not empty ("
                        + ", ".join(f"{n} {t}" for t, n in held.items() if n)
                        + "); give a new store, or --merge to add what it lacks")
                if any(held.values()):
                    _merge(cur, rows, summary)
                else:
                    _bulk(cur, rows, summary, dest.is_postgres)
            return summary
        finally:
            dest.close()
    finally:
        source.close()


def _insert_sql(table: str, cols: tuple[str, ...], conflict: str = "") -> str:
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
            f"({', '.join('?' * len(cols))}){conflict}")


def _bulk(cur: Any, rows: dict[str, list[tuple]], summary: CopySummary,
          postgres: bool) -> None:
    """Into an empty store: every row as it is, ids included."""
    for table, cols in TABLES.items():
        if rows[table]:
            cur.executemany(_insert_sql(table, cols), rows[table])
        summary.copied[table] = len(rows[table])
        if postgres:  # ids given by hand leave the identity's sequence behind: move it on
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)")
    _claims_and_meta(cur, rows, summary, replace=True)


def _claims_and_meta(cur: Any, rows: dict[str, list[tuple]], summary: CopySummary,
                     replace: bool, qmap: dict[int, int] | None = None) -> None:
    claims = [(qmap[q] if qmap else q, a, e) for q, a, e in rows["claims"]]
    if claims:
        cur.executemany(_insert_sql("claims", ("query_id", "annotator", "expires_at"),
                                    " ON CONFLICT DO NOTHING"), claims)
    summary.copied["claims"] = len(claims)
    conflict = (" ON CONFLICT (key) DO UPDATE SET value = excluded.value" if replace
                else " ON CONFLICT DO NOTHING")
    there = set() if replace else {k for (k,) in cur.execute("SELECT key FROM meta").fetchall()}
    if rows["meta"]:
        cur.executemany(_insert_sql("meta", ("key", "value"), conflict), rows["meta"])
    summary.copied["settings"] = sum(k not in there for k, _ in rows["meta"])  # merge: new only


def _merge(cur: Any, rows: dict[str, list[tuple]], summary: CopySummary) -> None:
    """Into a store that holds something: skip what is there, remap the ids of the rest."""
    skipped = dict.fromkeys(TABLES, 0)
    added = dict.fromkeys(TABLES, 0)
    qmap: dict[int, int] = {}
    for row in rows["queries"]:
        hit = cur.execute("SELECT id FROM queries WHERE uid = ?", (row[1],)).fetchone()
        if hit is None:
            cur.execute(_insert_sql("queries", QUERY_COLS[1:]), row[1:])
            hit = cur.execute("SELECT id FROM queries WHERE uid = ?", (row[1],)).fetchone()
            added["queries"] += 1
        else:
            skipped["queries"] += 1
        qmap[row[0]] = hit[0]

    amap: dict[int, int] = {}
    for row in rows["answers"]:
        hit = cur.execute("SELECT id FROM answers WHERE token = ?", (row[-1],)).fetchone()
        if hit is not None:
            amap[row[0]] = hit[0]
            skipped["answers"] += 1
            continue
        cur.execute(_insert_sql("answers", ANSWER_COLS[1:]), (qmap[row[1]], *row[2:]))
        amap[row[0]] = cur.lastrowid
        added["answers"] += 1

    seen = {tuple(r) for r in cur.execute(
        "SELECT at, kind, annotator, answer_id, data FROM events WHERE token IS NULL")}
    for _, at, kind, annotator, answer_id, token, data in rows["events"]:
        new_answer = amap.get(answer_id) if answer_id is not None else None
        if token is not None:
            there = cur.execute("SELECT 1 FROM events WHERE token = ?", (token,)).fetchone()
        else:
            there = (at, kind, annotator, new_answer, data) in seen
        if there:
            skipped["events"] += 1
            continue
        cur.execute(_insert_sql("events", EVENT_COLS[1:]),
                    (at, kind, annotator, new_answer, token, data))
        added["events"] += 1

    mmap: dict[int, int] = {}
    for row in rows["marks"]:
        hit = cur.execute("SELECT id FROM marks WHERE token = ?", (row[-1],)).fetchone()
        if hit is not None:
            mmap[row[0]] = hit[0]
            skipped["marks"] += 1
            continue
        undoes = row[7]
        values = (*row[1:7], mmap.get(undoes) if undoes is not None else None, *row[8:])
        cur.execute(_insert_sql("marks", MARK_COLS[1:]), values)
        mmap[row[0]] = cur.lastrowid
        added["marks"] += 1
    summary.copied.update(added)
    summary.skipped.update(skipped)
    _claims_and_meta(cur, rows, summary, replace=False, qmap=qmap)
