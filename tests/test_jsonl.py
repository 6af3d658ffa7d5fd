"""JSONL import/export of text preferences: semantics, round trips, TRL loading, bad input, fuzz."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.jsonl import (
    IMPORT_INTERFACE,
    ExportCount,
    export_jsonl,
    import_jsonl,
    read_jsonl,
    render_messages,
)
from rlhf_hgt.feedback.store import PreferenceStore, StoreError, TextPair, content_hash

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def store_state(path: Path) -> tuple[int, int, int]:
    with PreferenceStore(path, create=False) as s:
        return s.count_queries(), len(s.answers(include_undone=True)), len(s.events())


def pair_key(row: dict) -> tuple:
    return (json.dumps(row["prompt"]), json.dumps(row["chosen"]), json.dumps(row["rejected"]),
            row.get("annotator"), row.get("rationale") or "")


UNICODE_ROWS = [
    {"prompt": "Say hi\n", "chosen": "Hello 🌍\nsecond line", "rejected": "Go away",
     "annotator": "ana", "rationale": "friendlier\ttone"},
    {"prompt": "Résumé?", "chosen": "naïve “quotes” \u2028 sep", "rejected": "\x00nul\x1f",
     "annotator": "bo", "rationale": ""},
    {"prompt": "日本語\r\nwith CRLF inside", "chosen": "\\backslash \"q\"", "rejected": " lead"},
]


# ----------------------------------------------------------------------------- import semantics


def test_import_records_answers_with_provenance(tmp_path, store_at):  # both back ends
    f = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "p1", "chosen": "good", "rejected": "bad", "annotator": "ana",
         "rationale": "clearer"},
        {"prompt": "p2", "chosen": "x", "rejected": "y", "tie": True},
        {"prompt": "p3", "a": "one", "b": "two", "gold": "b", "source_a": "m1",
         "source_b": "m2"},
        {"prompt": "p1", "chosen": "bad", "rejected": "good", "annotator": "bo",
         "extra_column": 1},
    ])
    summary = import_jsonl(store_at, f)
    assert (summary.labelled_added, summary.pending_added, summary.duplicates_skipped) == \
        (3, 1, 0)
    assert summary.kept_fields == ["extra_column"]
    assert "kept other fields as metadata" in summary.describe()
    assert "3 labelled" in summary.describe() and "1 pending" in summary.describe()
    with PreferenceStore(store_at) as s:
        assert s.count_queries() == 3
        got = {(q.prompt, a.annotator): (q, a) for q, a in s.labelled(kind="text")}
        q, a = got[("p1", "ana")]
        assert (q.left, q.right, a.answer) == ("good", "bad", "left")
        assert (a.synthetic, a.shown_at, a.interface, a.rationale) == \
            (False, None, IMPORT_INTERFACE, "clearer")
        assert a.answered_at > 0
        q, a = got[("p1", "bo")]  # the same query; bo preferred the other side
        assert (q.left, a.answer) == ("good", "right")
        q, a = got[("p2", "import:prefs.jsonl")]
        assert a.answer == "tie"
        pending = [q for q in s.queries() if q.prompt == "p3"][0]
        assert (pending.gold, pending.left_source, pending.right_source) == ("right", "m1", "m2")
        assert s.pending_ids("someone") == [pending.id]
        (kept,) = s.events("fields")  # bo's line carried the extra column, kept with the answer
        assert (kept["answer_id"], kept["data"]) == (got[("p1", "bo")][1].id,
                                                     {"extra_column": 1})
        (event,) = s.events("import")
        assert event["data"]["sha256"] == summary.sha256
        assert event["data"]["file"] == "prefs.jsonl"
        assert (event["data"]["labelled_added"], event["data"]["pending_added"]) == (3, 1)


def test_default_annotator_and_line_annotator(tmp_path):
    f = write_jsonl(tmp_path / "f.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "b", "annotator": "own"}])
    import_jsonl(tmp_path / "s.db", f, default_annotator="cli-name")
    with PreferenceStore(tmp_path / "s.db") as s:
        assert sorted(a.annotator for a in s.answers()) == ["cli-name", "own"]
    with pytest.raises(UserInputError, match="annotator"):
        import_jsonl(tmp_path / "s.db", f, default_annotator="  ")


def test_labels_map_through_swapped_orientation(tmp_path):
    with PreferenceStore(tmp_path / "s.db") as s:
        s.add_text_queries([TextPair("p", "second", "first")])
    f = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "p", "chosen": "first",
                                            "rejected": "second"}])
    summary = import_jsonl(tmp_path / "s.db", f)
    assert summary.labelled_added == 1
    with PreferenceStore(tmp_path / "s.db") as s:
        ((q, a),) = list(s.labelled())
        assert (q.left, a.answer) == ("second", "right")
        assert q.left_hash == content_hash("second")
    out = tmp_path / "out.jsonl"
    export_jsonl(tmp_path / "s.db", out, provenance=False)
    assert read_rows(out) == [{"prompt": "p", "chosen": "first", "rejected": "second"}]


def test_pending_lines_with_a_label_are_answered(tmp_path):
    """{"prompt","a","b","label"}: the label is the annotator's answer, never dropped."""
    f = write_jsonl(tmp_path / "judged.jsonl", [
        {"prompt": "p1", "a": "one", "b": "two", "label": "a", "annotator": "ana",
         "rationale": "shorter"},
        {"prompt": "p2", "a": "one", "b": "two", "label": "b", "annotator": "ana",
         "source_a": "m1", "source_b": "m2", "gold": "b"},
        {"prompt": "p3", "a": "one", "b": "two", "label": "tie"},
        {"prompt": "p4", "a": "one", "b": "two", "label": "skip", "annotator": "bo"},
        {"prompt": "p5", "a": "one", "b": "two", "label": None},  # null: no judgement
    ])
    summary = import_jsonl(tmp_path / "s.db", f, default_annotator="cli")
    assert (summary.labelled_added, summary.skips_added, summary.pending_added) == (3, 1, 1)
    assert "1 skips" in summary.describe()
    with PreferenceStore(tmp_path / "s.db") as s:
        queries = {q.prompt: q for q in s.queries()}
        answers = {queries_prompt(queries, a.query_id): a for a in s.answers()}
        # the query keeps the line's order (a left), the answer says which side won
        assert all((q.left, q.right) == ("one", "two") for q in queries.values())
        assert [(p, a.answer, a.annotator) for p, a in sorted(answers.items())] == [
            ("p1", "left", "ana"), ("p2", "right", "ana"), ("p3", "tie", "cli"),
            ("p4", "skip", "bo")]
        assert (answers["p1"].rationale, answers["p1"].interface) == ("shorter",
                                                                      IMPORT_INTERFACE)
        assert (queries["p2"].left_source, queries["p2"].right_source,
                queries["p2"].gold) == ("m1", "m2", "right")
        assert s.pending_ids("someone") == [queries["p5"].id]  # a skip answers the query
    out = tmp_path / "out.jsonl"
    export_jsonl(tmp_path / "s.db", out, provenance=False)
    assert read_rows(out) == [{"prompt": "p1", "chosen": "one", "rejected": "two"},
                              {"prompt": "p2", "chosen": "two", "rejected": "one"}]
    # read for training the same way: chosen first
    parsed = read_jsonl(f)
    assert [(r.labelled, r.first, r.skip) for r in parsed.records] == [
        (True, "one", False), (True, "two", False), (True, "one", False),
        (False, "one", True), (False, "one", False)]


def queries_prompt(queries: dict, query_id: int) -> str:
    return next(p for p, q in queries.items() if q.id == query_id)


@pytest.mark.parametrize("line, answer", [
    ({"choice": "B"}, "right"), ({"preference": " left "}, "left"),
    ({"preferred": "right"}, "right"), ({"winner": "model_a"}, "left"),
    ({"winner": "tie (bothbad)"}, "tie"), ({"selected": "right"}, "right"),
    ({"label": "TIE"}, "tie")])
def test_other_tools_judgement_fields(tmp_path, line, answer):
    f = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "p", "a": "x", "b": "y", **line}])
    assert import_jsonl(tmp_path / "s.db", f).labelled_added == (answer != "skip")
    with PreferenceStore(tmp_path / "s.db") as s:
        assert [a.answer for a in s.answers()] == [answer]


def test_unknown_fields_are_kept_and_exported_again(tmp_path):
    f = write_jsonl(tmp_path / "in.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 8.5,
         "meta": {"label": "not a judgement, nested"}, "chosen_highlights": [[0, 1]]},
        {"prompt": "q", "a": "c", "b": "d", "topic": "films"},  # pending: kept with the query
        {"prompt": "r", "a": "e", "b": "f", "label": "b", "topic": "books"},
    ])
    summary = import_jsonl(tmp_path / "s.db", f)
    # highlights are no mere metadata: stored as the answer's reasons (test_highlights.py)
    assert summary.kept_fields == ["meta", "score_chosen", "topic"]
    with PreferenceStore(tmp_path / "s.db") as s:
        pending = next(q for q in s.queries() if q.prompt == "q")
        assert pending.meta["fields"] == {"topic": "films"}
        s.record_answer(pending.id, "right", "zed")
    out = tmp_path / "out.jsonl"
    export_jsonl(tmp_path / "s.db", out)
    rows = {r["prompt"]: r for r in read_rows(out)}
    assert rows["p"] == {"prompt": "p", "chosen": "a", "rejected": "b",
                         "annotator": "import:in.jsonl", "score_chosen": 8.5,
                         "meta": {"label": "not a judgement, nested"},
                         "chosen_highlights": [[0, 1]], "rejected_highlights": [],
                         "topic": None}
    assert (rows["q"]["chosen"], rows["q"]["topic"], rows["q"]["score_chosen"],
            rows["q"]["chosen_highlights"]) == ("d", "films", None, [])
    assert (rows["r"]["chosen"], rows["r"]["topic"]) == ("f", "books")
    # the export imports again with the same fields, and exports the same lines
    import_jsonl(tmp_path / "s2.db", out)
    export_jsonl(tmp_path / "s2.db", tmp_path / "out2.jsonl")
    assert read_rows(tmp_path / "out2.jsonl") == read_rows(out)
    export_jsonl(tmp_path / "s.db", out, provenance=False)
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in read_rows(out))


HELPSTEER2_LIKE = {"prompt": "p", "chosen": "good answer", "rejected": "bad answer",
                   "preference_strength": 2, "preference_statement": "@Response 1 is better"}


def test_labelled_lines_keep_every_other_field(tmp_path):
    """On a labelled pair 'chosen' is the verdict: no other field is read as one (NVIDIA
    HelpSteer2's preference_strength, a labels list, a nested "selected")."""
    extra = {"ranking_model": "rm-1", "num_votes": 3, "label_source": "human",
             "labels": ["helpful"], "meta": {"selected": True}}
    f = write_jsonl(tmp_path / "in.jsonl", [HELPSTEER2_LIKE,
                                            {"prompt": "q", "chosen": "x", "rejected": "y",
                                             **extra}])
    assert run_cli("feedback", "import", tmp_path / "s.db", f).returncode == 0
    out = tmp_path / "out.jsonl"
    export_jsonl(tmp_path / "s.db", out)
    rows = {r["prompt"]: r for r in read_rows(out)}
    assert {k: rows["p"][k] for k in HELPSTEER2_LIKE} == HELPSTEER2_LIKE
    assert {k: rows["q"][k] for k in extra} == extra
    import_jsonl(tmp_path / "s2.db", out)  # the export imports again, with the same lines
    export_jsonl(tmp_path / "s2.db", tmp_path / "out2.jsonl")
    assert read_rows(tmp_path / "out2.jsonl") == read_rows(out)
    from rlhf_hgt.lm.data import load_pairs  # lm reward/dpo --data read the same lines

    ds = load_pairs(data=f)
    assert (ds["prompt"], ds["chosen"]) == (["p", "q"], ["good answer", "x"])


def test_pending_lines_keep_fields_that_carry_no_verdict(tmp_path):
    fields = {"preference_strength": 1, "ranking_model": "rm-1", "num_votes": 3,
              "label_source": "human", "labels": ["toxic"], "meta": {"selected": True},
              "preference_statement": "unclear"}
    f = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "a": "x", "b": "y", **fields}])
    assert import_jsonl(tmp_path / "s.db", f).pending_added == 1
    with PreferenceStore(tmp_path / "s.db") as s:
        assert next(s.queries()).meta["fields"] == fields


def test_a_label_studio_store_exports_and_imports_again(tmp_path):
    """A store with a Label Studio task and a plain pair: its export (with the importer's own
    label_studio column) imports again, and lm's load_pairs reads it."""
    f = write_jsonl(tmp_path / "in.jsonl", [_ls_task(1, [_ls_choice("left", 1)]),
                                            {"prompt": "plain", "chosen": "c", "rejected": "r"}])
    import_jsonl(tmp_path / "s.db", f)
    out = tmp_path / "out.jsonl"
    assert export_jsonl(tmp_path / "s.db", out) == 2
    rows = {r["prompt"]: r for r in read_rows(out)}
    assert rows["plain"]["label_studio"] is None
    assert rows["prompt 1"]["label_studio"]["annotation"]["completed_by"] == 1
    result = run_cli("feedback", "import", tmp_path / "s2.db", out)
    assert result.returncode == 0, result.stderr
    export_jsonl(tmp_path / "s2.db", tmp_path / "out2.jsonl")
    assert read_rows(tmp_path / "out2.jsonl") == read_rows(out)
    from rlhf_hgt.lm.data import load_pairs

    assert sorted(load_pairs(data=out)["chosen"]) == ["c", "first text"]


def _ls_task(task_id: int, annotations: list | None, **data) -> dict:
    task = {"id": task_id, "project": 3,
            "data": {"prompt": f"prompt {task_id}", "answer1": "first text",
                     "answer2": "second text", **data}}
    if annotations is not None:
        task["annotations"] = annotations
    return task


def _ls_choice(selected: str, who: object = 1, **extra) -> dict:
    return {"id": 100, "completed_by": who, "was_cancelled": False, "lead_time": 4.2,
            "result": [{"id": "r1", "from_name": "comparison", "to_name": "answer1",
                        "type": "pairwise", "value": {"selected": selected}}], **extra}


def test_label_studio_tasks(tmp_path):
    """Label Studio's JSON export, one task per line (jq -c '.[]' export.json)."""
    rationale = {"from_name": "why", "to_name": "prompt", "type": "textarea",
                 "value": {"text": ["clearer"]}}
    tasks = [
        _ls_task(1, [_ls_choice("left", 1), _ls_choice("right", {"id": 2, "email": "e@x.org"}),
                     {"id": 102, "completed_by": 3, "was_cancelled": True, "result": []}]),
        _ls_task(2, [_ls_choice("right", 1)], source="m1"),
        _ls_task(3, []),  # not annotated yet: a pending query
        {"id": 4, "data": {"prompt": "p4", "text1": "t one", "text2": "t two"},
         "annotations": [{"completed_by": 5, "result": [
             {"type": "pairwise", "to_name": ["text2", "text1"], "value": {"selected": "left"}},
             rationale]}]},
    ]
    f = write_jsonl(tmp_path / "ls.jsonl", tasks)
    summary = import_jsonl(tmp_path / "s.db", f)
    assert (summary.labelled_added, summary.skips_added, summary.pending_added) == (4, 1, 1)
    assert summary.kept_fields == ["label_studio"]
    with PreferenceStore(tmp_path / "s.db") as s:
        queries = {q.id: q for q in s.queries()}
        got = sorted((queries[a.query_id].prompt, a.annotator, a.answer) for a in s.answers())
        assert got == [("p4", "label-studio:5", "left"),
                       ("prompt 1", "e@x.org", "right"), ("prompt 1", "label-studio:1", "left"),
                       ("prompt 1", "label-studio:3", "skip"),
                       ("prompt 2", "label-studio:1", "right")]
        q4 = next(q for q in queries.values() if q.prompt == "p4")
        assert (q4.left, q4.right) == ("t two", "t one")  # to_name gave the order
        pending = [queries[i] for i in s.pending_ids("someone")]
        assert [(q.prompt, q.left, q.meta["fields"]["label_studio"]["task"]) for q in pending] \
            == [("prompt 3", "first text", {"id": 3, "project": 3})]
        kept = {e["annotator"]: e["data"]["label_studio"] for e in s.events("fields")}
        assert kept["label-studio:1"]["task"] in ({"id": 1, "project": 3},
                                                  {"id": 2, "project": 3, "data": {"source": "m1"}})
        assert kept["label-studio:5"]["annotation"]["result"] == [rationale]
        assert kept["e@x.org"]["annotation"]["lead_time"] == 4.2
    out = tmp_path / "out.jsonl"
    assert export_jsonl(tmp_path / "s.db", out) == 4
    assert {(r["prompt"], r["chosen"]) for r in read_rows(out)} == {
        ("prompt 1", "first text"), ("prompt 1", "second text"), ("prompt 2", "second text"),
        ("p4", "t two")}
    assert import_jsonl(tmp_path / "s.db", f).duplicates_skipped == 6  # the same file again


def test_reimport_and_duplicates_add_nothing(tmp_path, store_at):  # both back ends
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "annotator": "x"},
            {"prompt": "p", "chosen": "b", "rejected": "a", "annotator": "x"},  # same pair
            {"prompt": "p", "chosen": "b", "rejected": "a", "annotator": "y"},
            {"prompt": "p", "a": "a", "b": "b"},  # the pair is already there
            {"prompt": "new", "a": "a", "b": "b", "gold": "a"},
            {"prompt": "new", "a": "b", "b": "a", "gold": "a"}]  # conflicting gold: noted
    f = write_jsonl(tmp_path / "f.jsonl", rows)
    first = import_jsonl(store_at, f)
    assert (first.labelled_added, first.pending_added, first.duplicates_skipped) == (2, 1, 3)
    assert any("gold" in note for note in first.notes)
    state = store_state(store_at)
    again = import_jsonl(store_at, f)
    assert (again.labelled_added, again.pending_added, again.duplicates_skipped) == (0, 0, 6)
    assert store_state(store_at) == state
    # an undone answer stays undone on re-import (the token is still there)
    with PreferenceStore(store_at) as s:
        s.undo(s.answers()[0].id, "x")
    import_jsonl(store_at, f)
    with PreferenceStore(store_at) as s:
        assert len(s.answers()) == 1


def test_reimport_through_cli_adds_nothing(tmp_path):
    f = write_jsonl(tmp_path / "f.jsonl", UNICODE_ROWS)
    store = tmp_path / "s.db"
    first = run_cli("feedback", "import", store, f)
    assert first.returncode == 0, first.stderr
    state = store_state(store)
    second = run_cli("feedback", "import", store, f)
    assert second.returncode == 0, second.stderr
    assert "skipped 3 duplicates" in second.stdout
    assert store_state(store) == state


# ----------------------------------------------------------------------------- export


def test_round_trip_keeps_text_and_provenance(tmp_path):
    f = write_jsonl(tmp_path / "in.jsonl", UNICODE_ROWS + UNICODE_ROWS[:1])  # one duplicate
    import_jsonl(tmp_path / "s.db", f)
    out = tmp_path / "sub" / "out.jsonl"
    n = export_jsonl(tmp_path / "s.db", out)
    assert n == 3 and isinstance(n, ExportCount)
    rows = read_rows(out)
    expected = [dict(r, annotator=r.get("annotator", "import:in.jsonl")) for r in UNICODE_ROWS]
    assert Counter(map(pair_key, rows)) == Counter(map(pair_key, expected))
    assert all(set(r) == {"prompt", "chosen", "rejected", "annotator", "rationale"}
               for r in rows)
    # the export imports again as the same pairs
    import_jsonl(tmp_path / "s2.db", out)
    export_jsonl(tmp_path / "s2.db", tmp_path / "out2.jsonl")
    assert Counter(map(pair_key, read_rows(tmp_path / "out2.jsonl"))) == \
        Counter(map(pair_key, rows))
    # without provenance: only the TRL columns, and no rationale column when none exists
    export_jsonl(tmp_path / "s.db", out, provenance=False)
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in read_rows(out))
    write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    import_jsonl(tmp_path / "s3.db", tmp_path / "plain.jsonl")
    export_jsonl(tmp_path / "s3.db", out)
    assert read_rows(out) == [{"prompt": "p", "chosen": "a", "rejected": "b",
                               "annotator": "import:plain.jsonl"}]


def test_export_leaves_out_ties_and_skips_and_says_so(tmp_path, caplog):
    f = write_jsonl(tmp_path / "f.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "b", "tie": True},
        {"prompt": "r", "a": "a", "b": "b"}])
    import_jsonl(tmp_path / "s.db", f)
    with PreferenceStore(tmp_path / "s.db") as s:
        (pending,) = s.pending_ids("z")
        s.record_answer(pending, "skip", "z")
    n = export_jsonl(tmp_path / "s.db", tmp_path / "out.jsonl")
    assert (int(n), n.ties_left_out, n.skips_left_out) == (1, 1, 1)
    assert "left out 1 ties and 1 skips" in n.describe()
    assert "left out 1 ties" in caplog.text
    assert [r["prompt"] for r in read_rows(tmp_path / "out.jsonl")] == ["p"]


def test_export_is_atomic(tmp_path, monkeypatch):
    f = write_jsonl(tmp_path / "f.jsonl", UNICODE_ROWS)
    import_jsonl(tmp_path / "s.db", f)
    out = tmp_path / "out.jsonl"
    out.write_text("old content\n")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(UserInputError, match="No space left"):
        export_jsonl(tmp_path / "s.db", out)
    monkeypatch.undo()
    assert out.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.jsonl", "out.jsonl", "s.db"]
    with pytest.raises(UserInputError, match="folder"):
        export_jsonl(tmp_path / "s.db", tmp_path)
    with pytest.raises(StoreError):
        export_jsonl(tmp_path / "missing.db", out)
    assert not (tmp_path / "missing.db").exists()


def test_conversational_lines_round_trip_as_messages(tmp_path):
    conv = {"prompt": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "Capital of France?"}],
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "assistant", "content": "Lyon, I think.\nOr not."}],
            "annotator": "ana"}
    pending = {"prompt": [{"role": "user", "content": "2+2?"}],
               "a": [{"role": "assistant", "content": "4"}],
               "b": [{"role": "assistant", "content": "5"}]}
    f = write_jsonl(tmp_path / "c.jsonl", [conv, pending])
    import_jsonl(tmp_path / "s.db", f)
    with PreferenceStore(tmp_path / "s.db") as s:
        qs = list(s.queries())
        assert qs[0].prompt == "<|system|>\nBe brief.\n<|user|>\nCapital of France?\n"
        assert qs[0].left == render_messages(conv["chosen"]) == "<|assistant|>\nParis."
        assert qs[1].meta["conversational"]["prompt"] == pending["prompt"]
        # answer the pending conversation with the sides swapped in storage terms
        s.record_answer(qs[1].id, "right", "bo")
    out = tmp_path / "out.jsonl"
    export_jsonl(tmp_path / "s.db", out)
    rows = read_rows(out)
    assert rows[0] == conv
    assert rows[1]["prompt"] == pending["prompt"]
    assert (rows[1]["chosen"], rows[1]["rejected"]) == (pending["b"], pending["a"])
    # a store that also holds plain text pairs is exported as text, and says so
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    import_jsonl(tmp_path / "s.db", tmp_path / "t.jsonl")
    n = export_jsonl(tmp_path / "s.db", out)
    assert n.flattened == 2 and "role markers" in n.describe()
    rows = read_rows(out)
    assert all(isinstance(r["prompt"], str) for r in rows)
    assert rows[0]["rejected"] == "<|assistant|>\nLyon, I think.\nOr not."
    n = export_jsonl(tmp_path / "s.db", out, form="text")
    with pytest.raises(ValueError, match="form"):
        export_jsonl(tmp_path / "s.db", out, form="xml")


# ----------------------------------------------------------------------------- TRL


def _tiny_tokenizer(chat: bool = False):
    """The library's byte-level test tokenizer; without ``chat``, no chat template."""
    from rlhf_hgt.lm.tiny import tiny_tokenizer

    tok = tiny_tokenizer(padding_side="right")
    if not chat:
        tok.chat_template = None
    return tok


def _train_one_step(data_file: Path, tmp_path: Path, reward: bool = True, chat: bool = False):
    import datasets
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = datasets.load_dataset("json", data_files=str(data_file), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    tok = _tiny_tokenizer(chat)
    shape = dict(vocab_size=len(tok), n_positions=256, n_embd=16, n_layer=1, n_head=2,
                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                 bos_token_id=tok.eos_token_id)
    common = dict(max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2, bf16=False,
                  activation_checkpointing=False, use_cpu=True, report_to=[],
                  save_strategy="no", max_length=256, dataloader_num_workers=0)
    policy = GPT2LMHeadModel(GPT2Config(**shape))
    before = [p.detach().clone() for p in policy.parameters()]
    dpo = DPOTrainer(model=policy, ref_model=copy.deepcopy(policy),
                     args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
                     train_dataset=ds, processing_class=tok)
    assert len(dpo.train_dataset) == len(ds)
    assert dpo.train().global_step == 1
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters(), strict=True))
    if reward:
        scorer = GPT2ForSequenceClassification(GPT2Config(num_labels=1, **shape))
        rm = RewardTrainer(model=scorer, args=RewardConfig(output_dir=str(tmp_path / "rm"),
                                                           **common),
                           train_dataset=ds, processing_class=tok)
        assert len(rm.train_dataset) == len(ds)
        assert rm.train().global_step == 1


# TRL's own trainer code asks transformers for is_gradient_checkpointing (deprecated in
# transformers 5); our trainers hide that, this test calls TRL directly.
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_export_trains_in_trl_dpo_and_reward(tmp_path):
    rows = UNICODE_ROWS + [{"prompt": f"q{i}", "chosen": f"yes {i}", "rejected": f"no {i}",
                            "rationale": "because", "source_id": i} for i in range(3)]
    import_jsonl(tmp_path / "s.db", write_jsonl(tmp_path / "in.jsonl", rows))
    out = tmp_path / "out.jsonl"
    # with annotator and rationale columns, and a kept field that is null on the first lines
    assert export_jsonl(tmp_path / "s.db", out) == 6
    assert [r["source_id"] for r in read_rows(out)] == [None, None, None, 0, 1, 2]
    _train_one_step(out, tmp_path)


# TRL's own trainer code asks transformers for is_gradient_checkpointing (deprecated in
# transformers 5); our trainers hide that, this test calls TRL directly.
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_conversational_export_trains_in_trl_dpo(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"question {i}?"}],
             "chosen": [{"role": "assistant", "content": f"good answer {i}"}],
             "rejected": [{"role": "assistant", "content": f"bad {i}"}]} for i in range(2)]
    import_jsonl(tmp_path / "s.db", write_jsonl(tmp_path / "in.jsonl", rows))
    out = tmp_path / "out.jsonl"
    export_jsonl(tmp_path / "s.db", out)
    assert isinstance(read_rows(out)[0]["chosen"], list)
    _train_one_step(out, tmp_path, reward=False, chat=True)


# ----------------------------------------------------------------------------- bad input via CLI


def run_cli(*args) -> subprocess.CompletedProcess:
    """The command, run in this process (no torch import per case); the process boundary
    itself is tested once, in test_bad_label_through_the_installed_command."""
    from rlhf_hgt.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_implicit_prompt_is_the_shared_start(tmp_path):
    """TRL's implicit-prompt form: no 'prompt'; it is what chosen and rejected share."""
    text = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    conv = {"chosen": [{"role": "user", "content": "Sky?"},
                       {"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "user", "content": "Sky?"},
                         {"role": "assistant", "content": "Green."}]}
    parsed = read_jsonl(write_jsonl(tmp_path / "imp.jsonl", [text, conv]))
    first, second = parsed.records
    assert (first.prompt, first.first, first.second) == ("The sky is", " blue.", " green.")
    assert second.messages == {"prompt": conv["chosen"][:1], "first": conv["chosen"][1:],
                               "second": conv["rejected"][1:]}
    # the same pairs written with explicit prompts are the same queries
    explicit = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    store = tmp_path / "s.db"
    import_jsonl(store, write_jsonl(tmp_path / "exp.jsonl", [explicit]))
    import_jsonl(store, tmp_path / "imp.jsonl")
    with PreferenceStore(store) as s:
        assert s.count_queries() == 2


GOOD = b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n'


def pending_with(fields: bytes) -> bytes:
    """A good line, then a pending query with these fields added."""
    return GOOD + b'{"prompt": "p", "a": "c", "b": "r", ' + fields + b"}\n"


BAD_FILES = {  # name: (content, line, words the message must hold)
    "malformed_json": (GOOD + b'{"prompt": "p", "chosen": \n', 2, ["malformed JSON"]),
    "not_an_object": (GOOD + b'["p", "c", "r"]\n', 2, ["not a JSON object"]),
    "missing_field": (GOOD + b'{"prompt": "p", "chosen": "c"}\n', 2, ["'rejected'", "missing"]),
    "no_shared_prompt": (GOOD + b'{"chosen": "Good film.", "rejected": "Dull."}\n', 2,
                         ["'prompt'", "shared prompt"]),
    "null_field": (GOOD + b'{"prompt": null, "chosen": "c", "rejected": "r"}\n', 2,
                   ["'prompt'"]),
    "non_string": (GOOD + b'{"prompt": "p", "chosen": 3, "rejected": "r"}\n', 2,
                   ["'chosen'", "string"]),
    "empty_prompt": (GOOD + b'{"prompt": "  ", "chosen": "c", "rejected": "r"}\n', 2,
                     ["'prompt'", "empty"]),
    "empty_response": (GOOD + b'{"prompt": "p", "a": "", "b": "r"}\n', 2, ["'a'", "empty"]),
    "mixed_forms": (GOOD + b'{"prompt": "p", "chosen": "c", "rejected": "r", "b": "x"}\n', 2,
                    ["'b'", "mixes"]),
    "same_sides": (GOOD + b'\n{"prompt": "p", "chosen": "c", "rejected": "c"}\n', 3,
                   ["'rejected'", "same"]),
    "bad_gold": (GOOD + b'{"prompt": "p", "a": "c", "b": "r", "gold": "left"}\n', 2,
                 ["'gold'"]),
    "bad_tie": (GOOD + b'{"prompt": "p", "chosen": "c", "rejected": "r", "tie": "yes"}\n', 2,
                ["'tie'"]),
    "bad_annotator": (GOOD + b'{"prompt": "p", "chosen": "c", "rejected": "r", '
                      b'"annotator": 7}\n', 2, ["'annotator'"]),
    "surrogate": (GOOD + b'{"prompt": "p\\ud800", "chosen": "c", "rejected": "r"}\n', 2,
                  ["'prompt'", "surrogate"]),
    "duplicate_key": (GOOD + b'{"prompt": "p", "prompt": "q", "chosen": "c", '
                      b'"rejected": "r"}\n', 2, ["'prompt'", "twice"]),
    "text_and_messages": (GOOD + b'{"prompt": [{"role": "user", "content": "p"}], '
                          b'"chosen": "c", "rejected": "r"}\n', 2, ["'chosen'", "messages"]),
    "bad_message": (GOOD + b'{"prompt": [{"role": "user", "content": ["p"]}], '
                    b'"chosen": [{"role": "assistant", "content": "c"}], '
                    b'"rejected": [{"role": "assistant", "content": "r"}]}\n', 2,
                    ["'prompt[0].content'"]),
    "bad_label": (pending_with(b'"label": "banana"'), 2,
                  ["'label'", '"a", "b", "tie" or "skip"', "banana"]),
    "label_not_a_string": (pending_with(b'"winner": 1'), 2, ["'winner'", "a number"]),
    "two_judgements": (pending_with(b'"label": "a", "choice": "b"'), 2,
                       ["'choice'", "two judgements"]),
    "judgement_on_labelled_pair": (GOOD + b'{"prompt": "p", "chosen": "c", "rejected": "r", '
                                   b'"label": "b"}\n', 2, ["'label'", "labelled pair"]),
    "unknown_judgement_field": (pending_with(b'"human_preference": "a"'), 2,
                                ["'human_preference'", "judgement", '"label"']),
    "chosen_side_field": (pending_with(b'"chosenSide": "a"'), 2, ["'chosenSide'", "judgement"]),
    "overall_preference": (pending_with(b'"overall_preference": -2'), 2,
                           ["'overall_preference'", "verdict"]),
    "votes_of_the_pair": (pending_with(b'"votes": ["a", "b", "a"]'), 2, ["'votes'", "verdict"]),
    "label_studio_min_choice": (pending_with(b'"pw": [{"selected": "left"}]'), 2,
                                ["'pw'", "Label Studio pairwise choice"]),
    "argilla_responses": (pending_with(b'"q": [{"user_id": "u", "value": ["b", "a"]}]'), 2,
                          ["'q'", "judgement"]),
    "answer_fields_without_judgement": (pending_with(b'"annotator": "x"'), 2,
                                        ["'annotator'", "no judgement"]),
    "label_studio_no_pairwise": (GOOD + b'{"data": {"prompt": "p", "answer1": "c", '
                                 b'"answer2": "r"}, "annotations": [{"result": [{"type": '
                                 b'"choices", "value": {"choices": ["1"]}}]}]}\n', 2,
                                 ["'annotations[0].result'", "no pairwise"]),
    "label_studio_bad_selected": (GOOD + b'{"data": {"prompt": "p", "answer1": "c", '
                                  b'"answer2": "r"}, "annotations": [{"result": [{"type": '
                                  b'"pairwise", "value": {"selected": "up"}}]}]}\n', 2,
                                  ["value.selected", "'up'"]),
    "label_studio_no_texts": (GOOD + b'{"data": {"prompt": "p", "x": "c", "y": "r"}}\n', 2,
                              ["'data'", "answer1"]),
    "label_studio_no_prompt": (GOOD + b'{"data": {"text1": "c", "text2": "r"}}\n', 2,
                               ["'prompt'", "data.prompt"]),
    "empty_file": (b"", None, ["no records"]),
    "blank_lines_only": (b"\n  \n\r\n", None, ["no records"]),
    "not_utf8": (GOOD + b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}\n', 2,
                 ["UTF-8", "byte offset 63"]),
}


@pytest.fixture
def seeded_store(tmp_path):
    store = tmp_path / "store.db"
    good = write_jsonl(tmp_path / "seed.jsonl", UNICODE_ROWS + [{"prompt": "w", "a": "1",
                                                                  "b": "2"}])
    import_jsonl(store, good)
    return store


def _assert_refused(result, name_in_message: str, line: int | None, words: list[str]):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert name_in_message in result.stderr
    if line is not None:
        assert f":{line}:" in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_refused_whole(case, tmp_path, seeded_store):
    content, line, words = BAD_FILES[case]
    bad = tmp_path / f"{case}.jsonl"
    bad.write_bytes(content)
    state = store_state(seeded_store)
    result = run_cli("feedback", "import", seeded_store, bad)
    _assert_refused(result, bad.name, line, words)
    assert store_state(seeded_store) == state
    # into a new store: nothing is created at all
    fresh = tmp_path / "fresh" / "new.db"
    _assert_refused(run_cli("feedback", "import", fresh, bad), bad.name, line, words)
    assert not fresh.exists() and not fresh.parent.exists()


def test_bad_label_through_the_installed_command(tmp_path, seeded_store):
    """The real process: exit code 2, one line on stderr, no traceback, nothing written."""
    bad = tmp_path / "banana.jsonl"
    write_jsonl(bad, [{"prompt": "p", "a": "x", "b": "y", "label": "banana"}])
    state = store_state(seeded_store)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", "feedback", "import",
                             str(seeded_store), str(bad)], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=120)
    _assert_refused(result, "banana.jsonl", 1, ["'label'", "banana"])
    assert store_state(seeded_store) == state


def test_missing_file_and_folder_are_refused(tmp_path, seeded_store):
    state = store_state(seeded_store)
    missing = tmp_path / "nope.jsonl"
    _assert_refused(run_cli("feedback", "import", seeded_store, missing), "nope.jsonl", None,
                    ["no such file"])
    folder = tmp_path / "adir"
    folder.mkdir()
    _assert_refused(run_cli("feedback", "import", seeded_store, folder), "adir", None,
                    ["folder"])
    assert store_state(seeded_store) == state


def test_swapped_arguments_name_the_url_without_its_password(tmp_path):
    """`feedback import FILE.jsonl URL` (the store second): one line saying the order, the
    password masked (it was printed, and the URL mangled to 'postgresql:/...')."""
    good = write_jsonl(tmp_path / "good.jsonl", UNICODE_ROWS)
    url = "postgresql://alice:S3cretPw99@127.0.0.1:1/rlhf"
    result = run_cli("feedback", "import", good, url)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "S3cretPw99" not in result.stderr + result.stdout
    assert "postgresql://alice:***@127.0.0.1:1/rlhf" in result.stderr
    assert "feedback import STORE FILE.jsonl" in result.stderr
    assert not good.with_suffix("").exists()


def test_bad_store_is_refused_untouched(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", UNICODE_ROWS)
    not_store = tmp_path / "notes.txt"
    not_store.write_text("just text\n")
    _assert_refused(run_cli("feedback", "import", not_store, good), "notes.txt", None,
                    ["not a preference store"])
    assert not_store.read_text() == "just text\n"
    newer = tmp_path / "newer.db"
    with PreferenceStore(newer) as s:
        s.set_setting("schema_version", "99")
    before = newer.read_bytes()
    _assert_refused(run_cli("feedback", "import", newer, good), "newer.db", None,
                    ["newer", "upgrade"])
    assert newer.read_bytes() == before
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    _assert_refused(run_cli("feedback", "import", other, good), "other.db", None,
                    ["not a preference store"])
    _assert_refused(run_cli("feedback", "export", tmp_path / "none.db",
                            tmp_path / "o.jsonl"), "none.db", None, ["no such store"])
    assert not (tmp_path / "o.jsonl").exists()


# ----------------------------------------------------------------------------- fuzz

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                               max_size=3),
    max_leaves=8)
odd_text = st.text(alphabet=st.characters(categories=["Cs", "Cc", "Zs", "Zl"]), max_size=4)
any_text = st.text(max_size=12) | odd_text
nonblank = st.text(min_size=1, max_size=20).filter(lambda s: s.strip())
message_lists = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": nonblank}),
    min_size=1, max_size=2)
ALL_KEYS = ["prompt", "chosen", "rejected", "a", "b", "tie", "gold", "annotator", "rationale",
            "source_a", "source_b", "other", "label", "winner", "data", "chosen_highlights",
            "rejected_highlights"]
span_lists = st.lists(st.lists(st.integers(-2, 25), min_size=2, max_size=2), max_size=3)
DELETE = object()


@st.composite
def valid_objects(draw) -> dict:
    """A record that should import: labelled or pending, text or conversational."""
    side = message_lists if draw(st.booleans()) else nonblank
    first, second = draw(side), draw(side)
    if draw(st.booleans()):
        obj = {"prompt": draw(side), "chosen": first, "rejected": second}
        extra = {"tie": st.booleans(), "annotator": nonblank, "rationale": any_text}
    else:
        obj = {"prompt": draw(side), "a": first, "b": second}
        extra = {"gold": st.sampled_from(["a", "b", "tie"]), "source_a": nonblank,
                 "source_b": nonblank, "label": st.sampled_from(["a", "b", "tie", "skip"]),
                 "other": json_values}
    for key, values in extra.items():
        if draw(st.booleans()):
            obj[key] = draw(values)
    return obj


@st.composite
def mutated_objects(draw) -> dict:
    """A valid record with a field or two deleted or replaced by anything, or a message broken."""
    obj = draw(valid_objects())
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(ALL_KEYS))
        value = draw(st.just(DELETE) | json_values | any_text | message_lists | span_lists)
        if value is DELETE:
            obj.pop(key, None)
        else:
            obj[key] = value
    if draw(st.booleans()):
        for value in obj.values():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                value[0][draw(st.sampled_from(["role", "content", "name"]))] = draw(
                    json_values | any_text)
                break
    return obj


objects = valid_objects() | mutated_objects() | st.dictionaries(
    st.sampled_from(ALL_KEYS), any_text | json_values | message_lists, max_size=7)


def _import_or_refuse(content: bytes) -> None:
    """Import must succeed or raise UserInputError naming the file, touching no store."""
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "fuzz.jsonl"
        f.write_bytes(content)
        store = Path(tmp) / "s.db"
        try:
            summary = import_jsonl(store, f)
        except UserInputError as exc:
            assert str(f) in str(exc)
            assert not store.exists()
            return
        assert summary.labelled_added + summary.pending_added + summary.skips_added >= 1
        export_jsonl(store, Path(tmp) / "out.jsonl")
        with PreferenceStore(store) as s:
            assert s.integrity_check() == "ok"


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(content):
    _import_or_refuse(content)


@FUZZ
@given(st.lists(json_values, min_size=1, max_size=4))
def test_fuzz_random_json_values(values):
    _import_or_refuse("\n".join(json.dumps(v) for v in values).encode())


@FUZZ
@given(st.lists(objects, min_size=1, max_size=4), st.booleans())
def test_fuzz_random_objects(objs, ascii_only):
    # ensure_ascii writes lone surrogates as \\udXXX escapes, the way other tools do
    lines = [json.dumps(o, ensure_ascii=ascii_only) for o in objs]
    try:
        content = "\n".join(lines).encode("utf-8")
    except UnicodeEncodeError:
        content = "\n".join(lines).encode("utf-8", "surrogatepass")  # not UTF-8 at all
    _import_or_refuse(content)


labelled_rows = st.fixed_dictionaries(
    {"prompt": nonblank, "chosen": nonblank, "rejected": nonblank},
    optional={"annotator": nonblank, "rationale": st.text(max_size=10), "tie": st.booleans()},
).filter(lambda r: r["chosen"] != r["rejected"])


@FUZZ
@given(st.lists(labelled_rows, min_size=1, max_size=6,
                unique_by=lambda r: (r["prompt"], frozenset((r["chosen"], r["rejected"])),
                                     r.get("annotator"))))
def test_fuzz_valid_records_round_trip(rows):
    with tempfile.TemporaryDirectory() as tmp:
        f = write_jsonl(Path(tmp) / "r.jsonl", rows)
        summary = import_jsonl(Path(tmp) / "s.db", f)
        assert (summary.labelled_added, summary.duplicates_skipped) == (len(rows), 0)
        out = Path(tmp) / "out.jsonl"
        n = export_jsonl(Path(tmp) / "s.db", out)
        kept = [dict(r, annotator=r.get("annotator", "import:r.jsonl")) for r in rows
                if not r.get("tie")]
        for r in kept:
            r.pop("tie", None)
        assert (int(n), n.ties_left_out) == (len(kept), len(rows) - len(kept))
        assert Counter(map(pair_key, read_rows(out))) == Counter(map(pair_key, kept))
        if kept:
            assert len(read_jsonl(out).records) == len(kept)


@st.composite
def highlighted_rows(draw) -> dict:
    """A labelled pair of any unicode text with spans inside each side (any order, overlaps)."""
    row = draw(labelled_rows)
    for name, text in (("chosen_highlights", row["chosen"]),
                       ("rejected_highlights", row["rejected"])):
        spans = []
        for _ in range(draw(st.integers(0, 3))):
            start = draw(st.integers(0, len(text) - 1))
            spans.append([start, draw(st.integers(start + 1, len(text)))])
        if spans or draw(st.booleans()):
            row[name] = spans
    return row


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(highlighted_rows(), min_size=1, max_size=4,
                unique_by=lambda r: (r["prompt"], frozenset((r["chosen"], r["rejected"])),
                                     r.get("annotator"))))
def test_fuzz_highlights_round_trip_on_any_unicode_text(rows):
    """Spans on any text (emoji, CJK, combining marks, control characters) come back from an
    export as the same characters, merged and sorted."""
    from rlhf_hgt.feedback.highlights import merge_spans

    with tempfile.TemporaryDirectory() as tmp:
        import_jsonl(Path(tmp) / "s.db", write_jsonl(Path(tmp) / "r.jsonl", rows))
        out = Path(tmp) / "out.jsonl"
        export_jsonl(Path(tmp) / "s.db", out)
        back = {pair_key(r)[:4]: r for r in read_rows(out)}
        for row in rows:
            if row.get("tie"):
                continue
            got = back[pair_key(dict(row, annotator=row.get("annotator", "import:r.jsonl")))[:4]]
            for name in ("chosen_highlights", "rejected_highlights"):
                want = merge_spans(row.get(name) or [])
                if any(r.get(name) for r in rows if not r.get("tie")):
                    assert got[name] == want
                text = got[name.split("_")[0]]
                assert [text[a:b] for a, b in got.get(name, [])] == [
                    row[name.split("_")[0]][a:b] for a, b in want]


def test_synthetic_flag_round_trips(tmp_path):
    from rlhf_hgt.feedback.store import PreferenceStore

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b",
                               "annotator": "teacher:oracle", "synthetic": True}) + "\n"
                   + json.dumps({"prompt": "q", "chosen": "c", "rejected": "d",
                                 "annotator": "ann"}) + "\n")
    import_jsonl(tmp_path / "s.db", src)
    with PreferenceStore(tmp_path / "s.db") as store:
        flags = {a.annotator: a.synthetic for a in store.answers()}
    assert flags == {"teacher:oracle": True, "ann": False}
    out = tmp_path / "out.jsonl"
    export_jsonl(tmp_path / "s.db", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["annotator"], r["synthetic"]) for r in rows) == [
        ("ann", False), ("teacher:oracle", True)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b",
                               "synthetic": "yes"}) + "\n")
    with pytest.raises(UserInputError, match="bad.jsonl:1.*synthetic"):
        import_jsonl(tmp_path / "s2.db", bad)
