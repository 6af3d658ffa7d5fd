"""Progress of ``rlhf-hgt lm online`` on a rich console: one line per phase of each round,
a bar for the PPO updates."""

from __future__ import annotations

from typing import Any


class Reporter:
    """Progress of the loop on a rich console: one line per step, a bar for PPO updates."""

    def __init__(self, console: Any):
        self.console = console
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
