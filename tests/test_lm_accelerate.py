"""`lm reward` and `lm dpo` under accelerate with 2 CPU processes (DDP over gloo).

`accelerate launch --cpu --num_processes 2` without an MPI host file starts ONE process
(accelerate 1.15's simple launcher), so two CPU processes are started with the torchrun
launcher (`--multi_gpu`) and no visible GPU; the Trainer's `use_cpu` then picks gloo.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each test starts two training processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pairs_file(path: Path, n: int = 24) -> Path:
    rng = random.Random(0)
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"Q{i % 6}: ",
                                 "chosen": "".join(rng.choice("aaac") for _ in range(6)),
                                 "rejected": "".join(rng.choice("bbbc") for _ in range(6))})
                     + "\n")
    return path


@pytest.mark.parametrize("cmd", ["reward", "dpo"])
def test_two_cpu_processes(tmp_path, cmd):
    data, out = pairs_file(tmp_path / "pairs.jsonl"), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    proc = subprocess.run([*launcher, "-m", "rlhf_hgt.lm.cli", "lm", cmd, "--model", "tiny",
                           "--data", str(data), "--out", str(out), "--max-steps", "2",
                           "--batch-size", "4", "--quiet"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["steps"] == 2
    # an epoch is ceil(pairs / (4 per process × 2 processes)) steps: the data was sharded
    assert metrics["epochs"] == pytest.approx(2 / math.ceil(metrics["train_pairs"] / 8))
    key = "reward_model_accuracy" if cmd == "reward" else "implicit_reward_accuracy"
    assert metrics[key] is not None and 0 <= metrics[key] <= 1
    assert (out / "adapter_model.safetensors").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "adapter_model.safetensors" in manifest["checkpoints"]
    assert not list(out.glob("*.tmp"))


def test_ppo_under_accelerate_launch_with_two_cpu_processes(tmp_path):
    data, out = pairs_file(tmp_path / "pairs.jsonl"), tmp_path / "ppo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    proc = subprocess.run([*launcher, "-m", "rlhf_hgt.cli", "lm", "ppo", "--model", "tiny",
                           "--data", str(data), "--out", str(out), "--reward", "length",
                           "--steps", "2", "--batch-size", "2", "--mini-batch-size", "2",
                           "--max-new-tokens", "4", "--quiet"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2
    assert (out / "checkpoints" / "adapter_model.safetensors").is_file()
