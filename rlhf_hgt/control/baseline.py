"""The yardstick: the same agent trained on the env's own reward with the same steps."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from rlhf_hgt.control.agents import AgentConfig, evaluate_true_return, make_agent, make_vec_env
from rlhf_hgt.envs import make_env
from rlhf_hgt.envs.wrappers import add_distractors


def train_on_true_reward(env_id: str, timesteps: int, seed: int, agent_cfg: AgentConfig,
                         eval_episodes: int = 10, distractors: str | None = None
                         ) -> dict[str, Any]:
    """The agent on the env's own reward; ``distractors`` appends the same distractor
    features a preference run sees (``--distractors``), so both agents observe alike."""
    def env_fn() -> gym.Env:
        return add_distractors(make_env(env_id), distractors)

    probe = env_fn()
    n_envs = agent_cfg.envs_for(probe.action_space)
    probe.close()
    venv = make_vec_env(env_fn, n_envs, seed, agent_cfg.subprocess)
    agent = make_agent(agent_cfg, venv, seed)
    agent.learn(total_timesteps=timesteps)
    mean, std = evaluate_true_return(agent, env_fn, eval_episodes, seed=123_456)
    venv.close()
    return {"env_id": env_id, "timesteps": int(agent.num_timesteps), "seed": seed,
            "true_return_mean": mean, "true_return_std": std, "distractors": distractors}
