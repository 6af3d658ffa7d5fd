"""What the agent's training rollouts feed back: clips for new queries, and the learned
reward computed for a whole PPO rollout in one batched call.

- :class:`RolloutRecorder` keeps the most recent transitions of every env (one append per
  vector step, no per-env Python work), so new queries come from the agent's own training
  rollouts at no extra env steps; episodes are assembled only when asked for.
- :class:`BatchedRewardCallback` gives PPO the learned reward at the end of each rollout:
  one reward-model call for all ``n_steps x n_envs`` transitions instead of one call per
  vector step (a tiny ensemble costs about as much for 4 inputs as for 1,000), then the
  same running return-std scaling as SB3's VecNormalize, then GAE is recomputed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class RolloutRecorder(VecEnvWrapper):
    """Keeps the last ``capacity`` transitions (across envs) with the true reward, episode
    ends and terminal observations; :meth:`episodes_so_far` cuts them into episodes."""

    def __init__(self, venv: VecEnv, capacity: int = 20_000):
        super().__init__(venv)
        self.capacity = capacity
        self._obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self.clear()

    def clear(self) -> None:
        self._steps: deque[tuple] = deque(maxlen=max(1, self.capacity // self.num_envs))
        self.episode_returns: list[float] = []
        self._running = np.zeros(self.num_envs)

    def reset(self) -> np.ndarray:
        self._obs = self.venv.reset()
        self._running[:] = 0
        self._steps.append(None)  # an episode boundary for every env
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.array(actions)
        self.venv.step_async(actions)

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        true_r = np.fromiter((info.get("true_reward", r) for info, r in
                              zip(infos, rewards, strict=True)), dtype=np.float32,
                             count=self.num_envs)
        ends = {}
        for i in np.flatnonzero(dones):
            info = infos[i]
            ends[int(i)] = (not info.get("TimeLimit.truncated", False),
                            info.get("terminal_observation"))
        self._steps.append((np.array(self._obs), self._actions, true_r, ends))
        self._running += true_r
        for i in ends:
            self.episode_returns.append(float(self._running[i]))
            self._running[i] = 0
        self._obs = obs
        return obs, rewards, dones, infos

    def episodes_so_far(self, include_running: bool = True) -> list[dict[str, np.ndarray]]:
        """Finished episodes (oldest may be cut at the front) plus, if asked, the running
        parts of unfinished ones (marked not terminated)."""
        out: list[dict[str, np.ndarray]] = []
        parts: list[list[tuple]] = [[] for _ in range(self.num_envs)]

        def close(i: int, terminated: bool, final_obs) -> None:
            steps = parts[i]
            if steps:
                ep = {"obs": np.stack([s[0] for s in steps]).astype(np.float32),
                      "actions": np.stack([s[1] for s in steps]),
                      "true_rewards": np.asarray([s[2] for s in steps], dtype=np.float32),
                      "terminated": np.asarray(terminated)}
                if final_obs is not None:
                    ep["final_obs"] = np.asarray(final_obs, dtype=np.float32)
                out.append(ep)
            parts[i] = []

        for step in self._steps:
            if step is None:  # a reset of the vector env
                for i in range(self.num_envs):
                    close(i, False, None)
                continue
            obs, actions, true_r, ends = step
            for i in range(self.num_envs):
                parts[i].append((obs[i], actions[i], true_r[i]))
                if i in ends:
                    close(i, *ends[i])
        if include_running:
            for i in range(self.num_envs):
                if len(parts[i]) > 1:
                    close(i, False, None)
        return out


class BatchedRewardCallback(BaseCallback):
    """PPO: the learned reward for a whole rollout at its end, in one batched call.

    The env returns 0 (the true reward is hidden) plus SB3's own timeout bootstrap; the
    learned reward is added to the rollout buffer, scaled by a running std of discounted
    returns (as VecNormalize does, when ``normalize``), and advantages are recomputed."""

    def __init__(self, reward_fn: RewardFn, action_space: gym.Space, gamma: float,
                 normalize: bool = True, clip: float = 10.0, epsilon: float = 1e-8):
        super().__init__()
        self.reward_fn = reward_fn
        self.action_space = action_space
        self.gamma, self.normalize, self.clip, self.epsilon = gamma, normalize, clip, epsilon
        self.return_rms = RunningMeanStd(shape=())
        self._returns: np.ndarray | None = None

    def _on_step(self) -> bool:
        return True

    def reset_scaling(self) -> None:
        """Forget the running return statistics (the reward being scaled has changed)."""
        self.return_rms = RunningMeanStd(shape=())
        self._returns = None

    def _actions(self, acts: np.ndarray) -> np.ndarray:
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return acts.reshape(-1).astype(np.int64)
        if isinstance(space, gym.spaces.MultiDiscrete):
            return acts.astype(np.int64)
        if isinstance(space, gym.spaces.Box):  # the env was given clipped actions
            return np.clip(acts, space.low.reshape(-1), space.high.reshape(-1))
        return acts

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        n, e = buf.buffer_size, buf.n_envs
        obs = buf.observations.reshape(n * e, *buf.obs_shape)
        acts = self._actions(buf.actions.reshape(n * e, -1))
        r = np.asarray(self.reward_fn(obs, acts), dtype=np.float32).reshape(n, e)
        if not np.all(np.isfinite(r)):
            raise ValueError("the learned reward is NaN or infinite; check the reward model")
        dones = np.asarray(self.locals["dones"], dtype=bool)
        if self.normalize:
            if self._returns is None:
                self._returns = np.zeros(e)
            ends = np.concatenate([buf.episode_starts[1:] > 0, dones[None]], axis=0)
            for t in range(n):
                self._returns = self._returns * self.gamma + r[t]
                self.return_rms.update(self._returns)
                r[t] = np.clip(r[t] / np.sqrt(self.return_rms.var + self.epsilon),
                               -self.clip, self.clip)
                self._returns[ends[t]] = 0.0
        buf.rewards += r
        buf.compute_returns_and_advantage(last_values=self.locals["values"], dones=dones)
