"""A tiny env registered on import, for testing `module:EnvName-v0` ids (not a test module)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class CustomCorridor(gym.Env):
    """Walk right along a corridor of `length` cells; -1 per step, the episode ends at the end."""

    metadata = {"render_modes": []}

    def __init__(self, length: int = 5) -> None:
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, float(length), shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._pos = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._pos = int(self.np_random.integers(0, 2))
        return np.array([self._pos], dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._pos = max(0, min(self.length, self._pos + (1 if int(action) == 1 else -1)))
        terminated = self._pos == self.length
        return np.array([self._pos], dtype=np.float32), -1.0, terminated, False, {}


if "CustomCorridor-v0" not in gym.registry:
    gym.register(id="CustomCorridor-v0", entry_point=CustomCorridor, max_episode_steps=50)


class DictObsEnv(gym.Env):
    """An env whose observations are a Dict space: the reward model cannot take it."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict(
            {"pos": gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)})
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return {"pos": np.zeros(2, dtype=np.float32)}, {}

    def step(self, action: Any):
        return {"pos": np.zeros(2, dtype=np.float32)}, 0.0, False, False, {}


if "DictObs-v0" not in gym.registry:
    gym.register(id="DictObs-v0", entry_point=DictObsEnv, max_episode_steps=20)


class SparseCorridor(CustomCorridor):
    """A long corridor, from its start: a random walk almost never reaches the end in an
    episode, so every clip of a fresh policy has the same return (a sparse-reward task)."""

    def __init__(self, length: int = 15) -> None:
        super().__init__(length)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = super().reset(seed=seed, options=options)
        self._pos = 0
        return np.zeros(1, dtype=np.float32), info


if "SparseCorridor-v0" not in gym.registry:
    gym.register(id="SparseCorridor-v0", entry_point=SparseCorridor, max_episode_steps=40)
