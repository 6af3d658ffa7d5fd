"""Settings of our LM PPO trainer (:mod:`rlhf_hgt.lm.ppo`), with the reason for each default."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_hgt.configs import renamed


@renamed(lr="learning_rate", ppo_epochs="num_ppo_epochs", init_kl_coef="kl_coef",
         max_new_tokens="response_length", forward_batch_size="local_rollout_forward_batch_size",
         gradient_checkpointing="activation_checkpointing")
@dataclass
class LMPPOConfig:
    """PPO for a causal language model, LoRA by default (``lora_r=0``: full fine-tuning with a
    frozen reference copy). Sizes are per process. Names follow TRL's PPOConfig (TRL 1.12,
    the last with PPO) where it has the same knob; the old names still work for one release."""

    # LoRA
    lora_r: int = field(default=16, metadata={
        "help": "LoRA rank; 0 trains every weight of the model (full fine-tuning: a frozen "
                "copy is kept as the reference, so about twice the weights plus the full "
                "optimiser state are in memory; use a much smaller learning_rate, e.g. 1e-6)"})
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
    num_ppo_epochs: int = field(default=4, metadata={
        "help": "passes over each rollout batch"})
    generation_batch_size: int | None = field(default=None, metadata={
        "help": "prompts generated at once (default: the whole batch)"})
    local_rollout_forward_batch_size: int | None = field(default=None, metadata={
        "help": "rollouts per no-grad forward for old/reference log-probs and values "
                "(default: mini_batch_size)"})
    # optimiser
    learning_rate: float | None = field(default=None, metadata={
        "help": "learning rate of the LoRA weights (of every weight when lora_r is 0). "
                "Default 3e-5 with LoRA (alpha = 2r), measured on SmolLM2-135M, 4 PPO epochs: "
                "1e-4 clipped 20-30% of tokens with approx KL 0.04-0.15 per update (steps too "
                "large), 3e-5 clipped 4-12% with approx KL under 0.01, 1e-5 barely moved the "
                "policy; 1e-6 under full fine-tuning (the usual order for full-model PPO)"})
    value_head_lr: float | None = field(default=None, metadata={
        "help": "learning rate of the value head (a fresh layer, zero-initialised); default "
                "3e-4 (10 times the LoRA default)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float | None = field(default=1.0, metadata={
        "help": "clip the gradient norm to this (None: no clipping)"})
    # PPO
    kl_coef: float = field(default=0.05, metadata={
        "help": "KL penalty coefficient beta (its value at the start when target_kl adapts "
                "it; fixed when target_kl is None)"})
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
    response_length: int = field(default=48, metadata={
        "help": "most tokens generated per response (a response ends earlier at its end "
                "token)"})
    temperature: float = field(default=0.7, metadata={
        "help": "sampling temperature; policy and reference log-probs use the same "
                "temperature, so PPO optimises the distribution it samples from"})
    max_prompt_length: int = field(default=256, metadata={
        "help": "prompt tokens kept (the end of longer prompts)"})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "subtracted from the score of a response cut at response_length (no end "
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
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "recompute layer activations in the backward pass (less memory, slower)"})

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.lora_r >= 0, f"lora_r must be >= 1 (e.g. 16), or 0 for full fine-tuning; "
             f"got {self.lora_r}")
        if self.lora_alpha is None:
            self.lora_alpha = 2.0 * max(self.lora_r, 1)
        need(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        if isinstance(self.lora_target_modules, str):  # one name is a name, not a regex
            from rlhf_hgt.lm.trl_common import lora_targets

            targets = lora_targets(self.lora_target_modules)
            self.lora_target_modules = targets if isinstance(targets, str) else list(targets)
        need(bool(self.lora_target_modules), "lora_target_modules must name layers, e.g. "
             "'all-linear' or q_proj,v_proj")
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
        need(self.num_ppo_epochs >= 1, f"num_ppo_epochs must be >= 1, got "
             f"{self.num_ppo_epochs}")
        need(self.generation_batch_size is None or self.generation_batch_size >= 1,
             "generation_batch_size must be >= 1 or None")
        need(self.local_rollout_forward_batch_size is None
             or self.local_rollout_forward_batch_size >= 1,
             "local_rollout_forward_batch_size must be >= 1 or None")
        if self.learning_rate is None:
            self.learning_rate = 1e-6 if self.full_finetune else 3e-5
        need(self.learning_rate > 0, f"learning_rate must be > 0 (e.g. 3e-5 with LoRA), got "
             f"{self.learning_rate}")
        if self.value_head_lr is None:
            self.value_head_lr = 3e-4
        need(self.value_head_lr > 0, f"value_head_lr must be > 0, got {self.value_head_lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.max_grad_norm is None or self.max_grad_norm > 0,
             "max_grad_norm must be > 0 or None")
        need(self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}")
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
        need(self.response_length >= 1, f"response_length must be >= 1, got "
             f"{self.response_length}")
        need(self.temperature > 0, f"temperature must be > 0 (1 samples the model as it is), "
             f"got {self.temperature}")
        need(self.max_prompt_length >= 1, f"max_prompt_length must be >= 1, got "
             f"{self.max_prompt_length}")
        need(self.mixed_precision in ("auto", "bf16", "no"),
             f"mixed_precision must be auto, bf16 or no; got {self.mixed_precision!r}")

    @property
    def full_finetune(self) -> bool:
        return self.lora_r == 0

    @property
    def micro_batch_size(self) -> int:
        return self.mini_batch_size // self.gradient_accumulation_steps


def _divisor(n: int, near: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - near), d))

