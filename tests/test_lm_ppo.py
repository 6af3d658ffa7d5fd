"""Our LoRA PPO for language models: the pure functions against values computed by hand, the
trainer on tiny in-memory models, and the CLI end to end."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from rlhf_hgt.cli import build_parser
from rlhf_hgt.cli import main as cli_main
from rlhf_hgt.cli.lm_policy import run_ppo as run_ppo_command
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.lm import ppo_core as core
from rlhf_hgt.lm.models import peft_quietly
from rlhf_hgt.lm.ppo import LMPPOConfig, LMPPOTrainer, as_batch_scorer, prompt_list
from rlhf_hgt.lm.tiny import tiny_causal_lm

torch.set_num_threads(1)
PROMPTS = ["hello", "the cat sat", "x", "a much longer prompt than the others"]
LETTERS = set("abcdefghijklmnopqrstuvwxyz")


def close(a, b, tol: float = 1e-5) -> bool:
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


# ----------------------------------------------------------------------------- pure functions


def test_masked_mean_and_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [100.0, 5.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    assert close(core.masked_mean(x, mask), 2.75)
    assert close(core.masked_var(x, mask), 8.75 / 3)  # Bessel: (3.0625+.5625+.0625+5.0625)/3
    w = core.masked_whiten(x, mask)
    sd = math.sqrt(8.75 / 3)
    expect = torch.tensor([[-1.75 / sd, -0.75 / sd, 0.25 / sd], [0.0, 2.25 / sd, 0.0]])
    assert close(w, expect)
    kept = core.masked_whiten(x, mask, shift_mean=False)
    assert close(kept, (expect + 2.75) * mask)
    assert core.masked_mean(x, torch.zeros_like(mask)) == 0  # empty mask: 0, not NaN


def test_response_mask_stops_after_first_eos():
    tokens = torch.tensor([[5, 1, 3, 1], [5, 6, 7, 8], [1, 9, 9, 9]])
    mask, finished = core.response_mask(tokens, [1])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]
    mask, finished = core.response_mask(tokens, [1, 7])  # several end tokens
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]
    assert finished.tolist() == [True, True, True]


def test_kl_estimators_by_hand_and_unbiased():
    p, q = torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))
    assert close(core.kl_k1(p, q), math.log(2))
    assert close(core.kl_k2(p, q), 0.5 * math.log(2) ** 2)
    assert close(core.kl_k3(p, q), -0.5 + math.log(2))  # r = q/p = 0.5: (r-1) - log r
    # Monte Carlo under p: k1 and k3 both estimate KL(p||q)
    gen = torch.Generator().manual_seed(0)
    probs_p, probs_q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    true_kl = float((probs_p * (probs_p / probs_q).log()).sum())
    s = torch.multinomial(probs_p, 200_000, replacement=True, generator=gen)
    lp, lq = probs_p.log()[s], probs_q.log()[s]
    assert abs(float(core.kl_k1(lp, lq).mean()) - true_kl) < 0.01
    assert abs(float(core.kl_k3(lp, lq).mean()) - true_kl) < 0.01
    assert float(core.kl_k3(lp, lq).min()) >= 0


def test_token_rewards_score_at_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    r = core.token_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    assert close(r, [[-0.05, -0.1, 0.85], [1.75, 0.0, 0.0]])


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = core.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: A2 = 1 - .5 = .5; A1 = 0 + .5*.5 = .25; A0 = .5*.25 = .125
    # row 1: last token is t=1 (V after it is 0): A1 = 2 - 1 = 1; A0 = (1 - 1) + .5*1 = .5
    assert close(adv, [[0.125, 0.25, 0.5], [0.5, 1.0, 0.0]])
    assert close(ret, [[0.625, 0.75, 1.0], [1.5, 2.0, 0.0]])
    # gamma .9, lambda 1, values 0: discounted returns
    adv, _ = core.gae(torch.tensor([[1.0, 0.0, 2.0]]), torch.zeros(1, 3), torch.ones(1, 3),
                      gamma=0.9, lam=1.0)
    assert close(adv, [[1 + 0.81 * 2, 0.9 * 2, 2.0]])


def test_clipped_policy_loss_by_hand():
    logp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1)]])
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    out = core.policy_loss(logp, torch.zeros_like(logp), adv, torch.ones_like(logp), 0.2)
    # -1.2 (clipped at 1.2), -0.5 (the pessimistic unclipped), +1.1 (inside the range)
    assert close(out.loss, (-1.2 - 0.5 + 1.1) / 3)
    assert close(out.clipfrac, 1 / 3)
    k3 = [1 / r - 1 + math.log(r) for r in (1.5, 0.5, 1.1)]
    assert close(out.approx_kl, sum(k3) / 3)
    # a normaliser (the minibatch's token count) replaces the mask's count
    half = core.policy_loss(logp, torch.zeros_like(logp), adv, torch.ones_like(logp), 0.2,
                            normaliser=6.0)
    assert close(half.loss, out.loss / 2)


def test_clipped_value_loss_by_hand():
    out = core.value_loss(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2),
                          torch.tensor([[1.0, 2.0]]), torch.ones(1, 2), 0.2)
    assert close(out.loss, 0.5 * (0.64 + 4.0) / 2)  # (0.2-1)^2 wins over 0 when clipped
    assert close(out.clipfrac, 0.5)


def test_kl_controller_direction():
    ctl = core.KLController(0.1, target=6.0, horizon=100)
    assert close(ctl.update(12.0, 10), 0.1 * 1.02)  # above target: grows (error clipped .2)
    assert close(ctl.update(3.0, 10), 0.1 * 1.02 * 0.98)  # below target: shrinks
    assert close(ctl.update(6.3, 10), 0.1 * 1.02 * 0.98 * 1.005)
    fixed = core.KLController(0.1)
    assert fixed.update(100.0, 1000) == 0.1
    with pytest.raises(ValueError):
        core.KLController(0.1, target=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_match_log_softmax_with_gradients(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 11, generator=gen) * 3).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 11, (2, 3), generator=gen)
    weights = torch.randn(2, 3, generator=gen)
    lp, ent = core.token_logprobs(logits, tokens, temperature=0.7, with_entropy=True)
    (lp * weights).sum().backward()
    ref_logits = logits.detach().float().requires_grad_(True)
    ref_all = torch.log_softmax(ref_logits / 0.7, -1)
    ref_lp = ref_all.gather(-1, tokens[..., None]).squeeze(-1)
    (ref_lp * weights).sum().backward()
    assert lp.dtype == torch.float32
    assert close(lp, ref_lp.detach(), 1e-5)
    assert close(ent, -(ref_all.exp() * ref_all).sum(-1).detach(), 1e-5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert logits.grad.dtype == dtype
    assert close(logits.grad.float(), ref_logits.grad, tol)


# ----------------------------------------------------------------------------- the trainer


def tiny(seed: int = 0):
    """A tiny model whose output layer is scaled up, so its distributions are not flat."""
    model, tok = tiny_causal_lm(seed=seed)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(seed))
    return model, tok


def letters(prompt: str, response: str) -> float:
    return float(sum(c in LETTERS for c in response))


def make_trainer(reward=letters, seed: int = 0, **kw) -> LMPPOTrainer:
    model, tok = tiny(seed)
    opts = {"batch_size": 8, "mini_batch_size": 4, "response_length": 6, "lora_r": 4,
            "learning_rate": 3e-3, "temperature": 1.0, "use_chat_template": False, "seed": seed,
            "device": "cpu", **kw}
    return LMPPOTrainer(model, tok, reward, LMPPOConfig(**opts))


def test_config_checks_say_how_to_fix():
    with pytest.raises(ValueError, match="must divide batch_size"):
        LMPPOConfig(batch_size=10, mini_batch_size=4)
    with pytest.raises(ValueError, match="lora_r"):
        LMPPOConfig(lora_r=-1)
    assert LMPPOConfig(lora_r=0).full_finetune and not LMPPOConfig().full_finetune
    assert LMPPOConfig(lora_r=0).learning_rate == 1e-6  # per mode
    assert LMPPOConfig().learning_rate == 3e-5
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        LMPPOConfig(mini_batch_size=4, batch_size=8, gradient_accumulation_steps=3)
    with pytest.raises(ValueError, match="target_kl"):
        LMPPOConfig(target_kl=-1.0)
    cfg = LMPPOConfig(lora_r=8)
    assert cfg.lora_alpha == 16 and cfg.value_head_lr == 3e-4


def test_reward_wrapping_and_prompt_lists():
    class Model:
        def score(self, prompts, responses):
            return torch.tensor([float(len(r)) for r in responses])

    assert as_batch_scorer(Model())(["p", "q"], ["ab", "c"]).tolist() == [2.0, 1.0]
    assert as_batch_scorer(letters)(["p"], ["ab1"]).tolist() == [2.0]
    with pytest.raises(TypeError):
        as_batch_scorer(3)
    assert prompt_list([{"prompt": "a"}, "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="prompt 1"):
        prompt_list(["a", ""])


def test_kl_zero_at_start_base_frozen_adapter_and_head_move():
    trainer = make_trainer()
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    assert any("lora_B" in n for n in before)
    stats = trainer.step(PROMPTS * 2)
    # LoRA B starts at zero: policy == reference exactly, so every KL is exactly 0
    assert stats["kl_k1"] == 0.0 and stats["kl_k3"] == 0.0
    for key in ("score", "entropy", "policy_clipfrac", "value_clipfrac", "approx_kl",
                "value_loss", "policy_loss", "kl_coef", "response_length", "tokens_per_s",
                "generate_tokens_per_s", "peak_memory_mb"):
        assert key in stats and math.isfinite(stats[key]), key
    after = dict(trainer.policy.named_parameters())
    for name, old in before.items():
        same = torch.equal(old, after[name].detach())
        if "lora_" in name or name.startswith("value_head."):
            if "lora_A" not in name:  # A may move little; B and the head must move
                assert not same, f"{name} did not change"
        else:
            assert same, f"base weight {name} changed"
    assert trainer.step(PROMPTS * 2)["kl_k3"] > 0  # now the policy has moved


def test_reference_is_exactly_the_base_model():
    trainer = make_trainer()
    trainer.step(PROMPTS * 2)
    base, tok = tiny(0)  # built separately, same seed
    ids = tok(["hello world"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        with trainer.lm.disable_adapter():
            reference = trainer.lm(input_ids=ids).logits
        policy = trainer.lm(input_ids=ids).logits
    assert torch.equal(reference, expected)
    assert not torch.equal(policy, expected)


def test_full_finetuning_trains_every_weight_against_a_frozen_copy(tmp_path):
    trainer = make_trainer(lora_r=0, learning_rate=1e-3)
    assert not any("lora_" in n for n, _ in trainer.policy.named_parameters())
    before = {n: p.detach().clone() for n, p in trainer.lm.named_parameters()}
    stats = trainer.step(PROMPTS * 2)
    assert stats["kl_k1"] == 0.0 and stats["kl_k3"] == 0.0  # the copy equals the policy at 0
    moved = [n for n, p in trainer.lm.named_parameters() if not torch.equal(before[n], p)]
    assert len(moved) > len(before) // 2, moved  # base weights train (not only a few)
    base, tok = tiny(0)
    ids = tok(["hello world"], return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the reference is still exactly the base; the policy is not
        assert torch.equal(trainer.reference.lm(input_ids=ids).logits, base(input_ids=ids).logits)
        assert not torch.equal(trainer.lm(input_ids=ids).logits, base(input_ids=ids).logits)
    assert trainer.step(PROMPTS * 2)["kl_k3"] > 0
    out = trainer.save(tmp_path / "full")
    assert (out / "model.safetensors").is_file() and (out / "value_head.safetensors").is_file()


def test_full_finetuning_of_a_bf16_model_trains_in_fp32():
    """bf16 weights would swallow AdamW steps of ~1e-6: full fine-tuning trains in fp32."""
    model, tok = tiny(0)
    model = model.to(torch.bfloat16)
    trainer = LMPPOTrainer(model, tok, letters, LMPPOConfig(
        lora_r=0, learning_rate=1e-6, batch_size=8, mini_batch_size=8, response_length=6,
        temperature=1.0, use_chat_template=False, device="cpu"))
    assert all(p.dtype == torch.float32 for p in trainer.lm.parameters())
    before = {n: p.detach().clone() for n, p in trainer.lm.named_parameters()}
    trainer.step(PROMPTS * 2)
    moved = sum(not torch.equal(before[n], p) for n, p in trainer.lm.named_parameters())
    assert moved > len(before) // 2


def test_batched_left_padded_greedy_equals_one_by_one():
    trainer = make_trainer(response_length=8)
    batched = trainer.generate(PROMPTS, greedy=True)
    single = [trainer.generate([p], greedy=True)[0] for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) > 1  # the prompts do matter


def test_rollout_cuts_at_first_eos_and_penalises_unfinished():
    trainer = make_trainer(missing_eos_penalty=5.0, response_length=5)
    eos, a = trainer.tokenizer.eos_token_id, trainer.tokenizer.convert_tokens_to_ids("a")
    tail = torch.tensor([[a, eos, a, a, eos], [a, a, a, a, a]])

    def fake_generate(input_ids, attention_mask, **kw):
        return torch.cat([input_ids, tail.repeat(len(input_ids) // 2, 1)], 1)

    trainer.policy.lm.generate = fake_generate
    ro = trainer._rollout(["hi", "there"])
    assert ro.mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert ro.finished.tolist() == [True, False]
    assert ro.response_ids[0, 2:].eq(trainer.tokenizer.pad_token_id).all()
    assert trainer.decode(ro) == ["a", "aaaaa"]
    stats = trainer.step(["hi", "there"] * 4)
    assert stats["non_eos_fraction"] == 0.5
    assert stats["response_length"] == 3.5
    assert stats["score"] == 3.0  # raw scores 1 and 5: the penalty goes into the reward only
    assert stats["reward"] == pytest.approx(3.0 - 2.5)  # KL is 0 at step 0


def test_ppo_increases_a_simple_reward():
    trainer = make_trainer(batch_size=16, mini_batch_size=8, response_length=8, lora_r=8)
    history = trainer.train(PROMPTS, steps=30)
    scores = [h["score"] for h in history]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 2.0, (first, last)  # letters among 8 tokens: about 0.7 at the start
    assert history[-1]["kl_k1"] > 0


def test_train_callback_stops_and_save_round_trips(tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    trainer = make_trainer()
    seen = []
    history = trainer.train(PROMPTS, steps=5, callback=lambda s: seen.append(s) or len(seen) < 2)
    assert len(history) == 2 and trainer.step_count == 2
    out = trainer.save(tmp_path / "ckpt")
    assert (out / "adapter_model.safetensors").is_file()
    head = load_file(str(out / "value_head.safetensors"))
    assert torch.equal(head["weight"], trainer.policy.value_head.weight.detach())
    assert json.loads((out / "ppo_config.json").read_text())["lora_r"] == 4
    base, tok = tiny(0)
    with peft_quietly():
        loaded = PeftModel.from_pretrained(base, str(out))
    ids = tok(["abc"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, trainer.lm(input_ids=ids).logits)


def _reseed(trainer: LMPPOTrainer, seed: int) -> None:
    torch.manual_seed(seed)
    trainer.rng.manual_seed(seed)


@pytest.mark.parametrize("rank", [4, 0])  # LoRA, and full fine-tuning
def test_save_and_restore_resume_where_the_trainer_stopped(tmp_path, rank):
    """One update, save, restore into a new trainer: weights, value head, optimiser moments,
    update count and adaptive KL coefficient match, and the next update is the same."""
    kw = {"lora_r": rank, "target_kl": 0.01, "kl_horizon": 10}
    first = make_trainer(**kw)
    first.train(PROMPTS, steps=1)
    assert first.kl_ctl.value != first.config.kl_coef  # the adaptive coefficient moved
    first.save(tmp_path / "ck")
    second = make_trainer(**kw)
    second.restore(tmp_path / "ck")
    assert second.step_count == 1 and second.kl_ctl.value == first.kl_ctl.value
    for (name, a), b in zip(first.policy.named_parameters(), second.policy.parameters(),
                            strict=True):
        assert torch.equal(a, b), name
    moments = [(first.optimizer.state[a], second.optimizer.state[b])
               for a, b in zip(first.policy.parameters(), second.policy.parameters(),
                               strict=True) if a.requires_grad]
    assert moments and all(torch.equal(x["exp_avg_sq"], y["exp_avg_sq"]) for x, y in moments)
    for trainer in (first, second):
        _reseed(trainer, 7)
        trainer.step(PROMPTS)
    for a, b in zip(first.policy.parameters(), second.policy.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert second.step_count == 2 and second.kl_ctl.value == pytest.approx(first.kl_ctl.value)


def test_restore_refuses_a_checkpoint_of_another_shape(tmp_path):
    make_trainer(lora_r=4).save(tmp_path / "r4")
    with pytest.raises(UserInputError, match="another shape"):
        make_trainer(lora_r=8).restore(tmp_path / "r4")
    with pytest.raises(UserInputError, match="model.safetensors: missing"):
        make_trainer(lora_r=0).restore(tmp_path / "r4")
    with pytest.raises(UserInputError, match="trainer_state.json"):
        make_trainer().restore(tmp_path)


def test_old_setting_names_still_build_the_same_config():
    new = LMPPOConfig(learning_rate=1e-4, num_ppo_epochs=2, kl_coef=0.1, response_length=5,
                      local_rollout_forward_batch_size=2, activation_checkpointing=True)
    with pytest.warns(DeprecationWarning) as seen:
        old = LMPPOConfig(lr=1e-4, ppo_epochs=2, init_kl_coef=0.1, max_new_tokens=5,
                          forward_batch_size=2, gradient_checkpointing=True)
    assert old == new and len(seen) == 6
    assert "LMPPOConfig(lr=...) is now learning_rate=..." in str(seen[0].message)
    with pytest.warns(DeprecationWarning, match="LMPPOConfig.ppo_epochs is now"):
        assert old.ppo_epochs == 2


# ----------------------------------------------------------------------------- the CLI


def _args(*argv: str) -> argparse.Namespace:
    words = ["lm", "ppo", *argv]
    return build_parser(words).parse_args(words)


def main(argv: list[str]) -> int:
    return cli_main(["lm", "ppo", *argv])


@pytest.mark.parametrize("rank", [2, 0])  # LoRA, and full fine-tuning
def test_cli_end_to_end_with_tiny_model(tmp_path, rank):
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "Review Alien:", "chosen": "great", "rejected": "bad"},
        {"prompt": "Review Heat:", "a": "x", "b": "y"},
        {"prompt": "Say hi"}, {"prompt": "Say hi"}]) + "\n")
    out = tmp_path / "run"
    args = _args("--data", str(data), "--out", str(out), "--model", "tiny", "--reward",
                 "length", "--steps", "2", "--batch-size", "4", "--mini-batch-size", "2",
                 "--max-new-tokens", "6", "--lora-r", str(rank), "--device", "cpu", "--quiet")
    assert run_ppo_command(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and len(metrics["curve"]) == 2 and metrics["prompts"] == 3
    assert metrics["final"]["kl_k1"] == metrics["final"]["kl_k1"]  # a number
    weights = "checkpoints/" + ("adapter_model" if rank else "model") + ".safetensors"
    assert (out / weights).is_file()
    assert (out / "checkpoints" / "value_head.safetensors").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert weights in manifest["checkpoints"]
    assert manifest["config"]["lora_r"] == rank and manifest["data"]["data"]["sha256"]


def test_cli_bad_input_exit_2_and_nothing_written(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "ok"}\n{"chosen": "no prompt"}\n')
    out = tmp_path / "run"
    with pytest.raises(UserInputError, match=r"bad.jsonl:2: field \"prompt\" is missing"):
        run_ppo_command(_args("--data", str(data), "--out", str(out), "--model", "tiny",
                              "--reward", "length"))
    rc = main(["--data", str(data), "--out", str(out), "--model", "tiny", "--reward", "length"])
    assert rc == 2 and "bad.jsonl:2" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "ok"}\n')
    assert main(["--data", str(good), "--out", str(out), "--model", "tiny"]) == 2  # no reward
    assert main(["--data", str(good), "--out", str(out), "--model", "tiny", "--reward-model",
                 str(tmp_path / "missing")]) == 2
    assert main(["--store", str(tmp_path / "nostore.db"), "--out", str(out), "--model", "tiny",
                 "--reward", "length"]) == 2
    assert main(["--data", str(good), "--out", str(out), "--model", "tiny", "--reward",
                 "length", "--batch-size", "3", "--mini-batch-size", "2"]) == 2
    assert not out.exists()


def test_conversational_prompts_of_one_user_message(tmp_path):
    from rlhf_hgt.feedback.jsonl import import_jsonl
    from rlhf_hgt.lm.data import read_prompts

    user = [{"role": "user", "content": "Review Alien:"}]
    data = tmp_path / "conv.jsonl"
    data.write_text(json.dumps({"prompt": user, "chosen": [{"role": "assistant", "content": "A"}],
                                "rejected": [{"role": "assistant", "content": "B"}]}) + "\n"
                    + json.dumps({"prompt": "Say hi"}) + "\n")
    assert read_prompts(str(data), None) == ["Review Alien:", "Say hi"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(data.read_text().splitlines()[0] + "\n")
    import_jsonl(tmp_path / "s.db", pairs)  # the store keeps the messages: the same text
    assert read_prompts(None, str(tmp_path / "s.db")) == ["Review Alien:"]
    multi = tmp_path / "multi.jsonl"
    multi.write_text(json.dumps({"prompt": user + user}) + "\n")
    with pytest.raises(UserInputError, match="one user message"):
        read_prompts(str(multi), None)


def test_gradient_checkpointing_recomputes_and_gives_the_same_update():
    results = []
    for checkpointing in (False, True):
        trainer = make_trainer(activation_checkpointing=checkpointing, num_ppo_epochs=1)
        attn = trainer.lm.get_base_model().model.layers[0].self_attn
        calls: list[int] = []
        attn.register_forward_hook(lambda *a, seen=calls: seen.append(1))
        trainer.step(PROMPTS * 2)
        lora = [p.detach().clone() for n, p in trainer.policy.named_parameters()
                if "lora_B" in n]
        results.append((len(calls), lora))
        assert not any(m.training for m in trainer.lm.modules())  # eval mode again
    (plain_calls, plain), (ckpt_calls, ckpt) = results
    assert ckpt_calls > plain_calls  # the backward pass recomputed the layer
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, ckpt, strict=True))


@pytest.mark.slow
def test_two_processes_train_one_model_under_torchrun(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "rlhf_hgt.lm.ppo_cli", "--data", str(data), "--out",
           str(out), "--model", "tiny", "--reward", "length", "--steps", "2", "--batch-size",
           "2", "--mini-batch-size", "2", "--gradient-accumulation-steps", "2",
           "--max-new-tokens", "4", "--quiet"]
    errors = []
    for _ in range(2):  # one retry: the launcher's free-port pick can race on a shared host
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its two workers
            proc.communicate()
            raise
        if proc.returncode == 0:
            break
        errors.append("\n".join(x for x in err.splitlines() if "arning" not in x)[-4000:])
    assert proc.returncode == 0, "\n-----\n".join(errors)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2
    assert (out / "checkpoints" / "adapter_model.safetensors").is_file()
