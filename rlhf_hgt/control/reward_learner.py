"""``--algo ppo``: an ensemble of reward models learns from every stored answer, and an RL
agent (SB3 PPO for discrete actions, SAC for continuous ones by default) trains on the
ensemble's reward (Christiano et al. 2017).

PPO gets the learned reward for each whole rollout in one batched call
(:class:`rlhf_hgt.control.rollouts.BatchedRewardCallback`); SAC gets it per step, into its
replay buffer, which is relabelled after every refit. The agent may keep training on the
last reward while people label the next pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from rlhf_hgt.control.agents import agent_steps_per_round, relabel_replay_buffer
from rlhf_hgt.control.config import ControlConfig, parse_feature_marks
from rlhf_hgt.control.explore import StateEntropyReward, features_of
from rlhf_hgt.control.learner import PreferenceLearner, build_agent
from rlhf_hgt.control.reward_model import RewardEnsemble
from rlhf_hgt.control.rollouts import BatchedRewardCallback
from rlhf_hgt.envs import LearnedRewardVecEnv

REWARD_MODEL_DIR = "reward_model"


class RewardModelLearner(PreferenceLearner):
    """Reward-model ensemble + RL agent on the learned reward."""

    trains_while_people_label = True
    explores = True

    def __init__(self, cfg: ControlConfig, envs: VecEnv) -> None:
        self.cfg = cfg
        self.ensemble = RewardEnsemble(envs.observation_space, envs.action_space,
                                       config=cfg.reward, seed=cfg.seed)
        on_policy = cfg.agent.resolve_algo(envs.action_space) == "ppo"
        self.train_env = envs if on_policy else LearnedRewardVecEnv(envs, self.reward)
        self.callback = BatchedRewardCallback(self.reward, envs.action_space, cfg.agent.gamma,
                                              cfg.agent.normalize_reward) if on_policy else None
        self.agent = build_agent(cfg, self.train_env)
        self.marks = feature_keep(cfg, envs.observation_space)
        self._explorer: StateEntropyReward | None = None  # the reward while exploring

    @classmethod
    def check(cls, cfg: ControlConfig, env: gym.Env) -> None:
        RewardEnsemble(env.observation_space, env.action_space, config=cfg.reward, seed=0)
        if cfg.explore_fraction > 0:
            features_of(env.observation_space)
        feature_keep(cfg, env.observation_space)
        super().check(cfg, env)

    def reward(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The per-step reward the agent trains on: the ensemble's (the state-entropy one
        while exploring)."""
        if self._explorer is not None:
            return self._explorer(obs, actions)
        return self.ensemble.predict(obs, actions)

    def explore(self, steps: int) -> None:
        """PEBBLE's unsupervised pre-training: ``steps`` env steps on a state-entropy reward
        (:mod:`rlhf_hgt.control.explore`), kept up while the answers are all ties (see
        :meth:`fit`). SAC's replay buffer keeps these steps and is relabelled with the
        learned reward once answers say something; PPO's reward scaling then starts afresh,
        so the exploration reward's scale does not carry over."""
        self._start_exploring()
        self.train(steps)

    def _start_exploring(self) -> None:
        if self._explorer is None:
            self._explorer = StateEntropyReward(self.train_env.observation_space,
                                                seed=self.cfg.seed)
            if self.callback is not None:  # PPO: an entropy bonus while exploring
                self.agent.ent_coef = max(self.cfg.agent.ent_coef, self.cfg.explore_ent_coef)

    def _stop_exploring(self) -> None:
        if self._explorer is None:
            return
        self._explorer = None
        if self.callback is not None:
            self.callback.reset_scaling()
            self.agent.ent_coef = self.cfg.agent.ent_coef

    def steps_per_round(self, total: int, rounds: int) -> list[int]:
        return agent_steps_per_round(self.cfg.agent, self.train_env, total, rounds)

    def query_model(self) -> RewardEnsemble | None:
        return self.ensemble if self.ensemble.fitted else None

    def fit(self, left: Sequence[dict[str, np.ndarray]], right: Sequence[dict[str, np.ndarray]],
            targets: np.ndarray, episodes: list[dict[str, np.ndarray]],
            rng: np.random.Generator, weights: np.ndarray | None = None,
            marks: np.ndarray | None = None, mark_weight: float = 0.0) -> dict[str, Any]:
        metrics = self.ensemble.fit(left, right, targets, rng=rng, weights=weights,
                                    marks=marks, mark_weight=mark_weight)
        if self.cfg.explore_fraction > 0 and not np.any(np.abs(np.asarray(targets) - 0.5)
                                                        > 1e-6):
            # every answer so far is a tie (a sparse task: the clips all score alike): the
            # learned reward knows nothing yet, so the agent keeps exploring instead
            self._start_exploring()
            return metrics | {"exploring": 1}
        self._stop_exploring()
        # Unit spread of the learned reward on recent policy steps. Where clips ran past an
        # episode's end, "episode over" is already worth exactly 0 to the reward model, so
        # the reward is not centred: living on is worth what the person's answers say, and
        # the agent is neither paid to end episodes early nor to drag them out.
        # (with rescale_each_fit off, only the first fit sets the scale: a fixed scale)
        if self.cfg.reward.rescale_each_fit or not self.ensemble.normalized:
            self.ensemble.fit_normalization(np.concatenate([e["obs"] for e in episodes]),
                                            np.concatenate([e["actions"] for e in episodes]))
        relabel_replay_buffer(self.agent, self.reward)
        return metrics

    def train(self, steps: int) -> None:
        self.agent.learn(total_timesteps=steps, reset_num_timesteps=False,
                         callback=self.training_callback(self.callback))

    def save(self, folder: Path) -> None:
        super().save(folder)
        if self.ensemble.fitted:
            self.ensemble.save(folder / REWARD_MODEL_DIR)

    def restore(self, folder: Path, timesteps: int) -> None:
        super().restore(folder, timesteps)
        if (folder / REWARD_MODEL_DIR).exists():
            self.ensemble.load(folder / REWARD_MODEL_DIR)


def feature_keep(cfg: ControlConfig, space: gym.Space) -> np.ndarray | None:
    """The keep mask (F,) of ``--feature-marks`` for this observation space, or None
    without marks; a UserInputError (a ValueError) when the space has no vector features
    or an index is out of range."""
    from rlhf_hgt.feedback.errors import UserInputError

    if cfg.feature_marks is None:
        return None
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1 or \
            space.dtype == np.uint8:
        raise UserInputError(f"--feature-marks {cfg.feature_marks}: feature marks name the "
                             f"features of a vector observation (a 1-D Box); {cfg.task_id} "
                             f"observes {space} (images have no numbered features: leave "
                             "--feature-marks out)")
    n = int(space.shape[0])
    keep = np.zeros(n, dtype=np.float32)
    keep[list(parse_feature_marks(cfg.feature_marks, n, f" of {cfg.task_id}"))] = 1.0
    return keep
