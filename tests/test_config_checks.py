"""Settings checked where they enter: a bad value is one message naming the flag, exit code 2,
never a traceback or a silent run (control's agent and reward device, the LM trainers'
scheduler and LoRA target modules)."""

from __future__ import annotations

import json

import pytest

from rlhf_hgt import cli


def _pairs(path):
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"})
                            + "\n" for i in range(4)))
    return path


def _fails_naming(words: list[str], flag: str, capsys) -> str:
    assert cli.main(words) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra,flag", [
    (["--agent-n-steps", "0"], "--agent-n-steps"),
    (["--agent-n-epochs", "0"], "--agent-n-epochs"),
    (["--agent-learning-rate", "0"], "--agent-learning-rate"),
    (["--agent-learning-rate=-1e-3"], "--agent-learning-rate"),
    (["--agent-net-arch", "64,0"], "--agent-net-arch"),
    (["--agent-gae-lambda", "1.5"], "--agent-gae-lambda"),
    (["--agent-ent-coef=-0.1"], "--agent-ent-coef"),
    (["--agent-learning-starts=-1"], "--agent-learning-starts"),
    (["--agent-gradient-steps", "0"], "--agent-gradient-steps"),
    (["--agent-algo", "ppo", "--agent-n-steps", "1", "--n-envs", "1"], "--agent-n-steps"),
    # algo auto: PPO for CartPole's discrete actions, refused when the env is checked
    (["--agent-n-steps", "1", "--n-envs", "1"], "--agent-n-steps"),
])
def test_bad_agent_settings_exit_2_naming_the_flag(tmp_path, capsys, extra, flag):
    out = tmp_path / "run"
    _fails_naming(["control", "CartPole-v1", "--labels", "10", "--timesteps", "100",
                   "--out", str(out), *extra], flag, capsys)
    assert not out.exists()


def test_agent_config_checks_in_python():
    from rlhf_hgt.control.config import AgentConfig

    for bad in ({"n_steps": 0}, {"n_epochs": 0}, {"learning_rate": 0.0}, {"net_arch": (64, 0)},
                {"gae_lambda": -0.1}, {"ent_coef": -1.0}, {"learning_starts": -5},
                {"gradient_steps": 0},
                {"n_steps": 1, "n_envs": 1, "algo": "ppo"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AgentConfig(**bad)
    AgentConfig(algo="sac", n_steps=1, n_envs=1)  # SAC has no rollout batch
    assert AgentConfig(net_arch=[32]).net_arch == (32,)


def test_sac_takes_the_configured_gradient_steps():
    from rlhf_hgt.control.agents import make_agent, make_vec_env
    from rlhf_hgt.control.config import AgentConfig
    from rlhf_hgt.envs import make_env

    venv = make_vec_env(lambda: make_env("Pendulum-v1"), 1, seed=0)
    assert make_agent(AgentConfig(), venv, seed=0, device="cpu").gradient_steps == 1
    agent = make_agent(AgentConfig(gradient_steps=2, learning_starts=10, batch_size=16), venv,
                       seed=0, device="cpu")
    assert agent.gradient_steps == 2
    agent.learn(20)
    assert agent._n_updates == 2 * (20 - 10)  # two updates per env step once learning


def _no_device(name: str) -> bool:
    import torch

    if name == "mps":
        return not torch.backends.mps.is_available()
    return not torch.cuda.is_available()


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_reward_device_the_machine_lacks_exits_2(tmp_path, capsys, device):
    if not _no_device(device):
        pytest.skip(f"this machine has {device}")
    out = tmp_path / "run"
    err = _fails_naming(["control", "CartPole-v1", "--labels", "10", "--timesteps", "100",
                         "--out", str(out), "--reward-device", device], "--reward-device",
                        capsys)
    assert "cpu or auto" in err
    assert not out.exists()


def test_reward_device_is_checked_where_the_ensemble_places_itself():
    """A config built before torch was imported is checked when the ensemble is built."""
    if not _no_device("cuda"):
        pytest.skip("this machine has CUDA")
    from rlhf_hgt.control.reward_model import _resolve_device
    from rlhf_hgt.feedback.errors import UserInputError

    with pytest.raises(UserInputError, match="--reward-device cuda"):
        _resolve_device("cuda")
    assert str(_resolve_device("cpu")) == "cpu"


@pytest.mark.parametrize("command", ["reward", "dpo"])
def test_unknown_lr_scheduler_exits_2(tmp_path, capsys, command):
    out = tmp_path / "run"
    err = _fails_naming(["lm", command, "--data", str(_pairs(tmp_path / "p.jsonl")),
                         "--model", "tiny", "--out", str(out), "--lr-scheduler-type",
                         "cosin"], "--lr-scheduler-type", capsys)
    assert "cosine_with_restarts" in err  # the names it takes
    assert not out.exists()


def test_lr_scheduler_names_of_transformers_are_taken():
    from transformers.trainer_utils import SchedulerType

    from rlhf_hgt.lm.reward import LMRewardConfig

    for name in SchedulerType:
        assert LMRewardConfig(lr_scheduler_type=name.value).lr_scheduler_type == name.value


def test_one_lora_target_module_is_a_name_not_a_regex():
    from rlhf_hgt.lm.dpo import LMDPOConfig
    from rlhf_hgt.lm.ppo import LMPPOConfig
    from rlhf_hgt.lm.reward import LMRewardConfig, prepare_reward_model

    assert LMRewardConfig(lora_target_modules="q_proj").lora_target_modules == ("q_proj",)
    assert LMDPOConfig(lora_target_modules="q_proj,v_proj").lora_target_modules == \
        ("q_proj", "v_proj")
    assert LMPPOConfig(lora_target_modules="q_proj").lora_target_modules == ["q_proj"]
    for cls in (LMRewardConfig, LMDPOConfig, LMPPOConfig):
        assert cls(lora_target_modules="all-linear").lora_target_modules == "all-linear"
    model, _, _ = prepare_reward_model("tiny", LMRewardConfig(lora_target_modules="q_proj"))
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted and all(n.endswith("q_proj") for n in adapted)


@pytest.mark.parametrize("words", [
    ["lm", "reward", "--max-steps", "1"],
    ["lm", "dpo", "--max-steps", "1"],
    ["lm", "ppo", "--prompt", "hi", "--reward", "length", "--steps", "1"],
])
def test_lora_target_modules_that_match_nothing_exit_2(tmp_path, capsys, words):
    data = [] if words[1] == "ppo" else ["--data", str(_pairs(tmp_path / "p.jsonl"))]
    err = _fails_naming([*words, *data, "--model", "tiny", "--out", str(tmp_path / "run"),
                         "--lora-target-modules", "no_such_proj"], "lora_target_modules",
                        capsys)
    assert "no_such_proj" in err and "q_proj" in err  # what is missing, and what there is


def test_replace_with_an_old_setting_name():
    """dataclasses.replace passes every field as well as the change: the old name wins, with
    its DeprecationWarning; the new name works as before; both given directly is refused."""
    import dataclasses

    from rlhf_hgt.lm.ppo import LMPPOConfig
    from rlhf_hgt.lm.reward import LMRewardConfig

    base = LMPPOConfig(steps=3)
    with pytest.warns(DeprecationWarning, match=r"lr=\.\.\.\) is now learning_rate") as seen:
        old = dataclasses.replace(base, lr=1e-4)
    assert seen[0].filename == __file__  # the warning points at the caller of replace
    assert (old.learning_rate, old.steps) == (1e-4, 3)
    assert dataclasses.replace(base, learning_rate=2e-4).learning_rate == 2e-4
    with pytest.warns(DeprecationWarning):
        assert dataclasses.replace(LMRewardConfig(), batch_size=4).per_device_train_batch_size \
            == 4
    with pytest.raises(TypeError, match="give learning_rate= only"):
        LMPPOConfig(lr=1e-4, learning_rate=2e-4)


def test_an_empty_online_prompt_names_the_prompt_flag(tmp_path, capsys):
    out = tmp_path / "run"
    err = _fails_naming(["lm", "online", "--prompt", "hi", "--prompt", " ", "--out", str(out)],
                        "--prompt TEXT", capsys)
    assert "prompt number 2 is empty" in err and "--prompts" not in err
    assert not out.exists()


def test_none_words_unset_numbers_and_lists_but_not_text():
    """'none'/'off' unset an optional number or list; an optional text keeps the word, so a
    path named "none" can be given."""
    import argparse
    from dataclasses import dataclass

    from rlhf_hgt.cli import flags

    @dataclass
    class Settings:
        path: str | None = None
        limit: int | None = 3
        norm: float | None = 1.0
        sizes: tuple[int, ...] | None = (1,)

    section = flags.Section(Settings)
    parser = argparse.ArgumentParser()
    flags.add_section(parser, section)
    args = parser.parse_args(["--path", "none", "--limit", "none", "--norm", "off",
                              "--sizes", "none"])
    assert flags.build(args, [section]) == Settings(path="none", limit=None, norm=None,
                                                    sizes=None)
