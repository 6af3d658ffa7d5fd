"""``rlhf-hgt lm ppo`` and ``rlhf-hgt lm online``: the language-model commands that train a
policy from prompts (PPO against a reward, or the online preference loop).

Prompts come from ``--prompts FILE.jsonl`` (the "prompt" of every line: labelled pairs,
pending queries or prompt-only lines), ``--prompt TEXT`` (repeatable) or ``--prompt-store
STORE`` (the prompts of a store's text queries); duplicates count once. ``lm ppo`` keeps
its old names ``--data`` and ``--store`` for these. The flags of the settings come from
LMPPOConfig and OnlineConfig (with ``--ppo-*``, ``--rm-*`` and ``--dpo-*`` for the configs
nested in the online loop; the old short names stay as aliases).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from rlhf_hgt.cli.flags import Section, add_sections, add_switch, build, sections
from rlhf_hgt.cli.lm import add_model_flag, check_out, fmt
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.governance.oversight import Overseer

CHECKPOINT_DIR = "checkpoints"


def ppo_sections() -> list[Section]:
    from rlhf_hgt.lm.ppo import LMPPOConfig

    return sections(LMPPOConfig, aliases={"": {"learning_rate": ("--lr",),
                                               "init_kl_coef": ("--kl-coef",)}},
                    titles={"": "PPO"})


#: the old flags of `lm online`, which had no prefix for the policy's settings
_ONLINE_PPO_ALIASES = {
    "lora_r": ("--lora-r",), "lora_alpha": ("--lora-alpha",), "batch_size": ("--batch-size",),
    "mini_batch_size": ("--mini-batch-size",), "ppo_epochs": ("--ppo-epochs",),
    "learning_rate": ("--lr",), "init_kl_coef": ("--kl-coef",), "target_kl": ("--target-kl",),
    "max_new_tokens": ("--max-new-tokens",), "temperature": ("--temperature",),
    "device": ("--device",)}


def online_sections() -> list[Section]:
    from rlhf_hgt.lm.online import OnlineConfig

    seed = "the loop's --seed sets it"
    return sections(
        OnlineConfig, prefixes={"reward": "rm-"},
        aliases={"ppo": _ONLINE_PPO_ALIASES, "reward": {"learning_rate": ("--rm-lr",)},
                 "dpo": {"learning_rate": ("--dpo-lr",)}},
        skip={"": {"prompts": "--prompts FILE / --prompt TEXT"},
              "ppo": {"seed": seed}, "reward": {"seed": seed, "progress": "--quiet"},
              "dpo": {"seed": seed, "progress": "--quiet"}},
        titles={"": "the loop", "ppo": "policy and PPO (per round)",
                "reward": "reward model (refit every round)", "dpo": "DPO (--algo dpo)"})


def add(p: argparse.ArgumentParser, command: str) -> None:
    src = p.add_argument_group("prompts (one way) and output")
    src.add_argument("--prompts", *(("--data",) if command == "ppo" else ()), default=None,
                     dest="prompts_file", metavar="FILE.jsonl",
                     help='JSONL file whose lines have a "prompt"')
    src.add_argument("--prompt", action="append", default=None, dest="prompt_texts",
                     metavar="TEXT", help="a prompt (repeat for more)")
    if command == "ppo":
        src.add_argument("--prompt-store", "--store", default=None, dest="prompt_store",
                         metavar="STORE", help="the prompts of a preference store's text "
                                               "queries")
        src.add_argument("--max-prompts", type=int, default=None,
                         help="use at most this many distinct prompts (default: all)")
        src.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
        add_model_flag(p, default="smollm2")
        r = p.add_argument_group("reward (exactly one)")
        r.add_argument("--reward-model", default=None, metavar="DIR",
                       help="folder of a trained reward model (rlhf-hgt lm reward --out DIR)")
        from rlhf_hgt.lm.scores import BUILTIN_SCORES

        r.add_argument("--reward", default=None, choices=BUILTIN_SCORES,
                       help="a built-in score instead (rlhf_hgt.lm.scores): vader (sentiment "
                            "of the response, in [-1, 1]) or length (words in the response)")
        secs = ppo_sections()
        add_sections(p, secs)
        add_switch(p, "--no-chat-template", secs[0], "use_chat_template", False,
                   "the same as --no-use-chat-template")
    else:
        secs = online_sections()
        add_sections(p, secs)
        ppo = next(s for s in secs if s.path == ("ppo",))
        add_switch(p, "--no-chat-template", ppo, "use_chat_template", False,
                   "the same as --no-ppo-use-chat-template")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    return run_ppo(args) if args.lm_cmd == "ppo" else run_online(args)


def _prompt_source(args: argparse.Namespace) -> None:
    given = [x for x in (args.prompts_file, args.prompt_texts, args.prompt_store)
             if x is not None]
    if len(given) != 1:
        raise UserInputError("give exactly one source of prompts: --prompts FILE.jsonl (lines "
                             "with a \"prompt\"), --prompt TEXT, or --prompt-store STORE"
                             + (", not several" if given else ""))


# ----------------------------------------------------------------------------- lm ppo


def run_ppo(args: argparse.Namespace) -> int:
    """PPO as the flags say; bad input raises UserInputError before anything is written."""
    from rich.console import Console

    from rlhf_hgt.lm.data import read_prompts

    console = Console(stderr=True, quiet=args.quiet)
    _prompt_source(args)
    if args.prompt_texts is not None:
        prompts = _given_prompts(args.prompt_texts, args.max_prompts)
    else:
        prompts = read_prompts(args.prompts_file, args.prompt_store, args.max_prompts)
    config = build(args, ppo_sections())
    out = check_out(args.out)
    # a person's pause / stop: acts written from now on count, also while the model loads
    # (into a RUN_DIR that exists already; a new one is made once the model has loaded)
    lines = _OversightLines()
    overseer = Overseer(out, lines)
    with console.status("loading the language-model stack…"):
        from rlhf_hgt.lm.models import load_causal_lm
        from rlhf_hgt.lm.ppo import LMPPOTrainer

        device = _device(config.device)
        reward, reward_name = make_reward(args, device)
        model, tok = load_causal_lm(args.model, device=device)
        trainer = LMPPOTrainer(model, tok, reward, config)
    main = trainer.is_main_process
    if not main:
        console.quiet = lines.console.quiet = True
    console.print(f"PPO on {args.model} ({trainer.device}, {trainer.world} process(es)): "
                  f"{len(prompts)} prompts, reward {reward_name}, {config.steps} updates")
    out.mkdir(parents=True, exist_ok=True)  # `rlhf-hgt oversee RUN_DIR` writes there
    from rlhf_hgt.cli.run_keys import oversight_keys

    with oversight_keys(out, console, enabled=main):  # p, r, s at this terminal
        history = _train_with_progress(trainer, prompts, config.steps, console,
                                       overseer.single_run_gate)
    oversight = overseer.outcome()  # status "stopped by NAME: REASON", the acts obeyed
    overseer.close()
    trainer.save(out / CHECKPOINT_DIR, optimizer=False)  # a final export: never resumed
    if main:
        from rlhf_hgt.feedback.files import write_json_atomic
        from rlhf_hgt.governance.manifest import write_manifest

        metrics = _ppo_metrics(history, trainer, args.model, reward_name, len(prompts))
        metrics |= oversight
        write_json_atomic(out / "metrics.json", metrics)
        cfg = {**asdict(config), "model": args.model, "reward": reward_name,
               "processes": trainer.world}
        source = args.prompts_file or args.prompt_store
        write_manifest(out, cfg, {"data": source} if source else {})
        _record_lineage(out, args)
        from rlhf_hgt.governance.card import write_cards

        write_cards(out)  # a model card beside the saved policy
        final = metrics["final"]
        if "status" in metrics:
            console.print(f"[bold]{metrics['status']}[/]", highlight=False)
        if final is None:
            console.print(f"done: no PPO update → {out}")
        else:
            console.print(f"done: score {final['score']:.3f} (first "
                          f"{metrics['score_first']:.3f}), KL {final['kl_k1']:.3f}, "
                          f"{final['tokens_per_s']:.0f} tokens/s → {out}")
    return 0


class _OversightLines:
    """Progress for the Overseer: its events as lines on stderr. They record a person's act,
    so --quiet (no progress) keeps them; only a process other than the main one of a
    multi-process run is silent (``console.quiet``)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, soft_wrap=True)

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        from rlhf_hgt.governance.oversight import say

        line = say(event, info)
        if line is not None:
            self.console.print(f"[bold]oversight[/]: {line}", highlight=False)


def _record_lineage(out: Any, args: argparse.Namespace) -> None:
    """The final policy's lineage: the answers behind the reward model it trained against
    (none for a built-in score)."""
    from rlhf_hgt.governance.lineage import inherited, record_checkpoint

    extra: dict[str, Any] = {"answer_ids": None, "reward": args.reward}
    if args.reward_model is not None:
        extra = inherited(args.reward_model)
    store = extra.pop("_store", None)
    record_checkpoint(out, store, "final", [out / CHECKPOINT_DIR], role="policy", **extra)


def _given_prompts(texts: list[str], limit: int | None) -> list[str]:
    if limit is not None and limit < 1:
        raise UserInputError(f"--max-prompts must be at least 1, got {limit}")
    for i, text in enumerate(texts, start=1):
        if not text.strip():
            raise UserInputError(f"--prompt number {i} is empty; give the text to generate from")
    return list(dict.fromkeys(texts))[:limit]


def make_reward(args: argparse.Namespace, device: Any) -> tuple[Any, str]:
    """(reward, description) from --reward-model DIR or --reward NAME."""
    from pathlib import Path

    from rlhf_hgt.lm.scores import BUILTIN_SCORES, make_score

    if (args.reward_model is None) == (args.reward is None):
        raise UserInputError("give exactly one reward: --reward-model DIR (a trained reward "
                             f"model) or --reward {'|'.join(BUILTIN_SCORES)}")
    if args.reward is not None:
        return make_score(args.reward), args.reward
    folder = Path(args.reward_model)
    if not folder.is_dir():
        raise UserInputError(f"--reward-model {folder}: no such folder; give the --out folder "
                             "of `rlhf-hgt lm reward`")
    from rlhf_hgt.lm.reward import RewardScorer

    try:
        scorer = RewardScorer.load(str(folder), device=str(device))
    except UserInputError:
        raise
    except (ValueError, OSError, KeyError) as exc:
        raise UserInputError(f"--reward-model {folder}: cannot be loaded ({exc})") from None
    return scorer, f"reward-model:{folder}"


def _device(name: str | None) -> Any:
    from rlhf_hgt.lm.processes import accelerate_cpu, launched_by_accelerate

    if launched_by_accelerate():
        from accelerate import PartialState

        return PartialState(cpu=accelerate_cpu()).device
    from rlhf_hgt.lm.models import pick_device

    return pick_device(name)


def _train_with_progress(trainer: Any, prompts: list[str], steps: int, console: Any,
                         gate: Any = None) -> list[dict[str, float]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("PPO"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=console.quiet) as bar:
        task = bar.add_task("ppo", total=steps, info="")

        def update(stats: dict[str, float]) -> None:
            bar.update(task, advance=1, info=f"score {stats['score']:.3f}  "
                       f"KL {stats['kl_k1']:.3f}  β {stats['kl_coef']:.3g}  "
                       f"{stats['tokens_per_s']:.0f} tok/s")

        return trainer.train(prompts, steps=steps, callback=update, gate=gate)


def _ppo_metrics(history: list[dict[str, float]], trainer: Any, model: str, reward_name: str,
                 n_prompts: int) -> dict[str, Any]:
    if not history:  # stopped by a person before the first update
        return {"final": None, "steps": 0, "model": model, "reward": reward_name,
                "prompts": n_prompts, "device": str(trainer.device),
                "processes": trainer.world, "curve": []}
    k = max(1, min(5, len(history) // 4))
    first = sum(h["score"] for h in history[:k]) / k
    last = sum(h["score"] for h in history[-k:]) / k
    full = trainer.config.full_finetune
    return {
        "final": history[-1], "steps": len(history), "score_first": first,
        "score_last": last, "score_gain": last - first,
        "tokens_per_s_mean": sum(h["tokens_per_s"] for h in history) / len(history),
        "peak_memory_mb": max(h.get("peak_memory_mb", 0.0) for h in history),
        "peak_memory_kind": ("cuda max_memory_allocated" if trainer.device.type == "cuda"
                             else "process max RSS"),
        "model": model, "reward": reward_name, "prompts": n_prompts,
        "device": str(trainer.device), "processes": trainer.world,
        "model" if full else "adapter":
            f"{CHECKPOINT_DIR}/{'model' if full else 'adapter_model'}.safetensors",
        "value_head": f"{CHECKPOINT_DIR}/value_head.safetensors",
        "curve": history,
    }


# ----------------------------------------------------------------------------- lm online


def run_online(args: argparse.Namespace) -> int:
    """The online loop as the flags say; bad input raises UserInputError first."""
    from rich.console import Console

    console = Console(stderr=True, quiet=args.quiet, soft_wrap=True)
    if getattr(args, "cfg:teacher", None) == "custom":
        raise UserInputError("--teacher custom needs a Python score function (run_online"
                             "(config, score_fn=...)); here use vader, length, human or "
                             "external")
    if args.prompt_texts is not None and args.prompts_file is not None:
        raise UserInputError("give prompts one way: --prompt TEXT, --prompts FILE.jsonl or "
                             "--prompt-store STORE")
    prompts = args.prompt_texts if args.prompt_texts is not None else args.prompts_file
    if args.quiet:
        for dest in ("cfg:reward.progress", "cfg:dpo.progress"):
            setattr(args, dest, False)
    cfg = build(args, online_sections(), {"prompts": prompts})
    from rlhf_hgt.cli.lm_online_report import Reporter
    from rlhf_hgt.lm.online import run_online as loop

    reporter, lines = Reporter(console), _OversightLines()

    def progress(event: str, info: dict[str, Any]) -> None:
        reporter(event, info)
        lines(event, info)  # a person's pause, stop, reject, rollback
    console.print(f"lm online: {cfg.model}, {cfg.algo}, teacher {cfg.teacher}, "
                  f"{cfg.rounds} rounds of {cfg.prompts_per_round} prompts → {cfg.out}",
                  highlight=False)
    from rlhf_hgt.cli.run_keys import oversight_keys

    try:  # p, r, s at this terminal, unless a person labels in it
        with oversight_keys(cfg.out, console, enabled=cfg.teacher != "human"):
            metrics = loop(cfg, progress)
    finally:
        reporter.close()
    if "status" in metrics:
        console.print(f"[bold]{metrics['status']}[/]", highlight=False)
    console.print(f"labels {metrics['labels']}, reward-model accuracy "
                  f"{fmt(metrics['reward_model_accuracy'])}, sample score "
                  f"{fmt(metrics['sample_score_first'])} → {fmt(metrics['sample_score_last'])}",
                  highlight=False)
    return 0
