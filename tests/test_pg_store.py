"""The team store on a real PostgreSQL server: copy both ways, the terminal prompt, undo and
resume, the control loop with ``--store postgresql://...``, errors a user can fix, and a
password that never shows. (tests/test_store.py and tests/test_store_concurrency.py run the
store's own tests on both back ends.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.pg_server import PASSWORD, SECRET_USER, free_port
from test_terminal import HEADER, finish, label, read_store, shown_ids, spawn, text_store

from rlhf_hgt.cli import main
from rlhf_hgt.feedback.db import StoreURL, mask_url
from rlhf_hgt.feedback.stats import compute_stats
from rlhf_hgt.feedback.store import PreferenceStore, TextPair

ENV_CLI = [sys.executable, "-m", "rlhf_hgt.cli"]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _fill(path) -> list[int]:
    with PreferenceStore(path) as st:
        ids = st.add_text_queries([TextPair(f"p{i}", f"a{i}", f"b{i}", gold="left")
                                   for i in range(6)])
        a = st.record_answer(ids[0], "left", "ann", shown_at=1.0, answered_at=3.5)
        st.record_answer(ids[1], "right", "bob", rationale="why")
        st.record_answer(ids[1], "right", "ann", per_query=2)
        st.undo(a, "ann", reason="slip")
        st.record_answer(ids[0], "tie", "ann", token="t-0")
        st.record_reasons(st.record_answer(ids[2], "left", "ann"), {"features": [1, 2]})
        st.log_event("note", "carol", {"x": 1})
        st.claim(ids[3], "dave")
        st.set_setting("annotators_per_query", "2")
        return ids


def _stats(location) -> dict:
    stats = compute_stats(location)
    stats.pop("store")
    return stats


def test_copy_sqlite_to_postgres_and_back_keeps_everything(tmp_path, pg_url, capsys):
    src, back = tmp_path / "a.db", tmp_path / "back.db"
    _fill(src)
    code, out, _ = _cli(capsys, "feedback", "copy", str(src), pg_url)
    assert code == 0 and "6 queries, 5 answers" in out
    code, _, err = _cli(capsys, "feedback", "copy", str(src), pg_url)
    assert code == 2 and "not empty" in err and "--merge" in err
    code, out, _ = _cli(capsys, "feedback", "copy", str(src), pg_url, "--merge")
    assert code == 0 and "already there, skipped: 6 queries, 5 answers, 3 events" in out
    code, _, _ = _cli(capsys, "feedback", "copy", pg_url, str(back))
    assert code == 0
    assert _stats(src) == _stats(pg_url) == _stats(back)
    with PreferenceStore(src) as a, PreferenceStore(pg_url) as b, PreferenceStore(back) as c:
        for st in (b, c):  # ids kept, so a run's lineage reads the copy as the original
            assert st.answers(include_undone=True) == a.answers(include_undone=True)
            assert st.events() == a.events() and st.reasons() == a.reasons()
            assert st.pending_ids("erin") == a.pending_ids("erin")  # dave's claim came too
            assert st.get_query(2) == a.get_query(2)
        # new rows after a copy get new ids (PostgreSQL's identity moved past the copied)
        assert b.record_answer(a.pending_ids("erin")[0], "left", "erin") == 6
    code, out, err = _cli(capsys, "feedback", "stats", pg_url, "--json")
    assert code == 0 and json.loads(out)["answers"]["total"] == 5  # active


def test_merge_adds_only_what_is_missing_and_remaps_ids(tmp_path, pg_url):
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    with PreferenceStore(one) as st:
        (q,) = st.add_text_queries([TextPair("shared", "x", "y")])
        st.record_answer(q, "left", "ann", token="shared-answer")
    with PreferenceStore(two) as st:
        st.add_text_queries([TextPair("only two", "m", "n")])
        (q,) = st.add_text_queries([TextPair("shared", "x", "y")])
        a = st.record_answer(q, "left", "ann", token="shared-answer")
        b = st.record_answer(q, "right", "bob", per_query=2)
        st.undo(b, "bob")
        del a
    from rlhf_hgt.feedback.store_copy import copy_store

    copy_store(one, pg_url)
    summary = copy_store(two, pg_url, merge=True)
    assert summary.copied["queries"] == 1 and summary.skipped["queries"] == 1
    assert summary.copied["answers"] == 1 and summary.skipped["answers"] == 1
    with PreferenceStore(pg_url) as st:
        every = st.answers(include_undone=True)
        assert [(a.annotator, a.query_id) for a in every] == [("ann", 1), ("bob", 1)]
        assert [e["answer_id"] for e in st.events("undo")] == [every[1].id]
        assert st.count_queries() == 2
    again = copy_store(two, pg_url, merge=True)
    assert again.copied["answers"] == 0 and again.copied["settings"] == 0  # nothing new


def test_connection_errors_exit_2_with_one_line_and_no_password(pg_server, tmp_path):
    pg_server.sql(f"CREATE DATABASE team_pw OWNER {SECRET_USER}")
    port = free_port()
    cases = {
        f"postgresql://{SECRET_USER}:{PASSWORD}@127.0.0.1:{port}/x": "cannot reach",
        pg_server.url("no_such_db"): "does not exist",
        pg_server.url("team_pw", SECRET_USER, "not-" + PASSWORD): "refused the login",
        pg_server.url("postgres"): "holds no store",
    }
    for url, message in cases.items():
        done = subprocess.run([*ENV_CLI, "feedback", "stats", url], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert PASSWORD not in done.stdout + done.stderr
    # a database that holds something else is not a store, and is left as it was
    other = pg_server.new_database()
    import psycopg

    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
    done = subprocess.run([*ENV_CLI, "feedback", "import", other, str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    with pytest.raises(Exception, match="not a preference store"):
        PreferenceStore(other)
    with psycopg.connect(other) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert tables == {"t"}


def test_a_newer_schema_is_refused(pg_url):
    PreferenceStore(pg_url).close()
    with PreferenceStore(pg_url) as st:
        st.set_setting("schema_version", "99")
    with pytest.raises(Exception, match="newer than this rlhf_hgt"):
        PreferenceStore(pg_url)


def test_the_password_is_masked_everywhere(pg_server, tmp_path):
    pg_server.sql(f"CREATE DATABASE team_mask OWNER {SECRET_USER}")
    url = pg_server.url("team_mask", SECRET_USER, PASSWORD)
    assert mask_url(url) == pg_server.url("team_mask", SECRET_USER, "***")
    shown = StoreURL(url)
    assert PASSWORD not in f"{shown} {shown!r} {json.dumps(shown)}"
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"})
                            + "\n" for i in range(3)))
    outputs = []
    for args in (["feedback", "import", url, str(data)], ["feedback", "stats", url, "--json"],
                 ["feedback", "export", url, str(tmp_path / "out.jsonl")]):
        done = subprocess.run([*ENV_CLI, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    assert "secret_user:***@" in outputs[1] and not any(PASSWORD in o for o in outputs)
    with PreferenceStore(url) as st:  # store.path reopens (the password kept, not shown)
        assert PASSWORD not in str(st.path)
        with PreferenceStore(st.path) as again:
            assert len(again.answers()) == 3


def test_control_loop_with_a_team_store(pg_server, tmp_path):
    """The loop writes its queries and answers into the team store; nothing it writes
    (stdout, stderr, manifest, state, lineage, report) holds the password."""
    pg_server.sql(f"CREATE DATABASE team_loop OWNER {SECRET_USER}")
    url = pg_server.url("team_loop", SECRET_USER, PASSWORD)
    out = tmp_path / "run"
    done = subprocess.run([*ENV_CLI, "control", "CartPole-v1", "--teacher", "mistake:eps=0.1",
                           "--labels", "12", "--timesteps", "512", "--rounds", "2", "--out",
                           str(out), "--seed", "1", "--store", url],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == 12
    with PreferenceStore(url) as st:
        assert len(st.answers()) == 12 and st.count_queries() >= 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["preference_store"]["path"] == mask_url(url)
    assert not (out / "feedback.db").exists()
    for f in out.rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f


# ----------------------------------------------------------------------------- the prompt


def test_label_prompt_undo_quit_and_resume_on_postgres(pg_url):
    ids = text_store(pg_url, 4)
    child = label(pg_url, "1u", left=4)
    child.expect_exact("left: 4")
    child.expect_exact("undone")
    child.send("2")
    child.expect(HEADER)
    child.send("s")
    child.expect_exact("left: 2")
    child.send("q")
    assert finish(child) == 0
    with PreferenceStore(pg_url) as st:
        assert st.conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0

    child = label(pg_url, "12", left=2)
    assert finish(child) == 0
    assert shown_ids(child.logfile_read.getvalue()) == ids[2:]
    active, every, events = read_store(pg_url)
    assert [(a.query_id, a.answer) for a in active] == list(
        zip(ids, ["right", "skip", "left", "right"], strict=True))
    assert len(every) == 5 and [e["kind"] for e in events].count("undo") == 1
    child = spawn(pg_url)
    child.expect_exact("Nothing to label")
    assert finish(child) == 0


def test_light_start_up_imports_psycopg_only_for_a_url(tmp_path):
    code = ("import sys\nfrom rlhf_hgt.cli import main\n"
            "try:\n    main(['feedback', 'stats', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('psycopg', 'torch') if m in sys.modules))")
    path = tmp_path / "s.db"
    PreferenceStore(path).close()
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr

