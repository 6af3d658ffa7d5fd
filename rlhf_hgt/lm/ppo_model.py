"""The pieces around our LM PPO trainer (:mod:`rlhf_hgt.lm.ppo`): the LoRA policy with its
value head on one base model, the rollout batch, the reward adapter, and the runtime glue
(peak memory, prompt lists). Which process this is: :mod:`rlhf_hgt.lm.processes`.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from rlhf_hgt.lm.ppo_config import LMPPOConfig


# ----------------------------------------------------------------------------- model pieces


def attach_lora(model: Any, config: LMPPOConfig) -> Any:
    """``model`` with a LoRA adapter (a PeftModel as it is); base weights frozen. With
    ``lora_r=0`` (full fine-tuning) the model itself, every weight trainable."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from rlhf_hgt.lm.models import peft_quietly
    from rlhf_hgt.lm.trl_common import check_lora_targets, lora_target_errors

    if isinstance(model, PeftModel):
        if config.full_finetune:
            raise ValueError("lora_r=0 (full fine-tuning) needs a plain model, not one with "
                             "LoRA adapters; merge them first (merge_and_unload)")
        return model
    if config.full_finetune:
        return model.requires_grad_(True)
    check_lora_targets(model, config.lora_target_modules)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=config.lora_target_modules, bias="none",
                      task_type="CAUSAL_LM")
    with peft_quietly(), lora_target_errors():
        return get_peft_model(model, lora)


def base_model(lm: Any) -> Any:
    """The transformers model under a PeftModel (or ``lm`` itself when it has no adapter)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


class PolicyValueModel(nn.Module):
    """A causal LM (LoRA or plain) and a value head reading the hidden state that enters its
    output layer.

    One forward returns logits and values for the last ``n_keep`` positions only (through
    ``logits_to_keep`` where the model accepts it), so prompt positions never reach the
    vocabulary projection."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm
        out = lm.get_output_embeddings()
        hidden = getattr(out, "in_features", None) or lm.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1, dtype=torch.float32)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self._captured: list[torch.Tensor] = []
        self._capturing = False
        out.register_forward_pre_hook(self._capture)
        params = inspect.signature(base_model(lm).forward).parameters
        self._keep_arg = "logits_to_keep" in params

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._capturing:
            self._captured.append(args[0])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, n_keep: int, with_values: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask,
                                  "position_ids": position_ids, "use_cache": False}
        if self._keep_arg:
            kwargs["logits_to_keep"] = n_keep
        self._captured.clear()
        self._capturing = with_values
        try:
            logits = self.lm(**kwargs).logits[:, -n_keep:]
            values = None
            if with_values:
                hidden = self._captured[-1][:, -n_keep:]
                with torch.autocast(hidden.device.type, enabled=False):
                    values = self.value_head(hidden.float()).squeeze(-1)
        finally:
            self._capturing = False
            self._captured.clear()
        return logits, values


def as_batch_scorer(reward_fn: Any) -> Callable[[list[str], list[str]], torch.Tensor]:
    """A batched scorer from a reward model (``score(prompts, responses) -> Tensor``) or a
    function ``f(prompt, response) -> float``."""
    score = getattr(reward_fn, "score", None)
    if callable(score):
        return lambda prompts, responses: torch.as_tensor(score(prompts, responses))
    if callable(reward_fn):
        return lambda prompts, responses: torch.tensor(
            [float(reward_fn(p, r)) for p, r in zip(prompts, responses, strict=True)])
    raise TypeError("reward_fn must have a score(prompts, responses) method or be a "
                    f"function f(prompt, response) -> float; got {type(reward_fn).__name__}")


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory so far: CUDA allocations on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def prompt_list(prompts: Any) -> list[str]:
    """Prompts as a list of strings, from strings, dicts with "prompt", or a dataset with a
    "prompt" column."""
    if hasattr(prompts, "column_names"):
        if "prompt" not in prompts.column_names:
            raise ValueError(f"the dataset has no 'prompt' column (columns: "
                             f"{prompts.column_names})")
        prompts = prompts["prompt"]
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, dict):
            p = p.get("prompt")
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i}: expected a non-empty string, got {p!r}")
        out.append(p)
    if not out:
        raise ValueError("no prompts given")
    return out


# ----------------------------------------------------------------------------- the rollout


@dataclass
class Rollout:
    """One batch of experience: (B, P) prompt tensors, (B, R) response tensors."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    finished: torch.Tensor
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def inputs(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, ...]:
        """(input_ids, attention_mask, position_ids, response_ids, mask, n_keep) for ``rows``
        with the common left padding and right padding of those rows cut away; the input
        leaves out the last token (nothing predicts from it)."""
        q_mask, mask = self.query_mask[rows], self.mask[rows]
        left = int((q_mask.sum(0) > 0).long().argmax())
        n_keep = max(int(mask.sum(1).max()), 1)
        ids = torch.cat([self.query_ids[rows][:, left:], self.response_ids[rows][:, :n_keep]], 1)
        attn = torch.cat([q_mask[:, left:], mask[:, :n_keep]], 1)
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        return (ids[:, :-1], attn[:, :-1], pos[:, :-1], self.response_ids[rows][:, :n_keep],
                mask[:, :n_keep], n_keep)


def pad_right(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
    if t.shape[1] >= width:
        return t
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def load_value_head(path: str | os.PathLike, hidden_size: int) -> nn.Linear:
    """A value head saved by :meth:`LMPPOTrainer.save` (``value_head.safetensors``)."""
    from safetensors.torch import load_file

    head = nn.Linear(hidden_size, 1, dtype=torch.float32)
    head.load_state_dict(load_file(str(path)))
    return head


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for e in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        for i in (e if isinstance(e, list | tuple) else [e]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("neither the tokenizer nor the model names an end token (eos)")
    return ids
