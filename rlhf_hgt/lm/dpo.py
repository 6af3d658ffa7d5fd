"""Direct preference optimisation of a language model (TRL DPOTrainer), with LoRA or in full.

With LoRA (``lora_r > 0``, the default) the base stays frozen and the reference policy is
the same model with its adapters switched off: TRL gets a ``peft_config`` and
``ref_model=None``, so no second copy is held. Full fine-tuning (``lora_r = 0``) trains
every weight against a frozen copy of the starting model (TRL cannot rebuild the
reference of a model built in memory by name, so the copy is always passed).

Every loss TRL 1.16 offers is available (``loss_type``: sigmoid, ipo, hinge, robust, ...;
several with ``loss_weights``), with ``beta`` and ``label_smoothing``; ``sft_weight`` adds a
supervised term on the chosen response (as in RPO), a guard against the drift of samples
that plain DPO can show with a few hundred pairs (measured in BENCHMARKS.md). DPO learns from
strict preferences only: a tie (target 0.5) is dropped and counted in the metrics; a
target below 0.5 means the 'rejected' side won, and the pair is turned round.

The held-out number is the implicit-reward accuracy: the share of strict pairs where
beta * (log pi(y|x) - log pi_ref(y|x)) is higher for the chosen response
(:func:`implicit_reward_accuracy`; equal rewards count half, the convention of the shared
core). TRL's own ``eval_rewards/accuracies`` is also reported: it counts equal rewards as
wrong and averages per batch, so it reads 0 before training and may differ slightly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rlhf_hgt.configs import renamed
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.lm import trl_common as common
from rlhf_hgt.lm.data import format_conversations
from rlhf_hgt.lm.models import peft_quietly
from rlhf_hgt.preference import preference_accuracy

__all__ = ["DPO_LOSS_TYPES", "LMDPOConfig", "implicit_reward_accuracy", "implicit_rewards",
           "load_policy", "train_dpo"]

FORMAT = "rlhf_hgt.lm_dpo/1"
META_FILE = "dpo_model.json"
#: Name TRL gives the frozen copy of an adapter that was there before DPO.
REF_ADAPTER = "ref"

#: The loss types TRL 1.16's DPOTrainer accepts (DPOConfig.loss_type).
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
                  "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft",
                  "sigmoid_norm")


@renamed(epochs="num_train_epochs")
@dataclass
class LMDPOConfig(common.PairTrainingConfig):
    """How a policy is trained with DPO. The defaults serve a few hundred labels with LoRA;
    the LoRA, optimiser, batch and evaluation settings are :class:`PairTrainingConfig`'s."""

    beta: float = field(default=0.1, metadata={
        "help": "strength of the pull towards the reference policy (higher = stay closer); "
                "for ipo it is the regulariser tau"})
    loss_type: tuple[str, ...] = field(default=("sigmoid",), metadata={
        "help": "TRL DPO loss(es): " + ", ".join(DPO_LOSS_TYPES)
                + "; several are summed with loss_weights"})
    loss_weights: tuple[float, ...] | None = field(default=None, metadata={
        "help": "one weight per loss_type when several are combined (default all 1)"})
    sft_weight: float = field(default=0.0, metadata={
        "help": "weight of a supervised term (the chosen response's mean token NLL, TRL's "
                "'sft' loss) added to the preference loss, as in RPO; it keeps the chosen "
                "answers likely. 0 = the preference loss alone; on 400 review "
                "pairs 0.1 raised the samples' sentiment but cost held-out accuracy over two "
                "seeds (BENCHMARKS.md)"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "assumed share of flipped labels for robust (in [0, 0.5)), the epsilon of "
                "exo_pair (> 0, e.g. 1e-3), and used by aot"})
    lora_r: int = field(default=16, metadata={
        "help": "LoRA rank; 0 = full fine-tuning against a frozen copy of the model"})
    learning_rate: float | None = field(default=None, metadata={
        "help": "peak learning rate; default 5e-5 with LoRA (TRL's 1e-6 barely moves an "
                "adapter), 5e-7 for full fine-tuning"})
    num_train_epochs: float = field(default=2.0, metadata={
        "help": "passes over the training pairs"})
    max_length: int = field(default=512, metadata={
        "help": "most tokens of prompt + response; longer ones keep their start (TRL); pairs "
                "whose prompt alone fills it are dropped by TRL"})

    def trl_losses(self) -> tuple[list[str], list[float] | None]:
        """TRL's loss_type and loss_weights: the preference loss(es), then the SFT term."""
        losses, weights = list(self.loss_type), (list(self.loss_weights)
                                                 if self.loss_weights else None)
        if self.sft_weight > 0:
            losses.append("sft")
            weights = (weights or [1.0] * len(self.loss_type)) + [self.sft_weight]
        return losses, weights

    def __post_init__(self) -> None:
        if isinstance(self.loss_type, str):
            self.loss_type = (self.loss_type,)
        self.loss_type = tuple(self.loss_type)
        if self.loss_weights is not None:
            self.loss_weights = tuple(float(w) for w in self.loss_weights)
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (0.1 is usual), got {self.beta}")
        if not self.loss_type:
            raise ValueError("loss_type must name at least one loss, e.g. 'sigmoid'")
        unknown = [t for t in self.loss_type if t not in DPO_LOSS_TYPES]
        if unknown:
            raise ValueError(f"unknown loss_type {', '.join(map(repr, unknown))}; TRL's DPO "
                             f"accepts {', '.join(DPO_LOSS_TYPES)}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights needs one weight per loss_type: got "
                             f"{len(self.loss_weights)} weights for {len(self.loss_type)} losses")
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ValueError(f"sft_weight must be a finite number >= 0 (0 turns the term off, "
                             f"0.1 is a mild one), got {self.sft_weight}")
        if self.sft_weight > 0 and "sft" in self.loss_type:
            raise ValueError("sft_weight: loss_type already holds 'sft'; weigh it with "
                             "loss_weights and set sft_weight to 0")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must lie in [0, 0.5) (0 is usual, 0.1 for robust), "
                             f"got {self.label_smoothing}")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            raise ValueError("exo_pair needs label_smoothing > 0; the EXO paper uses 1e-3")
        self.check_shared(lr_lora=5e-5, lr_full=5e-7)
        if not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs must be > 0, got {self.num_train_epochs}")


# --------------------------------------------------------------------------- data


def _strict_pairs(ds: Any) -> tuple[list[dict[str, str]], int, int]:
    """Rows with the preferred side as 'chosen'; ties dropped. (rows, ties, turned round)."""
    rows, ties, flipped = [], 0, 0
    for row, t in zip(ds, common.targets_of(ds), strict=True):
        if t == 0.5:
            ties += 1
            continue
        c, r = (row["chosen"], row["rejected"]) if t > 0.5 else (row["rejected"], row["chosen"])
        flipped += t < 0.5
        rows.append({"prompt": row["prompt"], "chosen": c, "rejected": r})
    return rows, ties, flipped


def _trl_dataset(rows: list[dict[str, str]], chat_template: bool):
    from datasets import Dataset

    if chat_template:
        rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    return Dataset.from_list(rows)


def _chat_ids(tok: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                  add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"])


def encode_dpo_pair(tok: Any, prompt: str, chosen: str, rejected: str,
                    chat_template: bool = False) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) as TRL 1.16's DPOTrainer tokenizes them: the
    completion starts where the tokenized prompt and prompt + completion diverge."""
    if chat_template:
        if not getattr(tok, "chat_template", None):
            raise UserInputError("chat template: the model's tokenizer has none; drop "
                                 "--chat-template (chat_template=False)")
        p_msgs = [{"role": "user", "content": prompt}]
        prompt_ids = _chat_ids(tok, p_msgs, True)
        pc = _chat_ids(tok, p_msgs + [{"role": "assistant", "content": chosen}], False)
        pr = _chat_ids(tok, p_msgs + [{"role": "assistant", "content": rejected}], False)
    else:
        eos = tok.eos_token or ""
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
        prompt_ids = list(tok(prompt)["input_ids"])
        pc = list(tok(prompt + chosen)["input_ids"])
        pr = list(tok(prompt + rejected)["input_ids"])
    n = min(common.common_prefix_length(prompt_ids, pc),
            common.common_prefix_length(prompt_ids, pr))
    return prompt_ids[:n], pc[n:], pr[n:]


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _sequence_logps(model: Any, tok: Any, seqs: list[tuple[list[int], list[int]]],
                    max_length: int, batch_size: int) -> list[float]:
    """Sum of log pi(completion | prompt) for (prompt_ids, completion_ids), truncated to
    max_length tokens from the start (as TRL does)."""
    device = common.model_device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        ids = [(p + c)[:max_length] for p, c in chunk]
        comp = [([0] * len(p) + [1] * len(c))[:max_length] for p, c in chunk]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        cmask = torch.zeros((len(ids), width), dtype=torch.bool)
        for j, (x, m) in enumerate(zip(ids, comp, strict=True)):
            input_ids[j, :len(x)] = torch.tensor(x)
            attn[j, :len(x)] = 1
            cmask[j, :len(m)] = torch.tensor(m, dtype=torch.bool)
        input_ids, attn, cmask = input_ids.to(device), attn.to(device), cmask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attn, use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tok_logp = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        out.extend((tok_logp * cmask[:, 1:]).sum(-1).cpu().tolist())
    return out


@contextlib.contextmanager
def _reference_adapter(model: Any) -> Iterator[None]:
    """The PEFT model as its reference: TRL's "ref" adapter when there is one, else adapters
    off."""
    if REF_ADAPTER not in getattr(model, "peft_config", {}):
        with model.disable_adapter():
            yield
        return
    previous = model.active_adapter
    model.set_adapter(REF_ADAPTER)
    try:
        yield
    finally:
        model.set_adapter(previous)


def implicit_rewards(model: Any, ref: Any, tok: Any, ds: Any, beta: float = 0.1,
                     max_length: int = 512, chat_template: bool = False,
                     batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit rewards beta * (log pi - log pi_ref) of the chosen and the rejected
    responses of each pair. ``ref=None`` on a PEFT model = its frozen "ref" adapter where TRL
    made one (training an adapter that already existed), else the model with adapters off.
    Sharded over processes and gathered (every process gets all rewards)."""
    if ref is None and not hasattr(model, "disable_adapter"):
        raise ValueError("ref=None means 'adapters off' and needs a PEFT model; pass the "
                         "reference model for a fully fine-tuned policy")
    common.check_pairs(ds, "evaluation pairs")
    items = [encode_dpo_pair(tok, r["prompt"], r["chosen"], r["rejected"], chat_template)
             for r in ds]

    def local(shard: list[tuple[list[int], list[int], list[int]]]) -> list[tuple[float, float]]:
        seqs = [(p, c) for p, c, _ in shard] + [(p, r) for p, _, r in shard]
        was_training = model.training
        model.eval()
        pol = _sequence_logps(model, tok, seqs, max_length, batch_size)
        if ref is None:
            with _reference_adapter(model):
                base = _sequence_logps(model, tok, seqs, max_length, batch_size)
        else:
            ref.eval()
            base = _sequence_logps(ref, tok, seqs, max_length, batch_size)
        if was_training:
            model.train()
        n = len(shard)
        return [(beta * (pol[k] - base[k]), beta * (pol[n + k] - base[n + k])) for k in range(n)]

    pairs = common.gather_map(local, items)
    chosen = torch.tensor([c for c, _ in pairs], dtype=torch.float32)
    rejected = torch.tensor([r for _, r in pairs], dtype=torch.float32)
    return chosen, rejected


def implicit_reward_accuracy(model: Any, ref: Any, tok: Any, ds: Any, beta: float = 0.1,
                             max_length: int = 512, chat_template: bool = False,
                             batch_size: int = 8) -> float:
    """Share of strict pairs (ties excluded; targets from a 'target' column, default 1)
    where the chosen response has the higher implicit reward; equal rewards count half."""
    chosen, rejected = implicit_rewards(model, ref, tok, ds, beta, max_length, chat_template,
                                        batch_size)
    return preference_accuracy(chosen, rejected, torch.tensor(common.targets_of(ds)))


# --------------------------------------------------------------------------- training


def train_dpo(model: Any, train_ds: Any, eval_ds: Any = None, config: LMDPOConfig | None = None,
              out_dir: str | Path = "dpo", callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train a policy with DPO on preference pairs and save it into ``out_dir``.

    ``model``: ``"tiny"``, a hub id or local path of a causal LM, or a ``(model,
    tokenizer)`` pair. A model that already carries a LoRA adapter (a PeftModel, e.g. a PPO
    policy) has that adapter trained whatever ``lora_r`` says, against a frozen copy of the
    adapter as it came (TRL's "ref" adapter, removed again at the end): no second copy of
    the model is made. Returns metrics: implicit_reward_accuracy (held out), TRL's eval loss
    and reward accuracy, train_loss, train_samples_per_second, ties dropped."""
    cfg = config or LMDPOConfig()
    common.check_pairs(train_ds, "training pairs")
    if eval_ds is None and cfg.eval_fraction > 0 and len(train_ds) >= 4:
        train_ds, eval_ds = common.holdout_split(train_ds, cfg.eval_fraction, cfg.seed)
    if eval_ds is not None and len(eval_ds) == 0:
        eval_ds = None
    if eval_ds is not None:
        common.check_pairs(eval_ds, "evaluation pairs")
    train_rows, train_ties, train_flipped = _strict_pairs(train_ds)
    if not train_rows:
        raise UserInputError("training pairs: every pair is a tie; DPO learns only from pairs "
                             "where one response is preferred")
    eval_rows, eval_ties, _ = _strict_pairs(eval_ds) if eval_ds is not None else ([], 0, 0)

    common.quiet_libraries()
    from transformers import set_seed
    from trl import DPOConfig

    set_seed(cfg.seed)
    model, tok, base_name = common.load_lm("causal", model, dtype=torch.float32)
    # conversational pairs in the model's chat format (TRL's rule): then every pair is text
    (train_ds, eval_ds), chat, n_conv = format_conversations(tok, cfg.chat_template, train_ds,
                                                             eval_ds)
    if n_conv:
        train_rows, eval_rows = _strict_pairs(train_ds)[0], (
            _strict_pairs(eval_ds)[0] if eval_ds is not None else [])
    run_cfg = replace(cfg, chat_template=chat)
    has_adapter = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
    if has_adapter:  # train its adapter; TRL keeps a frozen copy as the "ref" adapter
        peft_config, ref_model = None, None
    elif cfg.lora_r > 0:
        ref_model = None
        common.check_lora_targets(model, cfg.lora_target_modules)
        peft_config = common.lora_config("CAUSAL_LM", cfg.lora_r, cfg.lora_alpha, 0.0,
                                         cfg.lora_target_modules)
    else:
        peft_config = None
        ref_model = copy.deepcopy(model).eval()
        ref_model.requires_grad_(False)
    out = Path(out_dir)
    args = DPOConfig(
        **cfg.training_kwargs(out, cfg.num_train_epochs),
        beta=cfg.beta, loss_type=cfg.trl_losses()[0], loss_weights=cfg.trl_losses()[1],
        label_smoothing=cfg.label_smoothing, max_length=cfg.max_length,
        disable_dropout=True, precompute_ref_log_probs=False,
    )
    with _adapter_kept(model if has_adapter else None):
        metrics, policy = _fit(model, ref_model, args, tok, train_rows, eval_rows, eval_ds,
                               run_cfg, peft_config, callbacks)
    metrics.update({"train_pairs": len(train_rows), "train_ties_dropped": train_ties,
                    "train_pairs_turned": int(train_flipped), "base_model": base_name,
                    "eval_pairs": len(eval_rows), "eval_ties": eval_ties,
                    "conversational_pairs": n_conv,
                    "lora_r": (policy.peft_config["default"].r if has_adapter else cfg.lora_r)})
    common.save_trained(policy, tok, out, replace(cfg, chat_template=True) if n_conv else cfg,
                        base_name, FORMAT, META_FILE, lora=has_adapter or cfg.lora_r > 0)
    common.wait_for_everyone()
    return common.clean_metrics(metrics)


@contextlib.contextmanager
def _adapter_kept(model: Any) -> Iterator[None]:
    """Around DPO on a model that came with its LoRA adapter: it must be the "default" one;
    TRL's frozen "ref" copy is removed afterwards (also after an error) and the adapter's
    trainable flags are as they were."""
    if model is None:
        yield
        return
    names = list(model.peft_config)
    if names != ["default"]:
        raise UserInputError(f"DPO on a model with adapters needs exactly one, named "
                             f"'default'; this one has {names}")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        yield
    finally:
        if REF_ADAPTER in model.peft_config:
            model.delete_adapter(REF_ADAPTER)
        model.set_adapter("default")
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, False))


def _fit(model: Any, ref_model: Any, args: Any, tok: Any, train_rows: list[dict[str, str]],
         eval_rows: list[dict[str, str]], eval_ds: Any, cfg: LMDPOConfig, peft_config: Any,
         callbacks: list[Any] | None) -> tuple[dict[str, Any], Any]:
    """Train with TRL's DPOTrainer and evaluate: (metrics, the trained policy)."""
    from trl import DPOTrainer

    with common.lora_target_errors():  # TRL attaches the adapter here
        trainer = DPOTrainer(
            model=model, ref_model=ref_model, args=args,
            train_dataset=_trl_dataset(train_rows, cfg.chat_template),
            eval_dataset=_trl_dataset(eval_rows, cfg.chat_template) if eval_rows else None,
            processing_class=tok, peft_config=peft_config, callbacks=callbacks)
    common.quiet_trainer(trainer, cfg.progress)
    trainable, total = common.count_params(trainer.model)
    start = time.perf_counter()
    result = trainer.train()
    train_time = time.perf_counter() - start

    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_runtime_s": train_time,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "learning_rate": cfg.learning_rate,
        "beta": cfg.beta,
        "loss_type": "+".join(cfg.trl_losses()[0]),
        "loss_weights": cfg.trl_losses()[1],
        "trainable_params": trainable,
        "total_params": total,
        "world_size": common.world_size(),
    }
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if eval_rows:
        trl_eval = trainer.evaluate()
        metrics["eval_loss"] = trl_eval.get("eval_loss")
        metrics["trl_eval_rewards_accuracies"] = trl_eval.get("eval_rewards/accuracies")
        metrics["eval_rewards_margin"] = trl_eval.get("eval_rewards/margins")
        metrics["implicit_reward_accuracy"] = implicit_reward_accuracy(
            policy, ref_model, tok, eval_ds, cfg.beta, cfg.max_length, cfg.chat_template,
            cfg.per_device_eval_batch_size)
    else:
        metrics.update({"eval_loss": None, "trl_eval_rewards_accuracies": None,
                        "implicit_reward_accuracy": None})
    return metrics, policy


def load_policy(folder: str | Path, base: Any = None, device: str | None = None,
                dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a policy saved by :func:`train_dpo` (a PEFT model with LoRA).
    ``base`` replaces the recorded base model (name, path or (model, tokenizer))."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise UserInputError(f"{folder}: no {META_FILE}; give the folder a DPO policy was "
                             f"saved into (rlhf-hgt lm dpo --out DIR)")
    meta = json.loads(meta_path.read_text())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if meta["lora"]:
        from peft import PeftModel

        src = base if base is not None else meta.get("base_model")
        if src is None:
            raise ValueError(f"{folder}: trained from a model built in memory; pass base=...")
        base_model, _, _ = common.load_lm("causal", src, device=device, dtype=dtype)
        with peft_quietly():
            model = PeftModel.from_pretrained(base_model, str(folder))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    if device is not None:
        model.to(device)
    return model.eval(), tok


def check_loss_types_match_trl() -> Sequence[str]:
    """Loss types named in TRL's DPOConfig help that :data:`DPO_LOSS_TYPES` lacks (for tests:
    an upgrade of TRL that adds a loss shows here)."""
    import re
    from dataclasses import fields

    from trl import DPOConfig

    help_text = next(f for f in fields(DPOConfig) if f.name == "loss_type").metadata["help"]
    named = re.findall(r"`'([a-z_]+)'`", help_text)
    return [n for n in named if n not in DPO_LOSS_TYPES]
