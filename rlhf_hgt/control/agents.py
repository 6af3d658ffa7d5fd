"""Stable-baselines3 agents for the control loop: construction, a rollout recorder, evaluation.

The agent never sees the env's own reward: its vector env hides it (the true reward is kept
in ``info["true_reward"]`` for teachers and evaluation) and the learned reward is swapped in
for all envs at once, one batched model call per vector step.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from rlhf_hgt.control.config import ALGOS, AgentConfig

__all__ = ["ALGOS", "AgentConfig", "agent_steps_per_round", "evaluate_true_return",
           "make_agent", "make_vec_env", "random_return", "relabel_replay_buffer"]


def make_vec_env(env_fn: Callable[[], gym.Env], n_envs: int, seed: int,
                 subprocess: bool = False) -> VecEnv:
    fns = [env_fn for _ in range(n_envs)]
    venv: VecEnv = SubprocVecEnv(fns) if subprocess and n_envs > 1 else DummyVecEnv(fns)
    venv.seed(seed)
    return venv


def make_agent(config: AgentConfig, venv: VecEnv, seed: int, device: str = "auto") -> BaseAlgorithm:
    algo = config.resolve_algo(venv.action_space)
    policy_kwargs = {"net_arch": list(config.net_arch)}
    if algo == "ppo":
        n_steps = config.n_steps
        batch = min(config.batch_size, n_steps * venv.num_envs)
        return PPO("MlpPolicy", venv, learning_rate=config.learning_rate, n_steps=n_steps,
                   batch_size=batch, n_epochs=config.n_epochs, gamma=config.gamma,
                   gae_lambda=config.gae_lambda, ent_coef=config.ent_coef, seed=seed,
                   policy_kwargs=policy_kwargs, device="cpu" if device == "auto" else device,
                   verbose=0)
    return SAC("MlpPolicy", venv, learning_rate=config.learning_rate, gamma=config.gamma,
               batch_size=max(config.batch_size, 256), learning_starts=config.learning_starts,
               gradient_steps=config.gradient_steps, seed=seed,
               policy_kwargs={"net_arch": [256, 256]}, device=device, verbose=0)


def agent_steps_per_round(config: AgentConfig, venv: VecEnv, total: int, rounds: int) -> list[int]:
    """Split the timestep budget evenly over rounds, in whole PPO rollouts (``total`` rounded
    up to a whole number of rollouts, as SB3's learn() does), at least one per round."""
    unit = config.n_steps * venv.num_envs if config.resolve_algo(venv.action_space) == "ppo" else 1
    units = max(rounds, -(-total // unit))
    return [unit * (units // rounds + (1 if r < units % rounds else 0)) for r in range(rounds)]


def evaluate_true_return(model: BaseAlgorithm, env_fn: Callable[[], gym.Env], episodes: int,
                         seed: int, deterministic: bool = True) -> tuple[float, float]:
    """Mean and std of the env's own return over ``episodes`` episodes (never shown to the
    learner)."""
    env = env_fn()
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=deterministic)
            if discrete:  # a 0-d array; toy-text envs index tables with the action
                action = int(action)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(info.get("true_reward", reward))
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


def random_return(env_fn: Callable[[], gym.Env], episodes: int, seed: int) -> float:
    """Mean return of uniformly random actions: the floor of a normalised score."""
    env = env_fn()
    env.action_space.seed(seed)
    returns = []
    for k in range(episodes):
        env.reset(seed=seed + k)
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, info = env.step(env.action_space.sample())
            total += float(info.get("true_reward", reward))
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def relabel_replay_buffer(model: BaseAlgorithm,
                          reward_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
                          chunk: int = 8192) -> int:
    """Off-policy agents store rewards when a step is taken; after the reward model is refit,
    give every stored transition the new learned reward (batched). Returns how many."""
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        return 0
    size = buffer.buffer_size if buffer.full else buffer.pos
    if size == 0:
        return 0
    n_envs = buffer.n_envs
    obs = buffer.observations[:size].reshape(size * n_envs, *buffer.obs_shape)
    acts = buffer.actions[:size].reshape(size * n_envs, -1)
    new = np.empty(size * n_envs, dtype=np.float32)
    for start in range(0, len(new), chunk):
        new[start:start + chunk] = reward_fn(obs[start:start + chunk], acts[start:start + chunk])
    buffer.rewards[:size] = new.reshape(size, n_envs)
    return size * n_envs
