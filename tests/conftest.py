"""Shared test set-up: one torch thread (small CPU work on a shared 2-core machine)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ----------------------------------------------------------------------------- store back ends

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL server per test process (per xdist worker), started the first time
    a test asks for it and stopped at the end. When it cannot start, the tests that need it
    fail (never skip): a team store that is not tested is not promised."""
    from helpers.pg_server import PgServer

    server = PgServer()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a fresh, empty database of its own for one test."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request, tmp_path):
    """Where a new store goes, on each back end: an SQLite path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "s.db"
    return request.getfixturevalue("pg_url")
