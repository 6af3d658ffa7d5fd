"""Looking at an SQLite store file from outside without breaking the connections to it.

POSIX file locks belong to a process, and closing *any* descriptor of a file drops every
lock the process holds on it. A plain ``open(store)`` (to peek at its header or hash its
bytes) in a process that also has the store open makes SQLite's locks vanish: another
process then believes it is the last user, removes the write-ahead log, and this process's
connections go on reading a log that no longer exists, blind to every later answer. SQLite
guards its own descriptors against this, so here every look goes through SQLite itself.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

HEADER_BYTES = 100  # an SQLite file is at least its 100-byte header


def is_sqlite(path: str | os.PathLike) -> bool:
    """True when ``path`` is an SQLite database (checked by SQLite, read-only)."""
    try:
        if os.stat(path).st_size < HEADER_BYTES:
            return False
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except (OSError, sqlite3.Error):
        return False
    try:
        conn.execute("PRAGMA schema_version").fetchone()
        return True
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def sqlite_sha256(path: str | os.PathLike) -> str:
    """sha256 of the database's content as SQLite reads it (its pages, the write-ahead log
    included), so it covers every committed answer without a checkpoint first."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        h = hashlib.sha256()
        if hasattr(conn, "serialize"):  # Python 3.11+
            h.update(conn.serialize())
        else:
            for line in conn.iterdump():
                h.update(line.encode("utf-8") + b"\n")
        return h.hexdigest()
    finally:
        conn.close()
