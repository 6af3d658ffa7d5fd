"""The language reward model and DPO (TRL + LoRA) on tiny in-memory models, and `lm` CLI runs."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from rlhf_hgt.cli import main as cli_main
from rlhf_hgt.lm import trl_common
from rlhf_hgt.lm.data import format_conversations, load_pairs
from rlhf_hgt.lm.dpo import (
    DPO_LOSS_TYPES,
    LMDPOConfig,
    check_loss_types_match_trl,
    encode_dpo_pair,
    implicit_reward_accuracy,
    implicit_rewards,
    load_policy,
    train_dpo,
)
from rlhf_hgt.lm.reward import (
    LMRewardConfig,
    RewardScorer,
    build_reward_trainer,
    encode_response,
    prepare_reward_model,
    train_reward_model,
)
from rlhf_hgt.lm.tiny import tiny_causal_lm, tiny_reward_lm, tiny_tokenizer
from rlhf_hgt.preference import preference_accuracy, preference_loss

torch.set_num_threads(1)


def lm_main(argv: list[str]) -> int:
    """`rlhf-hgt lm ...` in this process (the word `lm` may be left out)."""
    return cli_main(argv if argv[:1] == ["lm"] else ["lm", *argv])
ROOT = Path(__file__).resolve().parents[1]


def ab_pairs(n: int, seed: int = 0, tie_every: int = 0) -> Dataset:
    """A learnable task: chosen responses are mostly 'a', rejected mostly 'b'."""
    rng = random.Random(seed)
    rows: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "target": []}
    for i in range(n):
        rows["prompt"].append(f"Q{rng.randrange(6)}: ")
        rows["chosen"].append("".join(rng.choice("aaaac") for _ in range(rng.randint(4, 9))))
        rows["rejected"].append("".join(rng.choice("bbbbc") for _ in range(rng.randint(4, 9))))
        rows["target"].append(0.5 if tie_every and i % tie_every == 0 else 1.0)
    return Dataset.from_dict(rows)


def strip_peft(name: str) -> str:
    return name.replace(".base_layer", "").replace(".original_module", "")


# --------------------------------------------------------------------------- reward model


def test_reward_training_moves_adapters_and_head_only(tmp_path):
    model, tok = tiny_reward_lm(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LMRewardConfig(max_steps=5, learning_rate=1e-2, progress=False, eval_fraction=0)
    metrics = train_reward_model((model, tok), ab_pairs(32), None, cfg, tmp_path / "rm")

    params = dict(model.named_parameters())  # wrapped in place by PEFT
    lora = {n: p for n, p in params.items() if "lora_" in n}
    assert any(".self_attn.q_proj.lora_A" in n for n in lora)
    assert any(".mlp.down_proj.lora_A" in n for n in lora)  # all-linear: attention and MLP
    assert all(p.requires_grad for p in lora.values())
    assert any(not torch.all(p == 0) for n, p in lora.items() if "lora_B" in n)  # B starts at 0
    base = {n: p for n, p in params.items() if "lora_" not in n and "modules_to_save" not in n}
    assert base
    for n, p in base.items():
        assert not p.requires_grad, n
        assert torch.equal(p.detach(), before[strip_peft(n)]), f"base weight {n} changed"
    head = params["score.modules_to_save.default.weight"]
    assert head.requires_grad and not torch.equal(head.detach(), before["score.weight"])
    assert 0 < metrics["trainable_params"] < metrics["total_params"]

    from safetensors.torch import load_file

    saved = load_file(tmp_path / "rm" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in saved) and any("score" in k for k in saved)
    assert not list((tmp_path / "rm").glob("*.bin")) and not list((tmp_path / "rm").glob("*.pt"))


def test_reward_accuracy_rises_and_the_saved_scorer_agrees(tmp_path):
    train, test = ab_pairs(96, seed=0), ab_pairs(50, seed=1, tie_every=5)
    cfg = LMRewardConfig(num_train_epochs=3, learning_rate=3e-3, progress=False)
    m = train_reward_model("tiny", train, test, cfg, tmp_path / "rm")
    assert m["eval_pairs"] == 50 and m["eval_ties"] == 10
    assert m["reward_model_accuracy"] >= 0.9  # chance is 0.5
    assert m["train_pairs"] == 96 and m["steps"] == 36  # 12 batches of 8, 3 epochs
    assert math.isfinite(m["train_samples_per_second"])

    scorer = RewardScorer.load(tmp_path / "rm")
    s_c = scorer.score(test["prompt"], test["chosen"])
    s_r = scorer.score(test["prompt"], test["rejected"])
    target = torch.tensor(test["target"])
    assert preference_accuracy(s_c, s_r, target) == pytest.approx(m["reward_model_accuracy"])
    loss = preference_loss(s_c, s_r, target, noise=cfg.label_noise)
    assert float(loss) == pytest.approx(m["eval_loss"], rel=1e-5)
    assert scorer.encode("Q1: ", "aaa") == encode_response(scorer.tok, "Q1: ", "aaa", 512)
    assert scorer.encode("Q1: ", "aaa")[-1] == scorer.tok.eos_token_id
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert meta["base_model"] == "tiny" and meta["lora"] is True


def test_ties_enter_the_loss_as_the_shared_core_says(tmp_path):
    cfg = LMRewardConfig(progress=False, lora_dropout=0.0, center_rewards_coefficient=0.01,
                         label_noise=0.1, eval_fraction=0)
    ds = ab_pairs(8, tie_every=2)
    targets = torch.tensor(ds["target"])
    assert (targets == 0.5).sum() == 4
    model, tok, _ = prepare_reward_model("tiny", cfg)
    trainer = build_reward_trainer(model, tok, ds, cfg, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))  # Trainer keeps the target column
    assert "target" in batch
    rows = [trainer.train_dataset[i] for i in range(8)]
    batch = trainer.data_collator(rows)
    assert torch.equal(batch["target"], targets)

    model.eval()
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        scores = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    c, r = scores.chunk(2)
    expected = (preference_loss(c, r, targets, noise=0.1)
                + 0.01 * torch.mean((c + r) ** 2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    strict = trainer.compute_loss(model, {**batch, "target": torch.ones(8)})
    assert strict.item() != pytest.approx(loss.item(), rel=1e-3)
    # a tie pulls the two rewards together: its term is smallest at equal rewards
    tie = preference_loss(c[:1], r[:1], [0.5], noise=0.1)
    assert float(tie) >= float(preference_loss(c[:1], c[:1], [0.5], noise=0.1)) - 1e-7


def test_reward_training_accepts_ties_end_to_end(tmp_path):
    cfg = LMRewardConfig(max_steps=3, progress=False)
    m = train_reward_model("tiny", ab_pairs(40, tie_every=4), ab_pairs(12, 7, tie_every=3),
                           cfg, tmp_path / "rm")
    assert m["eval_ties"] == 4 and math.isfinite(m["train_loss"])


# --------------------------------------------------------------------------- DPO


def test_dpo_lora_trains_adapters_and_reference_is_the_base(tmp_path):
    model, tok = tiny_causal_lm(seed=2)
    pristine = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LMDPOConfig(max_steps=4, learning_rate=5e-3, progress=False)
    test = ab_pairs(8, seed=3)
    m = train_dpo((model, tok), ab_pairs(32), test, cfg, tmp_path / "dpo")
    assert m["lora_r"] == 16 and m["steps"] == 4

    params = dict(model.named_parameters())
    lora_b = [p for n, p in params.items() if "lora_B" in n]
    assert lora_b and any(not torch.all(p == 0) for p in lora_b)
    for n, p in params.items():
        if "lora_" not in n:
            assert not p.requires_grad, n
            assert torch.equal(p.detach(), before[strip_peft(n)]), f"base weight {n} changed"

    policy, tok2 = load_policy(tmp_path / "dpo", base=(copy.deepcopy(pristine), tok))
    enc = tok2(["Q1: aaaa", "Q2: bbbbbb"], padding=True, return_tensors="pt")
    with torch.no_grad():
        on = policy(**enc).logits
        with policy.disable_adapter():
            off = policy(**enc).logits
        ref = pristine(**enc).logits
    assert torch.equal(off, ref)  # the reference: adapters off = the base, bit for bit
    assert not torch.allclose(on, ref)
    a_off = implicit_reward_accuracy(policy, None, tok2, test, beta=cfg.beta)
    a_copy = implicit_reward_accuracy(policy, pristine, tok2, test, beta=cfg.beta)
    assert a_off == a_copy == pytest.approx(m["implicit_reward_accuracy"])


def test_dpo_implicit_rewards_mirror_trl(tmp_path):
    cfg = LMDPOConfig(max_steps=3, learning_rate=5e-3, per_device_train_batch_size=8,
                      progress=False)
    test = ab_pairs(16, seed=5)  # two full evaluation batches: TRL's batch means = the mean
    m = train_dpo("tiny", ab_pairs(24), test, cfg, tmp_path / "dpo")
    policy, tok = load_policy(tmp_path / "dpo")
    c, r = implicit_rewards(policy, None, tok, test, beta=cfg.beta)
    assert float((c - r).mean()) == pytest.approx(m["eval_rewards_margin"], rel=1e-4, abs=1e-6)
    assert m["implicit_reward_accuracy"] == pytest.approx(m["trl_eval_rewards_accuracies"])
    p, ch, _ = encode_dpo_pair(tok, "Q1: ", "aa", "bb")
    assert ch[-1] == tok.eos_token_id and p == tok("Q1: ")["input_ids"]


def test_dpo_full_parameters_against_a_reference_copy(tmp_path):
    model, tok = tiny_causal_lm(seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LMDPOConfig(lora_r=0, max_steps=1, learning_rate=1e-3, warmup_ratio=0,
                      per_device_train_batch_size=8, eval_fraction=0, progress=False)
    assert LMDPOConfig(lora_r=0).learning_rate == 5e-7
    m = train_dpo((model, tok), ab_pairs(8), ab_pairs(8, 1), cfg, tmp_path / "full")
    # first step: policy == reference copy, so the sigmoid loss is exactly log 2
    assert m["train_loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert m["trainable_params"] == m["total_params"]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    assert (tmp_path / "full" / "model.safetensors").is_file()
    assert m["implicit_reward_accuracy"] is not None


def test_dpo_on_a_model_with_an_adapter_trains_it_against_its_own_frozen_copy(tmp_path,
                                                                             monkeypatch):
    """A PPO policy (a PeftModel) keeps training its adapter under DPO: the reference is the
    adapter as it came (TRL's "ref" adapter), the model is never copied, and it leaves with
    one adapter again."""
    from peft import LoraConfig, get_peft_model

    from rlhf_hgt.lm.models import peft_quietly

    model, tok = tiny_causal_lm(seed=6)
    with peft_quietly():
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    with torch.no_grad():  # an adapter that already moved the policy away from the base
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    adapter_before = {n: p.detach().clone() for n, p in peft.named_parameters() if "lora_" in n}
    base_before = {n: p.detach().clone() for n, p in peft.named_parameters() if "lora_" not in n}

    real_deepcopy = copy.deepcopy

    def no_model_copy(obj, *a, **k):
        if isinstance(obj, torch.nn.Module) and any(True for _ in obj.parameters()):
            raise AssertionError("the model was copied")
        return real_deepcopy(obj, *a, **k)

    monkeypatch.setattr(copy, "deepcopy", no_model_copy)
    cfg = LMDPOConfig(lora_r=0, max_steps=1, learning_rate=1e-2, warmup_ratio=0,
                      per_device_train_batch_size=8, eval_fraction=0, progress=False)
    m = train_dpo((peft, tok), ab_pairs(8), ab_pairs(8, 1), cfg, tmp_path / "again")
    # first step: the policy equals its frozen copy, so the sigmoid loss is exactly log 2
    # (against the bare base it would not be: the adapter had already moved it)
    assert m["train_loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert list(peft.peft_config) == ["default"] and peft.active_adapter == "default"
    after = dict(peft.named_parameters())
    assert any(not torch.equal(after[n], v) for n, v in adapter_before.items())
    assert all(torch.equal(after[n], v) for n, v in base_before.items())
    assert all(after[n].requires_grad for n in adapter_before)
    assert m["implicit_reward_accuracy"] is not None and m["lora_r"] == 4
    monkeypatch.undo()
    saved, _ = load_policy(tmp_path / "again", base=tiny_causal_lm(seed=6))  # an adapter
    ids = tok(["Q1: aaaa"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(saved(input_ids=ids).logits, peft(input_ids=ids).logits)


@pytest.mark.parametrize(("loss_type", "weights", "smoothing", "first_loss"), [
    (("sigmoid",), None, 0.0, math.log(2)),
    (("hinge",), None, 0.0, 1.0),
    (("ipo",), None, 0.0, 25.0),  # (0 - 1/(2 beta))^2
    (("robust",), None, 0.1, math.log(2)),
    (("sigmoid", "hinge"), (1.0, 0.5), 0.0, math.log(2) + 0.5),
])
def test_dpo_loss_variants_pass_through(tmp_path, loss_type, weights, smoothing, first_loss):
    from transformers import TrainerCallback

    seen = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen.update(loss_type=list(args.loss_type), beta=args.beta,
                        label_smoothing=args.label_smoothing, bf16=args.bf16,
                        checkpointing=getattr(args, trl_common.checkpointing_argument()),
                        report_to=args.report_to)

    cfg = LMDPOConfig(loss_type=loss_type, loss_weights=weights, label_smoothing=smoothing,
                      max_steps=1, per_device_train_batch_size=8, eval_fraction=0,
                      progress=False, sft_weight=0.0)  # the preference loss alone: known loss
    m = train_dpo("tiny", ab_pairs(8), None, cfg, tmp_path / "d", callbacks=[Capture()])
    assert seen["loss_type"] == list(loss_type) and seen["beta"] == 0.1
    assert seen["label_smoothing"] == smoothing
    if not torch.cuda.is_available():
        assert seen["bf16"] is False and seen["checkpointing"] is False
    assert seen["report_to"] in ([], "none", ["none"], None)
    # with fresh adapters the policy equals the reference: the first loss is known exactly
    assert m["train_loss"] == pytest.approx(first_loss, rel=1e-5)
    assert m["loss_type"] == "+".join(loss_type)


def test_dpo_sft_weight_adds_an_sft_term(tmp_path):
    """sft_weight 0.1: sigmoid + 0.1 x the chosen side's NLL (TRL's 'sft'), one loss list."""
    from transformers import TrainerCallback

    seen = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen.update(loss_type=list(args.loss_type), weights=list(args.loss_weights))

    cfg = LMDPOConfig(max_steps=1, per_device_train_batch_size=8, eval_fraction=0,
                      progress=False, sft_weight=0.1)
    m = train_dpo("tiny", ab_pairs(8), None, cfg, tmp_path / "d", callbacks=[Capture()])
    assert seen == {"loss_type": ["sigmoid", "sft"], "weights": [1.0, 0.1]}
    assert m["loss_type"] == "sigmoid+sft" and m["loss_weights"] == [1.0, 0.1]
    # the NLL of bytes under a fresh tiny model is about log(vocab): the term shows
    assert m["train_loss"] > math.log(2) + 0.1 * 1.0
    assert LMDPOConfig().trl_losses() == (["sigmoid"], None)  # the default: TRL's plain loss
    assert LMDPOConfig(loss_type="ipo", sft_weight=0.5).trl_losses() == (["ipo", "sft"],
                                                                         [1.0, 0.5])


def test_dpo_drops_ties_and_turns_reversed_pairs(tmp_path):
    ds = ab_pairs(12, tie_every=3)
    rows = ds.to_dict()
    rows["chosen"][1], rows["rejected"][1] = rows["rejected"][1], rows["chosen"][1]
    rows["target"][1] = 0.0
    cfg = LMDPOConfig(max_steps=1, eval_fraction=0, progress=False)
    m = train_dpo("tiny", Dataset.from_dict(rows), None, cfg, tmp_path / "d")
    assert m["train_ties_dropped"] == 4 and m["train_pairs_turned"] == 1
    assert m["train_pairs"] == 8
    from rlhf_hgt.feedback.errors import UserInputError

    with pytest.raises(UserInputError, match="tie"):
        train_dpo("tiny", ab_pairs(4, tie_every=1), None, cfg, tmp_path / "t")


def test_loss_type_list_matches_trl():
    assert check_loss_types_match_trl() == []
    from dataclasses import fields

    from trl import DPOConfig

    help_text = next(f for f in fields(DPOConfig) if f.name == "loss_type").metadata["help"]
    assert all(f"'{t}'" in help_text for t in DPO_LOSS_TYPES)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(("cls", "kw", "hint"), [
    (LMRewardConfig, {"lora_r": -1}, "lora_r must be >= 0"),
    (LMRewardConfig, {"label_noise": 1.0}, "0 <= label_noise < 1"),
    (LMRewardConfig, {"learning_rate": 0}, "2e-4"),
    (LMRewardConfig, {"eval_fraction": 1.0}, "0.1 is usual"),
    (LMRewardConfig, {"max_steps": 0}, "-1 for no limit"),
    (LMRewardConfig, {"num_train_epochs": 0}, "None for automatic"),
    (LMRewardConfig, {"lora_dropout": 1.0}, "[0, 1)"),
    (LMDPOConfig, {"beta": 0}, "0.1 is usual"),
    (LMDPOConfig, {"loss_type": "nope"}, "sigmoid, hinge, ipo"),
    (LMDPOConfig, {"loss_type": ("sigmoid", "ipo"), "loss_weights": (1.0,)}, "one weight per"),
    (LMDPOConfig, {"loss_type": "exo_pair"}, "1e-3"),
    (LMDPOConfig, {"label_smoothing": 0.5}, "[0, 0.5)"),
    (LMDPOConfig, {"sft_weight": -1.0}, "0 turns the term off"),
    (LMDPOConfig, {"loss_type": ("sigmoid", "sft"), "sft_weight": 0.1}, "already holds"),
    (LMDPOConfig, {"per_device_train_batch_size": 0}, "batch_size must be >= 1"),
    (LMDPOConfig, {"num_train_epochs": 0}, "num_train_epochs must be > 0"),
])
def test_bad_config_values_say_how_to_fix(cls, kw, hint):
    with pytest.raises(ValueError, match=None) as info:
        cls(**kw)
    assert hint in str(info.value)


def test_old_setting_names_still_build_the_same_config():
    """Renamed to TRL's names; the old ones work for one release, with a DeprecationWarning."""
    old_names = {"target_modules": ("q_proj",), "lr_scheduler": "cosine", "batch_size": 4,
                 "grad_accum": 2, "eval_batch_size": 3, "gradient_checkpointing": True,
                 "epochs": 1.5}
    new_names = {"lora_target_modules": ("q_proj",), "lr_scheduler_type": "cosine",
                 "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                 "per_device_eval_batch_size": 3, "activation_checkpointing": True,
                 "num_train_epochs": 1.5}
    for cls, extra_old, extra_new in (
            (LMRewardConfig, {"center_rewards": 0.1}, {"center_rewards_coefficient": 0.1}),
            (LMDPOConfig, {}, {})):
        with pytest.warns(DeprecationWarning) as seen:
            old = cls(**old_names, **extra_old)
        assert old == cls(**new_names, **extra_new)
        assert len(seen) == len(old_names) + len(extra_old)
        with pytest.warns(DeprecationWarning, match=r"\.grad_accum is now"):
            assert old.grad_accum == 2


def test_config_defaults_suit_few_labels():
    cfg = LMRewardConfig()
    assert cfg.lora_r == 16 and 1e-4 <= cfg.learning_rate <= 5e-4
    assert cfg.center_rewards_coefficient > 0
    assert cfg.resolved_epochs(400) == 4  # 400 pairs: 200 steps of 8
    assert cfg.resolved_epochs(3200) == 1 and cfg.resolved_epochs(40) == cfg.max_auto_epochs
    assert LMDPOConfig().learning_rate == 5e-5 and LMDPOConfig().beta == 0.1
    assert LMDPOConfig().sft_weight == 0


def test_precision_on_this_machine():
    from trl import RewardConfig

    cfg = LMRewardConfig(learning_rate=1e-4, per_device_train_batch_size=2, weight_decay=0,
                         warmup_ratio=0, activation_checkpointing=True)
    args = RewardConfig(**cfg.training_kwargs("unused", num_train_epochs=1))
    assert args.report_to in ([], "none", ["none"], None)
    assert args.dataloader_num_workers == 0
    if torch.cuda.is_available():
        assert args.bf16 == torch.cuda.is_bf16_supported()
    else:
        assert args.use_cpu and args.bf16 is False and args.fp16 is False
        assert getattr(args, trl_common.checkpointing_argument()) is False  # asked, but no GPU


# --------------------------------------------------------------------------- CLI


def write_jsonl(path: Path, n: int = 24, **override) -> Path:
    rng = random.Random(0)
    with open(path, "w") as fh:
        for i in range(n):
            rec = {"prompt": f"Q{i % 6}: ",
                   "chosen": "".join(rng.choice("aaac") for _ in range(6)),
                   "rejected": "".join(rng.choice("bbbc") for _ in range(6)), **override}
            fh.write(json.dumps(rec) + "\n")
    return path


@pytest.mark.parametrize("cmd", ["reward", "dpo"])
def test_cli_runs_write_metrics_adapter_and_manifest(tmp_path, cmd):
    data = write_jsonl(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    rc = lm_main(["lm", cmd, "--model", "tiny", "--data", str(data), "--out", str(out),
                  "--max-steps", "2", "--quiet", "--lora-r", "4", "--seed", "3"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["command"] == f"lm {cmd}" and metrics["steps"] == 2
    assert metrics["lora_r"] == 4 and metrics["pairs"] == 24
    key = "reward_model_accuracy" if cmd == "reward" else "implicit_reward_accuracy"
    assert 0 <= metrics[key] <= 1 and metrics["eval_pairs"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 3 and manifest["data"]["data"]["sha256"]
    assert "adapter_model.safetensors" in manifest["checkpoints"]
    card = (out / "README.md").read_text()  # the model card beside the adapter
    assert card.startswith("---\n") and "library_name: \"peft\"" in card
    assert "## Human guidance" in card and ("Reward model" if cmd == "reward" else "DPO") in card


def conversation_rows(n: int) -> list[dict]:
    """TRL's conversational preference form with an implicit prompt (the shared user turn)."""
    user = [{"role": "user", "content": f"Q{i}?"} for i in range(n)]
    return [{"chosen": [user[i], {"role": "assistant", "content": "a" * (3 + i % 3)}],
             "rejected": [user[i], {"role": "assistant", "content": "b" * (3 + i % 4)}]}
            for i in range(n)]


def test_conversations_take_the_models_chat_format():
    tok = tiny_tokenizer()
    rows = conversation_rows(4)
    ds = Dataset.from_list([{"prompt": "<|user|>\nQ?\n", "chosen": "x", "rejected": "y",
                             "messages": json.dumps({"prompt": r["chosen"][:1],
                                                     "chosen": r["chosen"][1:],
                                                     "rejected": r["rejected"][1:]})}
                            for r in rows])
    (fmt,), chat, n = format_conversations(tok, False, ds)
    assert (chat, n) == (False, 4)
    for k, r in enumerate(rows):
        head = tok.apply_chat_template(r["chosen"][:1], tokenize=False,
                                       add_generation_prompt=True)
        assert fmt["prompt"][k] == head and "<eos>" in head  # the template's, not our markers
        assert fmt["prompt"][k] + fmt["chosen"][k] == tok.apply_chat_template(r["chosen"],
                                                                             tokenize=False)
        assert fmt["prompt"][k] + fmt["rejected"][k] == tok.apply_chat_template(
            r["rejected"], tokenize=False)
    plain = ab_pairs(4)  # no conversations: nothing changes, the flag neither
    (same,), chat, n = format_conversations(tok, True, plain)
    assert same is plain and (chat, n) == (True, 0)
    mixed = Dataset.from_list([{**ab_pairs(1)[0], "messages": ""}])  # text wrapped alike
    (_, wrapped), chat, n = format_conversations(tok, True, ds, mixed)
    assert wrapped["prompt"][0] == tok.apply_chat_template(
        [{"role": "user", "content": mixed["prompt"][0]}], tokenize=False,
        add_generation_prompt=True) and (chat, n) == (False, 4)


@pytest.mark.parametrize("cmd", ["reward", "dpo"])
def test_cli_trains_on_conversational_files_in_chat_format(tmp_path, cmd):
    data = tmp_path / "conv.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in conversation_rows(16)))
    ds = load_pairs(data)
    assert json.loads(ds["messages"][0])["prompt"] == conversation_rows(1)[0]["chosen"][:1]
    from rlhf_hgt.feedback.jsonl import import_jsonl

    import_jsonl(tmp_path / "s.db", data)  # a store keeps the messages, oriented per answer
    stored = load_pairs(store=tmp_path / "s.db")
    cols = ("prompt", "chosen", "rejected", "messages")
    def rows(d: Dataset) -> list[tuple]:
        return sorted(zip(*(d[c] for c in cols), strict=True))

    assert rows(stored) == rows(ds)
    out = tmp_path / "run"
    rc = lm_main(["lm", cmd, "--model", "tiny", "--data", str(data), "--out", str(out),
                  "--max-steps", "1", "--quiet", "--lora-r", "4"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["conversational_pairs"] == 16 and metrics["eval_pairs"] > 0
    meta = json.loads((out / ("reward_model.json" if cmd == "reward" else "dpo_model.json"))
                      .read_text())
    assert meta["chat_template"] is True  # later scoring formats (prompt, response) alike


@pytest.mark.parametrize(("argv", "message"), [
    (["reward", "--model", "tiny", "--out", "{out}"], "exactly one source"),
    (["reward", "--model", "tiny", "--data", "{data}", "--store", "{data}", "--out", "{out}"],
     "not both"),
    (["reward", "--model", "tiny", "--data", "{tmp}/missing.jsonl", "--out", "{out}"],
     "no such file"),
    (["reward", "--model", "{tmp}/no/such/model", "--data", "{data}", "--out", "{out}"],
     "model"),
    (["reward", "--model", "tiny", "--data", "{data}", "--out", "{out}", "--lr", "-1"],
     "--learning-rate"),  # the flag --lr is the old name of
    (["dpo", "--model", "tiny", "--data", "{data}", "--out", "{out}", "--loss-type", "nope"],
     "--loss-type"),
    (["reward", "--model", "tiny", "--data", "{empty_prompt}", "--out", "{out}"], "prompt"),
    (["dpo", "--model", "tiny", "--data", "{no_rejected}", "--out", "{out}"], "rejected"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, message):
    data = write_jsonl(tmp_path / "pairs.jsonl")
    empty_prompt = write_jsonl(tmp_path / "empty_prompt.jsonl", prompt="")
    no_rejected = tmp_path / "no_rejected.jsonl"
    no_rejected.write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    out = tmp_path / "run"
    subs = {"out": str(out), "data": str(data), "tmp": str(tmp_path),
            "empty_prompt": str(empty_prompt), "no_rejected": str(no_rejected)}
    rc = lm_main([a.format(**subs) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("rlhf-hgt: error:") and message in err
    assert "Traceback" not in err
    assert not out.exists()


def test_old_lm_entry_module_still_runs_a_command(tmp_path):
    """`python -m rlhf_hgt.lm.cli [lm] ...` (the old entry, in users' accelerate scripts)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    bad = subprocess.run([sys.executable, "-m", "rlhf_hgt.lm.cli", "dpo", "--model", "tiny",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "exactly one source" in bad.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_top_level_cli_runs_lm_reward(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", "lm", "reward", "--model",
                           "tiny", "--data", str(data), "--out", str(out), "--max-steps", "2",
                           "--quiet"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    bad = subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", "lm", "dpo", "--model", "tiny",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "exactly one source" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_chat_template_formatting_for_reward_and_dpo(tmp_path):
    cfg = LMRewardConfig(chat_template=True, max_steps=1, progress=False)
    m = train_reward_model("tiny", ab_pairs(16), ab_pairs(6, 2), cfg, tmp_path / "rm")
    assert m["steps"] == 1
    scorer = RewardScorer.load(tmp_path / "rm")
    assert scorer.chat_template
    text = scorer.tok.decode(scorer.encode("Q1: ", "aaa"))
    assert text.startswith("<|user|>\nQ1: <eos>") and "<|assistant|>\naaa<eos>" in text
    dcfg = LMDPOConfig(chat_template=True, max_steps=1, progress=False)
    dm = train_dpo("tiny", ab_pairs(16), ab_pairs(6, 2), dcfg, tmp_path / "dpo")
    assert dm["implicit_reward_accuracy"] is not None
    policy, tok = load_policy(tmp_path / "dpo")
    p, c, _ = encode_dpo_pair(tok, "Q1: ", "aaa", "bbb", chat_template=True)
    assert tok.decode(p).endswith("<|assistant|>\n") and tok.decode(c).startswith("aaa")


def test_reward_full_finetuning_saves_a_whole_model(tmp_path):
    cfg = LMRewardConfig(lora_r=0, max_steps=2, progress=False)
    assert cfg.learning_rate == 1e-5
    test = ab_pairs(8, 3)
    m = train_reward_model("tiny", ab_pairs(16), test, cfg, tmp_path / "rm")
    assert m["trainable_params"] == m["total_params"]
    assert (tmp_path / "rm" / "model.safetensors").is_file()
    scorer = RewardScorer.load(tmp_path / "rm")
    s_c = scorer.score(test["prompt"], test["chosen"])
    s_r = scorer.score(test["prompt"], test["rejected"])
    assert preference_accuracy(s_c, s_r, torch.ones(8)) == pytest.approx(
        m["reward_model_accuracy"])
