"""``--algo dpo``: the policy learns from the stored pairs directly, no reward model
(:mod:`rlhf_hgt.control.policy_dpo`), always measured against the starting policy.

Fitting is the policy's training; a round's env-step budget only sets how many steps are
counted (the policy acts in the env for new clips and for evaluation alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from rlhf_hgt.control.config import ControlConfig
from rlhf_hgt.control.learner import PreferenceLearner, build_agent
from rlhf_hgt.control.policy_dpo import frozen_reference, train_policy_dpo

OBSERVATIONS = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete,
                gym.spaces.MultiBinary)


class PolicyDPOLearner(PreferenceLearner):
    """Policy DPO against a frozen copy of the starting policy."""

    def __init__(self, cfg: ControlConfig, envs: VecEnv) -> None:
        self.config = cfg.dpo
        self.agent = build_agent(cfg, envs)
        # the starting policy, taken before a resume restores later weights
        self.reference = frozen_reference(self.agent.policy)
        self._timesteps = 0

    @classmethod
    def check(cls, cfg: ControlConfig, env: gym.Env) -> None:
        if not isinstance(env.observation_space, OBSERVATIONS):
            raise ValueError(f"{cfg.env_id}: --algo dpo needs Box, Discrete, MultiDiscrete or "
                             f"MultiBinary observations, got {env.observation_space}; flatten "
                             "dict observations with gymnasium.wrappers.FlattenObservation")
        if not isinstance(env.action_space, gym.spaces.Discrete | gym.spaces.Box):
            raise ValueError(f"{cfg.env_id}: --algo dpo needs Discrete or Box actions, "
                             f"got {env.action_space}")
        super().check(cfg, env)

    def fit(self, left: Sequence[dict[str, np.ndarray]], right: Sequence[dict[str, np.ndarray]],
            targets: np.ndarray, episodes: list[dict[str, np.ndarray]],
            rng: np.random.Generator, weights: np.ndarray | None = None,
            marks: np.ndarray | None = None, mark_weight: float = 0.0) -> dict[str, Any]:
        if weights is not None or marks is not None:
            raise ValueError("policy DPO takes no pair weights or feature marks (the "
                             "config refuses --time-weighting and --feature-marks with it)")
        prefs = list(zip(left, right, targets.tolist(), strict=True))
        return train_policy_dpo(self.agent.policy, prefs, self.config, rng=rng,
                                reference=self.reference)

    def train(self, steps: int) -> None:
        self._timesteps += steps  # the policy learned in fit; the round's budget is counted

    @property
    def timesteps(self) -> int:
        return self._timesteps

    def restore(self, folder: Path, timesteps: int) -> None:
        super().restore(folder, 0)
        self._timesteps = int(timesteps)
