"""A language reward model learned from pairwise preferences (TRL RewardTrainer + LoRA).

The model is a sequence-classification head on a causal LM (one output: the reward of
``prompt + response``), trained with LoRA adapters on every linear layer of attention and
MLP while the base stays frozen; the score head is trained in full. The loss is the
project's shared Bradley–Terry core (:func:`rlhf_hgt.preference.preference_loss`): a tie
is a 0.5 target (from a ``target`` column), the label-noise term bounds what a wrong
label costs, and a small centring term keeps rewards near zero. TRL's RewardTrainer runs
the loop (devices, DDP, mixed precision, the schedule); :class:`PreferenceRewardTrainer`
only swaps its loss and keeps the ``target`` column that its collator would drop.

What people give beside their choice (:mod:`rlhf_hgt.lm.reward_guidance`): highlighted
words (``chosen_highlights`` / ``rejected_highlights``) add ``highlight_weight`` times the
share of the reward's input-gradient energy outside them; response times (``seconds``,
with ``time_weighting``) weigh each comparison, or soften its target, by how fast its
annotator answered. Pairs without either train as before.

Texts are formatted once, by :func:`encode_response`, for training and for
:class:`RewardScorer`: ``prompt + response`` then the end token (TRL's convention), or the
tokenizer's chat template (user turn = prompt, assistant turn = response).

Saved into the output folder: the adapter and score head (``adapter_model.safetensors``,
``adapter_config.json``; a full model as ``model.safetensors`` when ``lora_r = 0``), the
tokenizer, and ``reward_model.json`` (base model, formatting), read by
:meth:`RewardScorer.load`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rlhf_hgt.confidence import DEFAULT_FLOOR, MODES
from rlhf_hgt.configs import renamed
from rlhf_hgt.lm import reward_guidance as guidance
from rlhf_hgt.lm import trl_common as common
from rlhf_hgt.lm.data import format_conversations
from rlhf_hgt.lm.models import peft_quietly
from rlhf_hgt.preference import preference_accuracy, preference_loss

__all__ = ["LMRewardConfig", "RewardScorer", "build_reward_trainer", "encode_marked",
           "encode_response", "evaluate_reward_model", "prepare_reward_model",
           "train_reward_model"]

FORMAT = "rlhf_hgt.lm_reward/1"
META_FILE = "reward_model.json"


@renamed(epochs="num_train_epochs", center_rewards="center_rewards_coefficient")
@dataclass
class LMRewardConfig(common.PairTrainingConfig):
    """How a language reward model is trained. The defaults serve a few hundred labels; the
    LoRA, optimiser, batch and evaluation settings are :class:`PairTrainingConfig`'s."""

    lora_dropout: float = field(default=0.05, metadata={
        "help": "dropout on the LoRA branch (regularises small label sets); the base model's "
                "own dropout is turned off"})
    learning_rate: float | None = field(default=None, metadata={
        "help": "peak AdamW learning rate; default 2e-4 with LoRA (LoRA reward models like "
                "1e-4..5e-4), 1e-5 for full fine-tuning"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.05, metadata={
        "help": "share of the optimiser steps spent warming the learning rate up"})
    num_train_epochs: float | None = field(default=None, metadata={
        "help": "passes over the training pairs; unset = enough passes for min_updates "
                "optimiser steps (at least 1, at most max_auto_epochs): 400 pairs → 4"})
    min_updates: int = field(default=200, metadata={
        "help": "optimiser steps the automatic epoch count aims at (few labels need several "
                "passes: 200 steps of 8 reached 0.90 held-out accuracy on critic pairs)"})
    max_auto_epochs: int = field(default=8, metadata={
        "help": "most passes the automatic epoch count may choose"})
    max_length: int = field(default=512, metadata={
        "help": "most tokens of prompt + response; longer texts keep their end (the reward "
                "is read at the last token)"})
    label_noise: float = field(default=0.05, metadata={
        "help": "assumed probability that an answer is random (Bradley–Terry noise term): a "
                "wrong label costs at most -log(noise/2); 0 = plain Bradley–Terry"})
    temperature: float = field(default=1.0, metadata={
        "help": "Bradley–Terry temperature: P(A > B) = sigmoid((r_A - r_B) / temperature)"})
    center_rewards_coefficient: float = field(default=0.01, metadata={
        "help": "weight of the mean-zero term mean((r_chosen + r_rejected)^2) (Eisenstein et "
                "al. 2023); keeps rewards centred for PPO; 0 = off"})
    per_device_eval_batch_size: int = field(default=16, metadata={
        "help": "pairs per process and scoring batch"})
    highlight_weight: float | None = field(default=None, metadata={
        "help": "weight of the highlight penalty: for a response with highlighted words "
                "(chosen_highlights / rejected_highlights), the share of the reward's "
                "input-gradient energy (on the token embeddings) on its other tokens; pairs "
                "without highlights train as before. Unset: "
                f"{guidance.DEFAULT_HIGHLIGHT_WEIGHT:g} when the pairs have highlights, else 0. "
                "PROVISIONAL, measured on the tiny test model only (scripts/"
                "bench_lm_guidance.py tiny-weights: 64 pairs of 'a'/'b' strings whose chosen "
                "side always ended in a decoy, 128 held-out pairs with it on a random side, "
                "3 seeds): accuracy 0.58 without highlights, 0.71/0.82/0.93/0.94/0.89 at "
                "weights 1/3/10/30/100, decoy-free 0.95; highlights on 10% of the pairs: "
                "0.86 at 10, 0.95 at 100; 10 is the smallest weight near the best; to be "
                "re-measured with SmolLM2 on decoy text",
        "default_text": f"{guidance.DEFAULT_HIGHLIGHT_WEIGHT:g} with highlights, else 0"})
    time_weighting: bool = field(default=False, metadata={
        "help": "turn each answer's response time (column seconds) into a confidence for "
                "its comparison: its rank among the same annotator's times (people differ in "
                "speed), 1 for the fastest down to --time-floor for the slowest "
                "(rlhf_hgt.confidence); pairs without a time keep confidence 1"})
    time_weighting_mode: str = field(default="weight", metadata={
        "help": "weight: the confidence weighs the comparison's loss; soft: it moves the "
                "target towards 0.5", "choices": MODES})
    time_floor: float = field(default=DEFAULT_FLOOR, metadata={
        "help": "the slowest answer's confidence, in [0, 1]"})

    def __post_init__(self) -> None:
        self.check_shared(lr_lora=2e-4, lr_full=1e-5)
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must lie in [0, 1) (0.05 is usual), "
                             f"got {self.lora_dropout}")
        if self.num_train_epochs is not None and not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs must be > 0, or None for automatic, got "
                             f"{self.num_train_epochs}")
        for name in ("min_updates", "max_auto_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"label_noise is a probability of a random answer: use "
                             f"0 <= label_noise < 1 (0.05 is usual), got {self.label_noise}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.center_rewards_coefficient < 0:
            raise ValueError(f"center_rewards_coefficient must be >= 0 (0.01 is usual), "
                             f"got {self.center_rewards_coefficient}")
        if self.highlight_weight is not None and not 0 <= self.highlight_weight < math.inf:
            raise ValueError(f"highlight_weight must be a number >= 0 (0 = off; unset = "
                             f"{guidance.DEFAULT_HIGHLIGHT_WEIGHT:g} when the pairs have "
                             f"highlights), got {self.highlight_weight}")
        if self.time_weighting_mode not in MODES:
            raise ValueError(f"time_weighting_mode must be one of {', '.join(MODES)}, got "
                             f"{self.time_weighting_mode!r}")
        if not 0 <= self.time_floor <= 1:
            raise ValueError(f"time_floor must lie in [0, 1] (the slowest answer's "
                             f"confidence; {DEFAULT_FLOOR} is usual), got {self.time_floor}")

    def resolved_epochs(self, n_pairs: int, processes: int = 1) -> float:
        """The epoch count for ``n_pairs`` training pairs (see ``num_train_epochs``)."""
        if self.num_train_epochs is not None:
            return float(self.num_train_epochs)
        per_epoch = max(1, math.ceil(n_pairs / (self.per_device_train_batch_size
                                                * self.gradient_accumulation_steps * processes)))
        return float(min(self.max_auto_epochs, max(1, math.ceil(self.min_updates / per_epoch))))


# --------------------------------------------------------------------------- formatting


def _formatted(tok: Any, prompt: str, response: str, chat_template: bool) -> tuple[str, bool]:
    """(the text the reward model reads, whether it gets the end token appended): the chat
    template around (prompt, response), or ``prompt + response``."""
    if chat_template:
        if not getattr(tok, "chat_template", None):
            from rlhf_hgt.feedback.errors import UserInputError

            raise UserInputError("chat template: the model's tokenizer has none; drop "
                                 "--chat-template (chat_template=False)")
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return tok.apply_chat_template(msgs, tokenize=False), False
    return prompt + response, True


def encode_response(tok: Any, prompt: str, response: str, max_length: int,
                    chat_template: bool = False) -> list[int]:
    """Token ids of one (prompt, response), exactly as the reward model is trained on them."""
    text, plain = _formatted(tok, prompt, response, chat_template)
    ids = list(tok(text, add_special_tokens=plain)["input_ids"])
    if plain and tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
        ids.append(tok.eos_token_id)
    if len(ids) > max_length:
        ids = ids[-max_length:]  # keep the end: the reward is read at the last token
    return ids


def encode_marked(tok: Any, prompt: str, response: str, spans: Sequence[tuple[int, int]],
                  max_length: int, chat_template: bool = False
                  ) -> tuple[list[int], list[int] | None]:
    """(ids as :func:`encode_response` gives them, per-token highlight marks or None).

    ``spans`` are character offsets into ``response``, which is looked for in the formatted
    text; marks are ``guidance.NOT_COUNTED`` / ``OUTSIDE`` / ``HIGHLIGHTED`` per token. None
    when there are no spans, the response is not found, or no highlighted token survives
    truncation."""
    ids = encode_response(tok, prompt, response, max_length, chat_template)
    if not spans:
        return ids, None
    if not getattr(tok, "is_fast", False):
        from rlhf_hgt.feedback.errors import UserInputError

        raise UserInputError("highlights: the model's tokenizer is not a fast tokenizer, so it "
                             "has no character offsets; use a fast tokenizer or "
                             "--highlight-weight 0")
    text, plain = _formatted(tok, prompt, response, chat_template)
    enc = tok(text, add_special_tokens=plain, return_offsets_mapping=True)
    start = guidance.locate_response(text, response)
    if start is None:
        return ids, None
    marks = guidance.token_marks(enc["offset_mapping"], start, len(response), spans)
    full = list(enc["input_ids"])
    if plain and tok.eos_token_id is not None and (not full or full[-1] != tok.eos_token_id):
        marks.append(guidance.NOT_COUNTED)  # the end token encode_response appends
    marks = marks[-len(ids):]  # truncated as the ids are
    return ids, (marks if guidance.HIGHLIGHTED in marks else None)


def _encode_pairs(ds: Any, tok: Any, cfg: LMRewardConfig, highlight_weight: float = 0.0,
                  weights: Sequence[float] | None = None,
                  targets: Sequence[float] | None = None) -> tuple[Any, dict[str, int]]:
    """The encoded pairs (ids, targets, optional weights and highlight marks) and counts of
    the highlights: sides with spans, and sides whose spans mark tokens."""
    from datasets import Dataset

    targets = list(common.targets_of(ds) if targets is None else targets)
    rows: dict[str, list] = {"chosen_ids": [], "rejected_ids": [], "target": targets}
    if weights is not None:
        rows["weight"] = [float(w) for w in weights]
    use_marks = highlight_weight > 0
    spans = {side: guidance.spans_of(ds, side) if use_marks else None
             for side in ("chosen", "rejected")}
    counts = {"sides": 0, "marked": 0}
    if use_marks:
        rows["chosen_marks"], rows["rejected_marks"] = [], []
    for i, row in enumerate(ds):
        for side in ("chosen", "rejected"):
            side_spans = spans[side][i] if use_marks else []
            ids, marks = encode_marked(tok, row["prompt"], row[side], side_spans,
                                       cfg.max_length, cfg.chat_template)
            rows[f"{side}_ids"].append(ids)
            if use_marks:
                rows[f"{side}_marks"].append(marks or [])
                counts["sides"] += bool(side_spans)
                counts["marked"] += marks is not None
    return Dataset.from_dict(rows), counts


# --------------------------------------------------------------------------- trainer


def _trainer_classes():
    """The TRL subclasses, built on first use so that importing this module stays light."""
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class PairCollator(DataCollatorForPreference):
        """TRL's preference collator (chosen rows, then rejected rows) plus the targets."""

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            out = super().torch_call(examples)
            out["target"] = torch.tensor([float(e.get("target", 1.0)) for e in examples],
                                         dtype=torch.float32)
            if "weight" in examples[0]:  # time weighting
                out["weight"] = torch.tensor([float(e["weight"]) for e in examples],
                                             dtype=torch.float32)
            if "chosen_marks" in examples[0]:  # highlights, padded like input_ids
                n = len(examples)
                marks = torch.zeros(out["input_ids"].shape, dtype=torch.long)
                for j, e in enumerate(examples):
                    for row, m in ((j, e["chosen_marks"]), (n + j, e["rejected_marks"])):
                        marks[row, :len(m)] = torch.tensor(m, dtype=torch.long)
                out["marks"] = marks
            return out

    class PreferenceRewardTrainer(RewardTrainer):
        """RewardTrainer with the shared Bradley–Terry loss (ties, label noise) and centring."""

        def __init__(self, *args: Any, pref_config: LMRewardConfig,
                     highlight_weight: float = 0.0, **kwargs: Any):
            self.pref_config = pref_config
            self.highlight_weight = highlight_weight
            super().__init__(*args, **kwargs)

        def _set_signature_columns_if_needed(self) -> None:
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "target", "weight",
                                           "chosen_marks", "rejected_marks"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            cfg = self.pref_config
            target = inputs.pop("target")
            weight = inputs.pop("weight", None)
            marks = inputs.pop("marks", None)
            inputs.pop("margin", None)
            penalise = (self.highlight_weight > 0 and marks is not None
                        and torch.is_grad_enabled()
                        and bool((marks == guidance.HIGHLIGHTED).any()))
            with guidance.EmbeddingTap(self.accelerator.unwrap_model(model), penalise) as tap:
                outputs = model(input_ids=inputs["input_ids"],
                                attention_mask=inputs["attention_mask"], use_cache=False)
            scores = outputs.logits.squeeze(-1).float()
            chosen, rejected = torch.chunk(scores, 2)
            loss = preference_loss(chosen, rejected, target.to(chosen.device),
                                   noise=cfg.label_noise, temperature=cfg.temperature,
                                   weight=None if weight is None else weight.to(chosen.device))
            if cfg.center_rewards_coefficient > 0:
                loss = loss + cfg.center_rewards_coefficient * torch.mean(
                    (chosen + rejected) ** 2)
            if penalise:  # highlights: attribution outside them (reward_guidance)
                share, _ = guidance.highlight_share(scores, tap.embeds, marks.to(scores.device))
                loss = loss + self.highlight_weight * share
                self._metrics[mode]["highlight_share"].append(share.item())
            with torch.no_grad():  # every process gathers, whatever its batch holds
                t = target.to(chosen.device)
                strict, diff = t != 0.5, chosen - rejected
                right = torch.where(diff == 0, 0.5, ((diff > 0) == (t > 0.5)).float())
                stats = torch.stack([(right * strict).sum(), strict.sum().float(),
                                     diff.sum(), torch.tensor(float(len(diff)),
                                                              device=diff.device)])
                total = self.accelerator.gather(stats.unsqueeze(0)).sum(0)
                if total[1] > 0:  # accuracy of strict pairs; ties have no right answer
                    self._metrics[mode]["accuracy"].append((total[0] / total[1]).item())
                self._metrics[mode]["margin"].append((total[2] / total[3]).item())
            return (loss, outputs) if return_outputs else loss

    return PairCollator, PreferenceRewardTrainer


def prepare_reward_model(source: Any, cfg: LMRewardConfig) -> tuple[Any, Any, str | None]:
    """(model, tokenizer, base name): the sequence classifier loaded (fp32 master weights; a
    GPU computes in bf16 autocast), its own dropout off, and with ``lora_r > 0`` wrapped in
    LoRA adapters with a fully trained score head (PEFT ``modules_to_save``), base frozen."""
    from transformers import set_seed

    set_seed(cfg.seed)  # the score head of a loaded LM is new: seed it
    model, tok, base_name = common.load_lm("reward", source, dtype=torch.float32)
    if getattr(model.config, "num_labels", None) != 1:
        raise ValueError(f"a reward model needs one output (num_labels=1), the model has "
                         f"{model.config.num_labels}; load it with load_reward_lm")
    if tok.pad_token is None:
        raise ValueError("the tokenizer has no pad token; give it one different from the end "
                         "token (rlhf_hgt.lm.models does this for SmolLM2)")
    model.config.pad_token_id = tok.pad_token_id
    for module in model.modules():  # the base's own dropout off; the LoRA dropout stays
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if cfg.lora_r > 0:
        from peft import get_peft_model

        head = "score" if hasattr(model, "score") else "classifier"
        set_seed(cfg.seed)
        common.check_lora_targets(model, cfg.lora_target_modules)
        peft_cfg = common.lora_config("SEQ_CLS", cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                      cfg.lora_target_modules, modules_to_save=[head])
        with peft_quietly(), common.lora_target_errors():
            model = get_peft_model(model, peft_cfg)
    return model, tok, base_name


def build_reward_trainer(model: Any, tok: Any, train_ds: Any, cfg: LMRewardConfig,
                         out_dir: str | Path, callbacks: list[Any] | None = None) -> Any:
    """The TRL trainer (with our loss) for a prepared model and raw pairs."""
    from trl import RewardConfig

    plan = guidance.plan(train_ds, common.targets_of(train_ds), cfg.highlight_weight,
                         cfg.time_weighting, cfg.time_weighting_mode, cfg.time_floor)
    if plan["highlight_weight"] > 0 and cfg.activation_checkpointing and common.cuda_available():
        from rlhf_hgt.feedback.errors import UserInputError

        raise UserInputError("--highlight-weight differentiates through the reward's input "
                             "gradient, which activation checkpointing cannot replay; use "
                             "--no-activation-checkpointing, or --highlight-weight 0")
    train_enc, counts = _encode_pairs(train_ds, tok, cfg, plan["highlight_weight"],
                                      plan.pop("weights"), plan.pop("targets"))
    plan.update({"highlighted_sides": counts["sides"], "highlighted_sides_used": counts["marked"],
                 "highlight_sides_unplaced": counts["sides"] - counts["marked"]})
    epochs = cfg.resolved_epochs(len(train_enc), common.world_size())
    args = RewardConfig(
        **cfg.training_kwargs(out_dir, epochs),
        max_length=None,  # encode_response already keeps every text within max_length
        disable_dropout=False,  # done in prepare_reward_model, keeping the LoRA dropout
        center_rewards_coefficient=None,  # our loss adds the centring term itself
    )
    collator_cls, trainer_cls = _trainer_classes()
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train_enc, processing_class=tok,
        data_collator=collator_cls(pad_token_id=tok.pad_token_id), callbacks=callbacks,
        pref_config=cfg, highlight_weight=plan["highlight_weight"])
    trainer.guidance = plan  # what the highlights and times did, for metrics.json
    common.quiet_trainer(trainer, cfg.progress)
    return trainer


def train_reward_model(model: Any, train_ds: Any, eval_ds: Any = None,
                       config: LMRewardConfig | None = None, out_dir: str | Path = "reward",
                       callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train a reward model on preference pairs and save it into ``out_dir``.

    ``model``: ``"tiny"``, a hub id or local path (loaded as a sequence classifier with one
    output), or a ``(model, tokenizer)`` pair (wrapped in place with LoRA). ``train_ds`` /
    ``eval_ds``: datasets with prompt, chosen, rejected and optionally target (1 chosen
    preferred, 0.5 tie); without ``eval_ds``, ``config.eval_fraction`` of the pairs is held
    out, whole prompts at a time. Returns metrics: reward_model_accuracy (held-out pairwise
    accuracy, ties excluded), eval_loss, train_loss, train_samples_per_second and counts."""
    cfg = config or LMRewardConfig()
    common.check_pairs(train_ds, "training pairs")
    if eval_ds is None and cfg.eval_fraction > 0 and len(train_ds) >= 4:
        train_ds, eval_ds = common.holdout_split(train_ds, cfg.eval_fraction, cfg.seed)
    if eval_ds is not None and len(eval_ds) == 0:
        eval_ds = None
    if eval_ds is not None:
        common.check_pairs(eval_ds, "evaluation pairs")
    common.quiet_libraries()
    model, tok, base_name = prepare_reward_model(model, cfg)
    trainable, total = common.count_params(model)
    out = Path(out_dir)
    # conversational pairs in the model's chat format (TRL's rule); the encoders then take
    # every pair as finished text
    (train_ds, eval_ds), chat, n_conv = format_conversations(tok, cfg.chat_template, train_ds,
                                                             eval_ds)
    trainer = build_reward_trainer(model, tok, train_ds, replace(cfg, chat_template=chat), out,
                                   callbacks)
    start = time.perf_counter()
    result = trainer.train()
    train_time = time.perf_counter() - start

    trained = trainer.accelerator.unwrap_model(trainer.model)
    trained.eval()
    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_runtime_s": train_time,
        "train_pairs": len(train_ds),
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "learning_rate": cfg.learning_rate,
        "lora_r": cfg.lora_r,
        "trainable_params": trainable,
        "total_params": total,
        "world_size": common.world_size(),
        "base_model": base_name,
        "conversational_pairs": n_conv,
        **guidance.run_summary(trainer.guidance, trainer.state.log_history),
    }
    if eval_ds is not None and len(eval_ds):
        metrics.update(evaluate_reward_model(trained, tok, eval_ds,
                                             replace(cfg, chat_template=chat)))
    else:
        metrics.update({"reward_model_accuracy": None, "eval_loss": None, "eval_pairs": 0})
    # trained on chat-formatted conversations: score (prompt, response) the same way later
    saved = replace(cfg, chat_template=True) if n_conv else cfg
    common.save_trained(trained, tok, out, saved, base_name, FORMAT, META_FILE)
    common.wait_for_everyone()
    return common.clean_metrics(metrics)


def evaluate_reward_model(model: Any, tok: Any, ds: Any,
                          cfg: LMRewardConfig | None = None) -> dict[str, Any]:
    """Held-out numbers of a reward model on pairs (sharded over processes, gathered):
    reward_model_accuracy (ties excluded, equal scores count half), eval_loss (the same
    Bradley–Terry loss as training, without the centring term), counts."""
    cfg = cfg or LMRewardConfig()
    common.check_pairs(ds, "evaluation pairs")
    scorer = RewardScorer(model, tok, max_length=cfg.max_length, chat_template=cfg.chat_template,
                          batch_size=cfg.per_device_eval_batch_size)
    n = len(ds)
    texts = (list(zip(ds["prompt"], ds["chosen"], strict=True))
             + list(zip(ds["prompt"], ds["rejected"], strict=True)))
    scores = torch.tensor(common.gather_map(scorer.score_pairs, texts), dtype=torch.float32)
    s_chosen, s_rejected = scores[:n], scores[n:]
    target = torch.tensor(common.targets_of(ds))
    loss = preference_loss(s_chosen, s_rejected, target, noise=cfg.label_noise,
                           temperature=cfg.temperature)
    return {
        "reward_model_accuracy": preference_accuracy(s_chosen, s_rejected, target),
        "eval_loss": float(loss),
        "eval_pairs": len(ds),
        "eval_ties": int((target == 0.5).sum()),
        "eval_reward_mean": float(torch.cat([s_chosen, s_rejected]).mean()),
        "eval_reward_std": float(torch.cat([s_chosen, s_rejected]).std()),
    }


# --------------------------------------------------------------------------- scoring


class RewardScorer:
    """Batched rewards of (prompt, response) pairs, formatted as in training.

    ``RewardScorer.load(out_dir)`` rebuilds a saved reward model; ``RewardScorer(model,
    tok)`` wraps one in memory. ``score(prompts, responses)`` returns a float32 CPU tensor
    (computed in the calling process alone: each process may score its own texts)."""

    def __init__(self, model: Any, tok: Any, max_length: int = 512, chat_template: bool = False,
                 batch_size: int = 16):
        if tok.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; give it one")
        self.model, self.tok = model, tok
        self.max_length, self.chat_template, self.batch_size = max_length, chat_template, batch_size

    @classmethod
    def load(cls, source: Any, tokenizer: Any = None, base: Any = None,
             device: str | None = None, dtype: Any = None, batch_size: int = 16) -> RewardScorer:
        """From a folder written by :func:`train_reward_model`, or from a model in memory
        (then ``tokenizer`` is needed). ``base`` replaces the recorded base model (a name,
        a path or a ``(model, tokenizer)`` pair), e.g. when training started from a model
        built in memory."""
        if not isinstance(source, str | Path):
            if tokenizer is None:
                raise ValueError("RewardScorer.load(model) needs tokenizer=...")
            return cls(source, tokenizer, batch_size=batch_size)
        from rlhf_hgt.feedback.errors import UserInputError

        folder = Path(source)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise UserInputError(f"{folder}: no {META_FILE}; give the folder a reward model "
                                 f"was saved into (rlhf-hgt lm reward --out DIR)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise UserInputError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT}")
        from transformers import AutoTokenizer

        tok = tokenizer or AutoTokenizer.from_pretrained(str(folder))
        if meta["lora"]:
            from peft import PeftModel

            base_src = base if base is not None else meta.get("base_model")
            if base_src is None:
                raise ValueError(f"{folder}: the reward model was trained from a model built in "
                                 f"memory; pass base=(model, tokenizer) or base=NAME")
            base_model, _, _ = common.load_lm("reward", base_src, device=device, dtype=dtype)
            base_model.config.pad_token_id = tok.pad_token_id
            with peft_quietly():
                model = PeftModel.from_pretrained(base_model, str(folder))
        else:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=dtype)
        if device is not None:
            model.to(device)
        model.eval()
        return cls(model, tok, max_length=meta["max_length"],
                   chat_template=meta["chat_template"], batch_size=batch_size)

    def encode(self, prompt: str, response: str) -> list[int]:
        return encode_response(self.tok, prompt, response, self.max_length, self.chat_template)

    @torch.no_grad()
    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Rewards of (prompt, response) tuples, in this process only."""
        device = common.model_device(self.model)
        was_training = self.model.training
        self.model.eval()
        out: list[float] = []
        pad = self.tok.pad_token_id
        pairs = list(pairs)
        for i in range(0, len(pairs), self.batch_size):
            ids = [self.encode(p, r) for p, r in pairs[i:i + self.batch_size]]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for j, x in enumerate(ids):
                input_ids[j, :len(x)] = torch.tensor(x)
                mask[j, :len(x)] = 1
            logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                use_cache=False).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        if was_training:
            self.model.train()
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Reward of each (prompt, response): float32 tensor of shape (n,)."""
        if isinstance(prompts, str) or isinstance(responses, str):
            raise ValueError("score() takes lists of prompts and responses")
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts and {len(responses)} responses; "
                             f"give one prompt per response")
        pairs = list(zip(prompts, responses, strict=True))
        return torch.tensor(self.score_pairs(pairs), dtype=torch.float32)

    __call__ = score
