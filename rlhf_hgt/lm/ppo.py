"""Our PPO for causal language models with LoRA: one base model in memory for policy, value
and reference.

- policy: a LoRA adapter on the base (attached here when the model is not a PeftModel yet),
  or with ``lora_r=0`` every weight of the model (full fine-tuning);
- value: a linear fp32 head on the last hidden state of the SAME forward pass (adapters on),
  so one forward gives both logits and values;
- reference: the same base with the adapter disabled (``peft``'s ``disable_adapter``); the
  LoRA B matrices start at zero, so at step 0 policy and reference agree exactly. Under full
  fine-tuning the reference is a frozen copy of the model taken before the first update.

One :meth:`LMPPOTrainer.step` reads top to bottom:

1. encode the prompts (chat template when the tokenizer has one), left padded;
2. generate responses (sampling, KV cache); the response runs up to and including the first
   end token;
3. score prompt + response with the reward (a reward model with ``score(prompts,
   responses)``, or any ``f(prompt, response) -> float``);
4. one no-grad forward with adapters on (old log-probs, values, entropy) and one with
   adapters off (reference log-probs), logits only over response positions;
5. per-token reward ``score at the last token - beta * KL``, GAE, whitened advantages;
6. PPO epochs over shuffled minibatches (gradient accumulation over micro-batches): clipped
   policy loss + ``vf_coef`` * clipped value loss;
7. the KL coefficient follows its controller (fixed, or adaptive to a target KL).

Use::

    model, tok = load_causal_lm("smollm2")                     # rlhf_hgt.lm.models
    trainer = LMPPOTrainer(model, tok, RewardScorer.load("runs/reward"),
                           LMPPOConfig(lora_r=16, steps=200))
    history = trainer.train(prompts)                           # one stats dict per update
    trainer.save("runs/ppo/checkpoints")                       # trainer.restore(...) resumes

The model stays in eval mode throughout (no dropout), so the probability ratio of the first
PPO epoch is exactly 1. Launched with ``accelerate launch`` on several processes, the model
and optimiser go through ``accelerate.Accelerator`` (DDP), statistics are averaged over the
processes, and only the main process writes files.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rlhf_hgt.lm import ppo_core as core
from rlhf_hgt.lm.models import enable_activation_checkpointing
from rlhf_hgt.lm.ppo_checkpoint import (
    CONFIG_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    VALUE_HEAD_FILE,
    restore_trainer,
    save_trainer,
)
from rlhf_hgt.lm.ppo_config import LMPPOConfig
from rlhf_hgt.lm.ppo_model import (
    PolicyValueModel,
    Rollout,
    as_batch_scorer,
    attach_lora,
    base_model,
    eos_ids,
    load_value_head,
    pad_right,
    peak_memory_mb,
    prompt_list,
)
from rlhf_hgt.lm.processes import accelerate_cpu, accelerator_if_launched, launched_by_accelerate

__all__ = ["CONFIG_FILE", "OPTIMIZER_FILE", "STATE_FILE", "VALUE_HEAD_FILE", "LMPPOConfig",
           "LMPPOTrainer", "PolicyValueModel", "Rollout", "accelerate_cpu", "as_batch_scorer",
           "attach_lora", "launched_by_accelerate", "load_value_head", "peak_memory_mb",
           "prompt_list"]



# ----------------------------------------------------------------------------- the trainer


class LMPPOTrainer:
    """PPO with a LoRA policy, a value head and the disabled-adapter reference on one base
    (with ``lora_r=0``: every weight trained, in fp32, against a frozen copy)."""

    def __init__(self, model: Any, tokenizer: Any, reward_fn: Any,
                 config: LMPPOConfig | None = None) -> None:
        self.config = cfg = config or LMPPOConfig()
        self.tokenizer = tokenizer
        self.score_fn = as_batch_scorer(reward_fn)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; give it one distinct from its "
                             "end token (rlhf_hgt.lm.models.ensure_pad_token)")
        self.eos_ids = eos_ids(model, tokenizer)
        self.chat = (cfg.use_chat_template if cfg.use_chat_template is not None
                     else bool(getattr(tokenizer, "chat_template", None)))

        self.accelerator = accelerator_if_launched()
        self.rank = self.accelerator.process_index if self.accelerator else 0
        self.world = self.accelerator.num_processes if self.accelerator else 1
        self.device = self._pick_device(model)
        self.autocast_dtype = self._autocast_dtype()

        torch.manual_seed(cfg.seed)  # same LoRA and head init on every process
        lm = attach_lora(model, cfg)  # full fine-tuning: the model itself, all trainable
        self.reference: PolicyValueModel | None = None
        if cfg.full_finetune:  # the reference is a frozen copy; LoRA disables its adapter
            frozen = copy.deepcopy(lm).requires_grad_(False)
            self.reference = PolicyValueModel(frozen).to(self.device).eval()
            if any(p.dtype != torch.float32 for p in lm.parameters()):
                lm = lm.float()  # AdamW steps of ~1e-6 vanish in bf16 weights
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(base_model(lm))
        self.policy = PolicyValueModel(lm).to(self.device)
        self.policy.eval()  # no dropout: ratios and KL are exact
        groups = [
            {"params": [p for n, p in self.policy.named_parameters()
                        if p.requires_grad and not n.startswith("value_head.")],
             "lr": cfg.learning_rate},
            {"params": list(self.policy.value_head.parameters()), "lr": cfg.value_head_lr},
        ]
        if not groups[0]["params"]:
            raise ValueError("the model has no trainable weights; check "
                             "lora_target_modules (a loaded PeftModel needs "
                             "is_trainable=True)")
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, eps=1e-6)
        self.model = self.policy  # what forward/backward go through (DDP-wrapped if launched)
        if self.accelerator:
            self.model, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        self.kl_ctl = core.KLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.step_count = 0
        self.rng = torch.Generator().manual_seed(cfg.seed + 1 + self.rank)
        torch.manual_seed(cfg.seed + 1 + self.rank)  # sampling differs across processes

    # ------------------------------------------------------------------ set-up helpers

    def _pick_device(self, model: Any) -> torch.device:
        if self.accelerator:
            return self.accelerator.device
        from rlhf_hgt.lm.models import pick_device

        if self.config.device is None:
            current = next(model.parameters()).device
            return current if current.type != "cpu" else pick_device("auto")
        return pick_device(self.config.device)

    def _autocast_dtype(self) -> torch.dtype | None:
        mp = self.config.mixed_precision
        if mp == "bf16":
            return torch.bfloat16
        if mp == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def lm(self) -> Any:
        """The policy LM: a PeftModel (the reference under ``disable_adapter()``), or the
        whole model under full fine-tuning."""
        return self.policy.lm

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ 1-2: encode, generate

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and mask, each prompt cut to its last max_prompt_length
        tokens."""
        rows = []
        for i, p in enumerate(prompts):
            if self.chat:
                text = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                ids = self.tokenizer(p)["input_ids"]
            if not ids:
                raise ValueError(f"prompt {i} is empty after tokenisation: {p!r}")
            rows.append(ids[-self.config.max_prompt_length:])
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    @contextlib.contextmanager
    def _plain_generation_config(self) -> Iterator[None]:
        """Sample exactly from softmax(logits / T): hide the model's generation defaults
        (repetition penalty, top-k/top-p, min-p...) during generate."""
        from transformers import GenerationConfig

        base = base_model(self.lm)
        saved = base.generation_config
        base.generation_config = GenerationConfig(
            eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=getattr(saved, "bos_token_id", None))
        try:
            yield
        finally:
            base.generation_config = saved

    @torch.no_grad()
    def _rollout(self, prompts: list[str], greedy: bool = False,
                 max_new_tokens: int | None = None) -> Rollout:
        query_ids, query_mask = self._encode(prompts)
        chunk = self.config.generation_batch_size or len(prompts)
        pad = self.tokenizer.pad_token_id
        options: dict[str, Any] = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": self.config.temperature, "top_k": 0,
            "top_p": 1.0}
        pieces = []
        for s in range(0, len(prompts), chunk):
            ids, mask = query_ids[s:s + chunk], query_mask[s:s + chunk]
            left = int((mask.sum(0) > 0).long().argmax())
            ids, mask = ids[:, left:], mask[:, left:]
            with self._plain_generation_config(), self._autocast():
                out = self.lm.generate(input_ids=ids, attention_mask=mask, use_cache=True,
                                       max_new_tokens=max_new_tokens or
                                       self.config.response_length, **options)
            pieces.append(out[:, ids.shape[1]:])
        width = max(p.shape[1] for p in pieces)
        response = torch.cat([pad_right(p, width, pad) for p in pieces], 0)
        mask, finished = core.response_mask(response, self.eos_ids)
        n = max(int(mask.sum(1).max()), 1)
        response, mask = response[:, :n].masked_fill(mask[:, :n] == 0, pad), mask[:, :n]
        return Rollout(query_ids, query_mask, response, mask, finished)

    def decode(self, rollout: Rollout) -> list[str]:
        """Response texts (end token and padding left out)."""
        return [self.tokenizer.decode(row[:int(m.sum())].tolist(), skip_special_tokens=True)
                for row, m in zip(rollout.response_ids, rollout.mask, strict=True)]

    def generate(self, prompts: Sequence[str] | str, greedy: bool = False,
                 max_new_tokens: int | None = None) -> list[str]:
        """Responses of the current policy (sampled at the configured temperature, or greedy)."""
        return self.decode(self._rollout(prompt_list(prompts), greedy, max_new_tokens))

    # ------------------------------------------------------------------ 3: score

    def _score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        scores = self.score_fn(prompts, responses)
        scores = torch.as_tensor(scores).detach().float().reshape(-1).cpu()
        if scores.numel() != len(prompts):
            raise ValueError(f"the reward returned {scores.numel()} scores for "
                             f"{len(prompts)} responses; it must return one per response")
        if not torch.isfinite(scores).all():
            raise ValueError("the reward returned a NaN or infinite score")
        return scores.to(self.device)

    # ------------------------------------------------------------------ 4: evaluate

    @torch.no_grad()
    def _evaluate(self, ro: Rollout) -> None:
        """Old log-probs, values and entropy (adapters on), reference log-probs (off)."""
        B, R = ro.mask.shape
        T = self.config.temperature
        zeros = [torch.zeros(B, R, device=self.device) for _ in range(4)]
        ro.logprobs, ro.ref_logprobs, ro.values, ro.entropy = zeros
        step = self.config.local_rollout_forward_batch_size or self.config.mini_batch_size
        for s in range(0, B, step):
            rows = slice(s, s + step)
            ids, attn, pos, resp, _, n = ro.inputs(rows)
            with self._autocast():
                logits, values = self.policy(ids, attn, pos, n)
                lp, ent = core.token_logprobs(logits, resp, T, with_entropy=True)
                del logits
                ref_logits = self._reference_logits(ids, attn, pos, n)
                ref_lp, _ = core.token_logprobs(ref_logits, resp, T)
                del ref_logits
            ro.logprobs[rows, :n], ro.ref_logprobs[rows, :n] = lp, ref_lp
            ro.values[rows, :n], ro.entropy[rows, :n] = values.float(), ent

    def _reference_logits(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor,
                          n: int) -> torch.Tensor:
        if self.reference is not None:
            return self.reference(ids, attn, pos, n, with_values=False)[0]
        with self.lm.disable_adapter():
            return self.policy(ids, attn, pos, n, with_values=False)[0]

    # ------------------------------------------------------------------ 5: advantages

    def _advantages(self, ro: Rollout, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, mask = self.config, ro.mask.float()
        kl1 = core.kl_k1(ro.logprobs, ro.ref_logprobs) * mask
        kl3 = core.kl_k3(ro.logprobs, ro.ref_logprobs) * mask
        penalised = scores.clone()
        if cfg.missing_eos_penalty is not None:
            penalised -= cfg.missing_eos_penalty * (~ro.finished).float()
        rewards = core.token_rewards(penalised, kl1, mask, self.kl_ctl.value)
        if cfg.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = core.gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = core.masked_whiten(advantages, mask)
        ro.advantages, ro.returns = advantages, returns
        return {"kl_k1": kl1.sum(1), "kl_k3": kl3.sum(1), "reward": rewards.sum(1)}

    # ------------------------------------------------------------------ 6: optimise

    def _set_checkpointing(self, active: bool) -> None:
        """Gradient checkpointing runs only in training mode; switch the flag on the
        checkpointed layers alone, so dropout elsewhere stays off."""
        if not self.config.activation_checkpointing:
            return
        for m in self.lm.modules():
            if getattr(m, "gradient_checkpointing", False) is True:
                m.training = active

    def _optimise(self, ro: Rollout) -> dict[str, float]:
        cfg = self.config
        B = ro.mask.shape[0]
        sums: dict[str, torch.Tensor] = {}  # summed on the device: one sync at the end
        updates = 0
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._set_checkpointing(True)
        try:
            for _ in range(cfg.num_ppo_epochs):
                order = torch.randperm(B, generator=self.rng).to(self.device)
                for start in range(0, B, cfg.mini_batch_size):
                    idx = order[start:start + cfg.mini_batch_size]
                    n_tokens = ro.mask[idx].sum().clamp(min=1).float()
                    self.optimizer.zero_grad(set_to_none=True)
                    for k in range(0, len(idx), cfg.micro_batch_size):
                        last = k + cfg.micro_batch_size >= len(idx)
                        stats = self._micro_step(ro, idx[k:k + cfg.micro_batch_size],
                                                 n_tokens, sync=last)
                        for key, v in stats.items():
                            sums[key] = sums[key] + v if key in sums else v
                    if cfg.max_grad_norm is not None:
                        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                        sums["grad_norm"] = sums["grad_norm"] + norm if "grad_norm" in sums \
                            else norm
                    self.optimizer.step()
                    updates += 1
        finally:
            self._set_checkpointing(False)
            self.optimizer.zero_grad(set_to_none=True)
        keys = sorted(sums)
        values = torch.stack([sums[k].detach().float().to(self.device) for k in keys]) / updates
        return dict(zip(keys, values.tolist(), strict=True))

    def _micro_step(self, ro: Rollout, rows: torch.Tensor, n_tokens: torch.Tensor,
                    sync: bool) -> dict[str, torch.Tensor]:
        cfg = self.config
        ids, attn, pos, resp, mask, n = ro.inputs(rows)
        mask = mask.float()
        sync_ctx = (contextlib.nullcontext() if sync or self.accelerator is None
                    else self.accelerator.no_sync(self.model))
        with sync_ctx:
            with self._autocast():
                logits, values = self.model(ids, attn, pos, n)
                logprobs, _ = core.token_logprobs(logits, resp, cfg.temperature)
            pl = core.policy_loss(logprobs, ro.logprobs[rows, :n], ro.advantages[rows, :n],
                                  mask, cfg.cliprange, n_tokens)
            vl = core.value_loss(values, ro.values[rows, :n], ro.returns[rows, :n], mask,
                                 cfg.cliprange_value, n_tokens)
            loss = pl.loss + cfg.vf_coef * vl.loss
            if self.accelerator:
                self.accelerator.backward(loss)
            else:
                loss.backward()
        return {"policy_loss": pl.loss.detach(), "value_loss": vl.loss.detach(),
                "policy_clipfrac": pl.clipfrac, "value_clipfrac": vl.clipfrac,
                "approx_kl": pl.approx_kl}

    # ------------------------------------------------------------------ one update

    def step(self, prompts: Sequence[str]) -> dict[str, float]:
        """One PPO update on ``prompts`` (this process's share); returns its statistics,
        averaged over processes."""
        prompts = prompt_list(prompts)
        t0 = time.perf_counter()
        ro = self._rollout(prompts)                                   # 1-2 generate
        t_gen = time.perf_counter()
        scores = self._score(prompts, self.decode(ro))                # 3 score
        t_score = time.perf_counter()
        self._evaluate(ro)                                            # 4 old/ref log-probs
        kl_coef = self.kl_ctl.value
        seq = self._advantages(ro, scores)                            # 5 rewards, GAE
        t_eval = time.perf_counter()
        train = self._optimise(ro)                                    # 6 PPO epochs
        t_end = time.perf_counter()
        elapsed = t_end - t0
        tokens = float(ro.mask.sum())
        local = {
            "score": float(scores.mean()), "reward": float(seq["reward"].mean()),
            "kl_k1": float(seq["kl_k1"].mean()), "kl_k3": float(seq["kl_k3"].mean()),
            "entropy": float(core.masked_mean(ro.entropy, ro.mask.float())),
            "value_mean": float(core.masked_mean(ro.values, ro.mask.float())),
            "return_mean": float(core.masked_mean(ro.returns, ro.mask.float())),
            "response_length": tokens / len(prompts),
            "non_eos_fraction": float((~ro.finished).float().mean()),
            **train,
        }
        stats = self._mean_over_processes(local)
        self.kl_ctl.update(stats["kl_k1"], len(prompts) * self.world)  # 7 KL controller
        self.step_count += 1
        stats.update({
            "step": float(self.step_count), "kl_coef": kl_coef,
            "tokens_per_s": tokens * self.world / elapsed,
            "generate_tokens_per_s": tokens * self.world / max(t_gen - t0, 1e-9),
            "step_time_s": elapsed, "time_generate_s": t_gen - t0,
            "time_score_s": t_score - t_gen, "time_evaluate_s": t_eval - t_score,
            "time_optimise_s": t_end - t_eval,
        })
        mem = peak_memory_mb(self.device)
        if mem is not None:
            stats["peak_memory_mb"] = mem
        return stats

    def _mean_over_processes(self, stats: dict[str, float]) -> dict[str, float]:
        if self.accelerator is None or self.world == 1:
            return stats
        keys = sorted(stats)
        t = torch.tensor([stats[k] for k in keys], device=self.device, dtype=torch.float64)
        t = self.accelerator.reduce(t, reduction="mean")
        return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}

    # ------------------------------------------------------------------ the loop

    def train(self, prompts: Any, steps: int | None = None,
              callback: Callable[[dict[str, float]], Any] | None = None,
              gate: Callable[[], bool] | None = None) -> list[dict[str, float]]:
        """Run ``steps`` updates (default ``config.steps``) over the prompts, reshuffled each
        pass; ``callback(stats)`` after each update may return False to stop early. ``gate()``
        is asked before each update (a person's pause holds there, False stops; see
        :mod:`rlhf_hgt.governance.oversight`); under several processes the main process
        asks it and all follow. Under several processes each takes its own share of every
        global batch."""
        from rlhf_hgt.lm.trl_common import agreed

        prompts = prompt_list(prompts)
        stream = self._batches(prompts, self.config.batch_size * self.world)
        history = []
        for _ in range(steps if steps is not None else self.config.steps):
            if gate is not None and not agreed(gate):
                break
            batch = next(stream)[self.rank::self.world]
            stats = self.step(batch)
            history.append(stats)
            if callback is not None and callback(stats) is False:
                break
        return history

    def _batches(self, prompts: list[str], size: int) -> Iterator[list[str]]:
        gen = torch.Generator().manual_seed(self.config.seed)  # same order on every process
        pending: list[str] = []
        while True:
            while len(pending) < size:
                pending += [prompts[i] for i in torch.randperm(len(prompts), generator=gen)]
            batch, pending = pending[:size], pending[size:]
            yield batch

    # ------------------------------------------------------------------ saving

    def save(self, out_dir: str | os.PathLike, optimizer: bool = True) -> Path:
        """Write what resuming needs into ``out_dir``: the adapter (``adapter_model.safetensors``
        + ``adapter_config.json``; under full fine-tuning the whole model,
        ``model.safetensors``), the value head (``value_head.safetensors``), the optimiser
        state (``optimizer.safetensors``; ``optimizer=False`` leaves it out), the config and
        the trainer state (PPO updates, KL coefficient) as JSON. Only the main process
        writes; every process waits for it. See :mod:`rlhf_hgt.lm.ppo_checkpoint`."""
        return save_trainer(self, out_dir, optimizer=optimizer)

    def restore(self, folder: str | os.PathLike) -> None:
        """Continue from a folder written by :meth:`save`: policy weights, value head,
        optimiser state (when saved), PPO update count and KL coefficient. Build this
        trainer like the one that saved (same base model and LoRA settings); the random
        state is not restored, so seed before continuing."""
        restore_trainer(self, folder)
