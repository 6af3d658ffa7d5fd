"""``rlhf-hgt control ENV_ID ...``: train a control policy from preferences over clips.

The flags come from :class:`rlhf_hgt.control.config.ControlConfig` and the configs nested in
it (``--reward-*`` the reward ensemble, ``--agent-*`` the RL agent, ``--dpo-*`` policy
DPO); the stack is imported only when the command runs or its help is asked for.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rlhf_hgt.cli.flags import Section, add_sections, build, sections

INTERRUPTED = "interrupted; rerun the same command to resume from the last finished round"


def command_sections() -> list[Section]:
    from rlhf_hgt.control.config import ControlConfig

    return sections(
        ControlConfig,
        aliases={"reward": {"pessimism": ("--pessimism",)},
                 "agent": {"n_envs": ("--n-envs",), "subprocess": ("--subprocess-envs",)}},
        skip={"": {"env_id": "the positional ENV_ID"}},
        titles={"": "the run", "reward": "reward model (ensemble)", "agent": "RL agent",
                "dpo": "policy DPO (--algo dpo)"})


def add(parser: argparse.ArgumentParser, argv: Sequence[str] = (),
        everything: bool = False) -> None:
    parser.description = ("gather clips → answers → fit reward → train policy, in rounds; "
                          "a killed run resumes from its last round")
    parser.add_argument("env_id", metavar="ENV_ID",
                        help="any gymnasium id, also 'module:Env-v0' (e.g. CartPole-v1, "
                             "Pendulum-v1, rlhf_hgt/CartPoleLeft-v0)")
    add_sections(parser, command_sections())
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rlhf_hgt.feedback.errors import UserInputError

    console = Console(stderr=True, quiet=args.quiet)
    with console.status("loading the control stack…"):
        from rlhf_hgt.control.loop import run_control, validate

    cfg = build(args, command_sections(), {"env_id": args.env_id})
    try:
        validate(cfg)
    except UserInputError:
        raise
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    from rlhf_hgt.cli.run_keys import oversight_keys

    with oversight_keys(cfg.out, console, enabled=not cfg.human):  # p, r, s at this terminal
        metrics = run_control(cfg, progress=_progress(console, cfg.rounds),
                              ask_human=_ask_human if cfg.teacher == "human" else None)
    acc = metrics["reward_model_accuracy"]
    acc_text = f"{acc:.2f}" if acc is not None else "n/a"
    console.print(f"true return {metrics['true_return_mean']:.1f} ± "
                  f"{metrics['true_return_std']:.1f} over {metrics['eval_episodes']} episodes "
                  f"(random {metrics['random_return_mean']:.1f}); labels {metrics['labels']}; "
                  f"held-out reward model accuracy {acc_text}")
    if metrics.get("status"):
        console.print(metrics["status"])
    console.print(f"wrote {cfg.out}/metrics.json, manifest.json, learning_curve.png")
    return 0


def _ask_human(store_path: str, _round: int) -> None:
    """The person at this terminal answers the round's pending pairs."""
    from rlhf_hgt.feedback.terminal import LabelOptions, run_labelling

    run_labelling(store_path, LabelOptions())


def _progress(console: Any, rounds: int) -> Any:
    def progress(event: str, info: dict[str, Any]) -> None:
        if event == "round":
            acc = info.get("reward_holdout_accuracy")
            acc_s = f"  reward acc {acc:.2f}" if acc is not None else ""
            if info.get("reward_exploring"):
                acc_s += "  (every answer a tie so far: the agent keeps exploring)"
            console.print(f"[bold]round {info['round'] + 1}/{rounds}[/]  labels "
                          f"{info['labels']}  steps {info['timesteps']}  true return "
                          f"{info['true_return']:.1f}{acc_s}  ({info['seconds']:.0f}s)")
        elif event == "resume":
            console.print(f"resuming at round {info['round'] + 1}")
        elif event == "explore":
            console.print(f"exploring for {info['steps']} steps (a state-entropy reward) "
                          "before the first questions")
        elif event == "steps_rounded":
            console.print(f"note: {info['asked']} timesteps rounded up to {info['steps']}: each "
                          f"of the {info['rounds']} rounds trains on whole PPO rollouts "
                          f"(n_steps x n_envs); use fewer --rounds for a smaller budget")
        elif event in ("paused", "resumed", "oversight"):
            what = {"paused": "paused", "resumed": "resumed"}.get(event, info.get("act"))
            console.print(f"[bold]{what}[/] by {info.get('by')}: {info.get('reason')}"
                          + (" (`rlhf-hgt oversee RUN_DIR resume --reason ...` continues)"
                             if event == "paused" else ""))
        elif event == "rolled_back":
            # both numbers: the progress lines count rounds from 1, `--to` and the folders
            # (rounds/round-NNN) from 0
            console.print(f"continuing from round {info['round'] + 1}'s checkpoint "
                          f"(rounds/round-{info['round']:03d})"
                          if info["round"] >= 0 else "starting again from a fresh policy")
        elif event == "rejected":
            console.print("the last checkpoint was rejected: resuming from an earlier one")
        elif event == "waiting":
            console.print(f"waiting for {info['pending']} answers: run "
                          f"`rlhf-hgt label {info['store']}` (Ctrl-C stops; rerun resumes)")

    return progress
