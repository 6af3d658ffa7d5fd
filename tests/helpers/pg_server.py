"""A throw-away PostgreSQL server for tests and benchmarks: ``initdb`` into a temporary
folder, ``pg_ctl start`` on 127.0.0.1 and a free port, stopped with :meth:`PgServer.stop`.

The server refuses to run as root, so as root it runs as the ``postgres`` user (the data
folder is handed to that user). Local connections are trusted, except for the role
``secret_user`` (password ``PASSWORD``), which must give its password: the tests of
authentication and of password masking use it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

BIN = Path(os.environ.get("RLHF_HGT_PG_BIN", "/usr/lib/postgresql/15/bin"))
SECRET_USER = "secret_user"
PASSWORD = "s3cr3t-Pa55"  # noqa: S105 (a test server's password, on 127.0.0.1 only)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One server; :meth:`new_database` gives each test a database of its own."""

    def __init__(self, fsync: bool = False):
        if not (BIN / "initdb").exists():
            raise RuntimeError(f"no PostgreSQL server at {BIN} (install postgresql-15: "
                               "bash scripts/test.sh does it with apt-get)")
        self.root = Path(tempfile.mkdtemp(prefix="rlhf_hgt_pg_"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # postgres refuses root: run it as the postgres user
            self.as_user = ["runuser", "-u", "postgres", "--"]
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres")
        user = "postgres" if self.as_user else os.environ.get("USER", "postgres")
        self.user = user
        self._run([str(BIN / "initdb"), "-D", str(self.data), "-U", user, "-A", "trust",
                   "-E", "UTF8", "--no-instructions"])
        hba = (f"host all {SECRET_USER} 127.0.0.1/32 scram-sha-256\n"
               "host all all 127.0.0.1/32 trust\nlocal all all trust\n")
        self._write(self.data / "pg_hba.conf", hba)
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.root} -c max_connections=200 "
                f"-c fsync={'on' if fsync else 'off'} -c shared_buffers=64MB")
        self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                   "-o", opts, "-w", "-t", "60", "start"])
        self.admin_url = f"postgresql://{user}@127.0.0.1:{self.port}/postgres"
        self.sql(f"CREATE ROLE {SECRET_USER} LOGIN PASSWORD '{PASSWORD}'")

    def _run(self, cmd: list[str]) -> None:
        res = subprocess.run(self.as_user + cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr or res.stdout}\n{tail}")

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self.as_user:
            shutil.chown(path, "postgres")

    def sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)

    def url(self, db: str, user: str | None = None, password: str | None = None) -> str:
        cred = user or self.user
        if password is not None:
            cred += f":{password}"
        return f"postgresql://{cred}@127.0.0.1:{self.port}/{db}"

    def new_database(self, owner: str | None = None) -> str:
        """A fresh, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.sql(f"CREATE DATABASE {name}" + (f" OWNER {owner}" if owner else ""))
        return self.url(name)

    def restart(self) -> None:
        # -l: the restarted server logs to the file, not into this process's pipe (which
        # would keep _run waiting for an end of output that never comes)
        self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                   "-m", "fast", "-w", "restart"])

    def stop(self) -> None:
        try:
            self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                       "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
