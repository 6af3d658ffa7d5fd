"""The PPO anchor: TRL 1.12's PPOTrainer (``trl.experimental.ppo``; TRL 1.13 deleted it) on the
same model, reward model, prompts, batch, response length and steps as our LoRA PPO.

It needs TRL 1.12 in a folder of its own that shadows the TRL 1.16 of the venv (it runs on our
transformers / peft / accelerate stack):

    pip install --no-deps --target .peers/trl112 trl==1.12.0
    PYTHONPATH=.peers/trl112 python scripts/bench_lm_trl_ppo.py SPEC.json RESULT.json

``scripts/bench_lm.py speed`` writes the spec and starts this in its own process (so the peak
memory it reads is this run's alone). The setup is TRL's usual one: the policy with a LoRA
adapter (the reference is the policy with the adapter off), a value model that is a whole
second copy of the base (a sequence classifier, fully trained), and the reward model (ours,
its adapter merged). Its settings are TRL's defaults except: per-device batch = one
minibatch = the rollout batch, 4 PPO epochs, ``response_length`` new tokens, temperature 0.7,
stop at the end token, no sample generations, bf16 / gradient checkpointing off on a CPU.

Measured: generated tokens (up to and including the end token, as ours counts them) per
second over whole updates and over sampling alone, the first update (warm-up) left out when
there are more, per-update wall times, TRL's logged KL and scores.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_lm_jobs as jobs  # noqa: E402 - light at import: shared loaders, data, result writer
from bench_lm import PEER_INSTALL  # noqa: E402

EXPECTED = "1.12.0"


def check_trl() -> Any:
    """The TRL 1.12 module, or exit 3 with the install command."""
    import trl

    if trl.__version__ != EXPECTED:
        print(f"bench_lm_trl_ppo: needs TRL {EXPECTED}, found {trl.__version__} at "
              f"{trl.__file__}; install it with `{PEER_INSTALL}` and run with "
              "PYTHONPATH=.peers/trl112", file=sys.stderr)
        raise SystemExit(3)
    return trl


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    check_trl()
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback, set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    from rlhf_hgt.lm import trl_common
    from rlhf_hgt.lm.reward import RewardScorer

    trl_common.quiet_libraries()
    set_seed(spec["seed"])
    batch, steps = spec["batch"], spec["steps"]
    policy, tok = jobs.causal_lm(spec["model"])
    value_model, _ = jobs.reward_lm(spec["model"])  # TRL's critic: a whole second model
    scorer = RewardScorer.load(spec["reward_dir"])
    reward = scorer.model
    if hasattr(reward, "merge_and_unload"):
        reward = reward.merge_and_unload()
    reward.eval()

    train, _ = jobs.pairs({**spec, "n_train": None})
    prompts = list(dict.fromkeys(train["prompt"]))
    chat = bool(getattr(tok, "chat_template", None))  # as our trainer formats prompts

    def encode(p: str) -> list[int]:
        if chat:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(p)["input_ids"]

    data = Dataset.from_dict({"input_ids": [encode(p) for p in prompts]})
    gpu = torch.cuda.is_available()
    args = PPOConfig(
        output_dir=spec["out"], seed=spec["seed"], per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, num_mini_batches=1, num_ppo_epochs=4,
        local_rollout_forward_batch_size=batch, total_episodes=batch * steps,
        response_length=spec["new_tokens"], temperature=0.7, stop_token="eos",
        num_sample_generations=0, report_to=[], save_strategy="no", logging_steps=1,
        disable_tqdm=True, use_cpu=not gpu, bf16=bool(gpu and torch.cuda.is_bf16_supported()),
        **{trl_common.checkpointing_argument(): False})
    peft_config = (LoraConfig(task_type="CAUSAL_LM", **jobs.TRL_LORA) if spec["lora"]
                   else None)

    generated: list[dict[str, float]] = []
    original = ppo_module.batch_generation

    def counting(model, queries, forward_batch, pad_token_id, generation_config):
        t0 = time.perf_counter()
        query_responses, logits = original(model, queries, forward_batch, pad_token_id,
                                           generation_config)
        resp = query_responses[:, queries.shape[1]:]
        stop = resp == tok.eos_token_id
        useful = torch.where(stop.any(1), stop.long().argmax(1) + 1, (resp != pad_token_id).sum(1))
        generated.append({"tokens": float(useful.sum()), "raw_tokens": float(resp.numel()),
                          "generate_s": time.perf_counter() - t0})
        return query_responses, logits

    ppo_module.batch_generation = counting

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.logs: list[dict[str, float]] = []

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.marks.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.marks.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **k: Any) -> None:
            if logs:
                self.logs.append({k2: v for k2, v in logs.items() if isinstance(v, int | float)})

    clock = Clock()
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None,
                         reward_model=reward, value_model=value_model, train_dataset=data,
                         eval_dataset=data.select(range(min(len(data), batch))),
                         peft_config=peft_config, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # quiet: one log dict per update otherwise
    trainer.train()

    times = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
    first = 1 if len(times) > 1 else 0
    tokens = sum(g["tokens"] for g in generated[first:len(times)])
    return {
        "tokens_per_s": tokens / sum(times[first:]),
        "sampling_tokens_per_s": tokens / sum(g["generate_s"] for g in generated[first:len(times)]),
        "raw_tokens_per_s": sum(g["raw_tokens"] for g in generated[first:len(times)])
        / sum(times[first:]),
        "updates_measured": len(times) - first, "steps": len(times), "batch": batch,
        "new_tokens": spec["new_tokens"], "ppo_epochs": args.num_ppo_epochs, "lora": spec["lora"],
        "per_update": [{"step_time_s": t, **g} for t, g in zip(times, generated, strict=False)],
        "trl_logs": clock.logs, "trl_version": EXPECTED,
        "learning_rate": args.learning_rate,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: PYTHONPATH=.peers/trl112 python scripts/bench_lm_trl_ppo.py SPEC.json "
              "RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    return jobs.finish_job(run, spec, argv[1], "bench_lm_trl_ppo")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
