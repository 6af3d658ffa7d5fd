"""The preference store: one embedded SQLite file (WAL mode), or a PostgreSQL database for a
team (a ``postgresql://user@host:port/db`` URL); append-only, schema-versioned.

What it holds
- ``queries``: a pair to compare. Either text (a prompt and two responses) or two trajectory
  segments (compressed numpy arrays: observations, actions, the hidden true rewards and,
  optionally, rgb frames). Each side carries a content hash and the id of the policy or
  model that produced it.
- ``answers``: left, right, tie or skip, with the annotator, whether the annotator is a
  synthetic teacher, when the pair was shown and answered, an optional rationale and the
  interface version. Answers are never deleted or changed.
- ``events``: undo (supersedes one answer), session start/stop, imports, notes, and the
  other fields an imported line carried with its answer (``fields``, tied to the answer).
- ``claims``: short leases so that two people labelling at once are not shown the same
  pair. A claim is coordination, not a record: it may expire or be released.
- ``marks`` (schema 2): where a person says the evidence is in one image of a data set, as
  the marked cells of a coarse grid, or a skip, with the provenance of an answer; an undo is
  a row of kind ``undo`` that names the row it supersedes (:mod:`.marks` reads and writes
  them). A store of schema 1 gains the table when it is opened.

Concurrency: every write is one transaction. SQLite: ``BEGIN IMMEDIATE`` serialises writers
across processes and WAL lets readers go on; ``synchronous=FULL`` makes an acknowledged
answer survive a crash of the process (and of the machine). PostgreSQL: an answer locks its
query's row (``FOR UPDATE``), so two annotators never both fill its last place, and a claim
skips rows another annotator is claiming (``FOR UPDATE SKIP LOCKED``); a commit is durable
when it returns. Each answer carries a unique token, so a retry after a crash (or a lost
connection) never duplicates it. Answers, events and marks cannot be changed or removed:
triggers in the database refuse it (:mod:`.schema`). :mod:`.db` holds the two connections.

This module imports nothing of ours and no torch: the store knows no trainer.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import schema
from .db import Database, DatabaseError, StoreURL, is_url, open_postgres, open_sqlite
from .records import (
    Answer,
    Query,
    StoreError,
    TextPair,
    arrays_hash,
    content_hash,
    decode_arrays,
    encode_arrays,
    query_uid,
)
from .sqlite_files import is_sqlite

SCHEMA_VERSION = schema.SCHEMA_VERSION  # 2: marks; 3: append-only triggers (see .schema)
APP_ID = schema.APP_ID
DEFAULT_STORE = Path("feedback") / "preferences.db"
ANSWERS = ("left", "right", "tie", "skip")
KINDS = ("text", "segment")
CLAIM_SECONDS = 15 * 60.0
RESCAN_SECONDS = 2.0  # PostgreSQL claims: how stale the search floor may get (_pg_next)
REASON_KEYS = {"features", "highlights"}  # what a reasons event may carry (record_reasons)

_SCHEMA = schema.TABLES  # the tables of schema 1 (tests build old stores from it)


# a claim taken or renewed (the same words on both: SQLite 3.24+ and PostgreSQL upsert)
_CLAIM = ("INSERT INTO claims VALUES (?, ?, ?) ON CONFLICT (query_id, annotator) "
          "DO UPDATE SET expires_at = excluded.expires_at")

# ----------------------------------------------------------------------------- the store


def _check_answer(answer: str) -> str:
    if answer not in ANSWERS:
        raise StoreError(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
    return answer


class PreferenceStore:
    """A handle on one store file. Cheap to open; safe to use from many processes at once.

    One handle belongs to one thread. Open a new handle in each process.
    """

    def __init__(self, path: str | os.PathLike, create: bool = True, timeout: float = 60.0):
        if is_url(path):
            self._open_postgres(StoreURL(str(path) if not isinstance(path, StoreURL)
                                         else path), create, timeout)
            return
        self.path: Path | StoreURL = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a folder; give the path of a store file, "
                             f"e.g. {self.path / 'preferences.db'}")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if not exists and not create:
            raise StoreError(f"{self.path}: no such store; create one with "
                             "`rlhf-hgt feedback import` or give the right path")
        if not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not is_sqlite(self.path):
            raise StoreError(f"{self.path}: not a preference store (not an SQLite file); "
                             "give the path of a store, or a new path to create one")
        try:
            self.conn: Database = open_sqlite(str(self.path), timeout)
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if not exists:
                self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._init_schema(exists, create, "an SQLite file")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot be opened as a preference store ({exc})") \
                from None

    def _open_postgres(self, url: StoreURL, create: bool, timeout: float) -> None:
        self.path = url  # prints with the password masked; reopens with it
        self._floors: dict[tuple, tuple[int, float]] = {}
        self.conn = open_postgres(url, timeout)
        try:
            self._init_schema(True, create, "a PostgreSQL database")
        except DatabaseError as exc:
            self.conn.close()
            raise StoreError(f"{exc}: the database cannot be used as a preference store; "
                             "check that this user may create tables in it") from None
        except BaseException:
            self.conn.close()
            raise

    @property
    def is_postgres(self) -> bool:
        return self.conn.is_postgres

    # -- schema

    def _init_schema(self, exists: bool, create: bool, what: str) -> None:
        tables = self.conn.tables()
        if exists and tables and "meta" not in tables:
            raise StoreError(f"{self.path}: {what}, but not a preference store "
                             "(no meta table); give the path of a store")
        if "meta" in tables:
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("app") != APP_ID:
                raise StoreError(f"{self.path}: {what} made by something else "
                                 f"(app={meta.get('app')!r}); give the path of a store")
            version = int(meta.get("schema_version", "0"))
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: store schema version {version} is newer than this "
                    f"rlhf_hgt understands ({SCHEMA_VERSION}); upgrade rlhf_hgt")
            if version < SCHEMA_VERSION:
                self._migrate()
            return
        if not create:  # an empty database (a file is refused before it is opened)
            raise StoreError(f"{self.path}: holds no store yet; create one with "
                             "`rlhf-hgt feedback import` or give the right URL")
        self._migrate()

    def _migrate(self) -> None:
        """Create the store or bring one of an older schema up to this one, in one
        transaction (two processes opening the same store at once do it once). Only adds:
        nothing is changed or removed, so every answer stays as it was."""
        with self.transaction() as cur:
            if self.is_postgres:  # DDL does not wait on row locks: one process at a time
                cur.execute("SELECT pg_advisory_xact_lock(7291001)")
            row = None
            if "meta" in self.conn.tables():
                row = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                                  ).fetchone()
            version = int(row[0]) if row else 0
            if version < SCHEMA_VERSION:
                schema.upgrade(cur, self.conn.dialect, version)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions

    def transaction(self) -> Any:
        """One write transaction: everything inside lands together or not at all (run once;
        :meth:`Database.transact` runs one again after a lost connection)."""
        return self.conn.transaction()

    # -- settings

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        self.conn.transact(lambda cur: cur.execute(
            f"INSERT INTO meta VALUES (?, ?) {schema.UPSERT}", (key, value)))

    @property
    def annotators_per_query(self) -> int:
        return int(self.get_setting("annotators_per_query", "1") or 1)

    # -- adding queries

    def add_text_queries(self, pairs: Iterable[TextPair], cur: Any | None = None,
                         round: int | None = None) -> list[int]:
        """Add pending text comparisons; a pair already in the store is reused, not duplicated."""
        rows = []
        for p in pairs:
            lh, rh = content_hash(p.a), content_hash(p.b)
            uid = query_uid("text", p.prompt, lh, rh)
            rows.append((uid, "text", p.prompt, p.a.encode("utf-8"), p.b.encode("utf-8"), lh, rh,
                         p.source_a, p.source_b, None, round, p.gold, json.dumps(p.meta)))
        return self._insert_queries(rows, cur)

    def add_segment_query(self, left: Mapping[str, np.ndarray], right: Mapping[str, np.ndarray],
                          env_id: str | None = None, left_source: str | None = None,
                          right_source: str | None = None, round: int | None = None,
                          meta: dict | None = None, cur: Any | None = None) -> int:
        """Add a pair of trajectory segments (each a dict of arrays, e.g. obs, actions,
        true_rewards, frames)."""
        return self.add_segment_queries([(left, right)], env_id, left_source, right_source,
                                        round, meta, cur)[0]

    def add_segment_queries(self, pairs: Iterable[tuple[Mapping, Mapping]],
                            env_id: str | None = None, left_source: str | None = None,
                            right_source: str | None = None, round: int | None = None,
                            meta: dict | None = None,
                            cur: Any | None = None) -> list[int]:
        rows = []
        for left, right in pairs:
            lb, rb = encode_arrays(left), encode_arrays(right)
            lh, rh = arrays_hash(left), arrays_hash(right)
            uid = query_uid("segment", env_id or "", lh, rh)
            rows.append((uid, "segment", None, lb, rb, lh, rh, left_source, right_source,
                         env_id, round, None, json.dumps(meta or {})))
        return self._insert_queries(rows, cur)

    def _insert_queries(self, rows: list[tuple], cur: Any | None) -> list[int]:
        def run(c: Any) -> list[int]:
            ids = []
            now = time.time()
            for row in rows:
                c.execute("INSERT INTO queries (uid, kind, prompt, left_payload, "
                          "right_payload, left_hash, right_hash, left_source, right_source, "
                          "env_id, round, gold, meta, created_at) "
                          "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                          (*row, now))
                ids.append(c.execute("SELECT id FROM queries WHERE uid = ?",
                                     (row[0],)).fetchone()[0])
            return ids

        return run(cur) if cur is not None else self.conn.transact(run)

    # -- reading queries

    def get_query(self, query_id: int) -> Query:
        row = self.conn.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no query with id {query_id}")
        return self._row_to_query(row)

    def queries(self, kind: str | None = None, since_id: int = 0) -> Iterator[Query]:
        sql = "SELECT * FROM queries WHERE id > ?"
        args: list[Any] = [since_id]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        for row in self.conn.execute(sql + " ORDER BY id", args).fetchall():
            yield self._row_to_query(row)

    def _row_to_query(self, row: tuple) -> Query:
        (qid, uid, kind, prompt, lp, rp, lh, rh, ls, rs, env_id, rnd, gold, meta, created) = row
        if kind == "text":
            left, right = lp.decode("utf-8"), rp.decode("utf-8")
        else:
            left, right = decode_arrays(lp), decode_arrays(rp)
        return Query(qid, uid, kind, prompt, left, right, lh, rh, ls, rs, env_id, rnd, gold,
                     json.loads(meta), created)

    def query_ids(self, round: int | None = None, source: str | None = None) -> list[int]:
        """Ids of queries of one round and/or produced by one policy/model (either side)."""
        sql, args = "SELECT id FROM queries WHERE 1=1", []
        if round is not None:
            sql += " AND round = ?"
            args.append(round)
        if source is not None:
            sql += " AND (left_source = ? OR right_source = ?)"
            args += [source, source]
        return [r[0] for r in self.conn.execute(sql + " ORDER BY id", args)]

    def query_kinds(self) -> list[tuple[int, str, str | None]]:
        """(id, kind, gold answer or None) of every query, in id order; no payload is read."""
        return self.conn.execute("SELECT id, kind, gold FROM queries ORDER BY id").fetchall()

    def count_queries(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM queries").fetchone()[0]

    # -- pending work and claims

    def pending_ids(self, annotator: str, per_query: int | None = None,
                    kind: str | None = None, among: Iterable[int] | None = None) -> list[int]:
        """Queries this annotator has not answered and that still need answers, oldest first;
        only those in ``among`` when given (e.g. one round's queries in a shared store).

        Claimed by someone else (a live lease) counts as taken."""
        sql, args = self._pending_sql(annotator, per_query or self.annotators_per_query, kind)
        ids = [r[0] for r in self.conn.execute(sql + " ORDER BY q.id", args)]
        if among is not None:
            wanted = set(among)
            ids = [i for i in ids if i in wanted]
        return ids

    @staticmethod
    def _pending_sql(annotator: str, need: int, kind: str | None) -> tuple[str, list[Any]]:
        sql = """
            SELECT q.id FROM queries q
            WHERE NOT EXISTS (SELECT 1 FROM active_answers a
                              WHERE a.query_id = q.id AND a.annotator = ?)
              AND (SELECT COUNT(*) FROM active_answers a WHERE a.query_id = q.id)
                + (SELECT COUNT(*) FROM claims c WHERE c.query_id = q.id
                   AND c.annotator != ? AND c.expires_at > ?) < ?
        """
        args: list[Any] = [annotator, annotator, time.time(), need]
        if kind:
            sql += " AND q.kind = ?"
            args.append(kind)
        return sql, args

    def count_pending(self, annotator: str, per_query: int | None = None) -> int:
        return len(self.pending_ids(annotator, per_query))

    def claim_next(self, annotator: str, per_query: int | None = None,
                   lease_seconds: float = CLAIM_SECONDS, exclude: Iterable[int] = (),
                   kind: str | None = None) -> int | None:
        """Take a lease on the next pending query for this annotator (or None when done)."""
        excluded = set(exclude)

        def take(cur: Any) -> int | None:  # a claim again after a lost connection is harmless
            if self.is_postgres:
                qid = self._pg_next(cur, annotator, per_query or self.annotators_per_query,
                                    kind, excluded)
                if qid is not None:
                    cur.execute(_CLAIM, (qid, annotator, time.time() + lease_seconds))
                return qid
            # SQLite: BEGIN IMMEDIATE made this the only writer; the first pending is ours
            for qid in self.pending_ids(annotator, per_query, kind):
                if qid in excluded:
                    continue
                cur.execute(_CLAIM, (qid, annotator, time.time() + lease_seconds))
                return qid
            return None

        return self.conn.transact(take)

    def _pg_next(self, cur: Any, annotator: str, need: int, kind: str | None,
                 excluded: set[int]) -> int | None:
        """PostgreSQL: the next pending query, its row locked. SKIP LOCKED passes over a
        query another annotator is claiming at this moment; once locked, the query is asked
        again (READ COMMITTED: a new statement sees a claim committed while we looked).

        The search starts at the query this handle claimed last (a floor), so it does not
        walk every answered query each time (with 15,000 answered that walk took 37 ms).
        A query below the floor that becomes pending again (an undo, a claim given back)
        is found by a search from the start: when nothing lies above the floor, and at
        least every :data:`RESCAN_SECONDS`."""
        sql, args = self._pending_sql(annotator, need, kind)
        key = (annotator, need, kind)
        floor, since = self._floors.get(key, (0, 0.0))
        if time.monotonic() - since > RESCAN_SECONDS:
            floor, since = 0, time.monotonic()
        while True:
            row = cur.execute(sql + " AND q.id >= ? AND NOT (q.id = ANY(?)) ORDER BY q.id "
                              "LIMIT 1 FOR UPDATE OF q SKIP LOCKED",
                              [*args, floor, sorted(excluded)]).fetchone()
            if row is None and floor > 0:
                floor, since = 0, time.monotonic()
                continue
            if row is None:
                return None
            if cur.execute(sql + " AND q.id = ?", [*args, row[0]]).fetchone() is not None:
                self._floors[key] = (int(row[0]), since)
                return int(row[0])
            excluded.add(row[0])

    def unanswered_ids(self, per_query: int | None = None) -> list[int]:
        """Queries with fewer active answers than wanted, claimed or not."""
        need = per_query or self.annotators_per_query
        return [r[0] for r in self.conn.execute(
            "SELECT q.id FROM queries q WHERE (SELECT COUNT(*) FROM active_answers a "
            "WHERE a.query_id = q.id) < ? ORDER BY q.id", (need,))]

    def claim(self, query_id: int, annotator: str,
              lease_seconds: float = CLAIM_SECONDS) -> None:
        """Take (or renew) a lease on one query, e.g. one shown again after an undo."""
        self.conn.transact(lambda cur: cur.execute(
            _CLAIM, (query_id, annotator, time.time() + lease_seconds)))

    def release_claims(self, annotator: str, query_ids: Iterable[int] | None = None) -> None:
        if query_ids is None:
            self.conn.transact(lambda cur: cur.execute(
                "DELETE FROM claims WHERE annotator = ?", (annotator,)))
            return
        rows = [(annotator, q) for q in query_ids]
        self.conn.transact(lambda cur: cur.executemany(
            "DELETE FROM claims WHERE annotator = ? AND query_id = ?", rows))

    # -- answers

    def record_answer(self, query_id: int, answer: str, annotator: str, *,
                      synthetic: bool = False, shown_at: float | None = None,
                      answered_at: float | None = None, rationale: str | None = None,
                      interface: str = "api/1", token: str | None = None,
                      per_query: int | None = None, enforce_quota: bool = True) -> int | None:
        """Save one answer, durably, and return its id.

        Returns None (and writes nothing) when the query already has all the answers it needs
        from others, or this annotator already answered it. A repeated ``token`` returns the
        id of the answer saved the first time."""
        _check_answer(answer)
        need = per_query or self.annotators_per_query if enforce_quota else 0
        token = token or uuid.uuid4().hex  # chosen once: a retry finds the answer by it
        return self.conn.transact(lambda cur: self._insert_answer(
            cur, query_id, answer, annotator, synthetic, shown_at, answered_at, rationale,
            interface, token, need))

    def record_answers(self, answers: Iterable[tuple[int, str]], annotator: str, *,
                       synthetic: bool = False, interface: str = "api/1",
                       per_query: int | None = None,
                       seconds: Sequence[float] | None = None) -> list[int | None]:
        """Save many ``(query_id, answer)`` answers of one annotator in one transaction, each
        with the checks of :meth:`record_answer` (None where the query needs no more answers
        or this annotator already answered it); all or none are written. ``seconds`` (one
        per answer) are response times: each answer is stored as shown that long before now
        (a synthetic teacher's simulated times); without them shown and answered are now."""
        items = list(answers)
        for _, answer in items:
            _check_answer(answer)
        if seconds is not None and len(seconds) != len(items):
            raise ValueError(f"seconds: {len(seconds)} times for {len(items)} answers")
        need = per_query or self.annotators_per_query
        now = time.time()
        shown = [now - float(t) for t in seconds] if seconds is not None else [now] * len(items)
        tokens = [uuid.uuid4().hex for _ in items]  # chosen once: a retry writes none twice
        return self.conn.transact(lambda cur: [
            self._insert_answer(cur, qid, answer, annotator, synthetic, at, now, None,
                                interface, token, need)
            for (qid, answer), at, token in zip(items, shown, tokens, strict=True)])

    def _insert_answer(self, cur: Any, query_id: int, answer: str, annotator: str,
                       synthetic: bool, shown_at: float | None, answered_at: float | None,
                       rationale: str | None, interface: str, token: str,
                       need: int) -> int | None:
        """One answer inside an open transaction; ``need`` 0 skips the quota check."""
        row = cur.execute("SELECT id FROM answers WHERE token = ?", (token,)).fetchone()
        if row:
            return row[0]
        # PostgreSQL: lock the query's row, so the count below holds until this commits
        # (SQLite's BEGIN IMMEDIATE already made this the only writer)
        lock = " FOR UPDATE" if self.is_postgres else ""
        if cur.execute(f"SELECT 1 FROM queries WHERE id = ?{lock}",
                       (query_id,)).fetchone() is None:
            raise StoreError(f"{self.path}: no query with id {query_id}")
        if need:
            mine = cur.execute("SELECT COUNT(*) FROM active_answers WHERE query_id = ? "
                               "AND annotator = ?", (query_id, annotator)).fetchone()[0]
            total = cur.execute("SELECT COUNT(*) FROM active_answers WHERE query_id = ?",
                                (query_id,)).fetchone()[0]
            if mine or total >= need:
                return None
        cur.execute("INSERT INTO answers (query_id, annotator, synthetic, answer, shown_at, "
                    "answered_at, rationale, interface, token) VALUES (?,?,?,?,?,?,?,?,?)",
                    (query_id, annotator, int(synthetic), answer, shown_at,
                     answered_at if answered_at is not None else time.time(),
                     rationale, interface, token))
        answer_id = cur.lastrowid
        cur.execute("DELETE FROM claims WHERE query_id = ? AND annotator = ?",
                    (query_id, annotator))
        return answer_id

    def undo(self, answer_id: int, annotator: str | None = None, reason: str = "") -> None:
        """Supersede an answer with an undo event (nothing is deleted)."""
        token = self._event_token(None)

        def write(cur: Any) -> None:
            if cur.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone() is None:
                raise StoreError(f"{self.path}: no answer with id {answer_id}")
            cur.execute("INSERT INTO events (at, kind, annotator, answer_id, token, data) "
                        "VALUES (?, 'undo', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (time.time(), annotator, answer_id, token,
                         json.dumps({"reason": reason})))

        self.conn.transact(write)

    def answers(self, include_undone: bool = False, kind: str | None = None) -> list[Answer]:
        table = "answers" if include_undone else "active_answers"
        sql = (f"SELECT a.id, a.query_id, a.annotator, a.synthetic, a.answer, a.shown_at, "
               f"a.answered_at, a.rationale, a.interface FROM {table} a")
        args: list[Any] = []
        if kind:
            sql += " JOIN queries q ON q.id = a.query_id WHERE q.kind = ?"
            args.append(kind)
        return [Answer(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8])
                for r in self.conn.execute(sql + " ORDER BY a.id", args)]

    def labelled(self, kind: str | None = None,
                 include_skips: bool = False) -> Iterator[tuple[Query, Answer]]:
        """Every active answer with its query, oldest first (what training reads)."""
        cache: dict[int, Query] = {}
        for ans in self.answers(kind=kind):
            if ans.answer == "skip" and not include_skips:
                continue
            if ans.query_id not in cache:
                cache[ans.query_id] = self.get_query(ans.query_id)
            yield cache[ans.query_id], ans

    # -- events

    def log_event(self, kind: str, annotator: str | None = None, data: dict | None = None,
                  token: str | None = None, cur: Any | None = None,
                  answer_id: int | None = None) -> None:
        """Append an event; ``answer_id`` ties it to one answer (e.g. the fields an imported
        line carried with that answer). A repeated ``token`` adds nothing."""
        args = (time.time(), kind, annotator, answer_id, self._event_token(token),
                json.dumps(data or {}))
        sql = ("INSERT INTO events (at, kind, annotator, answer_id, token, data) "
               "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING")
        if cur is not None:
            cur.execute(sql, args)
            return
        self.conn.transact(lambda c: c.execute(sql, args))

    def _event_token(self, token: str | None) -> str | None:
        """An event's token; on PostgreSQL every event gets one, so that a transaction run
        again after a lost connection adds it once (SQLite's events stay as they were)."""
        return token or (uuid.uuid4().hex if self.is_postgres else None)

    def record_reasons(self, answer_id: int, reasons: dict, annotator: str | None = None,
                       token: str | None = None) -> None:
        """Why an answer was given, stored with it as a ``reasons`` event (append-only, like
        the answer): ``{"features": [i, ...]}`` for a trajectory-segment query (the
        observation features that decided), ``{"highlights": {"left": [[start, end], ...],
        "right": [...]}}`` for a text query (character spans of the left and right response
        that decided). A later ``reasons`` event of the same answer replaces an earlier one
        when read back (:meth:`reasons`); an undo of the answer drops them with it."""
        if not isinstance(reasons, dict) or not set(reasons) <= REASON_KEYS:
            raise ValueError(f"reasons must be a dict with keys among {sorted(REASON_KEYS)}, "
                             f"got {reasons!r}")
        token = self._event_token(token)

        def write(cur: Any) -> None:
            if cur.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone() is None:
                raise StoreError(f"{self.path}: no answer with id {answer_id}")
            self.log_event("reasons", annotator, reasons, token=token, cur=cur,
                           answer_id=answer_id)

        self.conn.transact(write)

    def reasons(self) -> dict[int, dict]:
        """The latest reasons of every active answer that has some: ``{answer_id: reasons}``."""
        rows = self.conn.execute(
            "SELECT e.answer_id, e.data FROM events e JOIN active_answers a ON a.id = "
            "e.answer_id WHERE e.kind = 'reasons' ORDER BY e.id")
        return {aid: json.loads(data) for aid, data in rows}

    def events(self, kind: str | None = None) -> list[dict]:
        sql = "SELECT id, at, kind, annotator, answer_id, data FROM events"
        args: list[Any] = []
        if kind:
            sql += " WHERE kind = ?"
            args.append(kind)
        return [{"id": r[0], "at": r[1], "kind": r[2], "annotator": r[3], "answer_id": r[4],
                 "data": json.loads(r[5])} for r in self.conn.execute(sql + " ORDER BY id", args)]

    def has_event_token(self, token: str) -> bool:
        return self.conn.execute("SELECT 1 FROM events WHERE token = ?",
                                 (token,)).fetchone() is not None

    def flush(self) -> None:
        """Write the WAL into the main file, so the file alone (its hash, a copy) holds every
        answer recorded so far. (PostgreSQL: nothing to do, a commit is in the database.)"""
        if not self.is_postgres:
            self.conn.execute("PRAGMA wal_checkpoint(FULL)")

    def integrity_check(self) -> str:
        """SQLite's integrity check; "ok" on PostgreSQL, whose server checks its own pages."""
        if self.is_postgres:
            return "ok"
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]


# ----------------------------------------------------------------------------- helpers


def open_store(path: str | os.PathLike, create: bool = True) -> PreferenceStore:
    return PreferenceStore(path, create=create)
