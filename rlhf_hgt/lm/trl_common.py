"""What the TRL trainers of the language stack share: precision, devices, arguments, checks.

- Precision: fp32 and no gradient checkpointing on a CPU (TRL 1.16 turns bf16 and
  checkpointing on by default, which a CPU without bf16 cannot run well); bf16 mixed
  precision on a GPU that supports it, fp32 on one that does not.
- Arguments: no reporting to outside services, no worker processes for data loading
  (small CPU jobs on shared cores), no checkpoints written during training (the trainers
  save the adapter once, as safetensors), seeds for the model and the data order.
- Processes: works as one process or under ``accelerate launch --num_processes N`` (also
  ``--cpu``, gloo): the Trainer handles DDP; :func:`gather_map` shards an evaluation over
  the processes and gathers the results on every process; only the main process writes
  (:mod:`rlhf_hgt.lm.processes` tells which one that is).
- Models: a name or path goes to :mod:`rlhf_hgt.lm.models` (``"tiny"``: the tiny in-memory
  test model), or a (model, tokenizer) pair built in memory is used as it is.
- Settings: names follow TRL's where TRL has the same knob; the old names still work for
  one release (:func:`rlhf_hgt.configs.renamed`).
- Data: :func:`check_pairs` checks preference pairs where they enter.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf_hgt.configs import renamed
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.files import write_json_atomic
from rlhf_hgt.lm.processes import gather_map, is_main_process, wait_for_everyone, world_size
from rlhf_hgt.lm.tiny import TINY, TINY_SEED

__all__ = ["ALL_LINEAR", "TINY", "TINY_SEED", "PairTrainingConfig", "check_pairs",
           "gather_map", "is_main_process", "load_lm", "wait_for_everyone",
           "world_size", "write_json"]

#: PEFT's shorthand for every linear layer of attention and MLP blocks (not the output head).
ALL_LINEAR = "all-linear"

#: transformers' SchedulerType values (5.x); a name not listed is looked up in the installed
#: transformers before it is refused, so a newer scheduler works too.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                 "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
                 "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")


def lora_targets(value: Any) -> str | tuple[str, ...]:
    """``lora_target_modules`` as PEFT should get it: "all-linear" as it is, module names as a
    tuple ("q_proj" or "q_proj,v_proj" from a script become names, not a regular expression,
    which is what PEFT makes of a lone string)."""
    if isinstance(value, str):
        if value.strip() == ALL_LINEAR:
            return ALL_LINEAR
        return tuple(t.strip() for t in value.split(",") if t.strip())
    return tuple(value)


def scheduler_names() -> tuple[str, ...]:
    """The learning-rate schedulers of the installed transformers."""
    try:
        from transformers.trainer_utils import SchedulerType
    except ImportError:  # pragma: no cover - transformers is a dependency of the LM stack
        return LR_SCHEDULERS
    return tuple(s.value for s in SchedulerType)


# --------------------------------------------------------------------------- settings


@renamed(target_modules="lora_target_modules", lr_scheduler="lr_scheduler_type",
         batch_size="per_device_train_batch_size", grad_accum="gradient_accumulation_steps",
         eval_batch_size="per_device_eval_batch_size",
         gradient_checkpointing="activation_checkpointing")
@dataclass
class PairTrainingConfig:
    """What the reward-model and DPO settings share (LoRA, optimiser, batches, formatting,
    evaluation, logging); each subclass adds its own loss settings and defaults, and calls
    :meth:`check_shared` from its ``__post_init__``. Names follow TRL's (TrainingArguments,
    ModelConfig); the old names still work for one release."""

    lora_r: int = field(default=16, metadata={
        "help": "LoRA rank; 0 = full fine-tuning of every weight (needs a lower "
                "learning_rate)"})
    lora_alpha: float | None = field(default=None, metadata={
        "help": "LoRA scaling numerator (adapter output × alpha / r); default 2 × lora_r"})
    lora_target_modules: str | tuple[str, ...] = field(default=ALL_LINEAR, metadata={
        "help": "layers that get adapters: 'all-linear' (every linear layer of attention and "
                "MLP, never the output head) or names such as q_proj,v_proj"})
    learning_rate: float | None = field(default=None, metadata={
        "help": "peak AdamW learning rate; default set by the trainer (LoRA or full)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={
        "help": "share of the optimiser steps spent warming the learning rate up"})
    lr_scheduler_type: str = field(default="linear", metadata={
        "help": "transformers scheduler name: linear, cosine, constant_with_warmup, ..."})
    max_steps: int = field(default=-1, metadata={
        "help": "stop after this many optimiser steps (smoke tests); -1 = no limit"})
    per_device_train_batch_size: int = field(default=8, metadata={
        "help": "pairs per process and step"})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "micro-batches per optimiser step (effective batch = "
                "per_device_train_batch_size × gradient_accumulation_steps × processes)"})
    max_length: int = field(default=512, metadata={
        "help": "most tokens of prompt + response"})
    chat_template: bool = field(default=False, metadata={
        "help": "format with the tokenizer's chat template (user = prompt, assistant = "
                "response) instead of prompt + response + end token"})
    eval_fraction: float = field(default=0.1, metadata={
        "help": "share of the pairs held out when no evaluation set is given"})
    per_device_eval_batch_size: int = field(default=8, metadata={
        "help": "pairs per process and evaluation batch"})
    seed: int = field(default=0, metadata={"help": "seed of adapters, data order and split"})
    logging_steps: int = field(default=10, metadata={"help": "optimiser steps between logs"})
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass, trading compute for memory, on "
                "a GPU (always off on a CPU)"})
    progress: bool = field(default=True, metadata={"help": "show the progress bar"})

    def check_shared(self, lr_lora: float, lr_full: float) -> None:
        """Check the shared fields, fill the defaults that depend on others."""
        self.lora_target_modules = lora_targets(self.lora_target_modules)
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (16 is usual; 0 = full fine-tuning), "
                             f"got {self.lora_r}")
        if self.lora_alpha is None:
            self.lora_alpha = float(2 * max(self.lora_r, 1))
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0 (2 × lora_r is usual), got {self.lora_alpha}")
        if not self.lora_target_modules:
            raise ValueError("lora_target_modules must name layers, e.g. 'all-linear' or "
                             "('q_proj', 'v_proj')")
        if self.learning_rate is None:
            self.learning_rate = lr_lora if self.lora_r > 0 else lr_full
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must lie in (0, 1) ({_sci(lr_lora)} with LoRA, "
                             f"{_sci(lr_full)} full), got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if (self.lr_scheduler_type not in LR_SCHEDULERS
                and self.lr_scheduler_type not in scheduler_names()):
            raise ValueError(f"lr_scheduler_type must be a transformers scheduler "
                             f"({', '.join(scheduler_names())}); got {self.lr_scheduler_type!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be >= 1, or -1 for no limit, got {self.max_steps}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps",
                     "per_device_eval_batch_size", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens (512 is usual), "
                             f"got {self.max_length}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must lie in [0, 1) (0.1 is usual), "
                             f"got {self.eval_fraction}")

    def training_kwargs(self, out_dir: str | Path, num_train_epochs: float) -> dict[str, Any]:
        """Keyword arguments for TRL's RewardConfig and DPOConfig (both TrainingArguments):
        these settings, no reporting, no checkpoints during training, no data workers, and
        the precision of this machine (:func:`precision_kwargs`)."""
        return {
            "output_dir": str(out_dir),
            "seed": self.seed,
            "data_seed": self.seed,
            "learning_rate": self.learning_rate,
            "num_train_epochs": float(num_train_epochs),
            "max_steps": self.max_steps if self.max_steps > 0 else -1,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "per_device_eval_batch_size": self.per_device_eval_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_ratio,  # a float < 1 is a share of the steps
            "lr_scheduler_type": self.lr_scheduler_type,
            "max_grad_norm": 1.0,
            "logging_steps": self.logging_steps,
            "logging_strategy": "steps",
            "report_to": [],
            "save_strategy": "no",
            "eval_strategy": "no",
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": cuda_available(),
            "ddp_find_unused_parameters": False,
            "disable_tqdm": not self.progress,
            "log_level": "warning",
            **precision_kwargs(self.activation_checkpointing),
        }


def _sci(x: float) -> str:
    """2e-4 rather than 0.0002."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


# --------------------------------------------------------------------------- devices


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def precision_kwargs(activation_checkpointing: bool = False) -> dict[str, Any]:
    """TrainingArguments fields for this machine: CPU → fp32, no checkpointing, ``use_cpu``;
    CUDA → bf16 mixed precision when supported (else fp32), checkpointing as asked."""
    gpu = cuda_available()
    return {
        "use_cpu": not gpu,
        "bf16": bf16_supported(),  # explicit: TRL's default (None → True) breaks CPUs without bf16
        "fp16": False,
        # always given: TRL 1.16 turns checkpointing on by default
        checkpointing_argument(): bool(activation_checkpointing and gpu),
    }


def checkpointing_argument() -> str:
    """TrainingArguments' name for activation (gradient) checkpointing: the current
    ``activation_checkpointing`` where transformers has it, else ``gradient_checkpointing``."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else \
        "gradient_checkpointing"


# --------------------------------------------------------------------------- processes
# (one reading of the launchers' environment: rlhf_hgt.lm.processes)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (objects JSON does not know as their text), from the main
    process only."""
    if not is_main_process():
        return
    write_json_atomic(path, obj)


def save_trained(model: Any, tok: Any, out: Path, cfg: PairTrainingConfig,
                 base_name: str | None, fmt: str, meta_file: str,
                 lora: bool | None = None) -> None:
    """Write a trained model (adapter or full weights, safetensors), its tokenizer and a
    JSON file naming the format, base model and settings; on the main process only.
    ``lora``: whether ``model`` is saved as an adapter (default: ``cfg.lora_r > 0``)."""
    if not is_main_process():
        return
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    meta = {"format": fmt, "base_model": base_name,
            "lora": cfg.lora_r > 0 if lora is None else lora,
            "tiny_seed": TINY_SEED if base_name == TINY else None,
            "chat_template": cfg.chat_template, "max_length": cfg.max_length,
            "config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in asdict(cfg).items()}}
    write_json(out / meta_file, meta)


def clean_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Numbers as plain floats/ints, NaN as None, so metrics.json stays valid JSON."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            v = None
        out[k] = v
    return out


# --------------------------------------------------------------------------- models


def load_lm(kind: str, source: Any, device: str | None = None,
            dtype: Any = None) -> tuple[Any, Any, str | None]:
    """(model, tokenizer, base name) for ``kind`` ``"causal"`` or ``"reward"``.

    ``source`` is a name or path loaded by :mod:`rlhf_hgt.lm.models` (``"tiny"``, a hub id,
    a local folder), or a ``(model, tokenizer)`` pair built in memory (base name None)."""
    if kind not in ("causal", "reward"):
        raise ValueError(f"kind must be 'causal' or 'reward', got {kind!r}")
    if isinstance(source, tuple | list):
        if len(source) != 2:
            raise ValueError("pass a model as a name, a path, or a (model, tokenizer) pair")
        model, tok = source
        return model, tok, None
    if not isinstance(source, str | os.PathLike):
        raise ValueError(f"pass a model as a name, a path, or a (model, tokenizer) pair; "
                         f"got {type(source).__name__}")
    name = os.fspath(source)
    from rlhf_hgt.lm import models

    loader = models.load_causal_lm if kind == "causal" else models.load_reward_lm
    model, tok = loader(name, device=device, dtype=dtype)
    return model, tok, name


def lora_config(task_type: str, r: int, alpha: float, dropout: float,
                target_modules: str | Sequence[str], modules_to_save: list[str] | None = None):
    """A PEFT LoraConfig; ``target_modules`` ``"all-linear"`` = every linear layer of the
    attention and MLP blocks (PEFT leaves out the output head)."""
    from peft import LoraConfig

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    return LoraConfig(task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=targets, modules_to_save=modules_to_save, bias="none")


def check_lora_targets(model: Any, targets: str | Sequence[str]) -> None:
    """Refuse module names of ``lora_target_modules`` that no layer of ``model`` has (PEFT
    matches a name to the end of a module's dotted name) before PEFT raises deep inside."""
    if isinstance(targets, str):
        return
    import torch

    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise UserInputError(
            f"lora_target_modules: no layer of the model is named {', '.join(missing)}; give "
            f"names of its linear layers ({', '.join(linear) or 'none found'}), comma-separated, "
            f"or {ALL_LINEAR}")


@contextlib.contextmanager
def lora_target_errors() -> Iterator[None]:
    """PEFT's ValueError about target modules (a layer type it cannot adapt, say) as a
    UserInputError that names lora_target_modules."""
    try:
        yield
    except UserInputError:
        raise
    except ValueError as exc:
        if "target module" not in str(exc).lower():
            raise
        raise UserInputError(f"lora_target_modules: {exc}; give names of linear layers, or "
                             f"{ALL_LINEAR}") from None


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def quiet_trainer(trainer: Any, progress: bool) -> None:
    """Without progress, print nothing per step (transformers prints the logs instead of a
    bar when the bar is off)."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)


def agreed(gate: Callable[[], bool] | None) -> bool:
    """Ask ``gate`` (a person's pause / stop, :mod:`rlhf_hgt.governance.oversight`) on the
    main process only and give every process its answer, so that all stop at the same
    update (one process: just the gate's answer; no gate: True)."""
    if gate is None:
        return True
    go = gate() if is_main_process() else True
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return go
    import torch

    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    flag = torch.tensor([int(go)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)  # the others said True: the main one decides
    return bool(flag.item())


def oversight_callback(gate: Callable[[], bool]) -> Any:
    """A transformers TrainerCallback that asks ``gate`` after every optimiser step: a
    pause holds there, False ends training (``should_training_stop``); the trainer then
    saves what it has as usual."""
    from transformers import TrainerCallback

    class Oversight(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if not agreed(gate):
                control.should_training_stop = True
            return control

    return Oversight()


def model_device(model: Any):
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def quiet_libraries() -> None:
    """Keep transformers/datasets to warnings (their info lines drown the progress bar), and
    send no usage telemetry."""
    import warnings

    import datasets
    import transformers

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated",
                            category=FutureWarning)
    transformers.logging.set_verbosity_warning()
    datasets.logging.set_verbosity_warning()
    datasets.disable_progress_bars()


# --------------------------------------------------------------------------- data


PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def check_pairs(ds: Any, where: str = "data") -> None:
    """Raise UserInputError naming the pair and field when ``ds`` is not usable preference
    data: columns prompt/chosen/rejected (text), optional target in [0, 1]."""
    if ds is None or not hasattr(ds, "column_names"):
        raise UserInputError(f"{where}: expected a datasets.Dataset of pairs with columns "
                             f"prompt, chosen, rejected; got {type(ds).__name__}")
    cols = set(ds.column_names)
    missing = [c for c in PAIR_COLUMNS if c not in cols]
    if missing:
        raise UserInputError(f"{where}: missing column(s) {', '.join(missing)}; every pair needs "
                             f"'prompt', 'chosen' and 'rejected' (and optionally 'target': 1 "
                             f"chosen preferred, 0.5 tie)")
    if len(ds) == 0:
        raise UserInputError(f"{where}: no pairs; label some pairs first "
                             f"(rlhf-hgt label STORE, or a JSONL file of prompt/chosen/rejected)")
    has_target = "target" in cols
    for i, row in enumerate(ds):
        for field_name in PAIR_COLUMNS:
            v = row[field_name]
            if not isinstance(v, str):
                raise UserInputError(f"{where}: pair {i + 1}, field '{field_name}': expected text, "
                                     f"got {type(v).__name__}; use plain strings")
            if not v.strip():
                raise UserInputError(f"{where}: pair {i + 1}, field '{field_name}' is empty; give "
                                     f"every pair a non-empty {field_name} or drop the pair")
        if has_target:
            t = row["target"]
            if t is None or not isinstance(t, int | float) or not 0.0 <= float(t) <= 1.0:
                raise UserInputError(f"{where}: pair {i + 1}, field 'target' = {t!r}; use a "
                                     f"probability that 'chosen' is preferred: 1, 0.5 (tie) or 0")


def targets_of(ds: Any) -> list[float]:
    """Per-pair probability that 'chosen' is preferred (1.0 when the column is absent)."""
    if "target" in ds.column_names:
        return [float(t) for t in ds["target"]]
    return [1.0] * len(ds)


def holdout_split(ds: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, held out): whole prompts go to one side when there are several prompts
    (no prompt is seen in training and evaluation), else rows one by one."""
    from rlhf_hgt.lm.data import split_pairs

    by = "prompt" if len(set(ds["prompt"])) > 1 else None
    return split_pairs(ds, test_fraction=fraction, seed=seed, by=by)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
