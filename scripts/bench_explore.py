"""Exploration alone: does the state-entropy agent reach what a sparse task rewards? (#16)

PPO (the loop's agent for discrete actions, its default settings) trains on the
state-entropy reward only (rlhf_hgt.control.explore, as the loop does before its first
questions and while every answer is a tie), with PPO's entropy bonus at each value of
``--ent-coef``. The env's own reward is hidden from the agent and only counted: the report
gives the best episode return seen in training and the step of the first episode that beat
the worst return (on MountainCar-v0: the first time the car reached the flag).

    python scripts/bench_explore.py --env MountainCar-v0 --steps 100000 --ent-coef 0 0.01
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def explore(env_id: str, steps: int, ent_coef: float, seed: int) -> dict:
    import numpy as np
    import torch
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    from rlhf_hgt.control.agents import make_agent, make_vec_env
    from rlhf_hgt.control.config import AgentConfig
    from rlhf_hgt.control.explore import StateEntropyReward
    from rlhf_hgt.control.rollouts import BatchedRewardCallback
    from rlhf_hgt.envs import HiddenRewardWrapper, make_env

    torch.set_num_threads(1)
    cfg = AgentConfig(ent_coef=ent_coef)
    venv = make_vec_env(lambda: HiddenRewardWrapper(make_env(env_id)), cfg.n_envs, seed=seed)
    agent = make_agent(cfg, venv, seed=seed, device="cpu")
    returns: list[tuple[int, float]] = []  # (step, true episode return)

    class Count(BaseCallback):
        def _on_training_start(self) -> None:
            self.running = np.zeros(venv.num_envs)

        def _on_step(self) -> bool:
            for i, info in enumerate(self.locals["infos"]):
                self.running[i] += info.get("true_reward", 0.0)
                if self.locals["dones"][i]:
                    returns.append((self.num_timesteps, float(self.running[i])))
                    self.running[i] = 0.0
            return True

    reward = StateEntropyReward(venv.observation_space, seed=seed)
    t0 = time.time()
    agent.learn(steps, callback=CallbackList([
        BatchedRewardCallback(reward, venv.action_space, cfg.gamma, cfg.normalize_reward),
        Count()]))
    worst = min(r for _, r in returns)
    first = next((s for s, r in returns if r > worst), None)
    return {"env": env_id, "ent_coef": ent_coef, "seed": seed, "episodes": len(returns),
            "best_return": max(r for _, r in returns), "worst_return": worst,
            "first_better_step": first, "seconds": round(time.time() - t0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="MountainCar-v0")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--ent-coef", type=float, nargs="+", default=[0.0, 0.01])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    for seed in args.seeds:
        for ent in args.ent_coef:
            print(explore(args.env, args.steps, ent, seed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
