"""``rlhf-hgt lm online``: the online preference loop for a language model.

    rlhf-hgt lm online --prompts PROMPTS.jsonl --out RUN_DIR [--model smollm2]
        [--rounds 4] [--prompts-per-round 16] [--teacher vader|length|human|external]
        [--algo ppo|dpo] [--store STORE] [--seed 0]

Each round the current policy answers every prompt twice, the pairs are judged (a synthetic
teacher, a person at this terminal, or people running ``rlhf-hgt label STORE`` elsewhere),
the reward model is refit on every stored label and PPO continues (or DPO trains on the
labels directly). RUN_DIR gets feedback.db (unless --store), checkpoints/ (policy adapter,
value head, optimiser, reward model), metrics.json (one row per round), state.json and
manifest.json. Rerunning the same command resumes after the last finished round; a larger
--rounds continues a finished run. Bad input raises UserInputError (exit code 2) before
any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rlhf_hgt.feedback.errors import UserInputError, exit_code

# (flags, type, nested config, field, help); unset flags keep the config defaults
_Flag = tuple[str, Callable[[str], Any], str, str, str]


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


_NESTED: list[_Flag] = [
    ("--lora-r", int, "ppo", "lora_r", "LoRA rank of the policy adapter (default 16)"),
    ("--lora-alpha", float, "ppo", "lora_alpha", "LoRA alpha of the policy (default 2 * rank)"),
    ("--ppo-steps", int, "ppo", "steps", "PPO updates per round (default 20)"),
    ("--batch-size", int, "ppo", "batch_size", "rollouts per PPO update (default 16)"),
    ("--mini-batch-size", int, "ppo", "mini_batch_size",
     "rollouts per optimiser step; divides --batch-size (default 8)"),
    ("--ppo-epochs", int, "ppo", "ppo_epochs", "passes over each rollout batch (default 4)"),
    ("--lr", float, "ppo", "lr", "PPO learning rate of the adapter (default 3e-5)"),
    ("--kl-coef", float, "ppo", "init_kl_coef", "KL penalty coefficient (default 0.05)"),
    ("--target-kl", _optional_float, "ppo", "target_kl",
     "target KL per sequence for an adaptive coefficient (default none: fixed)"),
    ("--max-new-tokens", int, "ppo", "max_new_tokens", "response token limit (default 48)"),
    ("--temperature", float, "ppo", "temperature",
     "sampling temperature, for queries and PPO (default 0.7)"),
    ("--device", str, "ppo", "device", "auto, cpu, cuda[:N] or mps (default auto)"),
    ("--rm-lora-r", int, "reward", "lora_r", "reward-model LoRA rank (default 16)"),
    ("--rm-lr", float, "reward", "learning_rate", "reward-model learning rate (default 2e-4)"),
    ("--rm-epochs", float, "reward", "epochs",
     "passes over the labels per refit (default automatic)"),
    ("--rm-max-steps", int, "reward", "max_steps",
     "stop each refit after this many optimiser steps (smoke runs)"),
    ("--rm-batch-size", int, "reward", "batch_size", "pairs per reward-model step (default 8)"),
    ("--rm-label-noise", float, "reward", "label_noise",
     "assumed share of random answers (default 0.05)"),
    ("--dpo-beta", float, "dpo", "beta", "DPO beta (default 0.1)"),
    ("--dpo-lr", float, "dpo", "learning_rate", "DPO learning rate (default 5e-5)"),
    ("--dpo-epochs", float, "dpo", "epochs", "DPO passes over the labels per round (default 2)"),
    ("--dpo-max-steps", int, "dpo", "max_steps",
     "stop each DPO fit after this many optimiser steps (smoke runs)"),
    ("--dpo-batch-size", int, "dpo", "batch_size", "pairs per DPO step (default 8)"),
    ("--dpo-loss-type", str, "dpo", "loss_type", "TRL DPO loss(es), comma-separated "
                                                 "(default sigmoid)"),
    ("--dpo-sft-weight", float, "dpo", "sft_weight",
     "weight of a supervised term on the chosen response (default 0 = plain DPO)"),
]


def _dest(flags: str) -> str:
    return flags[2:].replace("-", "_")


def add_online_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``rlhf-hgt lm online``."""
    src = parser.add_argument_group("prompts and output")
    src.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                     help='JSONL file whose lines have a "prompt"')
    src.add_argument("--prompt", action="append", default=None, dest="prompt_texts",
                     metavar="TEXT", help="a prompt (repeat for more), instead of --prompts")
    src.add_argument("--prompt-store", default=None, metavar="STORE",
                     help="or: the prompts of a preference store's text queries")
    src.add_argument("--max-prompts", type=int, default=None,
                     help="use at most this many distinct prompts (default all)")
    src.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    src.add_argument("--store", default=None, metavar="STORE",
                     help="preference store for the queries and answers (default "
                          "RUN_DIR/feedback.db)")
    loop = parser.add_argument_group("the loop")
    loop.add_argument("--model", default="smollm2",
                      help="policy base: 'smollm2' (offline default), a local folder, a hub "
                           "id, or 'tiny' (a tiny random model for tests)")
    loop.add_argument("--rounds", type=int, default=4, help="rounds in all (default 4)")
    loop.add_argument("--prompts-per-round", type=int, default=16,
                      help="prompts per round, one query each (default 16)")
    loop.add_argument("--teacher", default="vader",
                      help="vader or length (synthetic teacher scoring sentiment or "
                           "characters), human (asks here), external (waits for `rlhf-hgt "
                           "label STORE`); default vader")
    loop.add_argument("--teacher-model", default="oracle",
                      help="synthetic teacher's answers: oracle, stochastic:beta=B, "
                           "mistake:eps=E, skip, equal, myopic (default oracle)")
    loop.add_argument("--annotator", default=None,
                      help="name stored with human answers (default your login name)")
    loop.add_argument("--monitor", default=None, choices=("vader", "length"),
                      help="score logged for the policy's samples (default: the teacher's)")
    loop.add_argument("--algo", default="ppo", help="ppo (reward model + PPO) or dpo")
    loop.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    loop.add_argument("--run-name", default=None,
                      help="prefix of the policy ids stored with queries (default RUN_DIR's "
                           "name)")
    loop.add_argument("--eval-prompts", type=int, default=16,
                      help="prompts scored after each round with the monitor (0: off)")
    loop.add_argument("--keep-checkpoints", type=int, default=2,
                      help="round checkpoints kept (default 2)")
    loop.add_argument("--poll-seconds", type=float, default=2.0,
                      help="how often to look for answers given elsewhere (default 2)")
    groups = {"ppo": parser.add_argument_group("policy and PPO"),
              "reward": parser.add_argument_group("reward model (refit every round)"),
              "dpo": parser.add_argument_group("DPO (--algo dpo)")}
    for flags, kind, target, _, text in _NESTED:
        groups[target].add_argument(flags, type=kind, default=None, help=text,
                                    dest=_dest(flags))
    groups["ppo"].add_argument("--no-chat-template", action="store_true",
                               help="feed prompts as plain text even if the tokenizer has a "
                                    "chat template")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def build_config(args: argparse.Namespace) -> Any:
    """OnlineConfig from the flags; a bad value raises UserInputError naming its flag."""
    from rlhf_hgt.lm.dpo import LMDPOConfig
    from rlhf_hgt.lm.online import OnlineConfig, default_ppo_config
    from rlhf_hgt.lm.ppo import LMPPOConfig
    from rlhf_hgt.lm.reward import LMRewardConfig

    if args.teacher == "custom":
        raise UserInputError("--teacher custom needs a Python score function (run_online"
                             "(config, score_fn=...)); here use vader, length, human or "
                             "external")
    if args.prompt_texts is not None and (args.prompts is not None
                                          or args.prompt_store is not None):
        raise UserInputError("give prompts one way: --prompt TEXT, --prompts FILE.jsonl or "
                             "--prompt-store STORE")
    nested: dict[str, dict[str, Any]] = {"ppo": {}, "reward": {}, "dpo": {}}
    flag_of: dict[tuple[str, str], str] = {}
    for flags, _, target, name, _ in _NESTED:
        value = getattr(args, _dest(flags))
        flag_of[(target, name)] = flags
        if value is None:
            continue
        if name == "loss_type":
            value = tuple(t.strip() for t in value.split(",") if t.strip())
        nested[target][name] = value
    if args.no_chat_template:
        nested["ppo"]["use_chat_template"] = False
    nested["reward"]["progress"] = nested["dpo"]["progress"] = not args.quiet
    nested["ppo"].setdefault("steps", default_ppo_config().steps)
    built: dict[str, Any] = {}
    for target, cls in (("ppo", LMPPOConfig), ("reward", LMRewardConfig), ("dpo", LMDPOConfig)):
        kw = nested[target]
        try:
            built[target] = cls(**kw)
        except ValueError as exc:
            msg = str(exc)
            flag = next((f for (t, n), f in flag_of.items() if t == target
                         and msg.startswith(n + " ")), None)
            raise UserInputError(f"{flag}: {msg}" if flag else f"bad {target} setting: {msg}") \
                from None
    return OnlineConfig(
        out=args.out, prompts=args.prompt_texts if args.prompt_texts is not None
        else args.prompts, prompt_store=args.prompt_store, max_prompts=args.max_prompts,
        model=args.model, rounds=args.rounds, prompts_per_round=args.prompts_per_round,
        teacher=args.teacher, teacher_model=args.teacher_model, annotator=args.annotator,
        monitor=args.monitor, algo=args.algo, store=args.store, seed=args.seed,
        run_name=args.run_name, eval_prompts=args.eval_prompts,
        keep_checkpoints=args.keep_checkpoints, poll_seconds=args.poll_seconds, **built)


class _Reporter:
    """Progress of the loop on a rich console: one line per step, a bar for PPO updates."""

    def __init__(self, console: Any, store_hint: str):
        self.console, self.store_hint = console, store_hint
        self.bar: Any = None
        self.task: Any = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event != "ppo_step":
            self.close()
        say = self.console.print
        r = info.get("round")
        if event == "resume":
            say(f"resuming at round {r} of {info['rounds']}")
        elif event == "gather":
            how = "reused (asked before the run stopped)" if info["queries_reused"] else "new"
            skipped = f", {info['pairs_skipped']} identical/empty pairs skipped" \
                if info["pairs_skipped"] else ""
            say(f"[bold]round {r}[/bold]: {info['queries']} queries {how} from policy "
                f"{info['policy']}{skipped}", highlight=False)
        elif event == "label":
            say(f"round {r}: {info['pending']} pairs to label at this terminal "
                f"(as {info['annotator']})")
        elif event == "waiting":
            say(f"round {r}: waiting for {info['pending']} answers; label them with "
                f"`rlhf-hgt label {info['store']}` (Ctrl-C stops; rerun to resume this round)",
                highlight=False)
        elif event == "answers":
            say(f"round {r}: {info['answers_added']} answers by {info['annotator']} "
                f"({info['labels']} labels stored)", highlight=False)
        elif event == "fit":
            if "skipped" in info:
                say(f"round {r}: fit skipped: {info['skipped']}")
            else:
                what = "DPO on" if info["algo"] == "dpo" else "reward model refit on"
                say(f"round {r}: {what} {info['pairs']} labelled pairs…")
        elif event == "ppo_start":
            self._start_bar(info["steps"])
        elif event == "ppo_step" and self.bar is not None:
            self.bar.update(self.task, advance=1, info=f"score {info['score']:.3f}  "
                            f"KL {info['kl_k1']:.3f}")
        elif event == "round":
            say(f"round {r} done: {_summary(info)}", highlight=False)
        elif event == "done":
            say(f"[bold]done[/bold]: {info['rounds']} rounds → {info['out']}")

    def _start_bar(self, steps: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(TextColumn("PPO"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), console=self.console,
                            disable=self.console.quiet)
        self.task = self.bar.add_task("ppo", total=steps, info="")
        self.bar.start()


def _summary(row: dict[str, Any]) -> str:
    parts = []
    for key, label in (("sample_score_mean", "sample score"),
                       ("reward_model_accuracy", "reward-model held-out acc"),
                       ("implicit_reward_accuracy", "DPO held-out acc"),
                       ("ppo_score_last", "PPO reward"), ("ppo_kl_last", "KL"),
                       ("eval_score_mean", "eval score")):
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:.3f}")
    return ", ".join(parts) or "no numbers yet"


def run_online_command(args: argparse.Namespace) -> int:
    """Run ``lm online`` as the flags say; returns the exit code (bad input raises
    UserInputError)."""
    from rich.console import Console

    console = Console(stderr=True, quiet=args.quiet, soft_wrap=True)
    cfg = build_config(args)
    from rlhf_hgt.lm.online import run_online

    reporter = _Reporter(console, str(cfg.store_path))
    console.print(f"lm online: {cfg.model}, {cfg.algo}, teacher {cfg.teacher}, "
                  f"{cfg.rounds} rounds of {cfg.prompts_per_round} prompts → {cfg.out}",
                  highlight=False)
    try:
        metrics = run_online(cfg, reporter)
    finally:
        reporter.close()
    console.print(f"labels {metrics['labels']}, reward-model accuracy "
                  f"{_fmt(metrics['reward_model_accuracy'])}, sample score "
                  f"{_fmt(metrics['sample_score_first'])} → {_fmt(metrics['sample_score_last'])}",
                  highlight=False)
    return 0


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m rlhf_hgt.lm.online_cli``."""
    parser = add_online_arguments(argparse.ArgumentParser(
        prog="rlhf-hgt lm online", description="the online preference loop for a language "
                                               "model"))
    args = parser.parse_args(argv)
    return exit_code(run_online_command, args,
                     interrupted="interrupted; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
