"""Lineage: the answers behind each checkpoint, recorded as the loops write them, read back by
`rlhf-hgt lineage`, and checked by `--verify` against the files and the store (a changed
answer row, a changed checkpoint file, a run killed between a checkpoint and its record)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from rlhf_hgt.cli import main as cli_main
from rlhf_hgt.feedback.records import TextPair
from rlhf_hgt.feedback.store import PreferenceStore
from rlhf_hgt.governance import lineage
from rlhf_hgt.governance.manifest import file_sha256


def _tampered(path: Path) -> sqlite3.Connection:
    """A raw connection to change a store behind its back: the database refuses to change or
    remove an answer, event or mark, so the tamperer first drops its append-only triggers."""
    db = sqlite3.connect(path)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    return db


def lineage_json(capsys: pytest.CaptureFixture, run: Path, *more: str) -> dict:
    capsys.readouterr()
    assert cli_main(["lineage", str(run), "--json", *more]) == 0
    return json.loads(capsys.readouterr().out)


def verify(capsys: pytest.CaptureFixture, run: Path) -> tuple[int, str]:
    capsys.readouterr()
    code = cli_main(["lineage", str(run), "--verify"])
    return code, capsys.readouterr().out


def text_store(path: Path, n: int = 6) -> PreferenceStore:
    store = PreferenceStore(path)
    ids = store.add_text_queries([TextPair(f"Q{i}: ", "a" * (4 + i % 3), "b" * (4 + i % 2),
                                           source_a="policy:1", source_b="policy:2")
                                  for i in range(n)])
    for qid in ids:
        store.record_answer(qid, "left" if qid % 3 else "tie",
                            "alice" if qid % 2 else "teacher:oracle", synthetic=qid % 2 == 0,
                            shown_at=1000.0 + qid, answered_at=1003.0 + qid)
    return store


# ----------------------------------------------------------------------------- fast: the record


def test_record_and_verify_name_a_changed_answer_a_removed_one_and_a_changed_file(
        tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    store = text_store(run / "feedback.db")
    store.record_reasons(2, {"highlights": {"left": [[0, 2]], "right": []}})
    (run / "model.safetensors").write_bytes(b"weights-0")
    used = lineage.store_text_answer_ids(store)
    entry = lineage.record_checkpoint(run, store, "final", [run / "model.safetensors"], used,
                                      role="model")
    store.close()
    assert entry["files"] == {"model.safetensors": file_sha256(run / "model.safetensors")}
    assert entry["answer_ids"] == used == [1, 2, 3, 4, 5, 6]
    assert set(entry["answer_hashes"]) == {str(i) for i in used}

    obj = lineage_json(capsys, run)
    assert [a["id"] for a in obj["answers"]] == used
    assert obj["annotators"] == {"alice": 3, "teacher:oracle": 3}
    assert obj["teachers"] == {"human": 3, "synthetic": 3}
    first = obj["answers"][0]
    assert (first["left_source"], first["right_source"]) == ("policy:1", "policy:2")
    assert first["response_time"] == pytest.approx(3.0)
    assert obj["answers"][1]["reasons"] == {"highlights": {"left": [[0, 2]], "right": []}}
    assert obj["guidance"]["word_highlights"] == 1
    assert obj["checkpoints"][0]["sha256"] == file_sha256(run / "model.safetensors")

    assert verify(capsys, run)[0] == 0
    # later appends (a new answer, an oversight act) are no change to what was used
    with PreferenceStore(run / "feedback.db") as st:
        st.record_answer(st.add_text_queries([TextPair("new", "x", "y")])[0], "left", "bob")
        st.log_event("oversight", "carol", {"act": "pause", "reason": "look"})
    assert verify(capsys, run)[0] == 0

    altered = shutil.copytree(run, tmp_path / "altered")
    with _tampered(altered / "feedback.db") as db:
        db.execute("UPDATE answers SET answer = 'right' WHERE id = 4")
    code, out = verify(capsys, altered)
    assert code == 1 and "answer 4 changed" in out
    assert "answer 1 " not in out and "answer 2 " not in out

    removed = shutil.copytree(run, tmp_path / "removed")
    with _tampered(removed / "feedback.db") as db:
        db.execute("PRAGMA foreign_keys = OFF")
        db.execute("DELETE FROM events WHERE answer_id = 5")
        db.execute("DELETE FROM answers WHERE id = 5")
    code, out = verify(capsys, removed)
    assert code == 1 and "answer 5 removed" in out

    reasons = shutil.copytree(run, tmp_path / "reasons")
    with _tampered(reasons / "feedback.db") as db:
        db.execute("UPDATE events SET data = '{\"highlights\": {\"left\": [], \"right\": "
                   "[[0, 1]]}}' WHERE kind = 'reasons'")
    code, out = verify(capsys, reasons)
    assert code == 1 and "answer 2 changed" in out and "events" in out

    (run / "model.safetensors").write_bytes(b"weights-1")
    code, out = verify(capsys, run)
    assert code == 1 and "model.safetensors changed" in out


def test_a_data_file_run_lists_its_lines_and_the_file_hash(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "p", "chosen": "a", "rejected": "b", "annotator": "ann"},
        {"prompt": "q", "a": "x", "b": "y"},  # pending: not a label
        {"prompt": "r", "chosen": "c", "rejected": "d"}]) + "\n")
    (run / "adapter_model.safetensors").write_bytes(b"w")
    lineage.record_checkpoint(run, None, "final", [run], None, data=lineage.jsonl_lines(data))
    obj = lineage_json(capsys, run)
    assert [(a["line"], a["annotator"]) for a in obj["answers"]] == [(1, "ann"), (3, None)]
    assert obj["data"]["sha256"] == file_sha256(data)
    assert obj["annotators"] == {"ann": 1, "not named": 1}
    assert verify(capsys, run)[0] == 0
    data.write_text(data.read_text() + json.dumps({"prompt": "s", "chosen": "e",
                                                   "rejected": "f"}) + "\n")
    code, out = verify(capsys, run)
    assert code == 1 and "pairs.jsonl: changed" in out


def test_a_reject_line_names_the_checkpoint_it_rejected(tmp_path, capsys):
    from rlhf_hgt.governance.oversight import record_act

    run = tmp_path / "run"
    run.mkdir()
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    (run / "adapter_model.safetensors").write_bytes(b"w")
    lineage.record_checkpoint(run, None, "final", [run], None, data=lineage.jsonl_lines(data))
    (run / "state.json").write_text(json.dumps({"round": 2}))
    record_act(run, "reject", "unsafe", "bob")
    capsys.readouterr()
    assert cli_main(["lineage", str(run)]) == 0
    assert "reject of round-002 by bob: unsafe" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "file", "not-a-run", "no-lineage", "no-store"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    target = tmp_path / "run"
    if case == "file":
        target.write_text("x")
    elif case != "missing":
        target.mkdir()
    if case == "no-lineage":
        (target / "manifest.json").write_text("{}")
    if case == "no-store":
        text_store(target / "feedback.db").close()
        (target / "m.safetensors").write_bytes(b"w")
        lineage.record_checkpoint(target, target / "feedback.db", "final",
                                  [target / "m.safetensors"], [1, 2])
        (target / "feedback.db").unlink()
    for extra in ([], ["--verify"]) if case != "no-store" else ([],):
        capsys.readouterr()
        assert cli_main(["lineage", str(target), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(target) in err and "Traceback" not in err


# ----------------------------------------------------------------------------- control runs


def _control(out: Path, rounds: int = 2, labels: int = 6, progress=None) -> dict:
    from rlhf_hgt.control.agents import AgentConfig
    from rlhf_hgt.control.loop import ControlConfig, run_control

    cfg = ControlConfig(env_id="CartPole-v1", out=str(out), teacher="oracle", labels=labels,
                        timesteps=64 * rounds, rounds=rounds, segment_length=10,
                        eval_episodes=1, agent=AgentConfig(n_envs=1, n_steps=64))
    return run_control(cfg, **({"progress": progress} if progress else {}))


@pytest.fixture(scope="module")
def control_run(tmp_path_factory) -> Path:
    """A 2-round control run; before round 1's answers, answer 1 is undone."""
    out = tmp_path_factory.mktemp("control") / "run"

    def undo_first(event: str, info: dict) -> None:
        if event == "queries" and info.get("round") == 1:
            with PreferenceStore(out / "feedback.db") as st:
                st.undo(1, reason="a slip")

    _control(out, progress=undo_first)
    return out


@pytest.mark.slow
def test_control_lineage_is_the_stores_active_answers_with_checkpoints_in_order(
        control_run, capsys):
    run = control_run
    obj = lineage_json(capsys, run)
    with PreferenceStore(run / "feedback.db", create=False) as st:
        active = [a for a in st.answers(kind="segment") if a.answer != "skip"]
        first_round = set(st.query_ids(round=0))
        all_answers = st.answers(include_undone=True)
    assert [a["id"] for a in obj["answers"]] == [a.id for a in active]
    assert 1 not in [a["id"] for a in obj["answers"]]  # undone before the last fit
    assert obj["annotators"] == {"teacher:oracle": len(active)}
    assert obj["kind"] == "control" and obj["checkpoint"] == "final"
    names = [c["checkpoint"] for c in obj["checkpoints"]]
    assert names == ["round-000", "round-001", "final"]
    round0 = obj["checkpoints"][0]
    assert set(round0["answer_ids"]) == {a.id for a in all_answers if a.query_id in first_round}
    assert 1 in round0["answer_ids"]  # round 0 did learn from it
    for c in obj["checkpoints"]:
        for rel, sha in c["files"].items():
            assert sha == file_sha256(run / rel)
    assert any(r.endswith("policy.safetensors") for r in round0["files"])
    # --checkpoint FILE: the answers that round 0 saw
    policy0 = run / "rounds" / "round-000" / "checkpoints" / "policy.safetensors"
    only = lineage_json(capsys, run, "--checkpoint", str(policy0))
    assert only["checkpoint"] == "round-000"
    assert [a["id"] for a in only["answers"]] == round0["answer_ids"]
    assert set(only) >= {"answers", "annotators", "checkpoints"}
    assert all({"id", "annotator", "answer"} <= set(a) for a in only["answers"])
    capsys.readouterr()
    assert cli_main(["lineage", str(run)]) == 0
    text = capsys.readouterr().out
    assert "round-001" in text and "teacher:oracle" in text


@pytest.mark.slow
def test_control_verify_holds_then_names_the_altered_answer_and_file(
        control_run, capsys, tmp_path):
    code, out = verify(capsys, control_run)
    assert code == 0, out
    assert "note: round-000: learned from answer(s) 1, undone afterwards" in out
    run = shutil.copytree(control_run, tmp_path / "run")
    with _tampered(run / "feedback.db") as db:
        db.execute("UPDATE answers SET annotator = 'mallory' WHERE id = 3")
    code, out = verify(capsys, run)
    assert code == 1 and "answer 3 changed" in out
    run2 = shutil.copytree(control_run, tmp_path / "run2")
    target = run2 / "rounds" / "round-001" / "checkpoints" / "policy.safetensors"
    target.write_bytes(target.read_bytes()[:-4] + b"\0\0\0\0")
    code, out = verify(capsys, run2)
    assert code == 1 and "rounds/round-001/checkpoints/policy.safetensors changed" in out


@pytest.mark.slow
def test_a_run_killed_between_a_checkpoint_and_its_record_is_right_after_resuming(
        tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = lineage.record_checkpoint

    def die_after_round_1(run_dir, store, name, *args, **kwargs):
        if name == "round-001":
            raise KeyboardInterrupt  # the process dies after the checkpoint, before its line
        return real(run_dir, store, name, *args, **kwargs)

    monkeypatch.setattr(lineage, "record_checkpoint", die_after_round_1)
    with pytest.raises(KeyboardInterrupt):
        _control(out, rounds=3, labels=9)
    assert json.loads((out / "state.json").read_text())["round"] == 1
    monkeypatch.setattr(lineage, "record_checkpoint", real)
    _control(out, rounds=3, labels=9)  # resumes at round 2
    obj = lineage_json(capsys, out)
    by_name = {c["checkpoint"]: c for c in obj["checkpoints"]}
    assert set(by_name) == {"round-000", "round-001", "round-002", "final"}
    assert by_name["round-001"].get("recorded_late") is True
    with PreferenceStore(out / "feedback.db", create=False) as st:
        def ids_upto(rnd: int) -> list[int]:
            qs = {q for r in range(rnd + 1) for q in st.query_ids(round=r)}
            return [a.id for a in st.answers() if a.query_id in qs]

        assert by_name["round-001"]["answer_ids"] == ids_upto(1)
        assert by_name["round-002"]["answer_ids"] == ids_upto(2) == \
            [a["id"] for a in obj["answers"]]
    assert verify(capsys, out)[0] == 0


# ----------------------------------------------------------------------------- lm and attention


@pytest.mark.slow
def test_lm_reward_from_a_store_lists_its_active_answers(tmp_path, capsys):
    store_path = tmp_path / "prefs.db"
    with text_store(store_path, n=12) as st:
        st.undo(3)
        st.record_answer(st.add_text_queries([TextPair("Q: ", "s", "t")])[0], "skip", "alice")
    out = tmp_path / "rm"
    assert cli_main(["lm", "reward", "--model", "tiny", "--store", str(store_path), "--out",
                     str(out), "--max-steps", "1", "--quiet", "--lora-r", "4"]) == 0
    obj = lineage_json(capsys, out)
    with PreferenceStore(store_path, create=False) as st:
        expected = [a.id for a in st.answers(kind="text") if a.answer != "skip"]
    assert 3 not in expected and [a["id"] for a in obj["answers"]] == expected
    assert obj["kind"] == "lm reward" and obj["checkpoints"][0]["role"] == "reward model"
    assert any(f.endswith(".safetensors") for f in obj["checkpoints"][0]["files"])
    assert verify(capsys, out)[0] == 0
    # PPO against that reward model: its policy learned from the reward model's answers
    ppo = tmp_path / "ppo"
    assert cli_main(["lm", "ppo", "--prompt", "Say hi", "--out", str(ppo), "--model", "tiny",
                     "--reward-model", str(out), "--steps", "1", "--batch-size", "2",
                     "--mini-batch-size", "2", "--max-new-tokens", "4", "--lora-r", "2",
                     "--device", "cpu", "--quiet"]) == 0
    policy = lineage_json(capsys, ppo)
    assert [a["id"] for a in policy["answers"]] == expected
    assert policy["inherits"]["run"] == str(out.resolve())
    assert verify(capsys, ppo)[0] == 0


@pytest.mark.slow
def test_attention_marks_are_the_labels_of_an_attention_run(tmp_path, capsys):
    from rlhf_hgt.attention import data as D
    from rlhf_hgt.attention.train import AttentionConfig, run_attention
    from rlhf_hgt.feedback.marks import list_marks, synthetic_marks, undo_mark

    npz = tmp_path / "bars.npz"
    np.savez(npz, **D.bars_task(48, 10, 0, corner=1))
    data = D.load_npz(npz)
    store = tmp_path / "marks.db"
    synthetic_marks(store, data.dataset_id, data.mask_train, grid=5, indices=range(0, 48, 2))
    undo_mark(store, 1)
    out = tmp_path / "run"
    run_attention(AttentionConfig(data=str(npz), out=str(out), method="rrr", epochs=1,
                                  marks=str(store)))
    obj = lineage_json(capsys, out)
    used = [m.id for m in list_marks(store, data.dataset_id) if m.cells]
    assert 1 not in used and [m["id"] for m in obj["marks"]] == used
    assert obj["annotators"] == {"marker:synthetic": len(used)}
    assert obj["guidance"]["attention_marks"] == len(used)
    assert obj["checkpoints"][0]["sha256"] == file_sha256(out / "model.safetensors")
    assert verify(capsys, out)[0] == 0
    with _tampered(store) as db:
        db.execute(f"UPDATE marks SET cells = '[]' WHERE id = {used[0]}")
    code, text = verify(capsys, out)
    assert code == 1 and f"mark {used[0]} changed" in text
