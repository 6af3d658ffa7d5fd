"""``rlhf-hgt lm reward|dpo|ppo``: train a language reward model, or a policy with DPO or PPO.

    rlhf-hgt lm reward --data PAIRS.jsonl --out RUN_DIR [--model smollm2] [--lora-r 16]
    rlhf-hgt lm dpo    --store STORE      --out RUN_DIR [--beta 0.1] [--loss-type sigmoid]
    rlhf-hgt lm ppo    ...                 (arguments from rlhf_hgt.lm.ppo_cli)
    rlhf-hgt lm online ...                 (the online loop; arguments from rlhf_hgt.lm.online_cli)

Each run writes into RUN_DIR the adapter (or the full model when ``--lora-r 0``) as
safetensors with the tokenizer, ``metrics.json`` and ``manifest.json``. ``--model tiny``
is a tiny model built in memory, for tests and smoke runs. Bad input (a missing column, an
empty prompt, an unknown model, both or neither of --data/--store, a bad value) raises
UserInputError before anything is written; the top-level command turns it into exit code 2.

Also runnable alone, as ``python -m rlhf_hgt.lm.cli reward ...`` (the ``lm`` word is
optional), e.g. under ``accelerate launch --multi_gpu --num_processes 2 -m rlhf_hgt.lm.cli``
(several CPU processes, gloo; note that ``accelerate launch --cpu --num_processes 2``
without an MPI host file starts one process only).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.errors import UserInputError, exit_code

PPO_MODULE = "rlhf_hgt.lm.ppo_cli"


def _add_common(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("data (exactly one)")
    src.add_argument("--data", default=None, metavar="FILE.jsonl",
                     help='labelled pairs, one JSON object per line: {"prompt", "chosen", '
                          '"rejected"} (TRL format)')
    src.add_argument("--store", default=None, metavar="STORE",
                     help="a preference store: its answered text queries")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--model", default=None, metavar="PATH_OR_ID",
                   help="base model: 'smollm2' (default, SmolLM2-135M-Instruct, offline), a "
                        "local folder, a hub id, or 'tiny' (a tiny test model built in memory)")
    p.add_argument("--lora-r", type=int, default=None, metavar="R",
                   help="LoRA rank (default 16); 0 = full fine-tuning")
    p.add_argument("--epochs", type=float, default=None,
                   help="passes over the pairs (default: reward automatic, dpo 2)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: reward 2e-4, dpo 5e-5 with LoRA)")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 8)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--eval-fraction", type=float, default=None,
                   help="share of the pairs held out for evaluation, whole prompts at a time "
                        "(default 0.1)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimiser steps (smoke runs)")


def _add_trainer_extras(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length", type=int, default=None,
                   help="most tokens of prompt + response (default 512)")
    p.add_argument("--chat-template", action="store_true",
                   help="format pairs with the model's chat template (user = prompt, "
                        "assistant = response) instead of prompt + response")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_lm_subcommands(lsub: argparse._SubParsersAction) -> None:
    """The reward, dpo and ppo sub-commands (under ``lm``, or at the top of this module)."""
    r = lsub.add_parser("reward", help="learn a reward model from preference pairs (LoRA)",
                        description="TRL RewardTrainer with LoRA and the shared Bradley–Terry "
                                    "loss (ties as 0.5, label noise); reports held-out "
                                    "pairwise accuracy")
    _add_common(r)
    _add_trainer_extras(r)
    r.add_argument("--label-noise", type=float, default=None,
                   help="assumed probability that an answer is random (default 0.05)")

    d = lsub.add_parser("dpo", help="train a policy directly on preference pairs (DPO, LoRA)",
                        description="TRL DPOTrainer; with LoRA the reference is the base "
                                    "with adapters off; ties are dropped; reports held-out "
                                    "implicit-reward accuracy")
    _add_common(d)
    _add_trainer_extras(d)
    d.add_argument("--beta", type=float, default=None,
                   help="pull towards the reference policy (default 0.1)")
    d.add_argument("--loss-type", default=None,
                   help="TRL DPO loss, or several joined by commas (default sigmoid; also "
                        "ipo, hinge, robust, ...)")
    d.add_argument("--label-smoothing", type=float, default=None,
                   help="flipped-label share for robust / epsilon for exo_pair (default 0)")
    d.add_argument("--sft-weight", type=float, default=None,
                   help="weight of a supervised term on the chosen response, as in RPO "
                        "(default 0: TRL's plain DPO loss; 0.1 is a mild one)")

    p = lsub.add_parser("ppo", help="train a policy with PPO against a learned reward model",
                        conflict_handler="resolve")
    try:
        from rlhf_hgt.lm.ppo_cli import add_ppo_arguments
    except ModuleNotFoundError as exc:
        if exc.name != PPO_MODULE:
            raise
        _add_common(p)  # so that `lm ppo` still parses; running it says what is missing
        p.set_defaults(ppo_missing=True)
    else:
        add_ppo_arguments(p)  # the PPO command owns all its arguments

    from rlhf_hgt.lm.online_cli import add_online_arguments  # light: argparse definitions only

    add_online_arguments(lsub.add_parser(
        "online", help="the online loop: sample pairs, ask, refit the reward, continue PPO/DPO",
        description="generate two responses per prompt, get them judged (a synthetic teacher "
                    "or people), refit the reward model, continue PPO or DPO; resumable"))


def add_lm_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``lm`` with its sub-commands to the top-level parser's sub-parsers."""
    lm = sub.add_parser("lm", help="language models: reward model, DPO, PPO (LoRA, TRL)",
                        description="train language models from preference pairs")
    lsub = lm.add_subparsers(dest="lm_cmd", required=True)
    add_lm_subcommands(lsub)


# --------------------------------------------------------------------------- running


def _check_sources(args: argparse.Namespace) -> tuple[str, Path]:
    if (args.data is None) == (args.store is None):
        raise UserInputError("give exactly one source of pairs: --data FILE.jsonl or "
                             "--store STORE" + (", not both" if args.data else ""))
    kind, path = ("data", args.data) if args.data is not None else ("store", args.store)
    if not Path(path).exists():
        raise UserInputError(f"--{kind} {path}: no such file; check the path")
    return kind, Path(path)


def _check_model(name: str) -> None:
    from rlhf_hgt.lm import trl_common as common

    if name == common.TINY:
        return
    from rlhf_hgt.lm.models import resolve_model_path

    resolve_model_path(name)  # raises UserInputError naming the model and the fix


def _config(cls: Any, values: dict[str, Any], flags: dict[str, str]) -> Any:
    """Build a config from the given values; a bad value names its flag."""
    kw = {k: v for k, v in values.items() if v is not None}
    try:
        return cls(**kw)
    except ValueError as exc:
        msg = str(exc)
        for field_name, flag in flags.items():
            if msg.startswith(field_name + " ") or msg.startswith(field_name + ":"):
                msg = f"{flag}: {msg}"
                break
        raise UserInputError(msg) from None


_FLAGS = {"learning_rate": "--lr", "lora_r": "--lora-r", "epochs": "--epochs",
          "batch_size": "--batch-size", "eval_fraction": "--eval-fraction",
          "max_steps": "--max-steps", "max_length": "--max-length",
          "label_noise": "--label-noise", "beta": "--beta", "loss_type": "--loss-type",
          "unknown loss_type": "--loss-type", "label_smoothing": "--label-smoothing",
          "exo_pair": "--label-smoothing", "sft_weight": "--sft-weight"}


def _common_values(args: argparse.Namespace) -> dict[str, Any]:
    return {"lora_r": args.lora_r, "epochs": args.epochs, "learning_rate": args.lr,
            "batch_size": args.batch_size, "seed": args.seed,
            "eval_fraction": args.eval_fraction,
            "max_steps": args.max_steps, "max_length": args.max_length,
            "chat_template": args.chat_template or None, "progress": not args.quiet}


def _build(args: argparse.Namespace) -> Any:
    values = _common_values(args)
    if args.lm_cmd == "reward":
        from rlhf_hgt.lm.reward import LMRewardConfig

        values["label_noise"] = args.label_noise
        return _config(LMRewardConfig, values, _FLAGS)
    from rlhf_hgt.lm.dpo import LMDPOConfig

    values["beta"] = args.beta
    values["label_smoothing"] = args.label_smoothing
    values["sft_weight"] = args.sft_weight
    if args.loss_type is not None:
        values["loss_type"] = tuple(t.strip() for t in args.loss_type.split(",") if t.strip())
    return _config(LMDPOConfig, values, _FLAGS)


def run_lm(args: argparse.Namespace) -> int:
    """Run ``lm reward|dpo|ppo``; returns the exit code (UserInputError for bad input)."""
    if args.lm_cmd == "ppo":
        if getattr(args, "ppo_missing", False):
            raise UserInputError(f"lm ppo is not available: {PPO_MODULE} is missing from this "
                                 "install; use `lm reward` or `lm dpo`")
        from rlhf_hgt.lm.ppo_cli import run_ppo_command

        return int(run_ppo_command(args) or 0)
    if args.lm_cmd == "online":
        from rlhf_hgt.lm.online_cli import run_online_command

        return int(run_online_command(args) or 0)
    if args.lm_cmd not in ("reward", "dpo"):
        raise UserInputError(f"unknown lm command {args.lm_cmd!r}; use reward, dpo or ppo")
    return _run_trainer(args)


def _run_trainer(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rlhf_hgt.lm import trl_common as common

    main = common.is_main_process()
    console = Console(stderr=True, quiet=args.quiet or not main, soft_wrap=True)
    kind, source = _check_sources(args)
    model_name = args.model or _default_model()
    cfg = _build(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: is a file; give a directory")
    with console.status("checking the model and the pairs…"):
        _check_model(model_name)
        from rlhf_hgt.lm.data import load_pairs

        ds = load_pairs(**{kind: source})
        common.check_pairs(ds, str(source))
    console.print(f"lm {args.lm_cmd}: {len(ds)} pairs from {source}, model {model_name}, "
                  f"LoRA r={cfg.lora_r} → {out}")
    if args.lm_cmd == "reward":
        from rlhf_hgt.lm.reward import train_reward_model

        metrics = train_reward_model(model_name, ds, None, cfg, out)
        headline = ("held-out accuracy", metrics.get("reward_model_accuracy"))
    else:
        from rlhf_hgt.lm.dpo import train_dpo

        metrics = train_dpo(model_name, ds, None, cfg, out)
        headline = ("held-out implicit-reward accuracy", metrics.get("implicit_reward_accuracy"))
    metrics = {"command": f"lm {args.lm_cmd}", "model": model_name, "pairs": len(ds), **metrics}
    if main:
        from rlhf_hgt.governance.manifest import write_manifest

        common.write_json(out / "metrics.json", metrics)
        config = {"command": f"lm {args.lm_cmd}", "model": model_name, kind: str(source),
                  **{k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in asdict(cfg).items()}}
        write_manifest(out, config, {"data": source})
    common.wait_for_everyone()
    name, value = headline
    shown = "n/a (no held-out pairs)" if value is None else f"{value:.3f}"
    console.print(f"[bold]done[/bold]: {name} {shown}, train loss "
                  f"{_fmt(metrics.get('train_loss'))}, {metrics.get('steps')} steps, "
                  f"{_fmt(metrics.get('train_samples_per_second'))} samples/s → {out}")
    return 0


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _default_model() -> str:
    from rlhf_hgt.lm.models import DEFAULT_MODEL

    return DEFAULT_MODEL


# --------------------------------------------------------------------------- module entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlhf_hgt.lm.cli",
                                     description="train language models from preference pairs")
    lsub = parser.add_subparsers(dest="lm_cmd", required=True)
    add_lm_subcommands(lsub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm"]:
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    return exit_code(run_lm, args)


if __name__ == "__main__":
    sys.exit(main())
