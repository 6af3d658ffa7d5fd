"""Saving and restoring our LM PPO trainer (:class:`rlhf_hgt.lm.ppo.LMPPOTrainer`): what a
run needs to continue where it stopped.

A checkpoint folder holds

- the policy: the LoRA adapter (``adapter_model.safetensors`` + ``adapter_config.json``,
  readable by ``PeftModel.from_pretrained``) or, under full fine-tuning, the whole model
  (``model.safetensors``, ``config.json``);
- the value head (``value_head.safetensors``);
- the optimiser's per-weight state (AdamW moments and step, ``optimizer.safetensors``;
  left out with ``optimizer=False``, e.g. for a final export);
- the settings (``ppo_config.json``) and the trainer's state (``trainer_state.json``: PPO
  updates done, the KL coefficient).

Restoring loads all of these into a trainer built like the one that saved (same base model,
same LoRA shape); the reference stays what the new trainer holds (the base with the adapter
off, or under full fine-tuning the copy of the starting model it was built from). The
random state is not saved: seed before continuing (the online loop seeds every round).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.files import write_json_atomic

if TYPE_CHECKING:
    from rlhf_hgt.lm.ppo import LMPPOTrainer

VALUE_HEAD_FILE = "value_head.safetensors"
CONFIG_FILE = "ppo_config.json"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"


def save_trainer(trainer: LMPPOTrainer, out_dir: str | os.PathLike,
                 optimizer: bool = True) -> Path:
    """Write ``trainer``'s checkpoint into ``out_dir`` (main process only; every process
    waits for it)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if trainer.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if trainer.config.full_finetune:
            trainer.lm.save_pretrained(str(out), safe_serialization=True)
        else:
            trainer.lm.save_pretrained(str(out), safe_serialization=True,
                                       save_embedding_layers=False)
        head = {k: v.detach().cpu().contiguous()
                for k, v in trainer.policy.value_head.state_dict().items()}
        save_file(head, str(out / VALUE_HEAD_FILE))
        if optimizer:
            save_optimizer(trainer.optimizer, out / OPTIMIZER_FILE)
        write_json_atomic(out / CONFIG_FILE, asdict(trainer.config))
        write_json_atomic(out / STATE_FILE, {"step": trainer.step_count,
                                             "kl_coef": trainer.kl_ctl.value})
    if trainer.accelerator:
        trainer.accelerator.wait_for_everyone()
    return out


def restore_trainer(trainer: LMPPOTrainer, folder: str | os.PathLike) -> None:
    """Load a checkpoint written by :func:`save_trainer` into ``trainer`` (on every process).
    A folder that is missing a part, or holds weights of another shape, raises
    UserInputError naming the file."""
    folder = Path(folder)
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise UserInputError(f"{folder}: no {STATE_FILE}; give a folder written by "
                             "LMPPOTrainer.save")
    try:
        state = json.loads(state_file.read_text())
        step, kl_coef = int(state["step"]), float(state["kl_coef"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise UserInputError(f"{state_file}: not a PPO trainer state (step, kl_coef); the "
                             "checkpoint is damaged") from None
    if trainer.config.full_finetune:
        _load_full_model(trainer.lm, folder)
    else:
        _load_adapter(trainer.lm, folder / ADAPTER_FILE)
    _load_into(trainer.policy.value_head, folder / VALUE_HEAD_FILE)
    if (folder / OPTIMIZER_FILE).is_file():
        load_optimizer(trainer.optimizer, folder / OPTIMIZER_FILE)
    trainer.step_count = step
    trainer.kl_ctl.value = kl_coef


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserInputError(f"{path}: missing; give a folder written by LMPPOTrainer.save "
                             "(with the same LoRA rank: 0 saves the whole model)")
    return load_file(str(path))


def _shape_error(path: Path, exc: Exception) -> UserInputError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UserInputError(f"{path}: weights of another shape ({first[:200]}); restore into a "
                          "trainer built with the same base model and LoRA settings")


def _load_adapter(lm: Any, path: Path) -> None:
    from peft import set_peft_model_state_dict

    try:
        result = set_peft_model_state_dict(lm, _safetensors(path))
    except RuntimeError as exc:  # size mismatch
        raise _shape_error(path, exc) from None
    unexpected = list(getattr(result, "unexpected_keys", None) or ())
    missing = [k for k in getattr(result, "missing_keys", None) or () if "lora_" in k]
    if unexpected or missing:
        raise _shape_error(path, ValueError(f"unexpected {unexpected[:3]}, missing "
                                            f"{missing[:3]}"))


def _load_full_model(lm: Any, folder: Path) -> None:
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        _safetensors(folder / "model.safetensors")  # raises: missing
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(_safetensors(f))
    try:
        result = lm.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise _shape_error(files[0], exc) from None
    own = lm.state_dict(keep_vars=True)
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]  # not tied
    if result.unexpected_keys or missing:
        raise _shape_error(files[0], ValueError(f"unexpected {result.unexpected_keys[:3]}, "
                                                f"missing {missing[:3]}"))


def _load_into(module: torch.nn.Module, path: Path) -> None:
    try:
        module.load_state_dict(_safetensors(path))
    except RuntimeError as exc:
        raise _shape_error(path, exc) from None


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The optimiser's per-weight state (AdamW moments, step) as safetensors, keys
    ``"{weight index}.{name}"``."""
    from safetensors.torch import save_file

    flat = {}
    for idx, st in optimizer.state_dict()["state"].items():
        for key, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            flat[f"{idx}.{key}"] = t.detach().cpu().contiguous()
    save_file(flat, str(path))


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load what :func:`save_optimizer` wrote; the learning rates stay the optimiser's own."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in _safetensors(path).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for idx, st in state.items():
        moment = st.get("exp_avg")
        if idx >= len(params) or (moment is not None and moment.shape != params[idx].shape):
            raise _shape_error(path, ValueError(f"optimiser state of weight {idx} does not "
                                                "fit"))
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)
