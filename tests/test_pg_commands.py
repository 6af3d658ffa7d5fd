"""The commands that take a STORE, given a PostgreSQL team store's URL: ``feedback
import/export/stats``, ``lm reward --store URL`` (with its lineage) and ``attention mark URL``
(the marking prompt in a pty)."""

from __future__ import annotations

import json

from test_lm_reward_dpo import write_jsonl
from test_marks import finish, spawn

from rlhf_hgt.cli import main
from rlhf_hgt.feedback.marks import list_marks
from rlhf_hgt.feedback.store import PreferenceStore


def _cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out + err


def test_feedback_import_export_stats_match_sqlite(tmp_path, pg_url, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", n=10)
    outs = {}
    for name, where in (("sqlite", str(tmp_path / "s.db")), ("pg", pg_url)):
        code, text = _cli(capsys, "feedback", "import", where, str(data))
        assert code == 0, text
        code, text = _cli(capsys, "feedback", "stats", where, "--json")
        assert code == 0, text
        stats = json.loads(text)
        stats.pop("store")
        code, text = _cli(capsys, "feedback", "export", where, str(tmp_path / f"{name}.jsonl"))
        assert code == 0, text
        outs[name] = (stats, (tmp_path / f"{name}.jsonl").read_text())
    assert outs["sqlite"] == outs["pg"]
    assert outs["pg"][0]["answers"]["total"] == 10


def test_lm_reward_from_a_team_store_records_and_verifies_lineage(tmp_path, pg_url, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl")
    assert _cli(capsys, "feedback", "import", pg_url, str(data))[0] == 0
    out = tmp_path / "run"
    code, text = _cli(capsys, "lm", "reward", "--model", "tiny", "--store", pg_url, "--out",
                      str(out), "--max-steps", "2", "--quiet", "--lora-r", "4", "--seed", "3")
    assert code == 0, text
    assert json.loads((out / "metrics.json").read_text())["pairs"] == 24
    code, text = _cli(capsys, "lineage", str(out), "--json")
    assert code == 0, text
    with PreferenceStore(pg_url) as st:
        assert sorted(a["id"] for a in json.loads(text)["answers"]) == [
            a.id for a in st.answers()]
    code, text = _cli(capsys, "lineage", str(out), "--verify")
    assert code == 0, text


def test_attention_mark_prompt_on_a_team_store(pg_url):
    child = spawn(pg_url, n=3)
    child.expect_exact("left: 3")
    child.send(" ")
    child.expect_exact("marked (1)")
    child.send("\r")
    child.expect_exact("left: 2")
    child.send("s")
    child.expect_exact("left: 1")
    child.send("q")
    assert finish(child) == 0
    marks = list_marks(pg_url, "toy")
    assert [(m.image, m.skipped, m.annotator) for m in marks] == [
        (0, False, "alice"), (1, True, "alice")]
