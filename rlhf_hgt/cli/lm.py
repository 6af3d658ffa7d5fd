"""``rlhf-hgt lm reward|dpo|ppo|online``: language models from preferences.

    rlhf-hgt lm reward --data PAIRS.jsonl --out RUN_DIR [--model smollm2] [--lora-r 16]
    rlhf-hgt lm dpo    --store STORE      --out RUN_DIR [--beta 0.1] [--loss-type sigmoid]
    rlhf-hgt lm ppo    --prompts PROMPTS.jsonl --reward-model RM_DIR --out RUN_DIR
    rlhf-hgt lm online --prompts PROMPTS.jsonl --teacher vader --out RUN_DIR

One meaning per flag: ``--data`` is a JSONL file of labelled pairs and ``--store`` a
preference store (the pairs to learn from, or in ``online`` the store the loop asks in);
prompts to generate from are ``--prompts FILE`` / ``--prompt TEXT`` / ``--prompt-store
STORE`` (``lm ppo`` still takes its old ``--data``/``--store`` for prompts). The training
flags come from the config dataclasses (LMRewardConfig, LMDPOConfig, LMPPOConfig,
OnlineConfig). Each run writes into RUN_DIR the adapter (or the full model at ``--lora-r
0``) as safetensors, ``metrics.json`` and ``manifest.json``; ``--model tiny`` is a tiny model
built in memory for tests and smoke runs. Bad input raises UserInputError before anything
is written (exit code 2). Several processes: ``accelerate launch --multi_gpu
--num_processes 2 -m rlhf_hgt.cli lm dpo ...``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlhf_hgt.cli.flags import Section, add_sections, add_switch, build, sections
from rlhf_hgt.feedback.db import StoreURL, is_url
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.governance.oversight import Overseer, announce

INTERRUPTED = "interrupted; rerun the same command to resume where it can"

COMMANDS = {
    "reward": ("learn a reward model from preference pairs (LoRA)",
               "TRL RewardTrainer with LoRA and the shared Bradley–Terry loss (ties as 0.5, "
               "label noise); reports held-out pairwise accuracy"),
    "dpo": ("train a policy directly on preference pairs (DPO, LoRA)",
            "TRL DPOTrainer; with LoRA the reference is the base with adapters off; ties are "
            "dropped; reports held-out implicit-reward accuracy"),
    "ppo": ("train a policy with PPO against a learned reward model or a built-in score",
            "our PPO, LoRA (or full fine-tuning at --lora-r 0); one base model in memory for "
            "policy, value head and reference"),
    "online": ("the online loop: sample pairs, ask, refit the reward, continue PPO/DPO",
               "generate two responses per prompt, get them judged (a synthetic teacher or "
               "people), refit the reward model, continue PPO or DPO; resumable"),
}


def pair_sections(command: str) -> list[Section]:
    if command == "reward":
        from rlhf_hgt.lm.reward import LMRewardConfig as cls
    else:
        from rlhf_hgt.lm.dpo import LMDPOConfig as cls
    return sections(cls, aliases={"": {"learning_rate": ("--lr",)}},
                    skip={"": {"progress": "--quiet"}}, titles={"": f"{command} training"})


def add(parser: argparse.ArgumentParser, argv: Sequence[str] = (),
        everything: bool = False) -> None:
    from rlhf_hgt.cli import add_subcommands

    add_subcommands(parser, "lm_cmd", COMMANDS, argv, everything, fill)


def fill(p: argparse.ArgumentParser, name: str) -> None:
    if name in ("reward", "dpo"):
        add_pair_command(p, name)
    else:
        from rlhf_hgt.cli import lm_policy

        lm_policy.add(p, name)


def add_pair_command(p: argparse.ArgumentParser, command: str) -> None:
    src = p.add_argument_group("data (exactly one)")
    src.add_argument("--data", default=None, metavar="FILE.jsonl",
                     help='labelled pairs, one JSON object per line: {"prompt", "chosen", '
                          '"rejected"} (TRL format)')
    src.add_argument("--store", default=None, metavar="STORE",
                     help="a preference store: its answered text queries")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    add_model_flag(p)
    secs = pair_sections(command)
    add_sections(p, secs)
    add_switch(p, "--quiet", secs[0], "progress", False, "no progress bar")


def add_model_flag(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--model", default=default, metavar="PATH_OR_ID",
                   help="base model: 'smollm2' (SmolLM2-135M-Instruct, offline), a local "
                        "folder, a hub id, or 'tiny' (a tiny test model built in memory) "
                        "(default: smollm2)")


def run(args: argparse.Namespace) -> int:
    if args.lm_cmd in ("ppo", "online"):
        from rlhf_hgt.cli import lm_policy

        return lm_policy.run(args)
    return run_pair_command(args)


def check_out(out: str) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"--out {path}: exists and is not a folder; give a run directory")
    return path


def check_model(name: str) -> None:
    """Fail fast on a model that cannot be found (the message names it and the fix)."""
    from rlhf_hgt.lm.trl_common import TINY

    if name != TINY:
        from rlhf_hgt.lm.models import resolve_model_path

        resolve_model_path(name)


def _pair_source(args: argparse.Namespace) -> tuple[str, Path]:
    if (args.data is None) == (args.store is None):
        raise UserInputError("give exactly one source of pairs: --data FILE.jsonl or "
                             "--store STORE" + (", not both" if args.data else ""))
    kind, path = ("data", args.data) if args.data is not None else ("store", args.store)
    if kind == "store" and is_url(path):  # a team store: reading it says what is wrong
        return kind, StoreURL(path)  # type: ignore[return-value]
    if not Path(path).exists():
        raise UserInputError(f"--{kind} {path}: no such file; check the path")
    return kind, Path(path)


def run_pair_command(args: argparse.Namespace) -> int:
    """``lm reward`` or ``lm dpo``."""
    from rich.console import Console

    from rlhf_hgt.lm import trl_common as common

    main = common.is_main_process()
    cfg = build(args, pair_sections(args.lm_cmd))
    console = Console(stderr=True, quiet=not cfg.progress or not main, soft_wrap=True)
    kind, source = _pair_source(args)
    model_name = args.model or default_model()
    out = check_out(args.out)
    with console.status("checking the model and the pairs…"):
        check_model(model_name)
        from rlhf_hgt.lm.data import load_pairs

        ds = load_pairs(**{kind: source})
        common.check_pairs(ds, str(source))
        used = _used_answers(kind, source)  # for the lineage record
    console.print(f"lm {args.lm_cmd}: {len(ds)} pairs from {source}, model {model_name}, "
                  f"LoRA r={cfg.lora_r} → {out}")
    out.mkdir(parents=True, exist_ok=True)  # `rlhf-hgt oversee RUN_DIR` writes there
    overseer = Overseer(out, announce(lambda event, info: None))  # a person's pause / stop
    gates = [common.oversight_callback(overseer.single_run_gate)]
    from rlhf_hgt.cli.run_keys import oversight_keys

    with oversight_keys(out, console, enabled=main):  # p, r, s at this terminal
        if args.lm_cmd == "reward":
            from rlhf_hgt.lm.reward import train_reward_model

            metrics = train_reward_model(model_name, ds, None, cfg, out, callbacks=gates)
            headline = ("held-out accuracy", metrics.get("reward_model_accuracy"))
        else:
            from rlhf_hgt.lm.dpo import train_dpo

            metrics = train_dpo(model_name, ds, None, cfg, out, callbacks=gates)
            headline = ("held-out implicit-reward accuracy",
                        metrics.get("implicit_reward_accuracy"))
    metrics = {"command": f"lm {args.lm_cmd}", "model": model_name, "pairs": len(ds), **metrics,
               **overseer.outcome()}  # status "stopped by NAME: REASON", the acts obeyed
    overseer.close()
    if main:
        from rlhf_hgt.governance.manifest import write_manifest

        common.write_json(out / "metrics.json", metrics)
        config = {"command": f"lm {args.lm_cmd}", "model": model_name, kind: str(source),
                  **{k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in asdict(cfg).items()}}
        write_manifest(out, config, {"data": source})
        from rlhf_hgt.governance.lineage import record_checkpoint

        record_checkpoint(out, source if kind == "store" else None, "final", [out],
                          role="reward model" if args.lm_cmd == "reward" else "policy", **used)
        from rlhf_hgt.governance.card import write_cards

        write_cards(out)  # a model card beside the adapter
    common.wait_for_everyone()
    for line in guidance_lines(metrics):
        console.print(line)
    name, value = headline
    shown = "n/a (no held-out pairs)" if value is None else f"{value:.3f}"
    if "status" in metrics:
        console.print(f"[bold]{metrics['status']}[/]", highlight=False)
    console.print(f"[bold]done[/bold]: {name} {shown}, train loss "
                  f"{fmt(metrics.get('train_loss'), '.3g')}, {metrics.get('steps')} steps, "
                  f"{fmt(metrics.get('train_samples_per_second'), '.3g')} samples/s → {out}")
    return 0


def _used_answers(kind: str, source: Path) -> dict[str, Any]:
    """What ``lm reward|dpo`` learns from, for lineage: the store's answer ids, or the data
    file's labelled lines and its sha256."""
    from rlhf_hgt.governance import lineage

    if kind == "store":
        return {"answer_ids": lineage.store_text_answer_ids(source)}
    return {"answer_ids": None, "data": lineage.jsonl_lines(source)}


def guidance_lines(metrics: dict[str, Any]) -> list[str]:
    """What the highlights and response times did (lm reward), one line each."""
    lines = []
    if metrics.get("highlight_weight"):
        lines.append(f"highlights: {metrics.get('highlighted_pairs')} pairs, weight "
                     f"{metrics['highlight_weight']:g}, outside share "
                     f"{fmt(metrics.get('highlight_share_first_log'))} → "
                     f"{fmt(metrics.get('highlight_share_last_log'))} "
                     f"({metrics.get('highlight_sides_unplaced')} sides not placed)")
    tw = metrics.get("time_weighting")
    if tw:
        lines.append(f"time weighting ({tw['mode']}, floor {tw['floor']:g}): "
                     f"{tw['timed_pairs']} of {tw['pairs']} pairs timed, confidence mean "
                     f"{fmt(tw.get('confidence_mean'))}, min {fmt(tw.get('confidence_min'))}")
    return lines  # warnings are logged by the trainer


def fmt(x: Any, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def default_model() -> str:
    from rlhf_hgt.lm.models import DEFAULT_MODEL

    return DEFAULT_MODEL
