"""Exploration before the first questions: a state-entropy reward (PEBBLE's unsupervised
pre-training, Lee et al. 2021, after APT, Liu & Abbeel 2021).

On a sparse-reward task a fresh policy's clips look alike to a teacher who knows only the
env's reward (Acrobot: -1 every step on both sides), so nearly every answer is a tie and
the reward model learns nothing. Training the agent first to visit states unlike the ones
it has seen spreads its clips over the state space, so some of them reach what the task
rewards and the first comparisons carry information.

The reward of a state is the log distance to its k-th nearest neighbour among recently
visited states (a particle estimate of the state distribution's entropy, up to constants):
large where the agent has rarely been. Features are standardised with running statistics,
so no feature's units dominate; observations with many features (images) are first
projected to :data:`PROJECT_TO` dimensions by a fixed random matrix.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.running_mean_std import RunningMeanStd

PROJECT_TO = 64  #: observations with more features are randomly projected to this many


class StateEntropyReward:
    """``reward(obs, actions)`` -> log(1 + distance to the k-th nearest visited state).

    Every call adds its states to a memory of the last ``capacity`` ones; each state is
    compared with the memory and with the other states of its own batch (itself left out),
    so the first call, with an empty memory, already ranks novel states higher."""

    def __init__(self, space: gym.Space, k: int = 5, capacity: int = 10_000,
                 seed: int = 0) -> None:
        if k < 1 or capacity < k:
            raise ValueError(f"k must be >= 1 and capacity >= k, got k={k}, "
                             f"capacity={capacity}")
        self.space = space
        self.dim = features_of(space)
        self.k, self.capacity = k, capacity
        rng = np.random.default_rng(seed)
        self.project = (rng.normal(size=(self.dim, PROJECT_TO)) / np.sqrt(PROJECT_TO)
                        ).astype(np.float32) if self.dim > PROJECT_TO else None
        width = PROJECT_TO if self.project is not None else self.dim
        self.memory = np.zeros((capacity, width), dtype=np.float32)
        self.size = self.pos = 0
        self.rms = RunningMeanStd(shape=(width,))

    def features(self, obs: np.ndarray) -> np.ndarray:
        """(n, width) float32 features of a batch of observations."""
        if isinstance(self.space, gym.spaces.Discrete):
            flat = np.eye(self.dim, dtype=np.float32)[np.asarray(obs).reshape(-1).astype(int)
                                                      - int(self.space.start)]
        else:
            flat = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
        return flat @ self.project if self.project is not None else flat

    def __call__(self, obs: np.ndarray, actions: np.ndarray | None = None) -> np.ndarray:
        x = self.features(obs)
        self.rms.update(x.astype(np.float64))
        scale = np.sqrt(self.rms.var + 1e-8).astype(np.float32)
        mean = self.rms.mean.astype(np.float32)
        z = torch.from_numpy((x - mean) / scale)
        ref = torch.cat([torch.from_numpy((self.memory[:self.size] - mean) / scale), z])
        dist = torch.cdist(z, ref)
        own = torch.arange(len(z)) + self.size  # each state's own column: not a neighbour
        dist[torch.arange(len(z)), own] = float("inf")
        k = min(self.k, ref.shape[0] - 1)
        if k < 1:  # one state, nothing to compare it with
            reward = np.zeros(len(z), dtype=np.float32)
        else:
            kth = torch.kthvalue(dist, k, dim=1).values
            reward = torch.log1p(kth).numpy().astype(np.float32)
        self._remember(x)
        return reward

    def _remember(self, x: np.ndarray) -> None:
        x = x[-self.capacity:]
        slots = (self.pos + np.arange(len(x))) % self.capacity
        self.memory[slots] = x
        self.pos = int(slots[-1] + 1) % self.capacity if len(x) else self.pos
        self.size = min(self.size + len(x), self.capacity)


def features_of(space: gym.Space) -> int:
    """How many features a state of ``space`` has for the entropy estimate; ValueError for
    spaces it cannot measure distances in."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise ValueError(f"exploration measures distances between observations of a Box or "
                     f"Discrete space, not {space}; give --explore-fraction 0")
