"""Lineage and the report of a run whose store is a PostgreSQL team store: the answers are
listed with their hashes, ``--verify`` checks them (and names an answer altered behind the
store's back), the report reads the annotators from the server; the manifest's URL is masked,
so the password comes from PGPASSWORD (as libpq does) and a missing one is said in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
from helpers.pg_server import PASSWORD, SECRET_USER

from rlhf_hgt.feedback.store import PreferenceStore

CLI = [sys.executable, "-m", "rlhf_hgt.cli"]


def _run(*args: str, password: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    env["PGPASSFILE"] = "/nonexistent/pgpass"  # no ~/.pgpass of this machine
    if password:
        env["PGPASSWORD"] = PASSWORD
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)
    assert PASSWORD not in done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def team_run(pg_server, tmp_path_factory):
    pg_server.sql(f"CREATE DATABASE team_gov OWNER {SECRET_USER}")
    url = pg_server.url("team_gov", SECRET_USER, PASSWORD)
    out = tmp_path_factory.mktemp("gov") / "run"
    done = _run("control", "CartPole-v1", "--teacher", "mistake:eps=0.1", "--labels", "8",
                "--timesteps", "256", "--rounds", "2", "--out", str(out), "--seed", "1",
                "--store", url)
    assert done.returncode == 0, done.stderr
    return out, url


def test_lineage_of_a_team_store_run_lists_and_verifies_its_answers(team_run, pg_server):
    run, url = team_run
    done = _run("lineage", str(run), "--json")
    assert done.returncode == 0, done.stderr
    obj = json.loads(done.stdout)
    with PreferenceStore(url) as st:
        ids = [a.id for a in st.answers() if a.answer != "skip"]
    assert sorted(a["id"] for a in obj["answers"]) == ids and len(ids) >= 6
    assert obj["store"].startswith("postgresql://secret_user") and "team_gov" in obj["store"]
    lines = [json.loads(x) for x in (run / "lineage.jsonl").read_text().splitlines()]
    hashed = {int(k) for e in lines for k in e.get("answer_hashes") or {}}
    assert set(ids) <= hashed and all("chain" in e for e in lines)
    done = _run("lineage", str(run), "--verify")
    assert done.returncode == 0, done.stdout + done.stderr

    # without a password: one line that says where to give it, nothing checked
    done = _run("lineage", str(run), "--verify", password=False)
    assert done.returncode == 2 and "PGPASSWORD" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr

    # an answer altered behind the store's back (its triggers dropped first)
    with psycopg.connect(pg_server.url("team_gov"), autocommit=True) as conn:
        conn.execute("DROP TRIGGER answers_append_only ON answers")
        conn.execute(f"UPDATE answers SET annotator = 'mallory' WHERE id = {ids[2]}")
    done = _run("lineage", str(run), "--verify")
    assert done.returncode == 1 and f"answer {ids[2]} changed" in done.stdout + done.stderr


def test_report_reads_the_annotators_from_the_team_store(team_run):
    run, url = team_run
    done = _run("report", str(run))
    assert done.returncode == 0, done.stderr
    text = (run / "report.md").read_text()
    with PreferenceStore(url) as st:
        names = {a.annotator for a in st.answers()}
    assert names and all(n in text for n in names) and "not read by this report" not in text
    assert "team_gov" in text
    for f in run.rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f
    done = _run("report", str(run), password=False)
    text = (run / "report.md").read_text()
    assert "PGPASSWORD" in text
