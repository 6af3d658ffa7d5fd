"""The connection under a store: an SQLite file (stdlib sqlite3) or a PostgreSQL database
(psycopg 3, imported only when a ``postgresql://`` URL is given).

Both look the same to the store and to the code that reads a store with raw SQL
(``store.conn.execute(sql, params)``): ``?`` placeholders, a cursor with ``fetchone``,
``fetchall``, iteration and ``lastrowid``, ``in_transaction``, ``close``. Where the two
differ, the difference lives here or in :mod:`.schema`, each one said next to its code:

- placeholders: psycopg takes ``%s``; a statement with parameters has its ``?`` turned into
  ``%s`` (and a literal ``%`` doubled). A statement without parameters is sent as written.
- ``lastrowid``: psycopg has none; an ``INSERT INTO`` one of the tables with an ``id``
  gets ``RETURNING id`` and the cursor keeps that id.
- transactions: both run in autocommit mode with explicit ``BEGIN``. A write transaction is
  ``BEGIN IMMEDIATE`` on SQLite (one writer at a time, across processes) and a plain
  ``BEGIN`` (READ COMMITTED) on PostgreSQL, where the store takes row locks where it needs
  them (:mod:`.store`). A bare ``BEGIN`` (a read snapshot, as lineage takes) is
  ``BEGIN ISOLATION LEVEL REPEATABLE READ`` on PostgreSQL: one snapshot for every read, as
  a deferred SQLite transaction gives.
- errors: a psycopg error becomes :class:`DatabaseError` (:class:`ConnectionLost` when the
  connection broke); sqlite3's errors stay as they are.
- a lost connection (PostgreSQL only: a server restarted, a network cut): the next statement
  reconnects, waiting up to :data:`RETRY_SECONDS` with backoff and saying so (``notify``). A
  read outside a transaction is sent again at once; a write transaction is run again whole
  by :meth:`Database.transact`, so each one run that way must be idempotent (the store's
  answers, events and marks carry unique tokens, checked first: a retry after a lost COMMIT
  acknowledgement finds the row and writes nothing twice). A server still away after the
  wait is a :class:`UserInputError` (exit 2): start it and run the command again.

Passwords: a URL's password is used to connect and never shown. ``StoreURL`` is the URL as
printed (password masked) that still connects; PGPASSWORD and ~/.pgpass work as in libpq.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import UserInputError

SQLITE, POSTGRES = "sqlite", "postgresql"
URL_SCHEMES = ("postgresql://", "postgres://")
MASK = "***"
ID_TABLES = ("queries", "answers", "events", "marks")
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.IGNORECASE)
_READ = ("SELECT", "BEGIN", "SHOW")  # statements sent again after a reconnect (no tx open)
RETRY_SECONDS = 30.0  # how long a lost PostgreSQL connection is tried again
LOST = "the connection to the server was lost"
RETRY_TRANSACTIONS = 3  # how often one write transaction is run again after a lost connection


class DatabaseError(Exception):
    """An error from the PostgreSQL server or the connection to it (not the user's to fix)."""


class ConnectionLost(DatabaseError):
    """The connection to the server broke: an open transaction is gone (rolled back, or, when
    it broke during COMMIT, perhaps committed: hence the tokens)."""


def say_on_stderr(message: str) -> None:
    """The default ``Database.notify``: one line on stderr."""
    with contextlib.suppress(OSError, ValueError):
        print(f"rlhf-hgt: {message}", file=sys.stderr, flush=True)


def is_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def mask_url(url: str) -> str:
    """The URL with its password (in the user part or a ``password=`` parameter) masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        cred, host = netloc.rsplit("@", 1)
        if ":" in cred:
            netloc = f"{cred.split(':', 1)[0]}:{MASK}@{host}"
    query = parts.query
    if "password" in query.lower():
        query = urlencode([(k, MASK if k.lower() == "password" else v)
                           for k, v in parse_qsl(query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_secrets(value: Any) -> Any:
    """A copy of a JSON-like value (a config, a command line) with every URL's password
    masked: what a manifest, a report or a card may keep."""
    if isinstance(value, str):
        return mask_url(value) if "://" in value and "@" in value else value
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_secrets(v) for v in value)
    return value


def _unmasked(url: str) -> str:
    """A URL as written in a manifest (password masked) connects without that password, so
    that PGPASSWORD or ~/.pgpass can give it."""
    parts = urlsplit(url)
    if parts.password != MASK:
        return url
    netloc = f"{parts.username}@{parts.netloc.rsplit('@', 1)[1]}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class StoreURL(str):
    """A store's URL as it is shown (its password masked) that still connects: ``str()``,
    printing, JSON and f-strings give the masked text; :attr:`secret` is the URL to connect
    with. Opening a store with its own ``store.path`` therefore works for a URL too."""

    secret: str

    def __new__(cls, url: str) -> StoreURL:
        url = url.secret if isinstance(url, StoreURL) else _unmasked(str(url))
        obj = super().__new__(cls, mask_url(url))
        obj.secret = url
        return obj

    def __reduce__(self) -> tuple:  # a pickle keeps the masked text only
        return (str, (str(self),))

    @property
    def name(self) -> str:
        """The database's name (as Path.name gives a file's)."""
        return urlsplit(self).path.lstrip("/") or "postgres"


# ----------------------------------------------------------------------------- cursors


class _PgCursor:
    """A psycopg cursor that takes ``?`` placeholders and knows the id it inserted."""

    def __init__(self, db: Database):
        self.db = db
        self.cur: Any = None
        self.lastrowid: int | None = None

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> _PgCursor:
        sql, returning = _translate(sql, params)
        self.cur = self.db.run(lambda raw: raw.execute(sql, params or None))
        self.lastrowid = None
        if returning:
            row = self.cur.fetchone()
            self.lastrowid = row[0] if row else None
        return self

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> _PgCursor:
        sql, _ = _translate(sql, [None], ids=False)
        self.db.run(lambda raw: raw.cursor().executemany(sql, list(seq)))
        return self

    def fetchone(self) -> tuple | None:
        return self.db.run(lambda raw: self.cur.fetchone())

    def fetchall(self) -> list[tuple]:
        return self.db.run(lambda raw: self.cur.fetchall())

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())


def _translate(sql: str, params: Sequence[Any] | None, ids: bool = True) -> tuple[str, bool]:
    """SQLite-style SQL as psycopg takes it (see the module docstring); whether an id comes
    back."""
    if params:
        sql = sql.replace("%", "%%").replace("?", "%s")
    m = _INSERT.match(sql) if ids else None
    returning = bool(m and m.group(1).lower() in ID_TABLES and "RETURNING" not in sql.upper())
    return (sql + " RETURNING id" if returning else sql), returning


# ----------------------------------------------------------------------------- connections


class Database:
    """One connection, SQLite or PostgreSQL (``dialect``); used by one thread."""

    def __init__(self, raw: Any, dialect: str, label: str,
                 connect: Callable[[], Any] | None = None):
        self.raw, self.dialect, self.label = raw, dialect, label
        self._connect = connect  # PostgreSQL: a new raw connection (for reconnect)
        self._tx = False  # inside an explicit transaction (BEGIN ... COMMIT/ROLLBACK)
        self._gave_up = False  # the last reconnect ran out of time: the next tries once
        self.notify: Callable[[str], None] = say_on_stderr  # what tells the person
        self.retry_seconds = RETRY_SECONDS

    @property
    def is_postgres(self) -> bool:
        return self.dialect == POSTGRES

    # -- statements

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        if not self.is_postgres:
            return self.raw.execute(sql, params or ())
        word = sql.lstrip()[:8].upper()
        if sql.strip().upper() == "BEGIN":  # a read snapshot (see the module docstring)
            sql = "BEGIN ISOLATION LEVEL REPEATABLE READ"
        in_tx = self._tx
        if not in_tx and self.broken and self._connect is not None:
            self.reconnect(LOST)  # reconnect on the next call
        try:
            cur = _PgCursor(self).execute(sql, params)
        except ConnectionLost:
            if in_tx or self._connect is None or not word.startswith(_READ):
                raise
            self.reconnect(LOST)
            cur = _PgCursor(self).execute(sql, params)
        if word.startswith("BEGIN"):
            self._tx = True
        elif word.startswith(("COMMIT", "ROLLBACK")):
            self._tx = False
        return cur

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        if not self.is_postgres:
            return self.raw.executemany(sql, seq)
        return _PgCursor(self).executemany(sql, seq)

    def cursor(self) -> Any:
        return _PgCursor(self) if self.is_postgres else self.raw.cursor()

    def run(self, call: Any) -> Any:
        """``call(raw connection)`` with psycopg's errors as :class:`DatabaseError`."""
        import psycopg

        try:
            return call(self.raw)
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if self.raw.closed or self.raw.broken:
                self._tx = False
                raise ConnectionLost(f"{self.label}: lost the connection: {text}") from exc
            raise DatabaseError(f"{self.label}: {text}") from exc

    def reconnect(self, why: str) -> None:
        """A new connection after a lost one, tried with backoff for up to
        :attr:`retry_seconds` (once only, when the last wait ran out), telling the person
        through :attr:`notify`; a :class:`UserInputError` when the server stays away."""
        assert self._connect is not None
        with contextlib.suppress(Exception):
            self.raw.close()
        self._tx = False
        wait = 0.0 if self._gave_up else self.retry_seconds
        self.notify(f"{self.label}: {why}; reconnecting (trying for up to {wait:.0f} s)")
        deadline, delay = time.monotonic() + wait, 0.1
        while True:
            try:
                self.raw = self._connect()
                break
            except UserInputError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                self._gave_up = True
                raise UserInputError(
                    f"{self.label}: lost the connection to the server and could not reconnect "
                    f"within {wait:.0f} s ({last}); every answer acknowledged so far is "
                    "stored: start the server and run the command again") from None
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)
        self._gave_up = False
        self.notify(f"{self.label}: reconnected; nothing acknowledged was lost")

    def transact(self, work: Callable[[Any], Any]) -> Any:
        """``work(cursor)`` in one write transaction, committed; on PostgreSQL run again whole
        after a lost connection (at most :data:`RETRY_TRANSACTIONS` times), so ``work`` must
        be idempotent (see the module docstring)."""
        for attempt in range(RETRY_TRANSACTIONS + 1):
            try:
                with self.transaction() as cur:
                    return work(cur)
            except ConnectionLost:
                if self._connect is None or attempt == RETRY_TRANSACTIONS:
                    raise
                self.reconnect(LOST)
        raise AssertionError("unreachable")

    @property
    def in_transaction(self) -> bool:
        if not self.is_postgres:
            return self.raw.in_transaction
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status != TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        """The connection is gone (a PostgreSQL server restarted or unreachable)."""
        return self.is_postgres and bool(self.raw.closed or self.raw.broken)

    # -- transactions

    def begin_write(self) -> None:
        # SQLite: take the write lock now, so two writers never deadlock on an upgrade.
        # PostgreSQL: READ COMMITTED; the store locks the rows it must (FOR UPDATE).
        self.execute("BEGIN ISOLATION LEVEL READ COMMITTED" if self.is_postgres
                     else "BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """One write transaction: committed when the block ends, rolled back on an error."""
        self.begin_write()
        try:
            yield self.cursor()
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self.is_postgres and self.broken:
            self._tx = False
            return  # nothing to roll back on a lost connection: the server dropped it
        self.execute("ROLLBACK")

    # -- the catalogue

    def tables(self) -> set[str]:
        if self.is_postgres:
            sql = ("SELECT table_name FROM information_schema.tables "
                   "WHERE table_schema = current_schema()")
        else:
            sql = "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
        return {r[0] for r in self.execute(sql).fetchall()}

    def columns(self, table: str) -> list[str]:
        if self.is_postgres:
            return [r[0] for r in self.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))]
        return [r[1] for r in self.execute(f"PRAGMA table_info({table})")]

    def close(self) -> None:
        self.raw.close()


def open_sqlite(path: str, timeout: float) -> Database:
    # isolation_level=None: no implicit transactions; the store says BEGIN itself.
    raw = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    return Database(raw, SQLITE, path)


def open_postgres(url: StoreURL, timeout: float) -> Database:
    """Connect to a PostgreSQL store; a problem the user can fix is a :class:`UserInputError`
    that says what to do (and never shows the password)."""
    try:
        import psycopg
    except ImportError:
        raise UserInputError(f"{url}: a PostgreSQL store needs psycopg; install it with "
                             "pip install 'rlhf-hgt[team]' (or psycopg[binary])") from None

    def connect(wait: float = timeout) -> Any:
        try:
            return psycopg.connect(url.secret, autocommit=True,
                                   connect_timeout=max(2, min(int(wait), 30)),
                                   application_name="rlhf-hgt")
        except psycopg.Error as exc:
            raise UserInputError(explain_connect_error(url, exc)) from None

    return Database(connect(), POSTGRES, str(url), connect=lambda: connect(5))


def explain_connect_error(url: StoreURL, exc: Exception) -> str:
    """One message that says what went wrong and what to do, without the password."""
    parts = urlsplit(url)
    host = parts.hostname or os.environ.get("PGHOST") or "localhost"
    port = parts.port or os.environ.get("PGPORT") or 5432
    where = f"{host}:{port}"
    text = str(exc)
    secret = urlsplit(url.secret).password
    if secret:
        text = text.replace(secret, MASK)
    low = text.lower()
    first = text.strip().splitlines()[-1].strip() if text.strip() else type(exc).__name__
    if "FATAL:" in first:  # libpq: "connection to server at ... failed: FATAL:  why"
        first = first.rsplit("FATAL:", 1)[1].strip()
    if "does not exist" in low and "database" in low:
        return (f"{url}: the database {url.name!r} does not exist on {where}; create it "
                f"(createdb -h {host} -p {port} {url.name}) or fix the name in the URL")
    if "no password supplied" in low:  # e.g. a URL read back masked from a run's record
        return (f"{url}: the server at {where} wants a password for this user and none was "
                "given; set PGPASSWORD or put it in ~/.pgpass (never in a URL on the command "
                "line)")
    if "password" in low or "authentication" in low or ("role" in low and "not exist" in low):
        return (f"{url}: the server at {where} refused the login ({first}); check the user "
                "name, and give the password in PGPASSWORD or ~/.pgpass rather than on the "
                "command line")
    if any(s in low for s in ("refused", "could not connect", "timeout", "translate host",
                              "no route", "unreachable", "server closed")):
        return (f"{url}: cannot reach a PostgreSQL server at {where} ({first}); start the "
                "server, or check the host and port in the URL")
    return f"{url}: cannot connect ({first}); check the URL and the server"
