"""A person's hand (``rlhf-hgt oversee``) on the loops other than control: lm online (pause,
stop, reject, rollback), lm ppo and attention train (pause and stop; reject and rollback
refused with a line and recorded), and the TRL callback of lm reward / dpo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers.procs import peek_stderr

from rlhf_hgt.governance.oversight import Overseer, kept_rounds, parse_round, record_act

torch.set_num_threads(1)
TESTS = Path(__file__).parent
ENV = {**{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
PROMPTS = ["hello there", "the cat sat", "abc", "zz top", "once upon a time", "why?"]


def _small(tmp_path: Path, **kw):
    from test_lm_online import small

    return small(tmp_path, **kw)


def _act(run: Path, act: str, reason: str = "checking", by: str = "ana", **kw) -> dict:
    return record_act(run, act, reason, by, **kw)


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _wait_for(check, proc: subprocess.Popen | None = None, limit: float = 240) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"not reached in {limit}s")


# ----------------------------------------------------------------------------- the record


def test_rounds_of_lm_online_checkpoints_are_accepted(tmp_path):
    for name in ("round0002", "round0003.1"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / "state.json").write_text("{}")
    (tmp_path / "checkpoints" / "round0005").mkdir()  # no state: not kept for a rollback
    assert kept_rounds(tmp_path) == [2, 3]
    assert [parse_round(x) for x in ("round0002", "checkpoints/round0003.1", "round-004", 7)] \
        == [2, 3, 4, 7]
    assert _act(tmp_path, "rollback", to="3")["to"] == "round-003"


def test_single_run_gate_refuses_reject_and_stops_on_stop(tmp_path, capsys):
    seen = []
    overseer = Overseer(tmp_path, lambda e, i: seen.append(e), poll_seconds=0.01)
    assert overseer.single_run_gate(force=True) and overseer.outcome() == {}
    _act(tmp_path, "reject", "bad samples")
    assert overseer.single_run_gate(force=True)  # refused: the run goes on
    assert "reject by ana refused" in capsys.readouterr().err
    _act(tmp_path, "pause", "a look")
    _act(tmp_path, "rollback" if kept_rounds(tmp_path) else "reject", "go back")
    threading.Timer(0.5, lambda: _act(tmp_path, "resume", "fine")).start()
    t0 = time.time()
    assert overseer.single_run_gate(force=True)  # the refused act does not end the pause
    assert time.time() - t0 >= 0.4
    _act(tmp_path, "stop", "enough")
    assert not overseer.single_run_gate(force=True)
    out = overseer.outcome()
    assert out["status"] == "stopped by ana: enough"
    assert [r["act"] for r in out["oversight"]["refused"]] == ["reject", "reject"]
    assert [a["act"] for a in out["oversight"]["acts"]] == ["reject", "pause", "reject",
                                                           "resume", "stop"]
    assert "refused" in seen and "oversight" in seen
    overseer.close()


def test_trl_callback_stops_training_and_pause_holds(tmp_path):
    from transformers import TrainerControl

    from rlhf_hgt.lm.trl_common import oversight_callback

    overseer = Overseer(tmp_path, poll_seconds=0.01)
    callback = oversight_callback(lambda: overseer.single_run_gate(force=True))
    control = TrainerControl()
    assert not callback.on_step_end(None, None, control).should_training_stop
    _act(tmp_path, "pause")
    threading.Timer(0.5, lambda: _act(tmp_path, "resume")).start()
    t0 = time.time()
    assert not callback.on_step_end(None, None, control).should_training_stop
    assert time.time() - t0 >= 0.4  # held until the resume
    _act(tmp_path, "stop")
    assert callback.on_step_end(None, None, control).should_training_stop
    overseer.close()


@pytest.mark.slow
def test_reward_training_ends_early_on_a_stop(tmp_path):
    from test_lm_reward_dpo import ab_pairs

    from rlhf_hgt.lm.reward import LMRewardConfig, train_reward_model
    from rlhf_hgt.lm.trl_common import oversight_callback

    asked = []
    gate = oversight_callback(lambda: asked.append(1) or len(asked) < 2)
    cfg = LMRewardConfig(max_steps=20, per_device_train_batch_size=4, progress=False)
    m = train_reward_model("tiny", ab_pairs(32), None, cfg, tmp_path / "rm", callbacks=[gate])
    assert m["steps"] == 2 and (tmp_path / "rm" / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------- lm ppo trainer


@pytest.mark.slow
def test_ppo_trainer_asks_the_gate_between_updates():
    from rlhf_hgt.lm.models import load_causal_lm
    from rlhf_hgt.lm.ppo import LMPPOConfig, LMPPOTrainer

    model, tok = load_causal_lm("tiny")
    cfg = LMPPOConfig(steps=5, batch_size=2, mini_batch_size=2, num_ppo_epochs=1,
                      response_length=4)
    trainer = LMPPOTrainer(model, tok, lambda p, r: float(len(r)), cfg)
    asked = []
    hist = trainer.train(PROMPTS, gate=lambda: asked.append(1) or len(asked) < 3)
    assert len(hist) == 2 and len(asked) == 3 and trainer.step_count == 2
    assert len(trainer.train(PROMPTS, steps=2)) == 2  # no gate: as before


@pytest.mark.slow
def test_ppo_trainer_holds_on_a_pause_until_resumed(tmp_path):
    from rlhf_hgt.lm.models import load_causal_lm
    from rlhf_hgt.lm.ppo import LMPPOConfig, LMPPOTrainer

    model, tok = load_causal_lm("tiny")
    cfg = LMPPOConfig(steps=2, batch_size=2, mini_batch_size=2, num_ppo_epochs=1,
                      response_length=4)
    trainer = LMPPOTrainer(model, tok, lambda p, r: float(len(r)), cfg)
    overseer = Overseer(tmp_path, poll_seconds=0.05)
    _act(tmp_path, "pause", "a look")
    threading.Timer(1.5, lambda: _act(tmp_path, "resume", "fine")).start()
    t0 = time.time()
    assert len(trainer.train(PROMPTS, gate=overseer.single_run_gate)) == 2
    assert time.time() - t0 >= 1.4
    overseer.close()


@pytest.mark.slow
def test_lm_ppo_cli_paused_then_stopped_from_another_process(tmp_path):
    run = tmp_path / "run"
    args = ["--model", "tiny", "--reward", "length", "--steps", "100000", "--batch-size", "2",
            "--mini-batch-size", "2", "--max-new-tokens", "4", "--prompt", "hello there",
            "--prompt", "abc", "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_hgt.cli", "lm", "ppo", *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run.is_dir, proc)
        time.sleep(1.0)
        _act(run, "pause", "a look")
        _wait_for(lambda: "paused by ana" in peek_stderr(proc), proc, limit=30)
        _act(run, "rollback" if kept_rounds(run) else "reject", "not this one")
        time.sleep(2.0)
        assert proc.poll() is None  # still paused: a refused reject does not end the pause
        _act(run, "stop", "enough", by="eve")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    m = _metrics(run)
    assert m["status"] == "stopped by eve: enough" and m["steps"] < 100000
    assert [a["act"] for a in m["oversight"]["acts"]] == ["pause", "reject", "stop"]
    assert m["oversight"]["refused"][0]["act"] == "reject"
    assert (run / "checkpoints" / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------- lm online


@pytest.mark.slow
def test_online_stop_after_a_round_ends_cleanly(tmp_path):
    from rlhf_hgt.lm.online import run_online

    run = tmp_path / "run"

    def hear(event, info):
        if event == "round" and info["round"] == 0:
            _act(run, "stop", "the samples look wrong", by="ben")

    m = run_online(_small(tmp_path, rounds=3), progress=hear)
    assert m["rounds"] == 1 and m["status"] == "stopped by ben: the samples look wrong"
    assert m["oversight"]["stopped"]["by"] == "ben"
    assert _metrics(run)["status"] == m["status"]
    assert (run / "checkpoints" / "round0000" / "state.json").is_file()
    assert (run / "manifest.json").is_file()


@pytest.mark.slow
def test_online_stop_during_ppo_cuts_the_round_short(tmp_path):
    from rlhf_hgt.lm.online import run_online

    run = tmp_path / "run"

    def hear(event, info):
        if event == "ppo_step" and info["round"] == 1:
            _act(run, "stop", "enough")
            time.sleep(0.6)  # past the gate's half-second between looks: the next update asks

    cfg = _small(tmp_path, rounds=3)
    cfg.ppo.steps = 8
    m = run_online(cfg, progress=hear)
    assert m["rounds"] == 2 and m["status"] == "stopped by ana: enough"
    assert m["history"][0]["ppo_updates"] == 8 and m["history"][1]["ppo_updates"] < 8
    assert m["policy_checkpoint"] == "checkpoints/round0001"


@pytest.mark.slow
def test_online_rollback_and_reject_continue_from_the_right_checkpoint(tmp_path):
    from rlhf_hgt.lm.online import run_online

    run = tmp_path / "run"
    said = []

    def hear(event, info):
        said.append((event, info))
        if event == "round" and info["round"] == 2 and not any(
                e == "rolled_back" for e, _ in said):
            _act(run, "rollback", "round 2 drifted", to="1")

    cfg = _small(tmp_path, rounds=4, keep_checkpoints=5)
    m = run_online(cfg, progress=hear)
    back = [i for e, i in said if e == "rolled_back"]
    assert back == [{"round": 1, "act": "rollback"}]
    rounds = [i["round"] for e, i in said if e == "round"]
    assert rounds == [0, 1, 2, 2, 3]  # round 2 trained again after the rollback
    assert [h["round"] for h in m["history"]] == [0, 1, 2, 3]
    names = sorted(p.name for p in (run / "checkpoints").glob("round*"))
    assert names == ["round0000", "round0001", "round0002", "round0002.1", "round0003.1"]
    state = json.loads((run / "state.json").read_text())
    assert state["checkpoint"] == "checkpoints/round0003.1" and state["generation"] == 1
    again = json.loads((run / "checkpoints/round0002.1/state.json").read_text())
    assert again["parent"] == "checkpoints/round0001"
    gathered = [i["policy"] for e, i in said if e == "gather"]
    assert gathered[3].endswith(":g1") and len(set(gathered)) == 5  # new queries
    assert m["oversight"]["acts"][0]["to"] == "round-001" and "status" not in m

    # a reject after the run: a resumed run never starts from the rejected checkpoint
    data = _act(run, "reject", "round 3 is unsafe")
    assert data["checkpoint"] == "round0003.1"  # named as lineage names it
    events = []
    cfg = _small(tmp_path, rounds=4, keep_checkpoints=5)
    m = run_online(cfg, progress=lambda e, i: events.append((e, i)))
    assert ("rejected", {"checkpoint": "checkpoints/round0003.1"}) in events
    assert [i["round"] for e, i in events if e == "round"] == [3]
    assert m["policy_checkpoint"] == "checkpoints/round0003.2"
    assert json.loads((run / "checkpoints/round0003.2/state.json").read_text())["parent"] \
        == "checkpoints/round0002.1"


@pytest.mark.slow
def test_online_reject_while_running_goes_back_to_the_parent(tmp_path):
    from rlhf_hgt.lm.online import run_online

    run = tmp_path / "run"
    said = []

    def hear(event, info):
        said.append((event, info))
        if event == "round" and info["round"] == 1 and not any(
                e == "rolled_back" for e, _ in said):
            _act(run, "reject", "round 1 went wrong")

    m = run_online(_small(tmp_path, rounds=3, keep_checkpoints=3), progress=hear)
    assert [i for e, i in said if e == "rolled_back"] == [{"round": 0, "act": "reject"}]
    assert [i["round"] for e, i in said if e == "round"] == [0, 1, 1, 2]
    assert m["policy_checkpoint"] == "checkpoints/round0002.1"


@pytest.mark.slow
def test_online_cli_stopped_from_another_process_and_a_pause_that_holds(tmp_path):
    run = tmp_path / "run"
    from test_lm_online import SMALL

    args = [*(a for a in SMALL if a != "--quiet"), "--prompt", "hello there", "--prompt",
            "abc", "--prompt", "why?", "--prompt", "zz top", "--rounds", "20", "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_hgt.cli", "lm", "online", *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def rounds() -> int:
            return len(list((run / "checkpoints").glob("round0*")))

        _wait_for(lambda: rounds() >= 1, proc)
        cli = [sys.executable, "-m", "rlhf_hgt.cli", "oversee", str(run)]
        subprocess.run([*cli, "pause", "--reason", "a look", "--by", "cy"], env=ENV,
                       check=True, capture_output=True)
        time.sleep(1.0)  # the round in progress reaches a safe point
        held = len(json.loads((run / "state.json").read_text())["history"])
        time.sleep(6.0)
        assert len(json.loads((run / "state.json").read_text())["history"]) <= held + 1
        paused_at = len(json.loads((run / "state.json").read_text())["history"])
        time.sleep(3.0)
        assert len(json.loads((run / "state.json").read_text())["history"]) == paused_at
        subprocess.run([*cli, "resume", "--reason", "fine", "--by", "cy"], env=ENV,
                       check=True, capture_output=True)
        _wait_for(lambda: len(json.loads((run / "state.json").read_text())["history"])
                  > paused_at, proc)
        subprocess.run([*cli, "stop", "--reason", "enough for today", "--by", "cy"], env=ENV,
                       check=True, capture_output=True)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    m = _metrics(run)
    assert m["status"] == "stopped by cy: enough for today" and m["rounds"] < 20
    assert [a["act"] for a in m["oversight"]["acts"]] == ["pause", "resume", "stop"]
    assert "paused by cy: a look" in err and "stopped by cy: enough for today" in err


@pytest.mark.slow
def test_online_cli_rollback_from_another_process_continues_from_that_round(tmp_path):
    run = tmp_path / "run"
    from test_lm_online import SMALL

    args = [*SMALL, "--prompt", "hello there", "--prompt", "abc", "--prompt", "why?",
            "--prompt", "zz top", "--rounds", "30", "--keep-checkpoints", "30", "--out",
            str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_hgt.cli", "lm", "online", *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cli = [sys.executable, "-m", "rlhf_hgt.cli", "oversee", str(run)]
    ck = run / "checkpoints"
    try:
        _wait_for(lambda: (ck / "round0002" / "state.json").is_file(), proc)
        subprocess.run([*cli, "rollback", "--to", "1", "--reason", "drifted", "--by", "fay"],
                       env=ENV, check=True, capture_output=True)
        _wait_for(lambda: list(ck.glob("round*.1/state.json")), proc)
        subprocess.run([*cli, "stop", "--reason", "seen enough", "--by", "fay"], env=ENV,
                       check=True, capture_output=True)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    first = min(ck.glob("round*.1"), key=lambda d: d.name)
    state = json.loads((first / "state.json").read_text())
    assert first.name == "round0002.1" and state["parent"] == "checkpoints/round0001"
    assert [h["round"] for h in state["history"]] == [0, 1, 2]
    m = _metrics(run)
    assert [a["act"] for a in m["oversight"]["acts"]] == ["rollback", "stop"]
    assert m["status"] == "stopped by fay: seen enough"
    assert [h["round"] for h in m["history"]] == list(range(m["rounds"]))
    # --quiet hides progress, not a person's acts
    assert "--quiet" in SMALL and "rollback by fay: drifted" in err, err[-2000:]


# ----------------------------------------------------------------------------- attention


@pytest.mark.slow
def test_attention_stop_between_epochs_keeps_the_model_and_refuses_a_rollback(tmp_path):
    from test_attention import confounded_npz

    from rlhf_hgt.attention.train import AttentionConfig, run_attention

    data = confounded_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    epochs = []

    def hear(event, info):
        if event == "epoch":
            epochs.append(info["epoch"])
            if info["epoch"] == 1:
                _act(run, "reject", "looks at the patch")
            if info["epoch"] == 2:
                _act(run, "stop", "enough", by="dee")

    m = run_attention(AttentionConfig(data=str(data), out=str(run), epochs=50,
                                      batch_size=16), hear)
    assert epochs[-1] <= 3 and m["epochs_trained"] == len(epochs) < 50
    assert m["status"] == "stopped by dee: enough"
    assert m["oversight"]["refused"][0]["act"] == "reject"
    assert _metrics(run)["status"] == m["status"] and (run / "model.safetensors").is_file()


@pytest.mark.slow
def test_attention_cli_pause_holds_then_stop_from_another_process(tmp_path):
    from test_attention import confounded_npz

    data = confounded_npz(tmp_path / "d.npz", n=400)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_hgt.cli", "attention", "train",
                             "--data", str(data), "--out", str(run), "--epochs", "100000",
                             "--batch-size", "8"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: run.is_dir(), proc)
        time.sleep(1.0)
        _act(run, "pause", "a look")
        _wait_for(lambda: "paused by ana" in peek_stderr(proc), proc, limit=30)
        _act(run, "stop", "enough")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    m = _metrics(run)
    assert m["status"] == "stopped by ana: enough" and m["epochs_trained"] < 100000
