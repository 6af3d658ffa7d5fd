"""A person's hand on a run (``rlhf-hgt oversee``): pause, resume, stop, reject, rollback,
written from another process and obeyed by a running control loop at its safe points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.procs import peek_stderr

from rlhf_hgt.feedback.store import PreferenceStore
from rlhf_hgt.governance.oversight import Overseer, record_act

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
TINY = ["--n-envs", "2", "--segment-length", "10", "--eval-episodes", "3"]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _start(out: Path, rounds: int, timesteps: int) -> subprocess.Popen:
    args = ["CartPole-v1", "--labels", str(4 * rounds), "--timesteps", str(timesteps),
            "--rounds", str(rounds), "--out", str(out), *TINY]
    return subprocess.Popen([sys.executable, "-m", "rlhf_hgt.cli", "control", *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _state(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait_round(out: Path, at_least: int, proc: subprocess.Popen, limit: float = 240) -> int:
    deadline = time.time() + limit
    while time.time() < deadline:
        rnd = _state(out).get("round", -1)
        if rnd >= at_least:
            return rnd
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.1)
    raise AssertionError(f"round {at_least} not reached in {limit}s")


# ----------------------------------------------------------------------------- the record


def test_acts_are_written_with_who_when_why_and_bad_ones_exit_2(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    done = _cli("oversee", str(run), "pause", "--reason", "checking the clips", "--by", "ana")
    assert done.returncode == 0, done.stderr
    assert "pause recorded" in done.stdout
    with PreferenceStore(run / "feedback.db", create=False) as store:
        (event,) = store.events("oversight")
    assert event["annotator"] == "ana" and event["at"] > 0
    assert event["data"] | {"run": None} == {"act": "pause", "reason": "checking the clips",
                                             "by": "ana", "run": None}
    for args, message in [
        (["pause", "--reason", "  "], "--reason: say why"),
        (["rollback", "--reason", "x"], "rollback needs --to"),
        (["rollback", "--to", "2", "--reason", "x"], "keeps no checkpoint of round 2"),
        (["stop", "--to", "2", "--reason", "x"], "--to is for rollback only"),
        (["rollback", "--to", "two", "--reason", "x"], "give a round number"),
    ]:
        bad = _cli("oversee", str(run), *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert message in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli("oversee", str(tmp_path / "nope"), "stop", "--reason", "x")
    assert missing.returncode == 2 and "no such run folder" in missing.stderr
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")  # a folder with files, none of a run's
    refused = _cli("oversee", str(other), "pause", "--reason", "x")
    assert refused.returncode == 2 and "not a run folder" in refused.stderr
    assert not (other / "feedback.db").exists()
    with PreferenceStore(run / "feedback.db", create=False) as store:
        assert len(store.events("oversight")) == 1  # nothing half written by the bad ones


def test_round_numbers_from_1_and_from_0_are_told_apart(tmp_path):
    """A control run prints 'round 1/N' for rounds/round-000: `--to 1` after seeing it is
    refused with the number to give, and a rollback names the folder it continues from."""
    import io

    from rich.console import Console

    from rlhf_hgt.cli.control import _progress

    run = tmp_path / "run"
    (run / "rounds" / "round-000").mkdir(parents=True)
    (run / "rounds" / "round-000" / "state.json").write_text("{}")
    bad = _cli("oversee", str(run), "rollback", "--to", "1", "--reason", "x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "kept: 0;" in bad.stderr and "'round 1/N' is --to 0" in bad.stderr
    buf = io.StringIO()
    _progress(Console(file=buf, width=200), 4)("rolled_back", {"round": 0, "act": "rollback"})
    assert buf.getvalue().strip() == "continuing from round 1's checkpoint (rounds/round-000)"


def test_a_pause_holds_the_gate_until_resume_and_old_acts_are_history(tmp_path):
    record_act(tmp_path, "stop", "an earlier run's stop", "bo")  # before the loop started
    overseer = Overseer(tmp_path, poll_seconds=0.05)
    assert overseer.gate(force=True) and overseer.pending is None
    record_act(tmp_path, "pause", "look at round 3", "ana")
    resumer = threading.Timer(1.0, record_act, (tmp_path, "resume", "looks fine", "ana"))
    t0 = time.monotonic()
    resumer.start()
    assert overseer.gate(force=True) is True  # held here until the resume
    assert time.monotonic() - t0 >= 0.9
    assert [a["act"] for a in overseer.acts] == ["pause", "resume"]
    record_act(tmp_path, "stop", "enough", "ana")
    assert overseer.gate(force=True) is False and overseer.pending["act"] == "stop"
    overseer.done()
    assert overseer.summary()["stopped"]["by"] == "ana"
    overseer.close()


def test_acts_that_arrive_together_are_all_obeyed_in_order(tmp_path):
    overseer = Overseer(tmp_path, poll_seconds=0.05)
    record_act(tmp_path, "reject", "bad round", "ana")
    record_act(tmp_path, "stop", "and stop", "bo")  # in the same poll window
    assert overseer.gate(force=True) is False and overseer.pending["act"] == "reject"
    overseer.done()
    assert overseer.gate() is False and overseer.pending["act"] == "stop"
    overseer.done()
    assert overseer.stopped["by"] == "bo"
    assert [a["act"] for a in overseer.acts] == ["reject", "stop"]
    overseer.close()


# ----------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_a_run_stopped_from_another_process_ends_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, rounds=30, timesteps=30 * 1024)
    _wait_round(out, 0, proc)
    stop = _cli("oversee", str(out), "stop", "--reason", "reward hacking seen", "--by", "ana")
    assert stop.returncode == 0, stop.stderr
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by ana: reward hacking seen" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "stopped by ana: reward hacking seen"
    assert metrics["oversight"]["stopped"]["reason"] == "reward hacking seen"
    assert len(metrics["history"]) < 30  # it did not run to the end
    assert (out / "manifest.json").is_file() and (out / "checkpoints" / "README.md").is_file()
    report = _cli("report", str(out))
    assert report.returncode == 0, report.stderr
    html = (out / "report.html").read_text()
    assert "reward hacking seen" in html and "stop" in html


@pytest.mark.slow
def test_a_pause_from_another_process_holds_training_until_resume(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, rounds=30, timesteps=30 * 1024)
    _wait_round(out, 0, proc)
    assert _cli("oversee", str(out), "pause", "--reason", "lunch").returncode == 0
    deadline = time.time() + 60  # until the loop says it holds (a round may finish first)
    while "paused by" not in peek_stderr(proc) and time.time() < deadline:
        assert proc.poll() is None
        time.sleep(0.1)
    held = _state(out)["round"]
    time.sleep(4.0)
    assert _state(out)["round"] == held, "training went on while paused"
    assert proc.poll() is None
    assert _cli("oversee", str(out), "resume", "--reason", "back").returncode == 0
    _wait_round(out, held + 1, proc, limit=120)
    assert _cli("oversee", str(out), "stop", "--reason", "done").returncode == 0
    err = peek_stderr(proc) + proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, err
    assert "paused" in err and "resumed" in err
    acts = [a["act"] for a in json.loads((out / "metrics.json").read_text())["oversight"]["acts"]]
    assert acts == ["pause", "resume", "stop"]


@pytest.mark.slow
def test_a_rollback_from_another_process_continues_from_that_round(tmp_path):
    out = tmp_path / "run"
    per_round = 1024  # CartPole PPO: n_steps 512 x 2 envs
    proc = _start(out, rounds=30, timesteps=30 * per_round)
    _wait_round(out, 2, proc)
    round0 = json.loads((out / "rounds" / "round-000" / "state.json").read_text())
    back = _cli("oversee", str(out), "rollback", "--to", "0", "--reason", "round 1 drifted")
    assert back.returncode == 0, back.stderr
    deadline = time.time() + 180
    while time.time() < deadline and not _state(out).get("generation"):
        time.sleep(0.1)
    state = _state(out)
    assert state.get("generation") == 1, "no round was saved after the rollback"
    assert _cli("oversee", str(out), "stop", "--reason", "seen enough").returncode == 0
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    # the first round trained after the rollback is round 1 again, from round 0's weights:
    # its step count continues round 0's, not the rounds thrown away
    assert state["round"] == 1 and state["checkpoint"] == "round-001.1"
    assert state["history"][0] == round0["history"][0]
    assert state["history"][1]["timesteps"] == round0["num_timesteps"] + per_round
    assert (out / "rounds" / "round-001").is_dir()  # the old round 1 is kept, not overwritten
    with PreferenceStore(out / "feedback.db", create=False) as store:
        sources = {q.left_source for q in store.queries()}
    assert any(s.endswith(":g1") for s in sources)  # new clips were asked for after it


@pytest.mark.slow
def test_a_rejected_checkpoint_is_neither_resumed_nor_the_result(tmp_path):
    from rlhf_hgt.control.loop import ControlConfig, run_control

    out = tmp_path / "run"
    cfg = ControlConfig(env_id="CartPole-v1", out=str(out), teacher="oracle", labels=12,
                        timesteps=3 * 1024, rounds=3, segment_length=10, eval_episodes=3,
                        agent={"n_envs": 2})
    seen: list[str] = []

    def progress(event: str, info: dict) -> None:
        seen.append(event)
        if event == "queries" and info["round"] == 2 and "rolled_back" not in seen:
            record_act(out, "reject", "unsafe clips", "ana")  # round 1 is the latest saved

    metrics = run_control(cfg, progress=progress)
    assert "rolled_back" in seen
    state = _state(out)
    assert state["round"] == 2 and state["generation"] == 1
    # round 1 was trained again after the rejection, from round 0's checkpoint
    assert [h["round"] for h in metrics["history"]] == [0, 1, 2]
    assert (out / "rounds" / "round-001.1").is_dir()
    with PreferenceStore(out / "feedback.db", create=False) as store:
        (event,) = store.events("oversight")
    assert event["data"]["checkpoint"] == "round-001"
    # the rejected checkpoint's own cards say so; the round trained in its place does not
    for card in (out / "rounds" / "round-001" / "checkpoints").rglob("README.md"):
        assert "**Rejected** (round-001)" in card.read_text() and "by ana: unsafe clips" in \
            card.read_text()
    again = (out / "rounds" / "round-001.1" / "checkpoints" / "README.md").read_text()
    assert "**Rejected**" not in again
    # lineage marks the rejected checkpoint, not the round trained again in its place
    shown = _cli("lineage", str(out), "--json")
    assert shown.returncode == 0, shown.stderr
    marked = {c["checkpoint"]: c["rejected"] for c in json.loads(shown.stdout)["checkpoints"]}
    assert marked["round-001"] is True and marked["round-001.1"] is False
    assert [o["act"] for o in json.loads(shown.stdout)["oversight"]] == ["reject"]


@pytest.mark.slow
def test_pause_resume_and_stop_keys_at_the_runs_own_terminal(tmp_path):
    import pexpect

    out = tmp_path / "run"
    child = pexpect.spawn(sys.executable, ["-m", "rlhf_hgt.cli", "control", "CartPole-v1",
                                           "--labels", "120", "--timesteps", str(30 * 1024),
                                           "--rounds", "30", "--out", str(out), *TINY],
                          env=ENV | {"TERM": "dumb"}, encoding="utf-8", timeout=180,
                          dimensions=(40, 160))
    child.expect("keys: p pause, r resume, s stop")
    deadline = time.time() + 120
    while _state(out).get("round") is None and time.time() < deadline:
        time.sleep(0.1)
    child.send("p")
    child.expect("paused by")
    held = _state(out)["round"]
    time.sleep(3.0)
    assert _state(out)["round"] == held
    child.send("r")
    child.expect("resumed by")
    child.send("s")
    child.expect("stopped by")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    acts = json.loads((out / "metrics.json").read_text())["oversight"]["acts"]
    assert [a["act"] for a in acts] == ["pause", "resume", "stop"]
    assert acts[0]["reason"] == "key 'p' at the run's terminal"


def test_a_reject_after_the_run_marks_the_final_models_cards(tmp_path):
    from safetensors.numpy import save_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    save_file({"w": __import__("numpy").zeros(2, "float32")}, str(run / "adapter.safetensors"))
    (run / "README.md").write_text("---\nlibrary_name: peft\n---\n\n# Reward model: x\n\nbody\n")
    data = record_act(run, "reject", "biased answers", "ana")
    assert data["checkpoint"] == "final"
    text = (run / "README.md").read_text()
    assert text.startswith("---\nlibrary_name: peft\n---\n\n# Reward model: x\n\n> **Rejected**")
    assert "by ana: biased answers" in text and text.count("**Rejected**") == 1
