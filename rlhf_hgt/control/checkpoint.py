"""Round checkpoints, the run manifest and the learning curve of a control run.

Checkpoints hold weights only (safetensors) and JSON: nothing is pickled, so a run
directory handed over by someone else is safe to resume from. ``checkpoints/`` holds what
the learner saves (``policy.safetensors``, and ``reward_model/`` for a reward-model
learner); ``state.json``, written last, points at them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.files import write_atomic, write_json_atomic

STATE = "state.json"
CHECKPOINTS = "checkpoints"


def save(out: Path, rnd: int, learner, history: list[dict[str, Any]],
         identity: dict[str, Any] | None = None) -> None:
    """The learner's weights first, then the state file that points at them."""
    ckpt = out / CHECKPOINTS
    ckpt.mkdir(exist_ok=True)
    learner.save(ckpt)
    state = {"round": rnd, "num_timesteps": int(learner.timesteps),
             "history": history, "identity": identity or {}}
    write_json_atomic(out / STATE, state)


def load_state(out: Path) -> dict[str, Any]:
    path = out / STATE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def restore(out: Path, learner) -> dict[str, Any]:
    """Load the last round's weights into ``learner``; returns the state (empty: none)."""
    state = load_state(out)
    if state:
        learner.restore(out / CHECKPOINTS, restored_timesteps(state))
    return state


def restored_timesteps(state: dict[str, Any]) -> int:
    """The learner's step count at the checkpoint. A policy-DPO run checkpointed before its
    learner counted steps has 0 there: its last history row holds the count."""
    steps = int(state.get("num_timesteps", 0))
    history = state.get("history") or []
    if steps == 0 and history and isinstance(history[-1], dict):
        steps = int(history[-1].get("timesteps", 0))
    return steps


def write_manifest(out: Path, config: dict[str, Any], store) -> None:
    from rlhf_hgt.governance.manifest import write_manifest as _write

    store.flush()  # the data hash then covers every answer
    _write(out, config, {"preference_store": Path(store.path)})


def plot_curve(out: Path, history: list[dict[str, Any]]) -> Path | None:
    """learning_curve.png: true return and reward-model accuracy per round."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    steps = [h["timesteps"] for h in history]
    ax[0].plot(steps, [h["true_return"] for h in history], marker="o")
    ax[0].set_xlabel("agent timesteps")
    ax[0].set_ylabel("true return (hidden from the learner)")
    acc = [(h["labels"], h.get("reward_holdout_accuracy")) for h in history]
    acc = [(n, a) for n, a in acc if a is not None]
    if acc:
        ax[1].plot(*zip(*acc, strict=True), marker="o")
    ax[1].set_xlabel("labels")
    ax[1].set_ylabel("reward model held-out accuracy")
    ax[1].set_ylim(0, 1)
    fig.tight_layout()
    path = write_atomic(out / "learning_curve.png",
                        lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
    return path
