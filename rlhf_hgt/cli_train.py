"""Argument definitions and dispatch of the training commands (control, lm, attention, report).

Kept apart from cli.py so that the light commands stay short; the stacks themselves are
imported only inside ``run``.
"""

from __future__ import annotations

import argparse
from typing import Any

from rlhf_hgt.feedback.errors import UserInputError


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the training sub-commands to the top-level parser."""
    c = sub.add_parser("control", help="train a control policy from preferences over clips",
                       description="gather clips → answers → fit reward → train policy, "
                                   "in rounds; resumes a killed run from its last round")
    c.add_argument("env_id", help="any gymnasium id, also 'module:Env-v0' "
                   "(e.g. CartPole-v1, Pendulum-v1, rlhf_hgt/CartPoleLeft-v0)")
    c.add_argument("--teacher", default="oracle",
                   help="oracle | stochastic[:beta=B] | mistake[:eps=E] | skip | equal | "
                        "myopic[:gamma=G] | human (asks here) | external (waits for answers "
                        "from `rlhf-hgt label STORE`); default oracle")
    c.add_argument("--labels", type=int, default=500, help="comparisons in all (default 500)")
    c.add_argument("--timesteps", type=int, default=50_000,
                   help="agent env steps in all (default 50000)")
    c.add_argument("--out", required=True, help="run directory")
    c.add_argument("--algo", choices=["ppo", "dpo"], default="ppo",
                   help="ppo: learn a reward model, train the policy on it with RL; "
                        "dpo: learn the policy from the pairs directly (default ppo)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    c.add_argument("--segment-length", type=int, default=50, help="steps per clip (default 50)")
    c.add_argument("--query-method", choices=["disagreement", "random"], default="disagreement",
                   help="how pairs are picked (default disagreement of the reward ensemble)")
    c.add_argument("--agent-algo", choices=["auto", "ppo", "sac"], default="auto",
                   help="RL algorithm on the learned reward (default auto: PPO for discrete "
                        "actions, SAC for continuous)")
    c.add_argument("--n-envs", type=int, default=4, help="parallel envs for PPO (default 4)")
    c.add_argument("--subprocess-envs", action="store_true",
                   help="run envs in subprocesses (for slow envs)")
    c.add_argument("--store", default=None, help="preference store (default RUN_DIR/feedback.db)")
    c.add_argument("--eval-episodes", type=int, default=10,
                   help="episodes for the final true return (default 10)")
    c.add_argument("--init-policy", default=None,
                   help="start from this policy: an SB3 PPO .zip (only its weights and plain "
                        "settings are read) or a run's checkpoints/policy.safetensors")
    c.add_argument("--lora-r", type=int, default=0,
                   help="adapt the starting policy through LoRA adapters of this rank, base "
                        "weights frozen; the adapter is saved to RUN_DIR/adapter (default 0: "
                        "train all weights)")
    c.add_argument("--pessimism", type=float, default=0.0,
                   help="train on the reward ensemble's mean minus this many standard "
                        "deviations, keeping the policy where people judged it (e.g. 1 when "
                        "adapting a trained policy; default 0)")
    c.add_argument("--quiet", action="store_true", help="no progress output")

    from rlhf_hgt.lm.cli import add_lm_commands  # light: argparse definitions only

    add_lm_commands(sub)


def run(args: argparse.Namespace) -> int:
    if args.cmd == "control":
        return _run_control(args)
    if args.cmd == "lm":
        from rlhf_hgt.lm.cli import run_lm

        return run_lm(args)
    raise UserInputError(f"unknown command {args.cmd!r}")


def _run_control(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True, quiet=args.quiet)
    with console.status("loading the control stack…"):
        from rlhf_hgt.control.agents import AgentConfig
        from rlhf_hgt.control.loop import ControlConfig, run_control, validate
        from rlhf_hgt.control.reward_model import RewardModelConfig

    try:
        cfg = ControlConfig(
            env_id=args.env_id, out=args.out, teacher=args.teacher, labels=args.labels,
            timesteps=args.timesteps, algo=args.algo, seed=args.seed, rounds=args.rounds,
            segment_length=args.segment_length, query_method=args.query_method,
            eval_episodes=args.eval_episodes, store=args.store,
            init_policy=args.init_policy, lora_r=args.lora_r,
            agent=AgentConfig(algo=args.agent_algo, n_envs=args.n_envs,
                              subprocess=args.subprocess_envs),
            reward=RewardModelConfig(pessimism=args.pessimism))
        validate(cfg)
    except UserInputError:
        raise
    except ValueError as exc:
        raise UserInputError(str(exc)) from None

    def progress(event: str, info: dict[str, Any]) -> None:
        if event == "round":
            acc = info.get("reward_holdout_accuracy")
            acc_s = f"  reward acc {acc:.2f}" if acc is not None else ""
            console.print(f"[bold]round {info['round'] + 1}/{cfg.rounds}[/]  labels "
                          f"{info['labels']}  steps {info['timesteps']}  true return "
                          f"{info['true_return']:.1f}{acc_s}  ({info['seconds']:.0f}s)")
        elif event == "resume":
            console.print(f"resuming at round {info['round'] + 1}")
        elif event == "steps_rounded":
            console.print(f"note: {info['asked']} timesteps rounded up to {info['steps']}: each "
                          f"of the {info['rounds']} rounds trains on whole PPO rollouts "
                          f"(n_steps x n_envs); use fewer --rounds for a smaller budget")
        elif event == "waiting":
            console.print(f"waiting for {info['pending']} answers: run "
                          f"`rlhf-hgt label {info['store']}` (Ctrl-C stops; rerun resumes)")

    ask_human = None
    if cfg.teacher == "human":
        from rlhf_hgt.feedback.terminal import LabelOptions, run_labelling

        def ask_human(store_path: str, _round: int) -> None:
            from rlhf_hgt.cli import _default_annotator

            run_labelling(store_path, LabelOptions(annotator=_default_annotator(),
                                                   per_query=None, limit=None, gif_dir=None,
                                                   animate=True))

    metrics = run_control(cfg, progress=progress, ask_human=ask_human)
    acc = metrics["reward_model_accuracy"]
    acc_text = f"{acc:.2f}" if acc is not None else "n/a"
    console.print(f"true return {metrics['true_return_mean']:.1f} ± "
                  f"{metrics['true_return_std']:.1f} over {metrics['eval_episodes']} episodes "
                  f"(random {metrics['random_return_mean']:.1f}); labels {metrics['labels']}; "
                  f"held-out reward model accuracy {acc_text}")
    console.print(f"wrote {cfg.out}/metrics.json, manifest.json, learning_curve.png")
    return 0
