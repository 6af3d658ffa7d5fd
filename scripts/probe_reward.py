"""Where does a control run's learned reward differ from the env's own? (issue #16)

For each RUN_DIR of `rlhf-hgt control` (oracle or any teacher whose clips carry the env's
reward): the saved reward model's per-step reward on the steps of every labelled clip,
against the env's reward on the same steps (Pearson correlation), and, with
``--split-control``, that reward split into its control cost (the sum of squared actions,
as MuJoCo's tasks charge it, times ``--control-weight``) and the rest, with the learned
reward regressed on both parts (equal coefficients = the right trade-off). With
``--rollouts N`` the saved policy also runs N deterministic episodes and the env's own
reward terms (the ``reward_*`` entries of its info dicts) are summed per episode.

    python scripts/probe_reward.py runs/suite/Reacher-v5-default-l200-s0 --split-control \
        --rollouts 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def labelled_steps(run: Path, env_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observations, actions and the env's reward of every valid step of every labelled
    clip in the run's store."""
    from rlhf_hgt.feedback.store import PreferenceStore

    obs, acts, rew = [], [], []
    store = PreferenceStore(run / "feedback.db")
    for query, _ in store.labelled(kind="segment"):
        if query.env_id != env_id:
            continue
        for seg in (query.left, query.right):
            valid = np.asarray(seg["valid"], bool)
            obs.append(np.asarray(seg["obs"], np.float32)[valid])
            acts.append(np.asarray(seg["actions"], np.float32)[valid])
            rew.append(np.asarray(seg["true_rewards"], np.float64)[valid])
    if not obs:
        raise SystemExit(f"{run}: no labelled clips of {env_id} in its store")
    return np.concatenate(obs), np.concatenate(acts), np.concatenate(rew)


def probe(run: Path, split_control: bool, weight: float, rollouts: int) -> dict:
    import torch

    from rlhf_hgt.control.config import ControlConfig, config_from_dict
    from rlhf_hgt.control.reward_model import RewardEnsemble

    torch.set_num_threads(1)
    cfg = config_from_dict(ControlConfig,
                           json.loads((run / "manifest.json").read_text())["config"],
                           f"{run}/manifest.json")
    env_id = cfg.task_id
    ens = RewardEnsemble.from_saved(run / "checkpoints" / "reward_model")
    obs, acts, true_r = labelled_steps(run, env_id)
    learned = ens.predict(obs, acts).astype(np.float64)
    out: dict = {"run": str(run), "steps": len(obs),
                 "corr_true": float(np.corrcoef(learned, true_r)[0, 1])}
    if split_control:
        control = -weight * (acts.astype(np.float64) ** 2).sum(axis=1)
        rest = true_r - control
        coef, *_ = np.linalg.lstsq(np.stack([rest, control, np.ones_like(rest)], 1), learned,
                                   rcond=None)
        out |= {"std_rest": float(rest.std()), "std_control": float(control.std()),
                "corr_rest": float(np.corrcoef(learned, rest)[0, 1]),
                "corr_control": float(np.corrcoef(learned, control)[0, 1]),
                "coef_rest": float(coef[0]), "coef_control": float(coef[1])}
    if rollouts:
        out["episode_terms"] = rollout_terms(run, cfg, rollouts)
    return out


def rollout_terms(run: Path, cfg, episodes: int) -> dict[str, float]:
    from safetensors.torch import load_file

    from rlhf_hgt.control.agents import make_agent, make_vec_env
    from rlhf_hgt.control.learner import POLICY_FILE
    from rlhf_hgt.envs import make_env

    venv = make_vec_env(lambda: make_env(cfg.env_id), 1, seed=0)
    agent = make_agent(cfg.agent, venv, seed=0, device="cpu")
    agent.policy.load_state_dict(load_file(str(run / "checkpoints" / POLICY_FILE)))
    env = make_env(cfg.env_id)
    sums: dict[str, float] = {}
    for ep in range(episodes):
        o, _ = env.reset(seed=123_456 + ep)
        done = False
        while not done:
            a, _ = agent.predict(o, deterministic=True)
            o, r, term, trunc, info = env.step(a)
            sums["return"] = sums.get("return", 0.0) + float(r)
            for k, v in info.items():
                if k.startswith("reward_"):
                    sums[k] = sums.get(k, 0.0) + float(v)
            done = term or trunc
    return {k: v / episodes for k, v in sums.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split-control", action="store_true")
    parser.add_argument("--control-weight", type=float, default=1.0,
                        help="the task's control-cost weight (Reacher 1, Hopper 1e-3)")
    parser.add_argument("--rollouts", type=int, default=0)
    args = parser.parse_args()
    for run in args.runs:
        print(json.dumps(probe(run, args.split_control, args.control_weight, args.rollouts)),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
