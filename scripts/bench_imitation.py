"""The peer: imitation 1.0.1's PreferenceComparisons, on the same env, teacher (a synthetic
oracle over the true reward), label budget and timesteps as our loop.

imitation pins old SB3/gymnasium and cannot share our venv; installed with --no-deps into
a folder of its own it runs on ours (DESIGN.md):

    pip install --no-deps --target .peers/imitation imitation==1.0.1 seals==0.2.1 scipy
    PYTHONPATH=.peers/imitation python scripts/bench_imitation.py --labels 200 500 1000 \
        --seeds 0 1 2 --timesteps 20000

Settings are those of imitation's own preference-comparisons tutorial for Pendulum-v1
(its reward net, fragmenter, PPO hyperparameters), so the peer runs as its authors
show it. Results are added to benchmarks/control_results.json under "imitation|...".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is not a package
from bench_control import load_results, record_result  # noqa: E402 - light at import


def run_peer(env_id: str, labels: int, timesteps: int, seed: int, episodes: int = 10,
             variable_horizon: bool = False) -> dict:
    """One run; ``variable_horizon`` lets imitation take a task whose episodes end early
    (it refuses them by default: their ends leak information about the reward)."""
    import numpy as np
    import torch
    from imitation.algorithms import preference_comparisons as pc
    from imitation.policies.base import FeedForward32Policy, NormalizeFeaturesExtractor
    from imitation.rewards.reward_nets import BasicRewardNet
    from imitation.util.networks import RunningNorm
    from imitation.util.util import make_vec_env
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    venv = make_vec_env(env_id, rng=rng)
    reward_net = BasicRewardNet(venv.observation_space, venv.action_space,
                                normalize_input_layer=RunningNorm)
    trainer = pc.BasicRewardTrainer(preference_model=pc.PreferenceModel(reward_net),
                                    loss=pc.CrossEntropyRewardLoss(), epochs=3, rng=rng)
    agent = PPO(policy=FeedForward32Policy,
                policy_kwargs={"features_extractor_class": NormalizeFeaturesExtractor,
                               "features_extractor_kwargs": {"normalize_class": RunningNorm}},
                env=venv, seed=seed, n_steps=2048 // venv.num_envs, batch_size=64,
                ent_coef=0.01, learning_rate=2e-3, clip_range=0.1, gae_lambda=0.95,
                gamma=0.97, n_epochs=10)
    generator = pc.AgentTrainer(algorithm=agent, reward_fn=reward_net, venv=venv,
                                exploration_frac=0.05, rng=rng)
    loop = pc.PreferenceComparisons(
        generator, reward_net, num_iterations=5,
        fragmenter=pc.RandomFragmenter(warning_threshold=0, rng=rng),
        preference_gatherer=pc.SyntheticGatherer(rng=rng), reward_trainer=trainer,
        fragment_length=100, transition_oversampling=1, initial_comparison_frac=0.1,
        allow_variable_horizon=variable_horizon, initial_epoch_multiplier=4,
        query_schedule="hyperbolic")
    t0 = time.time()
    loop.train(total_timesteps=timesteps, total_comparisons=labels)
    seconds = time.time() - t0

    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=123_456 + k)
        done, total = False, 0.0
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(action)
            total += float(r)
            done = term or trunc
        returns.append(total)
    return {"true_return_mean": float(np.mean(returns)), "true_return_std": float(np.std(returns)),
            "labels": labels, "timesteps": timesteps, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--labels", nargs="+", type=int, default=[200])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=20_000)
    args = parser.parse_args()
    for labels in args.labels:
        for seed in args.seeds:
            key = f"imitation|{args.env}|{seed}|{labels}|oracle|ppo"
            if key in load_results():
                continue
            res = run_peer(args.env, labels, args.timesteps, seed)
            record_result(key, res)
            print(f"imitation {args.env} labels {labels} seed {seed}: "
                  f"{res['true_return_mean']:.1f} ({res['seconds']:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
