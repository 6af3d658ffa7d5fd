"""Wrappers for learning from preferences.

- `HiddenRewardWrapper`: the learner sees reward 0; the true reward stays in `info` for teachers
  and evaluation.
- `LearnedRewardVecEnv`: an SB3 VecEnv whose reward comes from a learned reward function,
  called once per vector step on the whole batch.
- `DistractorWrapper`: appends irrelevant features to a Box observation: pure noise, or
  features that can correlate with the true reward early in training and not later.
- `add_distractors`: wraps an env in one DistractorWrapper per part of a spec such as
  ``"noise:2,time:2"`` (the `--distractors` flag of `rlhf-hgt control`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

__all__ = [
    "DISTRACTOR_KINDS",
    "DistractorWrapper",
    "HiddenRewardWrapper",
    "LearnedRewardVecEnv",
    "RewardFn",
    "add_distractors",
]

RewardFn = Callable[[Any, np.ndarray], Any]
"""`reward_fn(obs (n_envs, *obs_shape), actions (n_envs, *act_shape)) -> rewards (n_envs,)`."""

DISTRACTOR_KINDS = ("noise", "random_walk", "time", "drift")


class HiddenRewardWrapper(gym.Wrapper):
    """Hides the env's reward from the learner: every step returns reward 0.0.

    The reward is kept in `info["true_reward"]` (if a wrapper below already hid it there, that
    value is kept), and the episode's true return in `info["true_episode_return"]` on the step
    that ends the episode (terminated or truncated). Put this wrapper outside the TimeLimit
    (as on the env `gymnasium.make` returns) so it sees truncations.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._true_return = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._true_return = 0.0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        true_reward = float(info.get("true_reward", reward))
        info["true_reward"] = true_reward
        self._true_return += true_reward
        if terminated or truncated:
            info["true_episode_return"] = self._true_return
        return obs, 0.0, terminated, truncated, info


def _copy_obs(obs: VecEnvObs) -> VecEnvObs:
    if isinstance(obs, dict):
        return {key: np.array(value, copy=True) for key, value in obs.items()}
    if isinstance(obs, tuple):
        return tuple(np.array(value, copy=True) for value in obs)
    return np.array(obs, copy=True)


def _check_reward_fn(reward_fn: Any) -> RewardFn:
    if not callable(reward_fn):
        raise TypeError(
            "reward_fn must be callable as reward_fn(obs, actions) -> rewards of shape "
            f"(n_envs,), got {type(reward_fn).__name__}"
        )
    return reward_fn


class LearnedRewardVecEnv(VecEnvWrapper):
    """Replaces the reward of a VecEnv by a learned `reward_fn(obs, actions)`.

    `reward_fn` is called once per vector step with the batch of observations the actions were
    taken in (kept from the previous step or reset, so an auto-reset does not mix in the next
    episode's first observation) and the batch of actions. It must return `n_envs` finite
    rewards (shape `(n_envs,)`; `(n_envs, 1)` is accepted). With subprocess envs it runs while
    the envs step. The env's own reward goes to `infos[i]["true_reward"]` unless a
    `HiddenRewardWrapper` below put the true reward there already; `infos[i]
    ["true_episode_return"]` is filled the same way when an episode ends. Normalising the
    reward is the reward model's job, not this wrapper's.
    """

    def __init__(self, venv: VecEnv, reward_fn: RewardFn) -> None:
        super().__init__(venv)
        self._reward_fn = _check_reward_fn(reward_fn)
        self._last_obs: VecEnvObs | None = None
        self._pending_rewards: np.ndarray | None = None
        self._true_returns = np.zeros(self.num_envs, dtype=np.float64)

    @property
    def reward_fn(self) -> RewardFn:
        return self._reward_fn

    def update_reward_fn(self, reward_fn: RewardFn) -> None:
        """Use `reward_fn` from the next step on (e.g. after the reward model was refit)."""
        self._reward_fn = _check_reward_fn(reward_fn)

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._last_obs = _copy_obs(obs)
        self._pending_rewards = None
        self._true_returns[:] = 0.0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        if self._last_obs is None:
            raise RuntimeError("LearnedRewardVecEnv: call reset() before step()")
        actions = np.array(actions, copy=True)
        self.venv.step_async(actions)
        try:  # overlaps with the envs' step when they run in subprocesses
            self._pending_rewards = self._learned_rewards(self._last_obs, actions)
        except Exception:
            self.venv.step_wait()  # leave the inner VecEnv ready; this step's data is lost
            self._last_obs = None
            raise

    def step_wait(self) -> VecEnvStepReturn:
        obs, env_rewards, dones, infos = self.venv.step_wait()
        rewards, self._pending_rewards = self._pending_rewards, None
        if rewards is None:
            raise RuntimeError("LearnedRewardVecEnv: step_wait() without step_async()")
        pairs = zip(infos, env_rewards, strict=True)
        true_rewards = np.fromiter(
            (info.setdefault("true_reward", float(r)) for info, r in pairs),
            dtype=np.float64,
            count=self.num_envs,
        )
        self._true_returns += true_rewards
        for i in np.flatnonzero(dones):
            infos[i].setdefault("true_episode_return", float(self._true_returns[i]))
            self._true_returns[i] = 0.0
        self._last_obs = _copy_obs(obs)
        return obs, rewards, dones, infos

    def _learned_rewards(self, obs: VecEnvObs, actions: np.ndarray) -> np.ndarray:
        rewards = np.asarray(self._reward_fn(obs, actions), dtype=np.float32)
        n = self.num_envs
        if rewards.shape == (n, 1):
            rewards = rewards.reshape(n)
        if rewards.shape != (n,):
            raise ValueError(
                f"reward_fn must return one reward per env, shape ({n},); got shape "
                f"{rewards.shape}. Reduce the reward model's output to one value per observation"
            )
        if not np.all(np.isfinite(rewards)):
            raise ValueError(
                "reward_fn returned NaN or infinite rewards; check the reward model's weights "
                "and inputs"
            )
        return rewards


class DistractorWrapper(gym.ObservationWrapper):
    """Appends `k` features that carry no information about the task to a 1-D Box observation.

    `kind="noise"`: fresh N(0, scale^2) values every step. `kind="random_walk"`: each feature
    starts at N(0, scale^2) and moves by N(0, scale^2) per step (unbounded; it restarts at reset).
    `kind="time"`: the time in the episode, `scale * t / horizon` (t = steps since reset,
    horizon = the env's step limit, else 1000) plus N(0, (0.1 scale)^2) per feature; where
    later steps of an episode are better (a pendulum swung up, a pole still standing) it
    predicts the reward while the policy is poor, and not once it is good from the start.
    `kind="drift"`: a slow drift over all steps of this env, never reset,
    `scale * steps / drift_steps` plus the same small noise; it rises while the policy
    improves early in training, so it correlates with the reward early and not later.
    The distractors draw from their own generator, seeded by `seed` and by the seed passed to
    `reset`, so a seeded reset gives the same observations (a drift also depends on the steps
    taken before).
    """

    def __init__(
        self,
        env: gym.Env,
        k: int = 4,
        kind: Literal["noise", "random_walk", "time", "drift"] = "noise",
        scale: float = 1.0,
        seed: int | None = None,
        drift_steps: int = 10_000,
    ) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(
                "DistractorWrapper needs a 1-D Box observation space, got "
                f"{space}; wrap the env in gymnasium.wrappers.FlattenObservation first"
            )
        if not np.issubdtype(space.dtype, np.floating):
            raise ValueError(
                f"DistractorWrapper needs a floating-point observation, got dtype {space.dtype}; "
                "wrap the env in gymnasium.wrappers.DtypeObservation(env, np.float32) first"
            )
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k (number of distractor features) must be an integer >= 1, got {k}")
        if kind not in DISTRACTOR_KINDS:
            raise ValueError(f"kind must be one of {DISTRACTOR_KINDS}, got {kind!r}")
        if not (math.isfinite(float(scale)) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale}")
        if seed is not None and (not isinstance(seed, int | np.integer) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        if isinstance(drift_steps, bool) or not isinstance(drift_steps, int | np.integer) or \
                drift_steps < 1:
            raise ValueError(f"drift_steps must be an integer >= 1, got {drift_steps!r}")
        self.k = int(k)
        self.kind = kind
        self.drift_steps = int(drift_steps)
        spec_steps = getattr(env.spec, "max_episode_steps", None) if env.spec else None
        self.horizon = int(spec_steps) if spec_steps else 1000
        self._t = 0  # steps since reset
        self._steps = 0  # steps since this wrapper was made
        self.scale = float(scale)
        self.seed = None if seed is None else int(seed)
        extra = np.full(self.k, np.inf)
        self.observation_space = gym.spaces.Box(
            low=np.concatenate([space.low, -extra]).astype(space.dtype),
            high=np.concatenate([space.high, extra]).astype(space.dtype),
            dtype=space.dtype,
        )
        self._rng = np.random.default_rng(self.seed)
        self._values = np.zeros(self.k, dtype=np.float64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            entropy = [int(seed)] if self.seed is None else [int(seed), self.seed]
            self._rng = np.random.default_rng(entropy)
        self._t = 0
        self._values = self._draw()
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        self._t += 1
        self._steps += 1
        if self.kind == "random_walk":
            self._values = self._values + self._rng.normal(0.0, self.scale, size=self.k)
        else:
            self._values = self._draw()
        return super().step(action)

    def _draw(self) -> np.ndarray:
        """The distractors' values for the current step (random_walk: its start)."""
        if self.kind in ("noise", "random_walk"):
            return self._rng.normal(0.0, self.scale, size=self.k)
        base = self._t / self.horizon if self.kind == "time" else self._steps / self.drift_steps
        return self.scale * (base + self._rng.normal(0.0, 0.1, size=self.k))

    def observation(self, observation: np.ndarray) -> np.ndarray:
        dtype = self.observation_space.dtype
        return np.concatenate([np.asarray(observation, dtype=dtype), self._values.astype(dtype)])


def add_distractors(env: gym.Env, spec: str | None, scale: float = 1.0) -> gym.Env:
    """`env` with one `DistractorWrapper` per part of `spec`, ``"KIND:K[,KIND:K...]"`` (e.g.
    ``"noise:2,time:2"``), appended in that order; `env` itself when `spec` is None or empty.
    A malformed spec or an unknown kind is a ValueError naming `--distractors`."""
    if not spec:
        return env
    for part in str(spec).split(","):
        kind, _, count = part.strip().partition(":")
        count = count.strip() or "1"
        if kind.strip() not in DISTRACTOR_KINDS or not count.isdecimal() or int(count) < 1:
            raise ValueError(
                f"--distractors {spec}: {part.strip()!r} is not KIND:K with KIND one of "
                f"{', '.join(DISTRACTOR_KINDS)} and K >= 1, e.g. noise:2,time:2"
            )
        try:
            env = DistractorWrapper(env, k=int(count), kind=kind.strip(), scale=scale)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"--distractors {spec}: {exc}") from None
    return env
