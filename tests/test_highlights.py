"""Word highlights and feature marks: span checks, JSONL import/export round trips with unicode
text, bad spans refused through the CLI, the highlight editor and its word layout."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhf_hgt.cli import main as cli_main
from rlhf_hgt.feedback.highlights import (
    SpanError,
    check_spans,
    format_features,
    merge_spans,
    parse_features,
    spans_to_words,
    word_spans,
    words_to_spans,
)
from rlhf_hgt.feedback.jsonl import export_jsonl, import_jsonl, render_messages
from rlhf_hgt.feedback.reasons_prompt import HighlightEditor, highlight_view, layout_words
from rlhf_hgt.feedback.store import PreferenceStore, TextPair

EMOJI = "Loved it 🎉🎬 — the cast, naïve and cafe\u0301-sweet, was 最高 of all"
CJK = "つまらない 映画 です; dull and slow 👎🏽 sadly"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def span_of(text: str, word: str) -> list[int]:
    start = text.index(word)
    return [start, start + len(word)]


def store_state(path: Path) -> tuple:
    with PreferenceStore(path, create=False) as s:
        return s.count_queries(), len(s.answers(include_undone=True)), len(s.events())


# ----------------------------------------------------------------------------- spans


def test_spans_are_checked_sorted_and_merged() -> None:
    assert merge_spans([[8, 9], [0, 4], [3, 6], [6, 7]]) == [[0, 7], [8, 9]]
    assert check_spans([[5, 9], [0, 2], [1, 3]], "x" * 9, "f", "'t'") == [[0, 3], [5, 9]]
    assert check_spans(None, "abc", "f", "'t'") == [] and check_spans([], "", "f", "'t'") == []
    for bad, says in [([[0, 10]], "outside the text"), ([[3, 3]], "start must be below end"),
                      ([[-1, 2]], "outside"), ([[0, 1, 2]], "two whole numbers"),
                      ([[0.0, 1]], "two whole numbers"), ([[True, 2]], "two whole numbers"),
                      ([0, 1], "two whole numbers"), ("0-3", "must be a list")]:
        with pytest.raises(SpanError, match=says):
            check_spans(bad, "123456789", "chosen_highlights", "'chosen'")


def test_words_and_spans() -> None:
    text = "  naïve 🎉 cafe\u0301\nnext"
    words = word_spans(text)
    assert [text[s:e] for s, e in words] == ["naïve", "🎉", "cafe\u0301", "next"]
    assert words_to_spans(words, {0, 1, 3}) == [[2, 9], [text.index("next"), len(text)]]
    assert spans_to_words(words, [[3, 4], [10, 11]]) == {0, 2}
    assert parse_features(" 0, 1 4 - 5 ", 6) == [0, 1, 4, 5] and parse_features("", 3) == []
    assert format_features([5, 0, 1, 4]) == "0-1,4-5"
    for spec, says in [("x", "not a feature index"), ("3-1", "runs backwards"),
                       ("6", "out of range: this pair has 6")]:
        with pytest.raises(ValueError, match=says):
            parse_features(spec, 6)


def test_word_layout_counts_cells_and_folds_long_words() -> None:
    text = "日本語 abc " + "x" * 25 + "\n\nend"
    words = word_spans(text)
    lay = layout_words(text, words, 10)
    shown = ["".join(t for _, t in line) for line in lay.lines]
    assert shown == ["日本語 abc", "xxxxxxxxxx", "xxxxxxxxxx", "xxxxx", "", "end"]
    assert lay.where[0] == (0, 0) and lay.where[1] == (0, 7) and lay.where[3] == (5, 0)


def test_editor_keys_give_word_spans() -> None:
    left, right = "good acting here", "bad plot"
    ed = HighlightEditor(left, right)
    query = SimpleNamespace(id=1, prompt="p", left=left, right=right)
    for key in ["v", "\x1b[C", "v", "\t", " ", " ", " "]:
        assert ed.handle(key) is None
    assert ed.reasons() == {"highlights": {"left": [[0, 11]], "right": [[0, 3]]}}
    ed.handle("u")
    assert ed.reasons() == {"highlights": {"left": [[0, 11]], "right": []}}
    ed.handle("c")
    assert ed.reasons() is None
    ed.handle("\x7f")  # backspace undoes the clear
    assert ed.reasons() == {"highlights": {"left": [[0, 11]], "right": []}}
    view, _, _ = highlight_view(query, 80, 20, editor=ed)
    assert any("\x1b[30;43mgood\x1b[0m" in line for line in view.lines)
    assert ed.handle("\x1b") == "cancel" and ed.handle("\n") == "keep"
    again = HighlightEditor(left, right, ed.reasons())  # stored spans come back as words
    assert again.picked == [{0, 1}, set()]


# ----------------------------------------------------------------------------- JSONL


def test_import_export_round_trip_keeps_unicode_offsets(tmp_path: Path) -> None:
    conv_chosen = [{"role": "assistant", "content": "Sure 👍 — très bien"}]
    conv_rejected = [{"role": "assistant", "content": "No."}]
    rendered = render_messages(conv_chosen)
    rows = [
        {"prompt": "Review 日本", "chosen": EMOJI, "rejected": CJK, "annotator": "ana",
         "chosen_highlights": [span_of(EMOJI, "🎉🎬"), span_of(EMOJI, "最高"),
                               span_of(EMOJI, "cafe\u0301-sweet")],
         "rejected_highlights": [span_of(CJK, "映画"), span_of(CJK, "👎🏽")]},
        {"prompt": "plain", "chosen": "fine words", "rejected": "bad words"},
        {"prompt": "judged", "a": "weak reply", "b": "strong reply 💪", "label": "b",
         "chosen_highlights": [[0, 6], [3, 12]]},  # overlapping: merged
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": conv_chosen,
         "rejected": conv_rejected, "chosen_highlights": [span_of(rendered, "👍")]},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = import_jsonl(tmp_path / "s.db", src)
    assert summary.labelled_added == 4 and summary.highlighted == 3
    assert "stored word highlights with 3 answers" in summary.describe()
    with PreferenceStore(tmp_path / "s.db", create=False) as store:
        events = store.events("fields")
        assert all("chosen_highlights" not in e["data"] for e in events)  # not kept fields
        assert len(store.reasons()) == 3

    # text lines: the export is written as text (a conversation is flattened with role lines)
    out = tmp_path / "out.jsonl"
    export_jsonl(tmp_path / "s.db", out)
    back = {json.dumps(r["prompt"], ensure_ascii=False): r for r in read_rows(out)}
    first = back['"Review 日本"']
    assert first["chosen"] == EMOJI and first["rejected"] == CJK
    assert first["chosen_highlights"] == sorted(rows[0]["chosen_highlights"])
    assert [EMOJI[s:e] for s, e in first["chosen_highlights"]] == [
        "🎉🎬", "cafe\u0301-sweet", "最高"]
    assert [CJK[s:e] for s, e in first["rejected_highlights"]] == ["映画", "👎🏽"]
    assert back['"plain"']["chosen_highlights"] == [] == back['"plain"']["rejected_highlights"]
    judged = back['"judged"']
    assert judged["chosen"] == "strong reply 💪" and judged["chosen_highlights"] == [[0, 12]]
    conv = next(r for r in back.values() if r["chosen"].startswith("<|assistant|>"))
    assert [conv["chosen"][s:e] for s, e in conv["chosen_highlights"]] == ["👍"]

    # and the export imports again into a new store with the same reasons
    import_jsonl(tmp_path / "again.db", out)
    export_jsonl(tmp_path / "again.db", tmp_path / "again.jsonl")
    assert read_rows(tmp_path / "again.jsonl") == read_rows(out)


def test_conversations_export_as_messages_with_their_offsets(tmp_path: Path) -> None:
    chosen = [{"role": "assistant", "content": "Ja, gerne 🙂"}]
    rendered = render_messages(chosen)
    row = {"prompt": [{"role": "user", "content": "Hilfe?"}], "chosen": chosen,
           "rejected": [{"role": "assistant", "content": "Nein."}],
           "chosen_highlights": [span_of(rendered, "gerne 🙂")], "rejected_highlights": None}
    import_jsonl(tmp_path / "s.db", write_jsonl(tmp_path / "c.jsonl", [row]))
    export_jsonl(tmp_path / "s.db", tmp_path / "out.jsonl")
    (back,) = read_rows(tmp_path / "out.jsonl")
    assert back["chosen"] == chosen and back["chosen_highlights"] == row["chosen_highlights"]
    assert back["rejected_highlights"] == []


def test_implicit_prompt_offsets_count_in_the_field_as_written(tmp_path: Path) -> None:
    chosen, rejected = "Q: 日本? yes indeed", "Q: 日本? no way"
    row = {"chosen": chosen, "rejected": rejected,
           "chosen_highlights": [span_of(chosen, "indeed")]}
    import_jsonl(tmp_path / "s.db", write_jsonl(tmp_path / "i.jsonl", [row]))
    export_jsonl(tmp_path / "s.db", tmp_path / "out.jsonl")
    (back,) = read_rows(tmp_path / "out.jsonl")
    assert back["prompt"] + back["chosen"] == chosen
    assert [back["chosen"][s:e] for s, e in back["chosen_highlights"]] == ["indeed"]


def test_highlights_on_a_tie_keep_their_sides(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with PreferenceStore(path) as store:  # stored as (b, a): the line's chosen is on the right
        store.add_text_queries([TextPair("p", "second", "first")])
    row = {"prompt": "p", "chosen": "first", "rejected": "second", "tie": True,
           "chosen_highlights": [[0, 5]]}
    import_jsonl(path, write_jsonl(tmp_path / "t.jsonl", [row]))
    with PreferenceStore(path, create=False) as store:
        (reasons,) = store.reasons().values()
    assert reasons == {"highlights": {"left": [], "right": [[0, 5]]}}


BAD = [
    ({"prompt": "p", "chosen": "short", "rejected": "r", "chosen_highlights": [[0, 6]]},
     "field 'chosen_highlights[0]': span [0, 6]: it lies outside the text", "5 characters"),
    ({"prompt": "p", "chosen": "c", "rejected": "r 🎉", "rejected_highlights": [[2, 1]]},
     "field 'rejected_highlights[0]': span [2, 1]: start must be below end", "<= 3"),
    ({"prompt": "p", "chosen": "c", "rejected": "r", "chosen_highlights": "0-1"},
     "field 'chosen_highlights': must be a list of [start, end] spans", "e.g. [[0, 5]"),
    ({"prompt": "p", "chosen": "c", "rejected": "r", "chosen_highlights": [[0, 1.5]]},
     "field 'chosen_highlights[0]': [0, 1.5] is not a span of two whole numbers", "[start"),
    ({"prompt": "p", "a": "x", "b": "y", "chosen_highlights": [[0, 1]]},
     "field 'chosen_highlights': highlights belong to an answer", "labelled pair"),
    ({"prompt": "p", "a": "x", "b": "y", "label": "tie", "rejected_highlights": [[0, 1]]},
     "field 'rejected_highlights': highlights belong to an answer", "is a tie"),
    ({"chosen": "Q? yes", "rejected": "Q? no", "chosen_highlights": [[0, 6]]},
     "field 'chosen_highlights': span [0, 6] lies in the prompt that 'chosen' and "
     "'rejected' share", "at or after 2"),
]


@pytest.mark.parametrize("row,says,fix", BAD)
def test_a_bad_span_exits_2_and_writes_nothing(tmp_path: Path, capsys, row, says, fix) -> None:
    store = tmp_path / "s.db"
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "p0", "chosen": "a", "rejected": "b"}])
    assert cli_main(["feedback", "import", str(store), str(good)]) == 0
    before = store_state(store)
    capsys.readouterr()
    bad = write_jsonl(tmp_path / "bad.jsonl",
                      [{"prompt": "ok", "chosen": "fine", "rejected": "poor"}, row])
    assert cli_main(["feedback", "import", str(store), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"bad.jsonl:2: {says}" in err and fix in err
    assert store_state(store) == before  # nothing written, not even the good first line
    assert cli_main(["feedback", "import", str(tmp_path / "new.db"), str(bad)]) == 2
    assert not (tmp_path / "new.db").exists()
