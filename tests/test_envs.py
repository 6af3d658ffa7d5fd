"""Tests of rlhf_hgt.envs: wrappers, tasks, make_env and a PPO smoke run on a learned reward."""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control import CartPoleEnv, PendulumEnv
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import rlhf_hgt.envs as envs
from rlhf_hgt.envs import (
    CARTPOLE_LEFT_ID,
    PENDULUM_AT_ANGLE_ID,
    DistractorWrapper,
    EnvCreationError,
    HiddenRewardWrapper,
    LearnedRewardVecEnv,
    UnknownEnvError,
    cartpole_left_reward,
    make_env,
    pendulum_at_angle_reward,
)

TESTS_DIR = str(Path(__file__).resolve().parent)


@pytest.fixture
def custom_module_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(TESTS_DIR)


def _run_check_env(env: gym.Env) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pendulum's [-2, 2] action space draws a style warning
        check_env(env, warn=True)


# --------------------------------------------------------------------------- env checker

ENV_BUILDERS = {
    "hidden-cartpole": lambda: HiddenRewardWrapper(make_env("CartPole-v1")),
    "hidden-pendulum": lambda: HiddenRewardWrapper(make_env("Pendulum-v1")),
    "pendulum-at-angle": lambda: make_env(PENDULUM_AT_ANGLE_ID),
    "cartpole-left": lambda: make_env(CARTPOLE_LEFT_ID),
    "cartpole-left-shaped": lambda: make_env(CARTPOLE_LEFT_ID, shaped=True, target_x=-0.3),
    "distractor-noise": lambda: DistractorWrapper(make_env("CartPole-v1"), k=3, seed=1),
    "distractor-walk": lambda: DistractorWrapper(
        make_env(PENDULUM_AT_ANGLE_ID), k=2, kind="random_walk", scale=0.1
    ),
    "all-stacked": lambda: HiddenRewardWrapper(
        DistractorWrapper(make_env(CARTPOLE_LEFT_ID), k=2, seed=0)
    ),
}


@pytest.mark.parametrize("name", sorted(ENV_BUILDERS))
def test_env_checker_passes(name: str) -> None:
    _run_check_env(ENV_BUILDERS[name]())


# --------------------------------------------------------------------------- HiddenRewardWrapper


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", CARTPOLE_LEFT_ID])
def test_hidden_reward_is_zero_and_true_reward_kept(env_id: str) -> None:
    base = make_env(env_id, max_episode_steps=30)
    hidden = HiddenRewardWrapper(make_env(env_id, max_episode_steps=30))
    rng = np.random.default_rng(0)
    for episode in range(3):
        base_obs, _ = base.reset(seed=10 + episode)
        obs, _ = hidden.reset(seed=10 + episode)
        np.testing.assert_array_equal(obs, base_obs)
        base_total, done, steps = 0.0, False, 0
        while not done:
            if env_id == "Pendulum-v1":
                action = rng.uniform(-2, 2, size=1).astype(np.float32)
            else:
                action = int(rng.integers(2))
            base_obs, base_r, b_term, b_trunc, _ = base.step(action)
            obs, r, term, trunc, info = hidden.step(action)
            steps += 1
            assert r == 0.0
            assert info["true_reward"] == pytest.approx(float(base_r))
            np.testing.assert_array_equal(obs, base_obs)
            assert (term, trunc) == (b_term, b_trunc)
            base_total += float(base_r)
            done = term or trunc
            if done:
                assert info["true_episode_return"] == pytest.approx(base_total)
            else:
                assert "true_episode_return" not in info
        assert steps <= 30


def test_hidden_reward_nested_keeps_the_true_reward() -> None:
    env = HiddenRewardWrapper(HiddenRewardWrapper(make_env("Pendulum-v1", max_episode_steps=4)))
    env.reset(seed=3)
    total = 0.0
    for _ in range(4):
        _, r, _, trunc, info = env.step(np.array([0.5], dtype=np.float32))
        assert r == 0.0 and info["true_reward"] < 0.0
        total += info["true_reward"]
    assert trunc
    assert info["true_episode_return"] == pytest.approx(total)


# --------------------------------------------------------------------------- LearnedRewardVecEnv


class RecordingRewardFn:
    """reward = obs[:, 0]; records every call's arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        self.calls.append((np.array(obs, copy=True), np.array(actions, copy=True)))
        return obs[:, 0] * 1.0


def _cartpoles(lengths: tuple[int, ...], hidden: bool = False) -> DummyVecEnv:
    def builder(length: int):
        def build() -> gym.Env:
            env = make_env("CartPole-v1", max_episode_steps=length)
            return HiddenRewardWrapper(env) if hidden else env

        return build

    venv = DummyVecEnv([builder(n) for n in lengths])
    venv.seed(0)
    return venv


def test_learned_reward_uses_pre_step_obs_across_auto_resets() -> None:
    reward_fn = RecordingRewardFn()
    venv = LearnedRewardVecEnv(_cartpoles((5, 9, 500)), reward_fn)
    assert venv.num_envs == 3
    obs = venv.reset()
    rng = np.random.default_rng(1)
    episode_ends = [0, 0, 0]
    partial_done_steps = 0
    for step in range(80):
        kept = obs.copy()
        actions = rng.integers(0, 2, size=3)
        obs, rewards, dones, infos = venv.step(actions)
        assert len(reward_fn.calls) == step + 1  # once per vector step, all envs together
        seen_obs, seen_actions = reward_fn.calls[-1]
        assert seen_obs.shape == (3, 4) and seen_actions.shape == (3,)
        np.testing.assert_array_equal(seen_obs, kept)  # the observation the action was taken in
        np.testing.assert_array_equal(seen_actions, actions)
        np.testing.assert_allclose(rewards, kept[:, 0], rtol=1e-6)
        assert rewards.shape == (3,) and rewards.dtype == np.float32
        partial_done_steps += int(0 < dones.sum() < 3)
        for i, info in enumerate(infos):
            assert info["true_reward"] == 1.0
            if dones[i]:
                episode_ends[i] += 1
                # the returned obs is the next episode's first one, not the terminal one
                assert not np.array_equal(obs[i], info["terminal_observation"])
                assert info["true_episode_return"] >= 1.0
    assert episode_ends[0] == 16  # truncated every 5 steps (the pole cannot fall that fast)
    assert episode_ends[1] >= 80 // 9  # at most 9 steps each
    assert episode_ends[2] >= 1  # random actions make CartPole fall well before 500 steps
    assert partial_done_steps >= 10  # envs ended episodes at different steps


def test_learned_reward_keeps_hidden_true_reward_and_episode_return() -> None:
    lengths = (3, 7)
    venv = LearnedRewardVecEnv(_cartpoles(lengths, hidden=True), lambda o, a: np.ones(len(o)))
    venv.reset()
    returns: list[list[float]] = [[], []]
    for _ in range(21):
        _, rewards, dones, infos = venv.step(np.zeros(2, dtype=np.int64))
        np.testing.assert_array_equal(rewards, np.ones(2, dtype=np.float32))
        for i in range(2):
            assert infos[i]["true_reward"] == 1.0  # from HiddenRewardWrapper, not the 0 reward
            if dones[i]:
                returns[i].append(infos[i]["true_episode_return"])
    assert returns[0] and all(r <= lengths[0] for r in returns[0])
    assert returns[1] and all(r <= lengths[1] for r in returns[1])


def test_learned_reward_tracks_true_return_without_hidden_wrapper() -> None:
    venv = LearnedRewardVecEnv(_cartpoles((4,)), lambda o, a: np.zeros(len(o)))
    venv.reset()
    for step in range(1, 5):
        _, _, dones, infos = venv.step(np.array([step % 2]))
    assert dones[0] and infos[0]["true_episode_return"] == 4.0


def test_learned_reward_with_box_actions_and_update_reward_fn() -> None:
    venv = LearnedRewardVecEnv(
        DummyVecEnv([lambda: make_env("Pendulum-v1")] * 2), lambda o, a: a[:, 0] * 2.0
    )
    venv.reset()
    actions = np.array([[0.5], [-1.0]], dtype=np.float32)
    _, rewards, _, infos = venv.step(actions)
    np.testing.assert_allclose(rewards, [1.0, -2.0])
    assert all(info["true_reward"] < 0.0 for info in infos)  # Pendulum's own cost, kept
    venv.update_reward_fn(lambda o, a: np.full((len(o), 1), 7.0))  # (n, 1) is accepted
    _, rewards, _, _ = venv.step(actions)
    np.testing.assert_array_equal(rewards, [7.0, 7.0])
    with pytest.raises(TypeError):
        venv.update_reward_fn("not callable")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad_fn, message",
    [
        (lambda o, a: np.zeros(5), "shape"),
        (lambda o, a: np.full(len(o), np.nan), "NaN"),
    ],
)
def test_learned_reward_rejects_bad_outputs(bad_fn, message: str) -> None:
    venv = LearnedRewardVecEnv(_cartpoles((10, 10)), bad_fn)
    venv.reset()
    with pytest.raises(ValueError, match=message):
        venv.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(RuntimeError, match="reset"):  # state was dropped with the failed step
        venv.step(np.zeros(2, dtype=np.int64))
    venv.update_reward_fn(lambda o, a: np.zeros(len(o)))
    venv.reset()
    venv.step(np.zeros(2, dtype=np.int64))  # usable again after a reset


def test_learned_reward_needs_reset_first() -> None:
    venv = LearnedRewardVecEnv(_cartpoles((10,)), lambda o, a: np.zeros(len(o)))
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros(1, dtype=np.int64))


# --------------------------------------------------------------------------- tasks


def _pendulum_reward_by_hand(obs: np.ndarray, u: float, target: float) -> float:
    theta = math.atan2(float(obs[1]), float(obs[0]))
    diff = (theta - target + math.pi) % (2 * math.pi) - math.pi
    u = max(-2.0, min(2.0, u))
    return -(diff**2 + 0.1 * float(obs[2]) ** 2 + 0.001 * u**2)


def test_pendulum_at_angle_reward_follows_definition() -> None:
    target = 0.3
    env = make_env(PENDULUM_AT_ANGLE_ID, target_angle=target)
    assert env.spec is not None and env.spec.max_episode_steps == 200
    obs, _ = env.reset(seed=5)
    rng = np.random.default_rng(2)
    steps = 0
    while True:
        u = float(rng.uniform(-3, 3))  # beyond max torque: clipped as in Pendulum
        action = np.array([u], dtype=np.float32)
        new_obs, r, term, trunc, info = env.step(np.clip(action, -2, 2))
        assert r == pytest.approx(_pendulum_reward_by_hand(obs, min(2, max(-2, u)), target))
        assert info["base_reward"] == pytest.approx(_pendulum_reward_by_hand(obs, u, 0.0), abs=1e-4)
        obs, steps = new_obs, steps + 1
        if term or trunc:
            break
    assert steps == 200 and not term
    at_target = np.array([math.cos(target), math.sin(target), 0.0])
    upright = np.array([1.0, 0.0, 0.0])
    assert pendulum_at_angle_reward(at_target, np.zeros(1), target) == pytest.approx(0.0)
    assert pendulum_at_angle_reward(upright, np.zeros(1), target) == pytest.approx(-(target**2))
    batch = pendulum_at_angle_reward(np.stack([at_target, upright]), np.zeros((2, 1)), target)
    assert batch.shape == (2,) and batch[0] > batch[1]
    # the angle difference wraps around: pi - 0.1 and -pi + 0.1 are 0.2 apart
    near_pi = np.array([math.cos(-math.pi + 0.1), math.sin(-math.pi + 0.1), 0.0])
    assert pendulum_at_angle_reward(near_pi, [0.0], math.pi - 0.1) == pytest.approx(-0.04)


def test_pendulum_at_angle_rejects_an_angle_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="cannot be held"):
        make_env(PENDULUM_AT_ANGLE_ID, target_angle=math.pi / 4)
    env = make_env(PENDULUM_AT_ANGLE_ID, target_angle=math.pi / 4, allow_unholdable=True)
    assert env.unwrapped.spec.kwargs["target_angle"] == math.pi / 4


def test_cartpole_left_reward_and_termination_follow_cartpole() -> None:
    left = make_env(CARTPOLE_LEFT_ID)
    base = make_env("CartPole-v1")
    for seed in range(3):
        obs, _ = left.reset(seed=seed)
        base.reset(seed=seed)
        actions = np.random.default_rng(seed).integers(0, 2, size=500)
        for action in actions:
            new_obs, r, term, trunc, info = left.step(int(action))
            _, base_r, b_term, b_trunc, _ = base.step(int(action))
            assert (term, trunc) == (b_term, b_trunc)
            assert info["base_reward"] == base_r == 1.0
            assert r == pytest.approx(1.0 + float(np.clip(obs[0] / -0.5, 0.0, 1.0)))
            obs = new_obs
            if term or trunc:
                break
        assert term  # random actions end the episode early, as in CartPole
    # the all-or-nothing variant pays the bonus only past the line
    step = make_env(CARTPOLE_LEFT_ID, shaped=False)
    obs, _ = step.reset(seed=0)
    _, r, _, _, _ = step.step(0)
    assert r == (2.0 if obs[0] < -0.5 else 1.0)
    # a cart started far left earns the bonus for the state it acted in
    obs, _ = left.reset(seed=0, options={"low": -0.75, "high": -0.7})
    _, r, term, _, _ = left.step(0)
    assert obs[0] < -0.5 and r == 2.0 and term  # the pole started at -0.7 rad: it fell at once


def test_cartpole_left_shaped_and_checks() -> None:
    xs = np.zeros((5, 4))
    xs[:, 0] = [0.3, 0.0, -0.25, -0.5, -2.0]
    np.testing.assert_allclose(cartpole_left_reward(xs), [1, 1, 1, 1, 2])
    np.testing.assert_allclose(cartpole_left_reward(xs, shaped=True), [1, 1, 1.5, 2, 2])
    np.testing.assert_allclose(cartpole_left_reward(xs, bonus=3.0, target_x=-1.0), [1, 1, 1, 1, 4])
    with pytest.raises(ValueError, match="target_x"):
        make_env(CARTPOLE_LEFT_ID, target_x=0.5)
    with pytest.raises(ValueError, match="bonus"):
        make_env(CARTPOLE_LEFT_ID, bonus=-1.0)


def test_task_registration_is_idempotent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-registering would warn "Overriding environment"
        envs.register_tasks()
        envs.register_tasks()
    assert PENDULUM_AT_ANGLE_ID in gym.registry and CARTPOLE_LEFT_ID in gym.registry
    assert isinstance(gym.make(CARTPOLE_LEFT_ID).unwrapped, CartPoleEnv)
    assert isinstance(gym.make(PENDULUM_AT_ANGLE_ID).unwrapped, PendulumEnv)


def test_import_is_light_and_registers_tasks() -> None:
    import subprocess

    code = (
        "import sys, gymnasium as gym, rlhf_hgt.envs as e\n"
        "assert 'stable_baselines3' not in sys.modules and 'torch' not in sys.modules\n"
        "assert 'rlhf_hgt/CartPoleLeft-v0' in gym.registry\n"
        "import importlib, warnings\n"
        "warnings.simplefilter('error')\n"
        "importlib.reload(e)\n"
        "assert e.HiddenRewardWrapper.__name__ == 'HiddenRewardWrapper'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- rendering


def test_rendering_to_arrays_prints_nothing_without_a_desktop() -> None:
    """Without a desktop session SDL (gymnasium's pygame renderer) prints "error:
    XDG_RUNTIME_DIR is invalid or not set" on every new env; make_env's envs print nothing."""
    import subprocess

    code = (
        "import os\n"
        "from rlhf_hgt.envs import make_env\n"
        "for env_id in ('CartPole-v1', 'rlhf_hgt/CartPoleLeft-v0', 'FrozenLake-v1'):\n"
        "    env = make_env(env_id, render_mode='rgb_array')\n"
        "    env.reset(seed=0)\n"
        "    frame = env.render()\n"
        "    env.step(0)\n"
        "    env.close()\n"
        "    print(frame.ndim, frame.shape[-1], frame.std() > 0)\n"
        "print(os.environ.get('SDL_VIDEODRIVER'), os.environ.get('SDL_AUDIODRIVER'))\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_RUNTIME_DIR", "SDL_VIDEODRIVER", "SDL_AUDIODRIVER")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "XDG_RUNTIME_DIR" not in done.stderr and done.stderr.strip() == ""
    # real pictures, and the process environment as it was
    assert done.stdout.split("\n")[:4] == ["3 3 True"] * 3 + ["None None"]


def test_offscreen_render_keeps_a_users_sdl_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlhf_hgt.envs import OffscreenRender

    class Probe(gym.Env):
        observation_space = gym.spaces.Discrete(1)
        action_space = gym.spaces.Discrete(1)
        render_mode = "rgb_array"

        def reset(self, *, seed=None, options=None):
            return 0, {"driver": os.environ.get("SDL_VIDEODRIVER")}

        def step(self, action):
            return 0, 0.0, True, False, {"driver": os.environ.get("SDL_AUDIODRIVER")}

        def render(self):
            return os.environ.get("SDL_VIDEODRIVER")

    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    monkeypatch.setenv("SDL_AUDIODRIVER", "pulseaudio")
    env = OffscreenRender(Probe())
    assert env.reset()[1]["driver"] == "dummy" and env.render() == "dummy"
    assert env.step(0)[4]["driver"] == "pulseaudio"  # the user's choice stands
    assert "SDL_VIDEODRIVER" not in os.environ  # set only while the env runs
    monkeypatch.setenv("SDL_VIDEODRIVER", "x11")
    assert env.render() == "x11"


# --------------------------------------------------------------------------- DistractorWrapper


@pytest.mark.parametrize("kind", ["noise", "random_walk"])
def test_distractor_shape_and_determinism(kind: str) -> None:
    env = DistractorWrapper(make_env("CartPole-v1"), k=5, kind=kind, scale=0.5, seed=7)
    assert env.observation_space.shape == (9,)
    base = make_env("CartPole-v1")
    obs, _ = env.reset(seed=3)
    base_obs, _ = base.reset(seed=3)
    assert obs.shape == (9,) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[:4], base_obs)
    distractors = [obs[4:]]
    for _ in range(200):
        obs, _, term, trunc, _ = env.step(1)
        base_obs, *_ = base.step(1)
        np.testing.assert_array_equal(obs[:4], base_obs)
        distractors.append(obs[4:])
        if term or trunc:
            obs, _ = env.reset()
            base_obs, _ = base.reset()
            np.testing.assert_array_equal(obs[:4], base_obs)
            break
    values = np.array(distractors)
    steps = np.diff(values, axis=0)
    if kind == "random_walk":
        assert np.all(np.abs(steps) < 5 * 0.5)  # small moves around a drifting level
    assert np.all(np.std(steps, axis=0) > 0.1)  # the features do change
    # the same seeds give the same distractors
    again = DistractorWrapper(make_env("CartPole-v1"), k=5, kind=kind, scale=0.5, seed=7)
    first, _ = again.reset(seed=3)
    np.testing.assert_array_equal(first[4:], distractors[0])
    other, _ = again.reset(seed=4)
    assert not np.array_equal(other[4:], distractors[0])


def test_distractor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k"):
        DistractorWrapper(make_env("CartPole-v1"), k=0)
    with pytest.raises(ValueError, match="kind"):
        DistractorWrapper(make_env("CartPole-v1"), kind="sine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Box"):
        DistractorWrapper(make_env("FrozenLake-v1"))
    with pytest.raises(ValueError, match="scale"):
        DistractorWrapper(make_env("CartPole-v1"), scale=0.0)


# --------------------------------------------------------------------------- make_env


@pytest.mark.parametrize(
    "bad_id, suggestion",
    [
        ("CartPol-v1", "CartPole-v1"),
        ("cartpole", "CartPole-v1"),
        ("PendulumAtAngle-v0", PENDULUM_AT_ANGLE_ID),
        ("rlhf_hgt/CartPoleLeft-v3", CARTPOLE_LEFT_ID),
        ("Pendulum-v0", "Pendulum-v1"),
    ],
)
def test_make_env_unknown_id_suggests_close_matches(bad_id: str, suggestion: str) -> None:
    with pytest.raises(UnknownEnvError) as info:
        make_env(bad_id)
    assert isinstance(info.value, ValueError)
    assert info.value.env_id == bad_id and suggestion in info.value.suggestions
    assert repr(bad_id) in str(info.value) and repr(suggestion) in str(info.value)


def test_make_env_unimportable_module_and_bad_kwargs(custom_module_path: None) -> None:
    with pytest.raises(UnknownEnvError, match="no_such_module_xyz"):
        make_env("no_such_module_xyz:Foo-v0")
    with pytest.raises(UnknownEnvError) as info:
        make_env("custom_envs_for_tests:CustomCoridor-v0")
    assert "CustomCorridor-v0" in info.value.suggestions
    with pytest.raises(UnknownEnvError):
        make_env("a:b:c")
    with pytest.raises(EnvCreationError, match="no_such_arg"):
        make_env("CartPole-v1", no_such_arg=1)


def test_make_env_module_id_works(custom_module_path: None) -> None:
    env = make_env("custom_envs_for_tests:CustomCorridor-v0", length=3)
    _run_check_env(env)
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        _, r, term, trunc, _ = env.step(1)
        steps, done = steps + 1, term or trunc
        assert r == -1.0
    assert term and steps <= 3
    # an unversioned id resolves to the newest version, as gymnasium does
    assert make_env("CartPole").spec.id == "CartPole-v1"


# --------------------------------------------------------------------------- PPO smoke run


def test_ppo_trains_on_learned_reward() -> None:
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    reward_fn = RecordingRewardFn()

    def learned(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        reward_fn(obs, actions)
        return -np.abs(obs[:, 0])

    venv = LearnedRewardVecEnv(
        DummyVecEnv([lambda: HiddenRewardWrapper(make_env(CARTPOLE_LEFT_ID))] * 2), learned
    )
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=2, seed=0, device="cpu")
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256
    assert len(reward_fn.calls) == 128  # one batched call per vector step of 2 envs
    assert all(obs.shape == (2, 4) and act.shape == (2,) for obs, act in reward_fn.calls)
    after = list(model.policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
