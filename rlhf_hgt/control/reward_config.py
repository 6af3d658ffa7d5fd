"""Settings of the control reward ensemble (:mod:`rlhf_hgt.control.reward_model`), each with
the reason for its default."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RewardModelConfig:
    """The reward model and how it is fit (one per control run)."""

    ensemble_size: int = field(default=3, metadata={
        "help": "members of the ensemble; 2 or more for disagreement-based query selection"})
    hidden_sizes: tuple[int, ...] = field(default=(64, 64), metadata={
        "help": "hidden layer widths of each member's MLP (after the CNN, for images)"})
    cnn_channels: tuple[int, int, int] = field(default=(16, 32, 32), metadata={
        "help": "channels of the 3 conv layers (3x3, stride 2) used for image observations"})
    include_action: bool = field(default=True, metadata={
        "help": "reward of (observation, action); False: of the observation alone"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    epochs: int = field(default=20, metadata={
        "help": "passes over the training pairs per fit (with few pairs, at least "
                "min_updates steps are taken); held-out loss is checked this many times"})
    min_updates: int = field(default=200, metadata={
        "help": "least gradient steps per member and fit, so a first small batch of "
                "labels is still learned"})
    batch_size: int = field(default=32, metadata={"help": "pairs per gradient step"})
    patience: int = field(default=5, metadata={
        "help": "stop a member after this many checks without a better held-out loss "
                "and keep its best weights; 0 turns early stopping off"})
    label_noise: float = field(default=0.1, metadata={
        "help": "assumed probability that an answer is random (Christiano et al. use 0.1); "
                "bounds the loss of a wrong label; set near a teacher's error rate"})
    output_l2: float = field(default=1e-3, metadata={
        "help": "penalty on the squared per-step reward, keeps the scale bounded"})
    bootstrap: bool = field(default=True, metadata={
        "help": "each member trains on its own bootstrap resample of the pairs"})
    pessimism: float = field(default=0.0, metadata={
        "help": "the agent's reward is the members' mean minus this many of their standard "
                "deviations: where the labels never reached, the members disagree and the "
                "reward drops, so the policy stays where people have judged it"})
    center_rewards: bool | None = field(default=None, metadata={
        "help": "fit_normalization subtracts the mean reward: True, False, or None = only "
                "when no training segment ran past a terminal state (otherwise the reward "
                "is already anchored at 'episode over' = 0, and a shift would pay the agent "
                "to end or to drag out its episodes)"})
    rescale_each_fit: bool = field(default=True, metadata={
        "help": "after every fit, re-measure the learned reward's spread on recent policy "
                "steps so the agent's reward has std 1 (True), or only after the first fit "
                "and keep that scale from then on (False); BENCHMARKS.md (issue #16) has "
                "the before/after"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N, mps or auto"})

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        self.cnn_channels = tuple(int(c) for c in self.cnn_channels)  # type: ignore[assignment]
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1 (3 is usual), got {self.ensemble_size}")
        if any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive widths, e.g. (64, 64); "
                             f"got {self.hidden_sizes}")
        if len(self.cnn_channels) != 3 or any(c < 1 for c in self.cnn_channels):
            raise ValueError(f"cnn_channels must be 3 positive channel counts, e.g. "
                             f"(16, 32, 32); got {self.cnn_channels}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0 (1e-3 is usual), got {self.lr}")
        if not 0 <= self.pessimism < math.inf:
            raise ValueError(f"pessimism must be >= 0 and finite (0 turns it off, 1 is "
                             f"usual), got {self.pessimism}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("min_updates", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"label_noise is a probability of a random answer: use "
                             f"0 <= label_noise < 1 (0.1 is usual), got {self.label_noise}")
        if self.output_l2 < 0:
            raise ValueError(f"output_l2 must be >= 0, got {self.output_l2}")
        if self.center_rewards not in (None, True, False):
            raise ValueError(f"center_rewards must be true, false or null (auto), "
                             f"got {self.center_rewards!r}")
        dev = str(self.device)
        if not (dev in ("cpu", "cuda", "mps", "auto") or dev.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda, cuda:N, mps or auto, got {dev!r}")
        if "torch" in sys.modules:  # else checked where the ensemble places itself
            missing = device_missing(dev)
            if missing:
                raise ValueError(f"device {dev!r}: {missing}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "reward config") -> RewardModelConfig:
        from rlhf_hgt.control.config import config_from_dict

        return config_from_dict(cls, data, where)


def device_missing(device: str) -> str | None:
    """Why this machine has no ``device`` ("cuda", "cuda:N", "mps"), with the fix, or None
    when it has it (or it is "cpu" or "auto"). Imports torch."""
    import torch

    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            return "this machine has no CUDA GPU (or torch is a CPU build); use cpu or auto"
        index = device.partition(":")[2]
        count = torch.cuda.device_count()
        if index and (not index.isdigit() or int(index) >= count):
            return (f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                    "use one of them, cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        return "this machine has no Apple MPS device; use cpu or auto"
    return None
