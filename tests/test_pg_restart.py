"""A team store's server restarted in the middle of labelling: the connection layer says so,
reconnects (a bounded wait with backoff) and runs the interrupted write again under the same
token, so no acknowledged answer is lost and none is written twice; the label prompt tells the
person. Real restarts (``PgServer.restart``) of the test server."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_terminal import finish, label, read_store, text_store

from rlhf_hgt.feedback.db import ConnectionLost
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.store import PreferenceStore, TextPair

ANNOTATOR = """
import sys, time, uuid
from rlhf_hgt.feedback.store import PreferenceStore
url, log = sys.argv[1], open(sys.argv[2], "a")
with PreferenceStore(url) as st:
    while (qid := st.claim_next("ann")) is not None:
        token = uuid.uuid4().hex
        aid = st.record_answer(qid, "left", "ann", token=token)
        log.write(f"{qid} {aid} {token}\\n")  # acknowledged
        log.flush()
        time.sleep(0.01)
"""


def _notices(store: PreferenceStore) -> list[str]:
    said: list[str] = []
    store.conn.notify = said.append
    return said


def test_reads_and_writes_go_on_after_a_restart(pg_server):
    url = pg_server.new_database()
    with PreferenceStore(url) as st:
        said = _notices(st)
        ids = st.add_text_queries([TextPair(f"p{i}", "a", "b") for i in range(3)])
        pg_server.restart()
        assert st.pending_ids("ann") == ids  # a read: sent again after reconnecting
        assert said and "reconnecting" in said[0] and "reconnected" in said[-1]
        pg_server.restart()
        assert st.record_answer(ids[0], "left", "ann") is not None  # a write transaction
        pg_server.restart()
        st.undo(st.answers()[0].id, "ann")
        pg_server.restart()
        assert st.record_answers([(ids[1], "right"), (ids[2], "tie")], "teacher",
                                 synthetic=True) == [2, 3]
        assert len(st.answers(include_undone=True)) == 3 and len(st.events("undo")) == 1


def test_a_lost_commit_acknowledgement_writes_nothing_twice(pg_url):
    """The COMMIT reached the server but its answer did not come back: the transaction runs
    again, finds the answer by its token and returns the same id."""
    with PreferenceStore(pg_url) as st:
        said = _notices(st)
        (qid,) = st.add_text_queries([TextPair("p", "a", "b")])
        conn, commit = st.conn, st.conn.commit
        lost = []

        def commit_then_lose() -> None:
            commit()
            if len(lost) < 2:
                lost.append(1)
                conn.raw.close()
                raise ConnectionLost("lost the connection: acknowledgement lost")

        conn.commit = commit_then_lose
        aid = st.record_answer(qid, "left", "ann", token="t-1")
        st.undo(aid, "ann")
        conn.commit = commit
        assert [a.id for a in st.answers(include_undone=True)] == [aid]
        assert len(st.events("undo")) == 1 and len(lost) == 2
        assert sum("reconnected" in s for s in said) == 2


def test_a_server_that_stays_away_is_one_error_after_the_wait(pg_url):
    with PreferenceStore(pg_url) as st:
        said = _notices(st)
        st.conn.retry_seconds = 0.5

        def refuse() -> None:
            raise UserInputError("cannot reach a PostgreSQL server")

        st.conn._connect = refuse
        st.conn.raw.close()
        t0 = time.monotonic()
        with pytest.raises(UserInputError, match="could not reconnect within 0 s"):
            st.count_queries()
        assert time.monotonic() - t0 < 5 and "up to 0 s" in said[0]
        with pytest.raises(UserInputError):  # gave up: the next call tries once, at once
            st.count_queries()


def test_annotator_process_while_the_server_restarts(pg_server, tmp_path):
    url = pg_server.new_database()
    with PreferenceStore(url) as st:
        st.add_text_queries([TextPair(f"p{i}", "a", "b") for i in range(250)])
    log = tmp_path / "acks"
    proc = subprocess.Popen([sys.executable, "-c", ANNOTATOR, url, str(log)],
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            time.sleep(1.0)
            pg_server.restart()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "reconnecting" in err and "reconnected" in err
    acks = [line.split() for line in log.read_text().splitlines()]
    with PreferenceStore(url) as st:
        rows = st.conn.execute("SELECT id, query_id, token FROM answers").fetchall()
    stored = {token: (str(qid), str(aid)) for aid, qid, token in rows}
    assert len(stored) == len(rows) == 250  # one answer per query, none twice
    assert all(stored[token] == (qid, aid) for qid, aid, token in acks)  # none lost
    assert len(acks) == 250


def test_label_prompt_tells_the_person_and_goes_on(pg_server):
    url = pg_server.new_database()
    ids = text_store(url, 4)
    child = label(url, "1", left=4)
    child.expect_exact("left: 3")
    pg_server.restart()
    child.send("2")
    child.expect_exact("reconnect")
    child.expect_exact("left: 2")
    child.send("t")
    child.expect_exact("left: 1")
    pg_server.restart()
    child.send("1")
    assert finish(child) == 0
    active, every, _ = read_store(url)
    assert [(a.query_id, a.answer) for a in active] == list(
        zip(ids, ["left", "right", "tie", "left"], strict=True))
    assert len(every) == 4
