"""The preference store: schema, append-only answers, undo, claims, bad files."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from rlhf_hgt.feedback.store import (
    SCHEMA_VERSION,
    PreferenceStore,
    StoreError,
    TextPair,
    content_hash,
)


@pytest.fixture
def store(store_at):
    """A new store on each back end (an SQLite file, a PostgreSQL database)."""
    s = PreferenceStore(store_at)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = PreferenceStore(tmp_path / "s.db")
    yield s
    s.close()


def test_new_store_is_wal_and_versioned(sqlite_store):
    store = sqlite_store
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.get_setting("schema_version") == str(SCHEMA_VERSION)
    assert store.integrity_check() == "ok"


def test_a_new_store_is_versioned_on_both_back_ends(store):
    assert store.get_setting("schema_version") == str(SCHEMA_VERSION)
    assert store.get_setting("app") == "rlhf_hgt.feedback"
    assert store.integrity_check() == "ok"


@pytest.mark.parametrize("table", ["answers", "events"])
def test_the_database_refuses_to_change_or_remove_an_answer_or_event(store, table):
    """Append-only is the database's rule, not only the store's: a stray client's UPDATE or
    DELETE is refused on both back ends (triggers), and the row stays as it was."""
    (qid,) = store.add_text_queries([TextPair("p", "a", "b")])
    aid = store.record_answer(qid, "left", "ann")
    store.undo(aid, "ann")
    column = "answer" if table == "answers" else "kind"
    for sql in (f"UPDATE {table} SET {column} = 'right'", f"DELETE FROM {table}"):
        with pytest.raises(Exception, match="append-only") as err:
            store.conn.execute(sql)
        assert "StoreError" not in type(err.value).__name__
    assert [a.answer for a in store.answers(include_undone=True)] == ["left"]
    assert [e["answer_id"] for e in store.events("undo")] == [aid]
    store.release_claims("ann")  # claims are coordination: they may still be removed


def test_flush_puts_every_answer_in_the_main_file(sqlite_store, tmp_path):
    """A manifest hashes the store's main file: after flush() it alone holds the answers."""
    import shutil

    store = sqlite_store
    ids = store.add_text_queries([TextPair("p", "a", "b"), TextPair("p", "c", "d")])
    store.record_answers([(ids[0], "left"), (ids[1], "right")], "ann")
    store.flush()
    copy = tmp_path / "copy.db"
    shutil.copyfile(store.path, copy)  # the file alone, without its -wal companion
    other = PreferenceStore(copy, create=False)
    try:
        assert sorted(a.answer for a in other.answers()) == ["left", "right"]
        assert [k for _, k, _ in other.query_kinds()] == ["text", "text"]
    finally:
        other.close()


def test_text_queries_dedup_in_either_order(store):
    ids = store.add_text_queries([TextPair("p", "a", "b"), TextPair("p", "b", "a"),
                                  TextPair("p2", "a", "b")])
    assert ids[0] == ids[1] != ids[2]
    q = store.get_query(ids[0])
    assert (q.left, q.right) == ("a", "b")
    assert q.left_hash == content_hash("a")
    assert store.count_queries() == 2


def test_segment_payload_round_trip(store):
    rng = np.random.default_rng(0)
    left = {"obs": rng.normal(size=(7, 4)).astype(np.float32), "actions": np.arange(7),
            "true_rewards": rng.normal(size=7).astype(np.float32),
            "frames": rng.integers(0, 255, size=(7, 8, 8, 3), dtype=np.uint8)}
    right = {k: v[::-1].copy() for k, v in left.items()}
    qid = store.add_segment_query(left, right, env_id="CartPole-v1", left_source="pol:1",
                                  right_source="pol:2", round=3)
    q = store.get_query(qid)
    assert q.kind == "segment" and q.env_id == "CartPole-v1" and q.round == 3
    assert q.left_source == "pol:1"
    for k in left:
        np.testing.assert_array_equal(q.left[k], left[k])
        assert q.left[k].dtype == left[k].dtype
    with pytest.raises(StoreError, match="not numeric"):
        store.add_segment_query({"obs": np.array([object()])}, right)


def test_answers_are_append_only_and_undo_supersedes(store):
    (qid,) = store.add_text_queries([TextPair("p", "a", "b")])
    first = store.record_answer(qid, "left", "ann")
    assert first is not None
    assert store.record_answer(qid, "right", "ann") is None  # already answered
    store.undo(first, "ann")
    assert store.answers() == []
    assert [a.answer for a in store.answers(include_undone=True)] == ["left"]
    assert store.pending_ids("ann") == [qid]
    second = store.record_answer(qid, "right", "ann")
    assert [a.id for a in store.answers()] == [second]
    assert store.conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 2
    assert [e["answer_id"] for e in store.events("undo")] == [first]


def test_an_event_on_an_answer_does_not_supersede_it(store):
    """Events tied to an answer (e.g. the fields an import line carried) are only undos when
    their kind is undo."""
    (qid,) = store.add_text_queries([TextPair("p", "a", "b")])
    aid = store.record_answer(qid, "left", "ann")
    store.log_event("fields", "ann", {"topic": "films"}, answer_id=aid)
    assert [a.id for a in store.answers()] == [aid]
    assert [(e["answer_id"], e["data"]) for e in store.events("fields")] == \
        [(aid, {"topic": "films"})]
    store.log_event("note", data={"x": 1})  # no answer: answer_id stays empty
    assert store.events("note")[0]["answer_id"] is None


def test_token_makes_retries_idempotent(store):
    (qid,) = store.add_text_queries([TextPair("p", "a", "b")])
    a = store.record_answer(qid, "tie", "ann", token="t1")
    assert store.record_answer(qid, "tie", "ann", token="t1") == a
    assert len(store.answers()) == 1


def test_quota_and_claims(store):
    ids = store.add_text_queries([TextPair("p", str(i), str(i) + "x") for i in range(3)])
    assert store.claim_next("alice") == ids[0]
    # bob is not shown what alice holds
    assert store.claim_next("bob") == ids[1]
    assert store.pending_ids("carol") == [ids[2]]
    store.release_claims("alice")
    assert store.pending_ids("carol") == [ids[0], ids[2]]
    # two annotators per query when asked
    store.record_answer(ids[2], "left", "alice", per_query=2)
    assert ids[2] in store.pending_ids("bob", per_query=2)
    assert ids[2] not in store.pending_ids("bob", per_query=1)
    assert store.record_answer(ids[2], "left", "bob", per_query=1) is None
    assert store.record_answer(ids[2], "left", "bob", per_query=2) is not None


def test_unknown_answer_rejected(store):
    (qid,) = store.add_text_queries([TextPair("p", "a", "b")])
    with pytest.raises(StoreError, match="left, right, tie, skip"):
        store.record_answer(qid, "maybe", "ann")


def test_not_a_store_files(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_text("hello, not sqlite")
    with pytest.raises(StoreError, match="not a preference store"):
        PreferenceStore(junk)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a preference store"):
        PreferenceStore(other)
    with pytest.raises(StoreError, match="no such store"):
        PreferenceStore(tmp_path / "missing.db", create=False)
    with pytest.raises(StoreError, match="is a folder"):
        PreferenceStore(tmp_path)


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "s.db"
    PreferenceStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer"):
        PreferenceStore(path)


def test_labelled_reads_queries_with_answers(store):
    ids = store.add_text_queries([TextPair("p", "a", "b"), TextPair("p", "c", "d")])
    store.record_answer(ids[0], "left", "ann", rationale="clearer")
    store.record_answer(ids[1], "skip", "ann")
    got = list(store.labelled())
    assert len(got) == 1 and got[0][0].id == ids[0] and got[0][1].rationale == "clearer"
    assert len(list(store.labelled(include_skips=True))) == 2


def test_reasons_and_simulated_times_are_kept_with_their_answers(store):
    (qid,) = store.add_text_queries([TextPair("p", "good answer", "bad answer")])
    (q2,) = store.add_text_queries([TextPair("p", "other", "one")])
    a1, a2 = store.record_answers([(qid, "left"), (q2, "right")], "t", synthetic=True,
                                  seconds=[1.5, 0.25])
    rows = {a.id: a for a in store.answers()}
    assert rows[a1].answered_at - rows[a1].shown_at == pytest.approx(1.5)
    assert rows[a2].answered_at - rows[a2].shown_at == pytest.approx(0.25)
    with pytest.raises(ValueError, match="2 times for 1 answers"):
        store.record_answers([(qid, "left")], "u", seconds=[1.0, 2.0])
    store.record_reasons(a1, {"highlights": {"left": [[0, 4]], "right": []}}, "t")
    store.record_reasons(a2, {"features": [0, 2]}, "t")
    store.record_reasons(a2, {"features": [1]}, "t")  # a later one replaces the first
    assert store.reasons() == {a1: {"highlights": {"left": [[0, 4]], "right": []}},
                               a2: {"features": [1]}}
    store.undo(a2, "t")
    assert set(store.reasons()) == {a1}  # an undo drops its reasons with it
    with pytest.raises(ValueError, match="keys among"):
        store.record_reasons(a1, {"colour": "red"})
    with pytest.raises(StoreError, match="no answer with id 999"):
        store.record_reasons(999, {"features": [0]})
