"""The control loop end to end: synthetic teacher, DPO, resume after kill, a human round
through a pseudo-terminal, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from rlhf_hgt.feedback.store import PreferenceStore

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS),
       "SDL_VIDEODRIVER": "dummy"}
TINY = ["--n-envs", "2", "--segment-length", "10", "--eval-episodes", "3"]


def _control(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", "control", *args],
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def test_loop_end_to_end_with_a_synthetic_teacher(tmp_path):
    out = tmp_path / "run"
    done = _control("CartPole-v1", "--teacher", "mistake:eps=0.1", "--labels", "30",
                    "--timesteps", "2048", "--rounds", "3", "--out", str(out), "--seed", "3",
                    *TINY)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("true_return_mean", "labels", "timesteps", "reward_model_accuracy"):
        assert metrics[key] is not None
    assert metrics["labels"] <= 30 and metrics["labels"] >= 20  # skips/ties aside
    assert metrics["timesteps"] >= 2048 and metrics["eval_episodes"] == 3
    assert [h["round"] for h in metrics["history"]] == [0, 1, 2]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["env_id"] == "CartPole-v1" and manifest["seed"] == 3
    assert len(manifest["data"]["preference_store"]["sha256"]) == 64
    assert "checkpoints/policy.safetensors" in manifest["checkpoints"]
    assert (out / "learning_curve.png").stat().st_size > 1000
    with PreferenceStore(out / "feedback.db", create=False) as store:
        answers = store.answers()
        assert len(answers) == 30 and all(a.synthetic for a in answers)
        assert {a.annotator for a in answers} == {"teacher:mistake(eps=0.1)"}
        assert all(q.env_id == "CartPole-v1" for q in store.queries())


def test_dpo_for_policies_runs_from_the_cli(tmp_path):
    out = tmp_path / "dpo"
    done = _control("CartPole-v1", "--algo", "dpo", "--labels", "20", "--timesteps", "1500",
                    "--rounds", "2", "--out", str(out), *TINY)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algo"] == "dpo" and metrics["labels"] == 20
    assert "reward_holdout_accuracy" in metrics["history"][-1]


def test_a_killed_run_resumes_from_its_last_round(tmp_path):
    out = tmp_path / "run"
    args = ["CartPole-v1", "--labels", "40", "--timesteps", "8192", "--rounds", "8",
            "--out", str(out), *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_hgt.cli", "control", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        state = out / "state.json"
        if state.exists() and json.loads(state.read_text())["round"] >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((out / "state.json").read_text())["round"]
    assert killed_at < 7, "the run finished before it could be killed"
    done = _control(*args)
    assert done.returncode == 0, done.stderr
    assert "resuming at round" in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["round"] for h in metrics["history"]] == list(range(8))
    with PreferenceStore(out / "feedback.db", create=False) as store:
        # rounds are not repeated: each round's queries were asked once
        rounds = [q.round for q in store.queries()]
        assert sorted(set(rounds)) == list(range(8))
        assert len(store.answers()) == metrics["labels"] == 40


def test_a_human_round_through_a_pseudo_terminal(tmp_path):
    out = tmp_path / "human"
    child = pexpect.spawn(sys.executable, ["-m", "rlhf_hgt.cli", "control", "CartPole-v1",
                                           "--teacher", "human", "--labels", "4", "--rounds",
                                           "2", "--timesteps", "512", "--out", str(out),
                                           *TINY], env=ENV, dimensions=(40, 160),
                          encoding="utf-8", timeout=120)
    answered = 0
    while True:
        # the help line is drawn last: the pair is fully on screen
        i = child.expect([r"left: \d+[\s\S]*?\? help", pexpect.EOF])
        if i != 0:
            break
        child.send("1" if answered % 2 == 0 else "2")
        answered += 1
        if answered > 10:
            break
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert answered == 4
    with PreferenceStore(out / "feedback.db", create=False) as store:
        answers = store.answers()
    assert len(answers) == 4 and not any(a.synthetic for a in answers)
    assert all(a.interface.startswith("terminal") for a in answers)
    assert all(a.shown_at is not None and a.answered_at >= a.shown_at for a in answers)
    assert json.loads((out / "metrics.json").read_text())["labels"] == 4


@pytest.mark.parametrize("args, message", [
    (["CartPol-v1"], "CartPole-v1"),
    (["CartPole-v1", "--labels", "0"], "--labels must be at least 1"),
    (["custom_envs_for_tests:DictObs-v0"], "Dict"),
    (["CartPole-v1", "--teacher", "wizard"], "oracle"),
    (["nosuchmodule:Env-v0"], "nosuchmodule"),
    (["CartPole-v1", "--pessimism", "-1"], "pessimism must be >= 0"),
    (["CartPole-v1", "--pessimism", "inf"], "finite"),
    (["CartPole-v1", "--algo", "dpo", "--pessimism", "1"], "--algo dpo has none"),
])
def test_bad_input_exits_2_with_one_clear_message(tmp_path, args, message):
    out = tmp_path / "bad"
    done = _control(*args, "--out", str(out), timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "metrics.json").exists()


def test_lora_adaptation_from_a_base_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from rlhf_hgt.control.agents import AgentConfig, make_agent, make_vec_env
    from rlhf_hgt.envs import make_env

    venv = make_vec_env(lambda: make_env("CartPole-v1"), 2, 0)
    base = make_agent(AgentConfig(algo="ppo", n_steps=64), venv, 0)
    base.learn(128)
    base.save(tmp_path / "base.zip")
    out = tmp_path / "lora"
    done = _control("rlhf_hgt/CartPoleLeft-v0", "--labels", "12", "--timesteps", "1024",
                    "--rounds", "2", "--out", str(out), "--init-policy",
                    str(tmp_path / "base.zip"), "--lora-r", "4", *TINY)
    assert done.returncode == 0, done.stderr
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    # the base weights in the final policy are the checkpoint's, untouched
    policy = load_file(str(out / "checkpoints" / "policy.safetensors"))
    for name, value in base.policy.state_dict().items():
        lora_name = name.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias")
        got = policy.get(name, policy.get(lora_name))
        assert got is not None and bool((got == value).all()), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert "start_return_mean" in metrics


def test_a_run_directory_of_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    done = _control("CartPole-v1", "--labels", "8", "--timesteps", "512", "--rounds", "1",
                    "--out", str(out), *TINY)
    assert done.returncode == 0, done.stderr
    other = _control("Pendulum-v1", "--labels", "8", "--timesteps", "512", "--rounds", "1",
                     "--out", str(out), *TINY, timeout=120)
    assert other.returncode == 2 and "env_id='CartPole-v1'" in other.stderr
    assert "Traceback" not in other.stderr


def test_evaluation_steps_toy_text_envs_with_plain_int_actions():
    """FrozenLake indexes a table with the action: a 0-d array from SB3 must become an int."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    from rlhf_hgt.control.agents import evaluate_true_return

    model = PPO("MlpPolicy", gym.make("FrozenLake-v1"), n_steps=64, seed=0, device="cpu")
    mean, std = evaluate_true_return(model, lambda: gym.make("FrozenLake-v1"), 2, seed=0)
    assert 0.0 <= mean <= 1.0 and std >= 0.0


def test_a_budget_below_one_rollout_per_round_is_rounded_up_and_said(tmp_path):
    from rlhf_hgt.control.agents import AgentConfig
    from rlhf_hgt.control.loop import ControlConfig, run_control

    events = []
    cfg = ControlConfig(env_id="CartPole-v1", out=str(tmp_path / "r"), teacher="oracle",
                        labels=4, timesteps=100, rounds=2, segment_length=10,
                        eval_episodes=1, agent=AgentConfig(n_envs=1, n_steps=64))
    metrics = run_control(cfg, progress=lambda event, info: events.append((event, info)))
    said = [info for event, info in events if event == "steps_rounded"]
    assert said == [{"asked": 100, "steps": 128, "rounds": 2, "per_round": 64}]
    assert metrics["timesteps"] == 128
