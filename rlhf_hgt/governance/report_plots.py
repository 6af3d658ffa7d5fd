"""The report's plots, drawn with matplotlib (Agg) into PNG bytes: the learning curve against
the true or held-out measure, reward-model accuracy against the number of labels, labels
per annotator and the response-time distribution. Each function returns a
:class:`~rlhf_hgt.governance.doc.Figure`, or None when the run has nothing to draw.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from rlhf_hgt.governance.doc import Figure
from rlhf_hgt.governance.run_info import RunInfo

COLORS = ("#2f5aa8", "#d1603d", "#3a9a5b", "#8e5bb5", "#c9a227", "#4aa3b5", "#7a7a7a")
ANSWER_COLORS = {"left": "#2f5aa8", "right": "#4aa3b5", "tie": "#c9a227", "skip": "#b0b0b0"}
MAX_ANNOTATORS = 7


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(width: float = 6.0, height: float = 3.4) -> tuple[Any, Any]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(width, height))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.25)
    return fig, ax


def _whole_numbers(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig: Any, name: str, caption: str) -> Figure:
    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return Figure(name, buf.getvalue(), caption)


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x


def _series(rows: Sequence[dict[str, Any]], xkey: str, ykey: str) -> tuple[list, list]:
    pts = [(r[xkey], r[ykey]) for r in rows if _num(r.get(xkey)) and _num(r.get(ykey))]
    return [p[0] for p in pts], [p[1] for p in pts]


# ----------------------------------------------------------------------------- curves


def learning_curve(info: RunInfo) -> Figure | None:
    """The true (control) or held-out (LM, attention) measure over training."""
    m, rows = info.metrics, info.history
    if info.kind == "control":
        x, y = _series(rows, "timesteps", "true_return")
        if not x:
            return None
        fig, ax = _figure()
        ax.plot(x, y, marker="o", color=COLORS[0], label="true return per round")
        for key, label, style in (("random_return_mean", "random policy", ":"),
                                  ("start_return_mean", "before training", "--")):
            if _num(m.get(key)):
                ax.axhline(m[key], color="#7a7a7a", linestyle=style, label=label)
        if _num(m.get("true_return_mean")) and _num(m.get("timesteps")):
            ax.errorbar([m["timesteps"]], [m["true_return_mean"]],
                        yerr=[m.get("true_return_std") or 0], fmt="s", color=COLORS[1],
                        capsize=4, label=f"final ({m.get('eval_episodes')} episodes)")
        ax.set_xlabel("agent timesteps")
        ax.set_ylabel("true return (hidden from the learner)")
        ax.legend(fontsize=8, frameon=False)
        return _png(fig, "learning_curve", "Learning curve: the env's own return, never shown "
                                           "to the learner")
    if info.kind == "attention":
        curve = m.get("curve") or [{"epoch": i + 1, "test_accuracy": a}
                                   for i, a in enumerate(m.get("accuracy_per_epoch") or [])]
        x, y = _series(curve, "epoch", "test_accuracy")
        if not x:
            return None
        fig, ax = _figure()
        ax.plot(x, y, marker="o", color=COLORS[0], label="test accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("epoch")
        _whole_numbers(ax)
        ax.set_ylabel("test accuracy")
        handles = list(ax.get_lines())
        lx, ly = _series(curve, "epoch", "train_loss")
        if lx:
            twin = ax.twinx()
            handles += twin.plot(lx, ly, color=COLORS[1], alpha=0.7, label="training loss")
            twin.set_ylabel("training loss")
            twin.spines[["top"]].set_visible(False)
        ax.legend(handles=handles, fontsize=8, frameon=False, loc="center right")
        return _png(fig, "learning_curve", "Learning curve: held-out test accuracy per epoch")
    if info.kind == "lm ppo":
        x, y = _series(rows, "step", "score")
        if not x:
            return None
        fig, ax = _figure()
        ax.plot(x, y, color=COLORS[0], label="score")
        ax.set_xlabel("PPO update")
        ax.set_ylabel("score of the sampled responses")
        kx, ky = _series(rows, "step", "kl_k1")
        if kx:
            twin = ax.twinx()
            twin.plot(kx, ky, color=COLORS[1], alpha=0.7, label="KL")
            twin.set_ylabel("KL to the reference", color=COLORS[1])
        return _png(fig, "learning_curve", "PPO: score (blue) and KL to the reference (orange) "
                                           "per update")
    if info.kind == "lm online":
        fig, ax = _figure()
        drawn = False
        for key, label, color in (("eval_score_mean", "held-out prompts", COLORS[0]),
                                  ("sample_score_mean", "the round's samples", COLORS[2])):
            x, y = _series(rows, "round", key)
            if x:
                ax.plot(x, y, marker="o", color=color, label=label)
                drawn = True
        if not drawn:
            _plt().close(fig)
            return None
        ax.set_xlabel("round")
        _whole_numbers(ax)
        ax.set_ylabel("score")
        ax.legend(fontsize=8, frameon=False)
        return _png(fig, "learning_curve", "Online loop: the score per round")
    return None


def accuracy_vs_labels(info: RunInfo) -> Figure | None:
    """Reward-model (or DPO implicit-reward) accuracy against the number of labels."""
    rows = info.history
    series = []
    for key, label in (("reward_holdout_accuracy", "held-out"),
                       ("reward_holdout_pref_accuracy", "held-out (policy DPO)"),
                       ("reward_train_accuracy", "training"),
                       ("reward_model_accuracy", "held-out"),
                       ("implicit_reward_accuracy", "held-out implicit reward (DPO)")):
        x, y = _series(rows, "labels", key)
        if x:
            series.append((label, x, y))
    if not series:
        return None
    fig, ax = _figure()
    for i, (label, x, y) in enumerate(series):
        ax.plot(x, y, marker="o", color=COLORS[i % len(COLORS)], label=label,
                linestyle="--" if label == "training" else "-")
    ax.axhline(0.5, color="#7a7a7a", linestyle=":", label="chance")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("labels")
    _whole_numbers(ax)
    ax.set_ylabel("pairwise accuracy")
    ax.legend(fontsize=8, frameon=False)
    return _png(fig, "accuracy_vs_labels", "Reward model: pairwise accuracy against the number "
                                           "of labels")


# ----------------------------------------------------------------------------- people


def labels_per_annotator(info: RunInfo) -> Figure | None:
    ann = info.annotators
    colors = ANSWER_COLORS
    if not ann and info.file_annotators:  # pairs from a file: counts only
        colors = {"pairs": COLORS[0]}
        ann = {n: {"synthetic": False, "by_value": {"pairs": c}}
               for n, c in sorted(info.file_annotators.items())}
    if not ann:
        return None
    names = list(ann)[:30]
    fig, ax = _figure(6.0, 1.6 + 0.4 * len(names))
    left = [0] * len(names)
    for value, color in colors.items():
        counts = [ann[n]["by_value"][value] for n in names]
        ax.barh(range(len(names)), counts, left=left, color=color, label=value, height=0.6)
        left = [a + b for a, b in zip(left, counts, strict=True)]
    ax.set_yticks(range(len(names)), [_short_name(n) + (" *" if ann[n]["synthetic"] else "")
                                      for n in names], fontsize=8)
    ax.invert_yaxis()
    synthetic = any(ann[n]["synthetic"] for n in names)
    ax.set_xlabel("pairs named to each annotator in the data file" if colors is not ANSWER_COLORS
                  else "answers  (* synthetic teacher)" if synthetic else "answers")
    ax.legend(fontsize=8, frameon=False, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return _png(fig, "labels_per_annotator", "Labels per annotator, by answer")


def _short_name(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


def response_times(info: RunInfo) -> Figure | None:
    """answered_at - shown_at per annotator (teachers' simulated times included)."""
    durations = {n: d for n, d in info.durations.items() if d}
    if not durations:
        return None
    import numpy as np

    every = np.concatenate([np.asarray(d, dtype=float) for d in durations.values()])
    top = float(np.quantile(every, 0.99)) if len(every) > 1 else float(every.max())
    bins = np.linspace(0.0, max(top, 1e-3), 30)
    fig, ax = _figure()
    for i, (name, d) in enumerate(list(durations.items())[:MAX_ANNOTATORS]):
        ax.hist(np.clip(d, 0, bins[-1]), bins=bins, histtype="step", linewidth=1.8,
                color=COLORS[i % len(COLORS)], label=f"{_short_name(name)} (n={len(d)})")
    ax.set_xlabel("seconds from shown to answered (last bin: 99th percentile and above)")
    ax.set_ylabel("answers")
    ax.legend(fontsize=8, frameon=False)
    return _png(fig, "response_times", "Response times per annotator")


def all_figures(info: RunInfo) -> list[Figure]:
    figs = [learning_curve(info), accuracy_vs_labels(info), labels_per_annotator(info),
            response_times(info)]
    return [f for f in figs if f is not None]
