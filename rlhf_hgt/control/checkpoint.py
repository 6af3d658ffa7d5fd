"""Round checkpoints, the run manifest and the learning curve of a control run.

Checkpoints hold weights only (safetensors) and JSON: nothing is pickled, so a run
directory handed over by someone else is safe to resume from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

STATE = "state.json"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(out: Path, rnd: int, agent, ensemble, history: list[dict[str, Any]],
         identity: dict[str, Any] | None = None) -> None:
    """Weights first, then the state file that points at them (written last, atomically)."""
    ckpt = out / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    policy = {k: v.detach().cpu().contiguous() for k, v in agent.policy.state_dict().items()}
    save_file(policy, str(ckpt / "policy.safetensors.tmp"))
    os.replace(ckpt / "policy.safetensors.tmp", ckpt / "policy.safetensors")
    if getattr(ensemble, "fitted", True):
        ensemble.save(ckpt / "reward_model")
    state = {"round": rnd, "num_timesteps": int(agent.num_timesteps),
             "history": history, "identity": identity or {}}
    _atomic_write(out / STATE, json.dumps(state, indent=2))


def load_state(out: Path) -> dict[str, Any]:
    path = out / STATE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def restore(out: Path, agent, ensemble) -> None:
    state = load_state(out)
    ckpt = out / "checkpoints"
    weights = load_file(str(ckpt / "policy.safetensors"))
    agent.policy.load_state_dict(weights)
    agent.num_timesteps = int(state.get("num_timesteps", 0))
    if (ckpt / "reward_model").exists():
        ensemble.load(ckpt / "reward_model")


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
    path = out / "learning_curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
