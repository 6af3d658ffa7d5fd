"""The main job on its embedded defaults: the full preference loop on a control task.

A synthetic oracle teacher stands in for the person: it compares clips of the current
policy by their hidden true return. The policy learns only from those answers. Beside it,
PPO on the env's own reward with the same number of steps is the yardstick.

    python scripts/demo.py [--env CartPole-v1] [--labels 300] [--timesteps 40000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1", help="gymnasium id (default CartPole-v1)")
    parser.add_argument("--labels", type=int, default=300, help="comparisons (default 300)")
    parser.add_argument("--timesteps", type=int, default=40_000,
                        help="agent steps (default 40000)")
    parser.add_argument("--teacher", default="oracle", help="synthetic teacher (default oracle)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="run directory (default runs/demo-ENV-sSEED)")
    args = parser.parse_args()
    console = Console()
    console.rule("[bold]rlhf_hgt demo: a policy trained only from preferences")
    console.print(f"env {args.env}, teacher {args.teacher}, {args.labels} labels, "
                  f"{args.timesteps} agent steps, seed {args.seed}")

    from rlhf_hgt.control.agents import AgentConfig
    from rlhf_hgt.control.baseline import train_on_true_reward
    from rlhf_hgt.control.loop import ControlConfig, run_control, validate
    from rlhf_hgt.feedback.files import write_json_atomic

    out = Path(args.out or f"runs/demo-{args.env.replace('/', '_').replace(':', '_')}"
                                f"-s{args.seed}")
    if (out / "state.json").exists():
        console.print(f"[yellow]{out} holds an earlier run: it is resumed, not repeated "
                      f"(delete it to start over)")
    cfg = ControlConfig(env_id=args.env, out=str(out), teacher=args.teacher, labels=args.labels,
                        timesteps=args.timesteps, seed=args.seed, agent=AgentConfig())
    validate(cfg)

    def progress(event: str, info: dict) -> None:
        if event == "round":
            acc = info.get("reward_holdout_accuracy")
            console.print(f"  round {info['round'] + 1:2d}: {info['labels']:4d} labels, "
                          f"{info['timesteps']:6d} steps, true return {info['true_return']:8.1f}"
                          + (f", reward model accuracy {acc:.2f}" if acc is not None else ""))

    t0 = time.time()
    console.print("[bold]1. preference loop")
    metrics = run_control(cfg, progress=progress)
    t_loop = time.time() - t0
    console.print("[bold]2. PPO on the true reward (the yardstick)")
    t1 = time.time()
    base = train_on_true_reward(args.env, args.timesteps, args.seed, cfg.agent,
                                eval_episodes=cfg.eval_episodes)
    t_base = time.time() - t1

    rand = metrics["random_return_mean"]
    frac = (metrics["true_return_mean"] - rand) / max(base["true_return_mean"] - rand, 1e-9)
    table = Table(title=f"{args.env}: preferences vs the true reward")
    for col in ("run", "labels", "agent steps", "true return", "seconds"):
        table.add_column(col, justify="right")
    table.add_row("random policy", "-", "-", f"{rand:.1f}", "-")
    table.add_row("PPO on true reward", "-", str(base["timesteps"]),
                  f"{base['true_return_mean']:.1f} ± {base['true_return_std']:.1f}",
                  f"{t_base:.0f}")
    table.add_row(f"rlhf_hgt ({args.teacher} teacher)", str(metrics["labels"]),
                  str(metrics["timesteps"]),
                  f"{metrics['true_return_mean']:.1f} ± {metrics['true_return_std']:.1f}",
                  f"{t_loop:.0f}")
    console.print(table)
    console.print(f"normalised score (random 0, PPO on true reward 1): [bold]{frac:.2f}[/]; "
                  f"reward model held-out accuracy {metrics['reward_model_accuracy']}")
    write_json_atomic(out / "demo_summary.json", {
        "preferences": metrics, "true_reward_ppo": base, "normalised_score": frac})
    from rlhf_hgt.governance.report import write_report

    report = write_report(out)  # what a person reads: plots, annotators, lineage, the card
    console.print(f"run directory: {out} (metrics.json, manifest.json, learning_curve.png, "
                  f"feedback.db, lineage.jsonl)")
    console.print(f"report: {report.html} (open it in a browser; `rlhf-hgt report {out} "
                  f"--open` writes it again and opens it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
