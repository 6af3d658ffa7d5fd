"""Does another reward-ensemble setting learn the suite's tasks better? (issue #16)

Offline and cheap: clips of a uniformly random policy on each task, a synthetic oracle
over the env's own reward, N training pairs; the held-out pairwise accuracy (1000 other
pairs, ties left out) of the ensemble with its defaults and with one setting changed.
Random-policy clips are not the loop's clips (those come from a learning policy), so this
answers only whether a setting learns the same data better.

    python scripts/bench_reward_settings.py --tasks Reacher-v5 Hopper-v5 --pairs 200
    python scripts/bench_reward_settings.py --tasks Reacher-v5 --pairs 1000 --only default long

Prints a Markdown table (rows: tasks, columns: settings) and the mean per setting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

SETTINGS: dict[str, dict] = {
    "default": {},
    "epochs60": {"epochs": 60, "min_updates": 600},
    "wide256": {"hidden_sizes": (256, 256)},
    "noise0": {"label_noise": 0.0},
    "nobootstrap": {"bootstrap": False},
    # no early stopping and 15x the updates: is the default fit too short?
    "long": {"patience": 0, "epochs": 100, "min_updates": 3000},
}


def accuracy(task: str, pairs: int, seed: int = 0) -> dict[str, float]:
    import numpy as np
    import torch

    from rlhf_hgt.control.fragments import collect_rollouts, cut_segments
    from rlhf_hgt.control.reward_config import RewardModelConfig
    from rlhf_hgt.control.reward_model import RewardEnsemble
    from rlhf_hgt.envs import make_env

    torch.set_num_threads(1)
    env = make_env(task)
    rng = np.random.default_rng(seed)
    segs = cut_segments(collect_rollouts(env, None, 30_000, rng), 50, 4000, rng)

    def draw(n: int) -> tuple[list, list, np.ndarray]:
        idx = rng.integers(0, len(segs), size=(n, 2))
        left, right = [segs[i] for i in idx[:, 0]], [segs[j] for j in idx[:, 1]]
        rl = np.array([s["true_rewards"].sum() for s in left])
        rr = np.array([s["true_rewards"].sum() for s in right])
        return left, right, np.where(rl > rr, 1.0, np.where(rl < rr, 0.0, 0.5))

    def score(ens: RewardEnsemble, seg: dict) -> float:
        return float((ens.predict(seg["obs"], seg["actions"]) * seg["valid"]).sum())

    left, right, target = draw(pairs)
    test_l, test_r, test_t = draw(1000)
    decided = test_t != 0.5
    out = {}
    for name, change in SETTINGS.items():
        ens = RewardEnsemble(env.observation_space, env.action_space,
                             config=RewardModelConfig(**change), seed=seed)
        ens.fit(left, right, target, rng=np.random.default_rng(seed + 1))
        said = np.array([score(ens, a) > score(ens, b) for a, b in zip(test_l, test_r,
                                                                        strict=True)])
        out[name] = float(np.mean(said[decided] == (test_t[decided] == 1.0)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=[
        "Reacher-v5", "Hopper-v5", "Walker2d-v5", "Swimmer-v5", "InvertedDoublePendulum-v5",
        "MountainCarContinuous-v0"])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), default=None,
                        help="these settings only")
    args = parser.parse_args()
    for name in set(SETTINGS) - set(args.only or SETTINGS):
        del SETTINGS[name]
    rows = {task: accuracy(task, args.pairs) for task in args.tasks}
    names = list(SETTINGS)
    print("| task | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for task, acc in rows.items():
        print(f"| {task} | " + " | ".join(f"{acc[n]:.3f}" for n in names) + " |")
    print("| mean | " + " | ".join(f"{statistics.mean(r[n] for r in rows.values()):.3f}"
                                     for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
