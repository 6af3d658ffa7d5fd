"""DPO for policies and LoRA adaptation, each against its starting policy (true return).

1. DPO (`--algo dpo`): the policy learns straight from oracle preferences over its own
   clips, no reward model, from a random initial policy.
2. LoRA: a PPO policy trained on CartPole-v1's own reward is adapted, through LoRA
   adapters with its base weights frozen, to a different preference: CartPoleLeft (keep
   the pole up and the cart left of centre), from oracle preferences on that task; once
   on the ensemble's mean reward and once with pessimism 1 (mean minus one standard
   deviation of the members, `--pessimism 1`).

    python scripts/bench_policy_adapt.py [--seeds 0 1 2 3 4] [--only dpo|lora]

Results go to benchmarks/control_results.json ("dpo|..." and "lora|...").
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--only", choices=["dpo", "lora"], default=None,
                        help="run one of the two (default both)")
    parser.add_argument("--lora-timesteps", type=int, default=50_000,
                        help="agent steps of the LoRA adaptation (default 50000)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    runs = Path("runs/bench-adapt")
    for seed in args.seeds:
        if args.only != "lora":
            dpo(seed, runs)
        if args.only != "dpo":
            adapt(seed, runs, args.lora_timesteps)
    return 0


def dpo(seed: int, runs: Path) -> None:
    from rlhf_hgt.control.loop import ControlConfig, run_control

    if f"dpo|CartPole-v1|{seed}|500" in load_results():
        return
    t0 = time.time()
    m = run_control(ControlConfig(env_id="CartPole-v1", out=str(runs / f"dpo-s{seed}"),
                                  algo="dpo", labels=500, timesteps=20_000, seed=seed))
    record_result(f"dpo|CartPole-v1|{seed}|500", {
        "start_return_mean": m["start_return_mean"],
        "true_return_mean": m["true_return_mean"], "labels": m["labels"],
        "seconds": time.time() - t0})
    print(f"DPO seed {seed}: {m['start_return_mean']:.1f} -> {m['true_return_mean']:.1f}",
          flush=True)


def adapt(seed: int, runs: Path, timesteps: int) -> None:
    from rlhf_hgt.control.agents import AgentConfig, make_agent, make_vec_env
    from rlhf_hgt.control.loop import ControlConfig, run_control
    from rlhf_hgt.control.reward_model import RewardModelConfig
    from rlhf_hgt.envs import make_env

    base_dir = runs / f"base-s{seed}"
    base_dir.mkdir(parents=True, exist_ok=True)
    base_zip = base_dir / "cartpole_ppo.zip"
    if not base_zip.exists():
        venv = make_vec_env(lambda: make_env("CartPole-v1"), 4, seed)
        base = make_agent(AgentConfig(algo="ppo"), venv, seed)
        base.learn(30_000)
        base.save(base_zip)
    for lora_r, pessimism in ((8, 0.0), (8, 1.0)):
        tag = f"r{lora_r}" + (f"-p{pessimism:g}" if pessimism else "")
        key = f"lora|rlhf_hgt/CartPoleLeft-v0|{seed}|{tag}"
        if key in load_results():
            continue
        t0 = time.time()
        m = run_control(ControlConfig(
            env_id="rlhf_hgt/CartPoleLeft-v0", out=str(runs / f"lora-{tag}-s{seed}"),
            labels=300, timesteps=timesteps, seed=seed, init_policy=str(base_zip),
            lora_r=lora_r, agent=AgentConfig(algo="ppo"),
            reward=RewardModelConfig(pessimism=pessimism)))
        record_result(key, {
            "start_return_mean": m["start_return_mean"], "timesteps": m["timesteps"],
            "true_return_mean": m["true_return_mean"], "labels": m["labels"],
            "seconds": time.time() - t0})
        print(f"LoRA {tag} seed {seed}: {m['start_return_mean']:.1f} -> "
              f"{m['true_return_mean']:.1f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
