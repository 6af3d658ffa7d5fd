"""The child side of scripts/bench_lm.py: each measured thing, run in a process of its own.

``bench_lm.py`` writes a job spec (JSON) and starts ``bench_lm.py _job SPEC OUT``, which calls
``run_job_file`` here: it runs ``JOBS[spec["job"]]`` and writes the result JSON the parent reads
(plus, on CUDA, the peak memory torch saw). Also here: the loaders, data and result writer the
jobs share with the TRL 1.12 anchor (scripts/bench_lm_trl_ppo.py).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# plain TRL baselines: its defaults but this DPO learning rate and our LoRA shape (bench_lm.py)
TRL_DPO_LR = 5e-5
TRL_LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}


def run_job_file(spec_path: str, out_path: str) -> int:
    """Child entry: run the job a spec names and write its result JSON."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    from rlhf_hgt.lm import trl_common

    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    trl_common.quiet_libraries()
    return finish_job(JOBS[spec["job"]], spec, out_path, "bench_lm")


def finish_job(job: Any, spec: dict[str, Any], out_path: str | Path, name: str) -> int:
    """Run one child job: its result with the device (and CUDA peak) written as JSON, or
    exit code 2 with the message of a UserInputError."""
    import torch

    from rlhf_hgt.feedback.errors import UserInputError

    try:
        res = job(spec)
    except UserInputError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    res["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available():
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_json(out_path, res)
    return 0


def write_json(path: str | Path, obj: Any) -> None:
    from rlhf_hgt.feedback.files import write_json_atomic

    write_json_atomic(path, obj, indent=1)


def causal_lm(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32: the tiny in-memory model ("tiny") or a real one (pad
    fixed)."""
    import torch

    from rlhf_hgt.lm.models import load_causal_lm

    return load_causal_lm(name, dtype=torch.float32)


def reward_lm(name: str) -> tuple[Any, Any]:
    import torch

    from rlhf_hgt.lm.models import load_reward_lm

    return load_reward_lm(name, dtype=torch.float32)


def pairs(spec: dict[str, Any]) -> tuple[Any, Any]:
    from rlhf_hgt.lm.data import rotten_tomatoes_pairs

    return rotten_tomatoes_pairs(spec.get("n_train"), spec.get("n_test"), seed=spec["seed"])


def heldout_prompts(test: Any, n: int) -> list[str]:
    """``n`` prompts of held-out movies: each distinct prompt once, then round again."""
    distinct = list(dict.fromkeys(test["prompt"]))
    return [distinct[i % len(distinct)] for i in range(n)]


def trl_args(spec: dict[str, Any], batch: int) -> dict[str, Any]:
    """TrainingArguments that plain TRL runs get besides its defaults: where to write, the
    batch, the step cap, quiet, and bf16 / checkpointing off on a CPU."""
    import torch

    from rlhf_hgt.lm.trl_common import checkpointing_argument

    gpu = torch.cuda.is_available()
    return {"output_dir": spec["out"], "seed": spec["seed"], "per_device_train_batch_size": batch,
            "max_steps": spec.get("max_steps", -1), "report_to": [], "save_strategy": "no",
            "logging_steps": 10, "disable_tqdm": True, "use_cpu": not gpu,
            "bf16": bool(gpu and torch.cuda.is_bf16_supported()),
            checkpointing_argument(): False}


def sample_reviews(model: Any, tok: Any, prompts: list[str], new_tokens: int, seed: int,
                   batch: int = 16) -> list[str]:
    """Sampled continuations of plain-text prompts (temperature 0.7, no top-k/top-p, the
    model's own generation defaults hidden), reproducible given ``seed``."""
    import torch
    from transformers import GenerationConfig

    from rlhf_hgt.lm.ppo_model import eos_ids

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = GenerationConfig(eos_token_id=eos_ids(base, tok),
                                              pad_token_id=tok.pad_token_id)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    texts: list[str] = []
    try:
        for i in range(0, len(prompts), batch):
            ids = [tok(p)["input_ids"] for p in prompts[i:i + batch]]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for j, x in enumerate(ids):
                input_ids[j, width - len(x):], mask[j, width - len(x):] = torch.tensor(x), 1
            with torch.no_grad():
                out = model.generate(input_ids=input_ids.to(device),
                                     attention_mask=mask.to(device), do_sample=True,
                                     temperature=0.7, top_k=0, top_p=1.0,
                                     max_new_tokens=new_tokens)
            texts += [tok.decode(row, skip_special_tokens=True) for row in out[:, width:]]
    finally:
        base.generation_config = saved
    return texts


def vader_mean(prompts: list[str], texts: list[str]) -> float:
    from rlhf_hgt.lm.data import vader_scorer

    score = vader_scorer()
    return statistics.mean(score(p, t) for p, t in zip(prompts, texts, strict=True))


def sentiment(model: Any, tok: Any, test: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """VADER of sampled held-out reviews with the adapter off (base) and on (trained)."""
    prompts = heldout_prompts(test, spec["samples"])
    model.eval()
    with model.disable_adapter():
        before = sample_reviews(model, tok, prompts, spec["new_tokens"], spec["seed"])
    after = sample_reviews(model, tok, prompts, spec["new_tokens"], spec["seed"])
    return {"vader_before": vader_mean(prompts, before), "vader_after": vader_mean(prompts, after),
            "samples": len(prompts), "new_tokens": spec["new_tokens"], "temperature": 0.7,
            "examples": [{"prompt": p, "before": b, "after": a}
                         for p, b, a in list(zip(prompts, before, after, strict=True))[:3]]}


def job_reward_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from rlhf_hgt.lm.reward import LMRewardConfig, train_reward_model

    train, test = pairs(spec)
    cfg = LMRewardConfig(seed=spec["seed"], progress=False, max_steps=spec["max_steps"])
    t0 = time.perf_counter()
    m = train_reward_model(spec["model"], train, test, cfg, out_dir=spec["out"])
    return {"accuracy": m["reward_model_accuracy"], "eval_loss": m["eval_loss"],
            "steps": m["steps"], "epochs": m["epochs"], "learning_rate": cfg.learning_rate,
            "train_runtime_s": m["train_runtime_s"], "call_s": time.perf_counter() - t0,
            "train_pairs": len(train), "eval_pairs": len(test), "out": spec["out"]}


def job_reward_trl(spec: dict[str, Any]) -> dict[str, Any]:
    from peft import LoraConfig
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    from rlhf_hgt.lm import trl_common
    from rlhf_hgt.lm.reward import LMRewardConfig, evaluate_reward_model

    train, test = pairs(spec)
    ours = LMRewardConfig()
    set_seed(spec["seed"])
    model, tok = reward_lm(spec["model"])
    args = RewardConfig(**trl_args(spec, ours.per_device_train_batch_size),
                        num_train_epochs=ours.resolved_epochs(len(train)))
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tok,
                            peft_config=LoraConfig(task_type="SEQ_CLS", **TRL_LORA))
    trl_common.quiet_trainer(trainer, progress=False)
    t0 = time.perf_counter()
    out = trainer.train()
    runtime = time.perf_counter() - t0
    trained = trainer.accelerator.unwrap_model(trainer.model).eval()
    ev = evaluate_reward_model(trained, tok, test)  # TRL's format: prompt + response + eos
    return {"accuracy": ev["reward_model_accuracy"], "eval_loss": ev["eval_loss"],
            "steps": trainer.state.global_step, "epochs": trainer.state.epoch,
            "learning_rate": args.learning_rate, "train_loss": out.training_loss,
            "train_runtime_s": runtime, "train_pairs": len(train), "eval_pairs": len(test),
            "lora": TRL_LORA}


def job_dpo_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from rlhf_hgt.lm.dpo import LMDPOConfig, load_policy, train_dpo

    train, test = pairs(spec)
    extra = {k: spec[k] for k in ("beta", "sft_weight") if spec.get(k) is not None}
    if spec.get("loss"):
        extra["loss_type"] = tuple(spec["loss"].split(","))
    if spec.get("weights"):
        extra["loss_weights"] = tuple(float(w) for w in spec["weights"].split(","))
    cfg = LMDPOConfig(seed=spec["seed"], progress=False, max_steps=spec["max_steps"], **extra)
    m = train_dpo(spec["model"], train, test, cfg, out_dir=spec["out"])
    policy, tok = load_policy(spec["out"])
    return {"implicit_reward_accuracy": m["implicit_reward_accuracy"], "steps": m["steps"],
            "epochs": m["epochs"], "learning_rate": cfg.learning_rate, "beta": cfg.beta,
            "loss_type": cfg.trl_losses()[0], "loss_weights": cfg.trl_losses()[1],
            "samples_per_s": m["steps"] * cfg.per_device_train_batch_size
            / m["train_runtime_s"],
            "train_runtime_s": m["train_runtime_s"], "train_pairs": len(train),
            "eval_pairs": len(test), **sentiment(policy, tok, test, spec)}


def _trl_dpo(spec: dict[str, Any], train: Any, *, epochs: float, batch: int,
             max_steps: int) -> tuple[Any, Any, Any, float]:
    """Plain TRL DPOTrainer + LoRA: (trainer, policy, tokenizer, train seconds)."""
    from peft import LoraConfig
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from rlhf_hgt.lm import trl_common

    set_seed(spec["seed"])
    model, tok = causal_lm(spec["model"])
    args = DPOConfig(**{**trl_args(spec, batch), "max_steps": max_steps},
                     num_train_epochs=epochs, learning_rate=TRL_DPO_LR)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tok,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", **TRL_LORA))
    trl_common.quiet_trainer(trainer, progress=False)
    t0 = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - t0
    return trainer, trainer.accelerator.unwrap_model(trainer.model).eval(), tok, runtime


def job_dpo_trl(spec: dict[str, Any]) -> dict[str, Any]:
    from rlhf_hgt.lm.dpo import LMDPOConfig, implicit_reward_accuracy

    train, test = pairs(spec)
    ours = LMDPOConfig()
    trainer, policy, tok, runtime = _trl_dpo(spec, train, epochs=ours.num_train_epochs,
                                             batch=ours.per_device_train_batch_size,
                                             max_steps=spec["max_steps"])
    acc = implicit_reward_accuracy(policy, None, tok, test, beta=trainer.args.beta)
    steps = trainer.state.global_step
    return {"implicit_reward_accuracy": acc, "steps": steps, "epochs": trainer.state.epoch,
            "learning_rate": TRL_DPO_LR,
            "samples_per_s": steps * ours.per_device_train_batch_size / runtime,
            "train_runtime_s": runtime, "train_pairs": len(train), "eval_pairs": len(test),
            "lora": TRL_LORA, **sentiment(policy, tok, test, spec)}


def job_dpo_speed_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from rlhf_hgt.lm.dpo import LMDPOConfig, train_dpo

    train, _ = pairs(spec)
    cfg = LMDPOConfig(seed=spec["seed"], progress=False, max_steps=spec["steps"],
                      per_device_train_batch_size=spec["batch"], eval_fraction=0.0)
    m = train_dpo(spec["model"], train, None, cfg, out_dir=spec["out"])
    return {"samples_per_s": m["steps"] * spec["batch"] / m["train_runtime_s"],
            "steps": m["steps"], "batch": spec["batch"], "train_runtime_s": m["train_runtime_s"]}


def job_dpo_speed_trl(spec: dict[str, Any]) -> dict[str, Any]:
    train, _ = pairs(spec)
    trainer, _, _, runtime = _trl_dpo(spec, train, epochs=1.0, batch=spec["batch"],
                                      max_steps=spec["steps"])
    steps = trainer.state.global_step
    return {"samples_per_s": steps * spec["batch"] / runtime, "steps": steps,
            "batch": spec["batch"], "train_runtime_s": runtime}


def _ppo_trainer(spec: dict[str, Any], batch: int, merge: bool, full: bool = False
                 ) -> tuple[Any, Any]:
    from rlhf_hgt.lm.ppo import LMPPOConfig, LMPPOTrainer
    from rlhf_hgt.lm.reward import RewardScorer

    scorer = RewardScorer.load(spec["reward_dir"])
    if merge and hasattr(scorer.model, "merge_and_unload"):  # as TRL 1.12 gets it
        scorer.model = scorer.model.merge_and_unload().eval()
    model, tok = causal_lm(spec["model"])
    cfg = LMPPOConfig(steps=spec["steps"], batch_size=batch, mini_batch_size=min(8, batch),
                      response_length=spec["new_tokens"], seed=spec["seed"],
                      **({"lora_r": 0, "learning_rate": 1e-6} if full else {}))
    return LMPPOTrainer(model, tok, scorer, cfg), scorer


def _throughput(hist: list[dict[str, float]], batch: int) -> dict[str, float]:
    """Generated tokens/s over whole updates and over sampling alone; the first update (warm
    up) is left out when there are more."""
    h = hist[1:] if len(hist) > 1 else hist
    tokens = sum(s["response_length"] * batch for s in h)
    return {"tokens_per_s": tokens / sum(s["step_time_s"] for s in h),
            "sampling_tokens_per_s": tokens / sum(s["time_generate_s"] for s in h),
            "updates_measured": len(h), "tokens": tokens}


def _print_update(stats: dict[str, float]) -> None:
    """One progress line per PPO update (the parent shows the child's output)."""
    print(f"    PPO update {stats['step']:.0f}: score {stats['score']:.3f} KL "
          f"{stats['kl_k1']:.3f} clip {stats.get('policy_clipfrac', 0):.2f} "
          f"{stats['step_time_s']:.0f}s", flush=True)


def job_ppo_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    train, test = pairs({**spec, "n_train": None})
    trainer, scorer = _ppo_trainer(spec, spec["batch"], merge=False)
    prompts = heldout_prompts(test, spec["samples"])

    def evaluate() -> tuple[float, float, list[str]]:
        torch.manual_seed(spec["seed"] + 7)
        texts = [t for i in range(0, len(prompts), 16) for t in trainer.generate(prompts[i:i + 16])]
        return float(scorer.score(prompts, texts).mean()), vader_mean(prompts, texts), texts

    r0, v0, before = evaluate()
    hist = trainer.train(list(dict.fromkeys(train["prompt"])), steps=spec["steps"],
                         callback=_print_update)
    r1, v1, after = evaluate()
    trainer.save(spec["out"])
    keep = ("step", "score", "reward", "kl_k1", "kl_k3", "kl_coef", "entropy", "approx_kl",
            "policy_clipfrac", "response_length", "tokens_per_s", "step_time_s")
    return {"reward_before": r0, "reward_after": r1, "vader_before": v0, "vader_after": v1,
            "samples": len(prompts), "steps": len(hist), "batch": spec["batch"],
            "curve": [{k: s[k] for k in keep if k in s} for s in hist],
            "config": asdict(trainer.config), **_throughput(hist, spec["batch"]),
            "examples": [{"prompt": p, "before": b, "after": a}
                         for p, b, a in list(zip(prompts, before, after, strict=True))[:3]]}


def job_ppo_speed_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Our PPO, LoRA (or with spec["full"] full fine-tuning with a frozen reference copy)."""
    train, _ = pairs({**spec, "n_train": None})
    trainer, _ = _ppo_trainer(spec, spec["batch"], merge=True, full=spec.get("full", False))
    hist = trainer.train(list(dict.fromkeys(train["prompt"])), steps=spec["steps"],
                         callback=_print_update)
    return {**_throughput(hist, spec["batch"]), "steps": len(hist), "batch": spec["batch"],
            "new_tokens": spec["new_tokens"], "ppo_epochs": trainer.config.num_ppo_epochs,
            "per_update": [{k: s[k] for k in ("step_time_s", "time_generate_s",
                                              "response_length")} for s in hist],
            "lora_r": trainer.config.lora_r,
            "trainable_params": sum(p.numel() for p in trainer.policy.parameters()
                                    if p.requires_grad)}


JOBS = {"reward_ours": job_reward_ours, "reward_trl": job_reward_trl, "dpo_ours": job_dpo_ours,
        "dpo_trl": job_dpo_trl, "dpo_speed_ours": job_dpo_speed_ours,
        "dpo_speed_trl": job_dpo_speed_trl, "ppo_ours": job_ppo_ours,
        "ppo_speed_ours": job_ppo_speed_ours}
