"""Round checkpoints, the run manifest and the learning curve of a control run.

Checkpoints hold weights only (safetensors) and JSON: nothing is pickled, so a run
directory handed over by someone else is safe to resume from. ``checkpoints/`` holds what
the learner saves (``policy.safetensors``, and ``reward_model/`` for a reward-model
learner); ``state.json``, written last, points at them. Every round's checkpoint is also kept
as ``rounds/round-NNN/`` (its files and its state), so a person can roll the run back to it
(``rlhf-hgt oversee RUN_DIR rollback --to N``) and lineage can name each one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.files import write_atomic, write_json_atomic

STATE = "state.json"
CHECKPOINTS = "checkpoints"
ROUNDS = "rounds"


def save(out: Path, rnd: int, learner, history: list[dict[str, Any]],
         identity: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
    """The learner's weights first, then the state file that points at them."""
    ckpt = out / CHECKPOINTS
    ckpt.mkdir(exist_ok=True)
    learner.save(ckpt)
    state = {"round": rnd, "num_timesteps": int(learner.timesteps),
             "history": history, "identity": identity or {}, **(extra or {})}
    snapshot = new_round_dir(out, rnd)
    state["checkpoint"] = snapshot.name  # e.g. round-003, or round-003.1 when trained again
    tmp = snapshot.with_name(snapshot.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt, tmp / CHECKPOINTS)
    write_json_atomic(tmp / STATE, state)
    tmp.rename(snapshot)  # a round's snapshot is whole or absent
    write_json_atomic(out / STATE, state)


def _generations(out: Path, rnd: int) -> list[Path]:
    """Round ``rnd``'s kept snapshots, oldest first: ``round-NNN``, then ``round-NNN.1``,
    ``.2``... when the round was trained again (after a rollback or a rejection)."""
    base = Path(out) / ROUNDS / f"round-{rnd:03d}"
    found = [base] if (base / STATE).is_file() else []
    k = 1
    while (p := base.with_name(f"{base.name}.{k}")).exists():
        if (p / STATE).is_file():
            found.append(p)
        k += 1
    return found


def new_round_dir(out: Path, rnd: int) -> Path:
    """A new folder for round ``rnd``'s snapshot: nothing kept is ever overwritten, so the
    lineage's hashes of earlier snapshots stay checkable."""
    base = Path(out) / ROUNDS / f"round-{rnd:03d}"
    if not base.exists():
        return base
    k = 1
    while base.with_name(f"{base.name}.{k}").exists():
        k += 1
    return base.with_name(f"{base.name}.{k}")


def round_dir(out: Path, rnd: int) -> Path:
    """Where round ``rnd``'s latest checkpoint is kept (RUN_DIR/rounds/round-NNN[.K])."""
    found = _generations(out, rnd)
    return found[-1] if found else Path(out) / ROUNDS / f"round-{rnd:03d}"


def saved_rounds(out: Path) -> list[int]:
    """The rounds whose checkpoints are kept, oldest first."""
    from rlhf_hgt.governance.oversight import kept_rounds

    return kept_rounds(out)


def roll_back(out: Path, rnd: int) -> dict[str, Any]:
    """Make round ``rnd``'s kept checkpoint the run's current one (its weights into
    checkpoints/, its state into state.json); the loop then continues with round rnd + 1."""
    snapshot = round_dir(out, rnd)
    if not (snapshot / STATE).is_file():
        raise FileNotFoundError(f"{snapshot}: no checkpoint of round {rnd} is kept "
                                f"(kept: {saved_rounds(out) or 'none'})")
    ckpt = Path(out) / CHECKPOINTS
    tmp = ckpt.with_name(CHECKPOINTS + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(snapshot / CHECKPOINTS, tmp)
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)
    state = json.loads((snapshot / STATE).read_text())
    write_json_atomic(Path(out) / STATE, state)
    return state


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
    # a PostgreSQL store's path is its URL (password masked), not a file
    _write(out, config, {"preference_store": store.path if store.is_postgres
                         else Path(store.path)})


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
