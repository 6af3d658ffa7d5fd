"""The control loop end to end: synthetic teacher, DPO, resume after kill, a human round
through a pseudo-terminal, and bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pexpect
import pytest

from rlhf_hgt.feedback.store import PreferenceStore

TESTS = Path(__file__).parent
# as a user's terminal without a desktop session: SDL (gymnasium's renderer) must print nothing
ENV = {**{k: v for k, v in os.environ.items()
          if k not in ("XDG_RUNTIME_DIR", "SDL_VIDEODRIVER", "SDL_AUDIODRIVER")},
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
TINY = ["--n-envs", "2", "--segment-length", "10", "--eval-episodes", "3"]
METRICS_KEYS = {"env_id", "algo", "teacher", "seed", "true_return_mean", "true_return_std",
                "eval_episodes", "labels", "timesteps", "reward_model_accuracy",
                "random_return_mean", "start_return_mean", "explore_steps", "tie_share",
                "history"}


def _control(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`rlhf-hgt control ARGS` as a user runs it: a process of its own."""
    return subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", "control", *args],
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def _control_here(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """`rlhf-hgt control ARGS` in this process (where no process boundary is tested):
    the exit code and what went to stderr."""
    from rlhf_hgt.cli import main

    capsys.readouterr()
    code = main(["control", *args])
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_loop_end_to_end_with_a_synthetic_teacher(tmp_path):
    out = tmp_path / "run"
    done = _control("CartPole-v1", "--teacher", "mistake:eps=0.1", "--labels", "30",
                    "--timesteps", "2048", "--rounds", "3", "--out", str(out), "--seed", "3",
                    *TINY)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS
    assert 8 <= metrics["true_return_mean"] <= 500  # CartPole's bounds
    assert 0 <= metrics["reward_model_accuracy"] <= 1
    assert metrics["labels"] == 30  # the mistake teacher never skips
    # 2048 steps in whole rollouts of 2 envs x 256 steps: 2, 1 and 1 rollouts per round
    assert metrics["timesteps"] == 2048 and metrics["eval_episodes"] == 3
    assert [h["timesteps"] for h in metrics["history"]] == [1024, 1536, 2048]
    assert [h["round"] for h in metrics["history"]] == [0, 1, 2]
    assert metrics["history"][-1]["reward_holdout_accuracy"] == metrics["reward_model_accuracy"]
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


def test_dpo_for_policies_runs_from_the_cli(tmp_path, capsys):
    out = tmp_path / "dpo"
    code, err = _control_here(capsys, "CartPole-v1", "--algo", "dpo", "--labels", "20",
                              "--timesteps", "1500", "--rounds", "2", "--out", str(out),
                              "--dpo-epochs", "3", *TINY)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS
    assert metrics["algo"] == "dpo" and metrics["labels"] == 20
    assert 0 <= metrics["history"][-1]["reward_holdout_accuracy"] <= 1
    # DPO counts the step budget evenly over its rounds; it trains no agent in the env
    assert [h["timesteps"] for h in metrics["history"]] == [750, 1500]
    assert not (out / "checkpoints" / "reward_model").exists()  # no reward model
    assert (out / "checkpoints" / "policy.safetensors").stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["dpo"]["epochs"] == 3  # the --dpo-* flags reach the learner
    # a run checkpointed before DPO counted its steps (num_timesteps 0 in state.json) resumes
    # with the finished rounds' steps counted
    state = json.loads((out / "state.json").read_text())
    assert state["num_timesteps"] == 1500
    (out / "state.json").write_text(json.dumps({**state, "num_timesteps": 0}))
    code, err = _control_here(capsys, "CartPole-v1", "--algo", "dpo", "--labels", "20",
                              "--timesteps", "1500", "--rounds", "2", "--out", str(out),
                              "--dpo-epochs", "3", *TINY)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["timesteps"] == 1500


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_human_round_through_a_pseudo_terminal(tmp_path):
    out = tmp_path / "human"
    child = pexpect.spawn(sys.executable, ["-m", "rlhf_hgt.cli", "control", "CartPole-v1",
                                           "--teacher", "human", "--labels", "4", "--rounds",
                                           "2", "--timesteps", "512", "--out", str(out),
                                           *TINY], env=ENV, dimensions=(40, 160),
                          encoding="utf-8", timeout=120)
    child.logfile_read = screen = io.StringIO()
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
    # the clips were rendered for the person (frames stored), and SDL said nothing
    assert "XDG_RUNTIME_DIR" not in screen.getvalue() and "error:" not in screen.getvalue()
    with PreferenceStore(out / "feedback.db", create=False) as store:
        answers = store.answers()
        assert all(q.left["frames"].dtype == np.uint8 and q.left["frames"].ndim == 4
                   for q in store.queries())
    assert len(answers) == 4 and not any(a.synthetic for a in answers)
    assert all(a.interface.startswith("terminal") for a in answers)
    assert all(a.shown_at is not None and a.answered_at >= a.shown_at for a in answers)
    assert json.loads((out / "metrics.json").read_text())["labels"] == 4


@pytest.mark.parametrize("args, message", [
    (["CartPol-v1"], "CartPole-v1"),
    (["CartPole-v1", "--labels", "0"], "--labels must be at least 1"),
    (["custom_envs_for_tests:DictObs-v0"], "Dict"),
    (["custom_envs_for_tests:DictObs-v0", "--algo", "dpo"], "FlattenObservation"),
    (["CartPole-v1", "--dpo-alpha", "0"], "alpha must be a positive number"),
    (["CartPole-v1", "--teacher", "wizard"], "oracle"),
    (["nosuchmodule:Env-v0"], "nosuchmodule"),
    (["CartPole-v1", "--pessimism", "-1"], "pessimism must be >= 0"),
    (["CartPole-v1", "--pessimism", "inf"], "finite"),
    (["CartPole-v1", "--algo", "dpo", "--pessimism", "1"], "--algo dpo has none"),
])
def test_bad_input_exits_2_with_one_clear_message(tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    code, err = _control_here(capsys, *args, "--out", str(out))
    assert code == 2, err
    assert message in err and err.startswith("rlhf-hgt: error:")  # one message, no traceback
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not (out / "metrics.json").exists()


def test_bad_input_from_a_shell_exits_2_without_a_traceback(tmp_path):
    done = _control("CartPol-v1", "--out", str(tmp_path / "bad"), timeout=120)
    assert done.returncode == 2 and "CartPole-v1" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
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


def test_a_run_directory_of_another_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _control_here(capsys, "CartPole-v1", "--labels", "4", "--timesteps", "256",
                              "--rounds", "1", "--out", str(out), "--agent-n-steps", "64",
                              *TINY)
    assert code == 0, err
    code, err = _control_here(capsys, "Pendulum-v1", "--labels", "4", "--timesteps", "256",
                              "--rounds", "1", "--out", str(out), "--agent-n-steps", "64",
                              *TINY)
    assert code == 2 and "env_id='CartPole-v1' (now 'Pendulum-v1')" in err, err


class _FrozenLakePolicy:
    """The optimal policy of slippery 4x4 FrozenLake (success about 74%), answering as SB3's
    predict does: a 0-d array, which FrozenLake cannot index its tables with."""

    ACTIONS = [0, 3, 3, 3, 0, 0, 0, 0, 3, 1, 0, 0, 0, 2, 1, 0]

    def predict(self, obs, deterministic=True):
        return np.array(self.ACTIONS[int(obs)]), None


def test_evaluation_steps_toy_text_envs_with_plain_int_actions():
    """The true return over exactly ``episodes`` episodes of seeds seed, seed + 1, ...,
    equal to a return computed here step by step; a 0-d action array becomes an int."""
    import gymnasium as gym

    from rlhf_hgt.control.agents import evaluate_true_return

    made, resets = [], []

    def env_fn():
        env = gym.make("FrozenLake-v1")
        made.append(env)
        reset = env.reset
        env.reset = lambda **kw: (resets.append(kw.get("seed")), reset(**kw))[1]
        return env

    policy = _FrozenLakePolicy()
    mean, std = evaluate_true_return(policy, env_fn, 20, seed=7)
    assert len(made) == 1 and resets == list(range(7, 27))
    returns = []
    for seed in range(7, 27):
        env = gym.make("FrozenLake-v1")
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, r, terminated, truncated, _ = env.step(int(policy.predict(obs)[0]))
            total, done = total + r, terminated or truncated
        returns.append(total)
    assert 0 < np.mean(returns) < 1  # the goal reached in some episodes, not in all
    assert (mean, std) == (float(np.mean(returns)), float(np.std(returns)))


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


# --------------------------------------------------------------------------- configs, learners


def test_the_config_takes_dicts_for_its_parts_and_names_unknown_keys(tmp_path):
    from rlhf_hgt.control.config import (
        AgentConfig,
        ControlConfig,
        PolicyDPOConfig,
        RewardModelConfig,
    )

    cfg = ControlConfig(env_id="CartPole-v1", out=str(tmp_path), dpo={"alpha": 0.5},
                        reward={"ensemble_size": 2}, agent={"n_envs": 1})
    assert cfg.dpo == PolicyDPOConfig(alpha=0.5) and cfg.reward == RewardModelConfig(
        ensemble_size=2) and cfg.agent == AgentConfig(n_envs=1)
    assert isinstance(ControlConfig(env_id="x", out="o").dpo, PolicyDPOConfig)
    with pytest.raises(ValueError, match=r"dpo: unknown field\(s\) alhpa; known: alpha, "):
        ControlConfig(env_id="x", out="o", dpo={"alhpa": 0.5})
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        ControlConfig(env_id="x", out="o", dpo={"alpha": -1.0})
    with pytest.raises(ValueError, match="dpo must be a PolicyDPOConfig or a dict"):
        ControlConfig(env_id="x", out="o", dpo=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--algo must be ppo or dpo, got 'a2c'"):
        ControlConfig(env_id="x", out="o", algo="a2c")


def test_every_setting_has_help_and_the_configs_import_light():
    from dataclasses import fields

    from rlhf_hgt.control.config import (
        AgentConfig,
        ControlConfig,
        PolicyDPOConfig,
        RewardModelConfig,
    )

    for cls in (ControlConfig, RewardModelConfig, AgentConfig, PolicyDPOConfig):
        assert [f.name for f in fields(cls) if len(f.metadata.get("help", "")) < 10] == [], cls
    code = ("import sys, rlhf_hgt.control.config\n"
            "heavy = {'torch', 'stable_baselines3', 'gymnasium'} & set(sys.modules)\n"
            "assert not heavy, heavy\n"
            "import rlhf_hgt.control.reward_net\n"  # the net needs no ensemble: no circle
            "assert 'rlhf_hgt.control.reward_model' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True, timeout=60)


def test_a_new_learner_plugs_in_without_a_branch_in_the_loop(tmp_path, monkeypatch):
    """The loop hands a registered learner every stored answer each round, then the round's
    steps; its save/restore resume the run. No reward model, no agent training here."""
    from rlhf_hgt.control.config import AgentConfig, ControlConfig
    from rlhf_hgt.control.learner import LEARNERS, PreferenceLearner, build_agent
    from rlhf_hgt.control.loop import run_control
    from rlhf_hgt.control.queries import query_schedule

    calls: list[tuple[str, int]] = []

    class Counting(PreferenceLearner):
        def __init__(self, cfg, envs):
            self.agent = build_agent(cfg, envs)

        def fit(self, left, right, targets, episodes, rng):
            assert len(left) == len(right) == len(targets) and episodes
            calls.append(("fit", len(targets)))
            return {"holdout_accuracy": 0.25, "note": "not a number: not in the history"}

        def train(self, steps):
            calls.append(("train", steps))
            self.agent.num_timesteps += steps

    monkeypatch.setitem(LEARNERS, "counting", Counting)
    cfg = dict(env_id="CartPole-v1", out=str(tmp_path / "r"), algo="counting", labels=8,
               timesteps=300, rounds=2, segment_length=10, eval_episodes=1,
               agent=AgentConfig(n_envs=1, n_steps=64))
    metrics = run_control(ControlConfig(**cfg))
    first = query_schedule(8, 2, 0.25)[0]
    assert calls == [("fit", first), ("train", 150), ("fit", 8), ("train", 150)]
    assert metrics["timesteps"] == 300 and metrics["reward_model_accuracy"] == 0.25
    assert [h["labels"] for h in metrics["history"]] == [first, 8]
    assert "reward_note" not in metrics["history"][0]
    calls.clear()  # a finished run resumes at its end: weights and steps restored, no work
    again = run_control(ControlConfig(**cfg))
    assert calls == [] and again["timesteps"] == 300
    assert again["true_return_mean"] == metrics["true_return_mean"]
