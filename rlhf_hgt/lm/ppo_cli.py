"""``rlhf-hgt lm ppo``: PPO with LoRA (or, ``--lora-r 0``, full fine-tuning) on a causal
language model against a reward.

    rlhf-hgt lm ppo --data prompts.jsonl --out runs/ppo --reward vader
    rlhf-hgt lm ppo --store feedback.db --out runs/ppo --reward-model runs/reward
    accelerate launch --multi_gpu --num_processes 2 -m rlhf_hgt.lm.ppo_cli --data ... --out ...

(two CPU processes: ``CUDA_VISIBLE_DEVICES=""`` in front.)

Prompts are the "prompt" field of every line of a JSONL file (labelled TRL pairs, pending
queries or prompt-only lines), or the prompts of the text queries in a preference store;
duplicates count once. The reward is a trained reward model folder (``rlhf-hgt lm reward``)
or a built-in scorer. The run directory gets metrics.json (final numbers and the per-step
curve), checkpoints/ (the LoRA adapter, or the whole model under full fine-tuning, and the
value head as safetensors, config JSON) and
manifest.json. Input is checked before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.errors import UserInputError, exit_code

BUILTIN_REWARDS = ("vader", "length")
CHECKPOINT_DIR = "checkpoints"


def add_ppo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``rlhf-hgt lm ppo``; unset tuning flags keep LMPPOConfig's defaults."""
    src = parser.add_argument_group("data and output")
    src.add_argument("--data", default=None, help="JSONL file whose lines have a \"prompt\"")
    src.add_argument("--store", default=None, help="preference store: prompts of its text "
                     "queries")
    src.add_argument("--out", required=True, help="run directory")
    src.add_argument("--max-prompts", type=int, default=None,
                     help="use at most this many prompts (default all)")
    m = parser.add_argument_group("model and reward")
    m.add_argument("--model", default="smollm2",
                   help="policy base: 'smollm2' (offline default), a local folder, a hub id, "
                        "or 'tiny' (a tiny random model for tests)")
    m.add_argument("--reward-model", default=None,
                   help="folder of a trained reward model (rlhf-hgt lm reward --out DIR)")
    m.add_argument("--reward", default=None, choices=BUILTIN_REWARDS,
                   help="built-in scorer instead: vader (sentiment of the response, in "
                        "[-1, 1]) or length (words in the response)")
    m.add_argument("--device", default=None, help="auto, cpu, cuda[:N] or mps (default auto)")
    m.add_argument("--no-chat-template", action="store_true",
                   help="feed prompts as plain text even if the tokenizer has a chat template")
    t = parser.add_argument_group("PPO (defaults: LMPPOConfig)")
    for flags, kind, text in _TUNING:
        t.add_argument(*flags.split("|"), type=kind, default=None, help=text,
                       dest=_dest(flags))
    t.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass (less memory)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def _dest(flags: str) -> str:
    return flags.split("|")[0][2:].replace("-", "_")


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


_TUNING: list[tuple[str, Callable[[str], Any], str]] = [
    ("--steps", int, "PPO updates"),
    ("--lora-r", int, "LoRA rank (0: full fine-tuning, with a frozen reference copy)"),
    ("--lora-alpha", float, "LoRA alpha (default 2 * rank)"),
    ("--batch-size", int, "rollouts per update, per process"),
    ("--mini-batch-size", int, "rollouts per optimiser step (divides --batch-size)"),
    ("--gradient-accumulation-steps", int, "micro-batches per minibatch"),
    ("--ppo-epochs", int, "passes over each rollout batch"),
    ("--generation-batch-size", int, "prompts generated at once (default the whole batch)"),
    ("--forward-batch-size", int, "rollouts per no-grad scoring forward"),
    ("--lr", float, "learning rate of the LoRA (or, at rank 0, all) weights (default 3e-5 "
                    "with LoRA, 1e-6 at rank 0)"),
    ("--value-head-lr", float, "learning rate of the value head"),
    ("--init-kl-coef|--kl-coef", float, "KL penalty coefficient (at the start, if adaptive)"),
    ("--target-kl", _optional_float, "target KL per sequence for an adaptive coefficient "
                                     "(none: fixed)"),
    ("--kl-horizon", int, "horizon of the adaptive KL controller"),
    ("--cliprange", float, "policy ratio clip"),
    ("--cliprange-value", float, "value clip"),
    ("--vf-coef", float, "value loss weight"),
    ("--gamma", float, "discount"),
    ("--lam", float, "GAE lambda"),
    ("--max-new-tokens", int, "response token limit"),
    ("--temperature", float, "sampling temperature"),
    ("--max-prompt-length", int, "prompt tokens kept"),
    ("--missing-eos-penalty", float, "score penalty for responses without an end token"),
    ("--seed", int, "random seed"),
]


# ----------------------------------------------------------------------------- input


def read_prompts(data: str | None, store: str | None, limit: int | None = None) -> list[str]:
    """Distinct prompts, in file/store order, from a JSONL file or a preference store."""
    if (data is None) == (store is None):
        raise UserInputError("give exactly one source of prompts: --data FILE.jsonl or "
                             "--store STORE" + (", not both" if data is not None else ""))
    if limit is not None and limit < 1:
        raise UserInputError(f"--max-prompts must be at least 1, got {limit}")
    prompts = _prompts_from_jsonl(Path(data)) if data is not None else _prompts_from_store(store)
    prompts = list(dict.fromkeys(prompts))[:limit]
    if not prompts:
        where = data if data is not None else store
        raise UserInputError(f"{where}: holds no prompts; give lines with a non-empty "
                             '"prompt" (e.g. {"prompt": "Write a review of Alien:"})'
                             if data is not None else
                             f"{where}: the store holds no text queries with a prompt; "
                             "import some with `rlhf-hgt feedback import`")
    return prompts


def _prompts_from_jsonl(path: Path) -> list[str]:
    from rlhf_hgt.feedback.jsonl_read import single_user_text

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file; check the --data path") from None
    except OSError as exc:
        raise UserInputError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserInputError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError):
            raise UserInputError(f"{path}:{number}: malformed JSON; write one JSON object "
                                 "per line") from None
        if not isinstance(obj, dict):
            raise UserInputError(f"{path}:{number}: expected a JSON object with a \"prompt\" "
                                 f"field, got {type(obj).__name__}")
        prompt = obj.get("prompt")
        if isinstance(prompt, list) and prompt:  # TRL's conversational form
            prompt = single_user_text(prompt)
            if prompt is None:
                raise UserInputError(f"{path}:{number}: field \"prompt\": PPO takes a "
                                     "conversational prompt of one user message (it is sent "
                                     "through the model's chat template); give that, or text")
        if not isinstance(prompt, str) or not prompt.strip():
            what = "missing" if prompt is None else f"not a non-empty string ({prompt!r:.40})"
            raise UserInputError(f"{path}:{number}: field \"prompt\" is {what}; every line "
                                 "needs the prompt to generate from")
        prompts.append(prompt)
    return prompts


def _prompts_from_store(path: str) -> list[str]:
    from rlhf_hgt.feedback.jsonl import conversation_of
    from rlhf_hgt.feedback.jsonl_read import single_user_text
    from rlhf_hgt.feedback.store import PreferenceStore

    def prompt_of(query: Any) -> str | None:
        conv = conversation_of(query)  # imported as one user message: its text
        return (single_user_text(conv["prompt"]) if conv else None) or query.prompt

    with PreferenceStore(path, create=False) as st:
        prompts = [prompt_of(q) for q in st.queries(kind="text")]
    return [p for p in prompts if p and p.strip()]


def make_reward(args: argparse.Namespace, device: Any) -> tuple[Any, str]:
    """(reward, description) from --reward-model DIR or --reward NAME."""
    if (args.reward_model is None) == (args.reward is None):
        raise UserInputError("give exactly one reward: --reward-model DIR (a trained reward "
                             f"model) or --reward {'|'.join(BUILTIN_REWARDS)}")
    if args.reward == "vader":
        from rlhf_hgt.lm.data import vader_scorer

        return vader_scorer(), "vader"
    if args.reward == "length":
        return (lambda prompt, response: float(len(response.split()))), "length"
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


def build_config(args: argparse.Namespace) -> Any:
    """LMPPOConfig from the flags that were given; a bad value raises UserInputError."""
    from rlhf_hgt.lm.ppo import LMPPOConfig

    given = {_dest(flags): getattr(args, _dest(flags)) for flags, _, _ in _TUNING}
    kwargs = {k: v for k, v in given.items() if v is not None}
    if args.no_chat_template:
        kwargs["use_chat_template"] = False
    if args.gradient_checkpointing:
        kwargs["gradient_checkpointing"] = True
    if args.device:
        kwargs["device"] = args.device
    try:
        return LMPPOConfig(**kwargs)
    except ValueError as exc:
        raise UserInputError(f"bad PPO setting: {exc}") from None


def _device(name: str | None) -> Any:
    from rlhf_hgt.lm.ppo import accelerate_cpu, launched_by_accelerate

    if launched_by_accelerate():
        from accelerate import PartialState

        return PartialState(cpu=accelerate_cpu()).device
    from rlhf_hgt.lm.models import pick_device

    return pick_device(name)


def _load_model(name: str, device: Any, seed: int) -> tuple[Any, Any]:
    if name == "tiny":
        from rlhf_hgt.lm.tiny import tiny_causal_lm

        model, tok = tiny_causal_lm(seed=seed)
        return model.to(device), tok
    from rlhf_hgt.lm.models import load_causal_lm

    return load_causal_lm(name, device=device)


# ----------------------------------------------------------------------------- the command


def run_ppo_command(args: argparse.Namespace) -> int:
    """Run PPO as the flags say; returns the exit code (bad input raises UserInputError)."""
    from rich.console import Console

    console = Console(stderr=True, quiet=args.quiet)
    prompts = read_prompts(args.data, args.store, args.max_prompts)
    config = build_config(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: exists and is not a folder; give a run directory")
    with console.status("loading the language-model stack…"):
        from rlhf_hgt.lm.ppo import LMPPOTrainer

        device = _device(args.device)
        reward, reward_name = make_reward(args, device)
        model, tok = _load_model(args.model, device, config.seed)
        trainer = LMPPOTrainer(model, tok, reward, config)
    main = trainer.is_main_process
    if not main:
        console.quiet = True
    console.print(f"PPO on {args.model} ({trainer.device}, {trainer.world} process(es)): "
                  f"{len(prompts)} prompts, reward {reward_name}, {config.steps} updates")
    history = _train_with_progress(trainer, prompts, config.steps, console)
    trainer.save(out / CHECKPOINT_DIR)
    if main:
        metrics = _metrics(history, trainer, args, reward_name, len(prompts))
        tmp = out / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2))
        os.replace(tmp, out / "metrics.json")
        from rlhf_hgt.governance.manifest import write_manifest

        cfg = {**asdict(config), "model": args.model, "reward": reward_name,
               "processes": trainer.world}
        data = {"data": Path(args.data)} if args.data else {"store": Path(args.store)}
        write_manifest(out, cfg, data)
        final = metrics["final"]
        console.print(f"done: score {final['score']:.3f} (first {metrics['score_first']:.3f}), "
                      f"KL {final['kl_k1']:.3f}, {final['tokens_per_s']:.0f} tokens/s → {out}")
    return 0


def _train_with_progress(trainer: Any, prompts: list[str], steps: int,
                         console: Any) -> list[dict[str, float]]:
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

        return trainer.train(prompts, steps=steps, callback=update)


def _metrics(history: list[dict[str, float]], trainer: Any, args: argparse.Namespace,
             reward_name: str, n_prompts: int) -> dict[str, Any]:
    k = max(1, min(5, len(history) // 4))
    first = sum(h["score"] for h in history[:k]) / k
    last = sum(h["score"] for h in history[-k:]) / k
    return {
        "final": history[-1], "steps": len(history), "score_first": first,
        "score_last": last, "score_gain": last - first,
        "tokens_per_s_mean": sum(h["tokens_per_s"] for h in history) / len(history),
        "peak_memory_mb": max(h.get("peak_memory_mb", 0.0) for h in history),
        "peak_memory_kind": ("cuda max_memory_allocated" if trainer.device.type == "cuda"
                             else "process max RSS"),
        "model": args.model, "reward": reward_name, "prompts": n_prompts,
        "device": str(trainer.device), "processes": trainer.world,
        "adapter" if not trainer.config.full_finetune else "model":
            f"{CHECKPOINT_DIR}/"
            f"{'model' if trainer.config.full_finetune else 'adapter_model'}.safetensors",
        "value_head": f"{CHECKPOINT_DIR}/value_head.safetensors",
        "curve": history,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m rlhf_hgt.lm.ppo_cli`` (and ``accelerate launch -m``)."""
    parser = add_ppo_arguments(argparse.ArgumentParser(
        prog="rlhf-hgt lm ppo", description="PPO (LoRA, or full fine-tuning at --lora-r 0) "
                                            "on a causal LM against a reward"))
    args = parser.parse_args(argv)
    return exit_code(run_ppo_command, args)


if __name__ == "__main__":
    sys.exit(main())
