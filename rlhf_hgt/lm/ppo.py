"""Our PPO for causal language models with LoRA: one base model in memory for policy, value
and reference.

- policy: a LoRA adapter on the base (attached here when the model is not a PeftModel yet);
- value: a linear fp32 head on the last hidden state of the SAME forward pass (adapters on),
  so one forward gives both logits and values;
- reference: the same base with the adapter disabled (``peft``'s ``disable_adapter``); the
  LoRA B matrices start at zero, so at step 0 policy and reference agree exactly.

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
    trainer.save("runs/ppo/checkpoints")

The model stays in eval mode throughout (no dropout), so the probability ratio of the first
PPO epoch is exactly 1. Launched with ``accelerate launch`` on several processes, the model
and optimiser go through ``accelerate.Accelerator`` (DDP), statistics are averaged over the
processes, and only the main process writes files.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhf_hgt.lm import ppo_core as core
from rlhf_hgt.lm.ppo_model import (
    PolicyValueModel,
    Rollout,
    accelerate_cpu,
    accelerator_if_launched,
    as_batch_scorer,
    attach_lora,
    eos_ids,
    launched_by_accelerate,
    load_value_head,
    pad_right,
    peak_memory_mb,
    prompt_list,
)

__all__ = ["LMPPOConfig", "LMPPOTrainer", "PolicyValueModel", "Rollout", "accelerate_cpu",
           "as_batch_scorer", "attach_lora", "launched_by_accelerate", "load_value_head",
           "peak_memory_mb", "prompt_list"]

VALUE_HEAD_FILE = "value_head.safetensors"
CONFIG_FILE = "ppo_config.json"
STATE_FILE = "trainer_state.json"


# ----------------------------------------------------------------------------- configuration


@dataclass
class LMPPOConfig:
    """PPO with LoRA for a causal language model. Sizes are per process."""

    # LoRA
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: float | None = field(default=None, metadata={
        "help": "LoRA alpha (scale alpha/r); default 2 * lora_r"})
    lora_target_modules: str | list[str] = field(default="all-linear", metadata={
        "help": "modules that get adapters: 'all-linear' (every linear layer of attention "
                "and MLP, not the output layer) or a list of module names"})
    # batches
    steps: int = field(default=200, metadata={"help": "PPO updates that train() runs"})
    batch_size: int = field(default=16, metadata={
        "help": "prompts (rollouts) per update, per process"})
    mini_batch_size: int = field(default=8, metadata={
        "help": "rollouts per optimiser step; must divide batch_size"})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "micro-batches a minibatch is split into (forward size mini/accum); must "
                "divide mini_batch_size"})
    ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    generation_batch_size: int | None = field(default=None, metadata={
        "help": "prompts generated at once (default: the whole batch)"})
    forward_batch_size: int | None = field(default=None, metadata={
        "help": "rollouts per no-grad forward for old/reference log-probs and values "
                "(default: mini_batch_size)"})
    # optimiser
    lr: float = field(default=3e-5, metadata={
        "help": "learning rate of the LoRA weights. 3e-5 (with alpha = 2r): measured on "
                "SmolLM2-135M, 4 PPO epochs, 1e-4 clipped 20-30% of tokens with approx KL "
                "0.04-0.15 per update (steps too large), 3e-5 clipped 4-12% with approx KL "
                "under 0.01, 1e-5 barely moved the policy"})
    value_head_lr: float | None = field(default=None, metadata={
        "help": "learning rate of the value head (a fresh layer, zero-initialised); default "
                "10 * lr"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float | None = field(default=1.0, metadata={
        "help": "clip the gradient norm to this (None: no clipping)"})
    # PPO
    init_kl_coef: float = field(default=0.05, metadata={
        "help": "KL penalty coefficient beta at the start (fixed when target_kl is None)"})
    target_kl: float | None = field(default=None, metadata={
        "help": "KL per sequence (nats) that an adaptive beta aims at (Ziegler et al. 2019, "
                "e.g. 6); None keeps beta fixed"})
    kl_horizon: int = field(default=10_000, metadata={
        "help": "sequences over which the adaptive beta may change by 20%"})
    cliprange: float = field(default=0.2, metadata={"help": "policy ratio clip epsilon"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value clip around old value"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    gamma: float = field(default=1.0, metadata={"help": "discount over response tokens"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    whiten_rewards: bool = field(default=False, metadata={
        "help": "scale per-token rewards to unit variance (masked) before GAE"})
    whiten_advantages: bool = field(default=True, metadata={
        "help": "normalise advantages to zero mean, unit variance over response tokens"})
    # generation
    max_new_tokens: int = field(default=48, metadata={"help": "response token limit"})
    temperature: float = field(default=0.7, metadata={
        "help": "sampling temperature; policy and reference log-probs use the same "
                "temperature, so PPO optimises the distribution it samples from"})
    max_prompt_length: int = field(default=256, metadata={
        "help": "prompt tokens kept (the end of longer prompts)"})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "subtracted from the score of a response cut at max_new_tokens (no end "
                "token); None: no penalty"})
    use_chat_template: bool | None = field(default=None, metadata={
        "help": "wrap prompts as a user turn with the tokenizer's chat template; default: "
                "when the tokenizer has one"})
    # runtime
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str | None = field(default=None, metadata={
        "help": "auto, cpu, cuda[:N], mps; default: the model's device if not CPU, else auto"})
    mixed_precision: str = field(default="auto", metadata={
        "help": "auto (bf16 autocast on a CUDA GPU with bf16), bf16 or no"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute layer activations in the backward pass (less memory, slower)"})

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.lora_r >= 1, f"lora_r must be >= 1 (e.g. 16), got {self.lora_r}")
        if self.lora_alpha is None:
            self.lora_alpha = 2.0 * self.lora_r
        need(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(1 <= self.mini_batch_size <= self.batch_size
             and self.batch_size % self.mini_batch_size == 0,
             f"mini_batch_size ({self.mini_batch_size}) must divide batch_size "
             f"({self.batch_size}); e.g. use {_divisor(self.batch_size, self.mini_batch_size)}")
        need(self.gradient_accumulation_steps >= 1
             and self.mini_batch_size % self.gradient_accumulation_steps == 0,
             f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) must divide "
             f"mini_batch_size ({self.mini_batch_size})")
        need(self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}")
        need(self.generation_batch_size is None or self.generation_batch_size >= 1,
             "generation_batch_size must be >= 1 or None")
        need(self.forward_batch_size is None or self.forward_batch_size >= 1,
             "forward_batch_size must be >= 1 or None")
        need(self.lr > 0, f"lr must be > 0 (e.g. 3e-5), got {self.lr}")
        if self.value_head_lr is None:
            self.value_head_lr = 10.0 * self.lr
        need(self.value_head_lr > 0, f"value_head_lr must be > 0, got {self.value_head_lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.max_grad_norm is None or self.max_grad_norm > 0,
             "max_grad_norm must be > 0 or None")
        need(self.init_kl_coef >= 0, f"init_kl_coef must be >= 0, got {self.init_kl_coef}")
        need(self.target_kl is None or self.target_kl > 0,
             f"target_kl must be > 0, or None for a fixed KL coefficient; got {self.target_kl}")
        need(self.kl_horizon >= 1, f"kl_horizon must be >= 1, got {self.kl_horizon}")
        need(0 < self.cliprange < 1, f"cliprange must lie in (0, 1), e.g. 0.2; "
             f"got {self.cliprange}")
        need(self.cliprange_value > 0, f"cliprange_value must be > 0, got "
             f"{self.cliprange_value}")
        need(self.vf_coef >= 0, f"vf_coef must be >= 0, got {self.vf_coef}")
        need(0 <= self.gamma <= 1, f"gamma must lie in [0, 1], got {self.gamma}")
        need(0 <= self.lam <= 1, f"lam must lie in [0, 1], got {self.lam}")
        need(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got "
             f"{self.max_new_tokens}")
        need(self.temperature > 0, f"temperature must be > 0 (1 samples the model as it is), "
             f"got {self.temperature}")
        need(self.max_prompt_length >= 1, f"max_prompt_length must be >= 1, got "
             f"{self.max_prompt_length}")
        need(self.mixed_precision in ("auto", "bf16", "no"),
             f"mixed_precision must be auto, bf16 or no; got {self.mixed_precision!r}")

    @property
    def micro_batch_size(self) -> int:
        return self.mini_batch_size // self.gradient_accumulation_steps


def _divisor(n: int, near: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - near), d))


# ----------------------------------------------------------------------------- the trainer


class LMPPOTrainer:
    """PPO with a LoRA policy, a value head and the disabled-adapter reference on one base."""

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
        lm = attach_lora(model, cfg)
        if cfg.gradient_checkpointing:
            lm.get_base_model().gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self.policy = PolicyValueModel(lm).to(self.device)
        self.policy.eval()  # no dropout: ratios and KL are exact
        groups = [
            {"params": [p for n, p in self.policy.named_parameters()
                        if p.requires_grad and not n.startswith("value_head.")],
             "lr": cfg.lr},
            {"params": list(self.policy.value_head.parameters()), "lr": cfg.value_head_lr},
        ]
        if not groups[0]["params"]:
            raise ValueError("the model has no trainable adapter weights; check "
                             "lora_target_modules (a loaded PeftModel needs "
                             "is_trainable=True)")
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, eps=1e-6)
        self.model = self.policy  # what forward/backward go through (DDP-wrapped if launched)
        if self.accelerator:
            self.model, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        self.kl_ctl = core.KLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
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
        """The PeftModel (policy; reference under ``disable_adapter()``)."""
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

        base = self.lm.get_base_model()
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
                                       self.config.max_new_tokens, **options)
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
        step = self.config.forward_batch_size or self.config.mini_batch_size
        for s in range(0, B, step):
            rows = slice(s, s + step)
            ids, attn, pos, resp, _, n = ro.inputs(rows)
            with self._autocast():
                logits, values = self.policy(ids, attn, pos, n)
                lp, ent = core.token_logprobs(logits, resp, T, with_entropy=True)
                del logits
                with self.lm.disable_adapter():
                    ref_logits, _ = self.policy(ids, attn, pos, n, with_values=False)
                ref_lp, _ = core.token_logprobs(ref_logits, resp, T)
                del ref_logits
            ro.logprobs[rows, :n], ro.ref_logprobs[rows, :n] = lp, ref_lp
            ro.values[rows, :n], ro.entropy[rows, :n] = values.float(), ent

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
        if not self.config.gradient_checkpointing:
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
            for _ in range(cfg.ppo_epochs):
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
              callback: Callable[[dict[str, float]], Any] | None = None
              ) -> list[dict[str, float]]:
        """Run ``steps`` updates (default ``config.steps``) over the prompts, reshuffled each
        pass; ``callback(stats)`` after each update may return False to stop early. Under
        several processes each takes its own share of every global batch."""
        prompts = prompt_list(prompts)
        stream = self._batches(prompts, self.config.batch_size * self.world)
        history = []
        for _ in range(steps if steps is not None else self.config.steps):
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

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the adapter (``adapter_model.safetensors`` + ``adapter_config.json``), the
        value head (``value_head.safetensors``), the config and the trainer state (JSON).
        Only the main process writes; every process waits for it."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        if self.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            self.lm.save_pretrained(str(out), safe_serialization=True,
                                    save_embedding_layers=False)
            head = {k: v.detach().cpu().contiguous()
                    for k, v in self.policy.value_head.state_dict().items()}
            save_file(head, str(out / VALUE_HEAD_FILE))
            (out / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
            (out / STATE_FILE).write_text(json.dumps(
                {"step": self.step_count, "kl_coef": self.kl_ctl.value}, indent=2))
        if self.accelerator:
            self.accelerator.wait_for_everyone()
        return out
