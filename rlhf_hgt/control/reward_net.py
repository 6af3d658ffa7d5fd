"""The per-step reward network r(s, a), chosen from the gymnasium spaces.

A small CNN (three 3x3 stride-2 conv layers) for uint8 image observations, (H, W, C) or
(C, H, W) with C in 1, 3, 4; an MLP over the flattened observation otherwise (Box;
Discrete and MultiDiscrete one-hot; MultiBinary). Actions join the features as one-hot
(Discrete, MultiDiscrete) or raw (Box, MultiBinary). Other spaces (Dict, Tuple, Text,
Graph, Sequence, ...) are refused with a ValueError that says what is supported.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlhf_hgt.control.reward_config import RewardModelConfig
from rlhf_hgt.feedback.errors import UserInputError

SUPPORTED = ("Box (a vector, or a uint8 image HxWxC / CxHxW with C = 1, 3 or 4), Discrete, "
             "MultiDiscrete, MultiBinary")
_CLIP = 10.0  # normalised vector inputs are clipped to +-_CLIP


def _unsupported(space: gym.Space, role: str) -> ValueError:
    hint = ""
    if isinstance(space, gym.spaces.Dict | gym.spaces.Tuple):
        hint = "; flatten it with gymnasium.wrappers.FlattenObservation"
    return ValueError(f"{role} space {space} is not supported by the reward model; supported: "
                      f"{SUPPORTED}{hint}")


def image_layout(space: gym.Space) -> str | None:
    """'hwc' or 'chw' for a uint8 image Box, None for anything else."""
    if not isinstance(space, gym.spaces.Box) or space.dtype != np.uint8 or len(space.shape) != 3:
        return None
    if space.shape[-1] in (1, 3, 4):
        return "hwc"
    if space.shape[0] in (1, 3, 4):
        return "chw"
    return None


class _Flat(nn.Module):
    """A non-image space as a flat float vector (one-hot for discrete parts)."""

    def __init__(self, space: gym.Space, role: str):
        super().__init__()
        self.kind = type(space).__name__
        if isinstance(space, gym.spaces.Box):
            if len(space.shape) == 3 and space.dtype == np.uint8:
                raise ValueError(f"{role} space {space} looks like an image but its channels "
                                 "(first or last axis) are not 1, 3 or 4; supported: "
                                 f"{SUPPORTED}")
            self.n_in = int(np.prod(space.shape))
            self.dim = self.n_in
            self.sizes: list[int] = []
        elif isinstance(space, gym.spaces.Discrete):
            self.n_in, self.dim, self.sizes = 1, int(space.n), [int(space.n)]
            self.register_buffer("start", torch.tensor([int(space.start)]), persistent=False)
        elif isinstance(space, gym.spaces.MultiDiscrete):
            nvec = np.asarray(space.nvec).reshape(-1)
            self.n_in, self.dim, self.sizes = len(nvec), int(nvec.sum()), [int(v) for v in nvec]
            start = np.asarray(getattr(space, "start", np.zeros_like(nvec))).reshape(-1)
            self.register_buffer("start", torch.as_tensor(start, dtype=torch.long),
                                 persistent=False)
        elif isinstance(space, gym.spaces.MultiBinary):
            self.n_in = self.dim = int(np.prod(space.shape))
            self.sizes = []
        else:
            raise _unsupported(space, role)
        self.role = role

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        if not self.sizes:
            return x.float()
        idx = x.round().long() - self.start
        parts = [nn.functional.one_hot(idx[:, j].clamp(0, n - 1), n)
                 for j, n in enumerate(self.sizes)]
        return torch.cat(parts, dim=1).float()


class RewardNet(nn.Module):
    """r(s, a) for one step: an MLP over flat observations, a 3-layer CNN for uint8 images."""

    def __init__(self, obs_space: gym.Space, act_space: gym.Space | None,
                 config: RewardModelConfig | None = None):
        super().__init__()
        config = config or RewardModelConfig()
        self.layout = image_layout(obs_space)
        self.obs_shape = tuple(obs_space.shape or ())
        if self.layout is not None:
            c = self.obs_shape[-1] if self.layout == "hwc" else self.obs_shape[0]
            c1, c2, c3 = config.cnn_channels
            self.trunk: nn.Module = nn.Sequential(
                nn.Conv2d(c, c1, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten())
            feat = c3 * 16
            self.obs_flat: _Flat | None = None
        else:
            self.obs_flat = _Flat(obs_space, "observation")
            self.trunk = nn.Identity()
            feat = self.obs_flat.dim
        # input normalisation of vector observations, set from data by RewardEnsemble.fit
        self.register_buffer("obs_mean", torch.zeros(feat if self.layout is None else 0))
        self.register_buffer("obs_std", torch.ones(feat if self.layout is None else 0))
        self.act_flat = _Flat(act_space, "action") \
            if config.include_action and act_space is not None else None
        width = feat + (self.act_flat.dim if self.act_flat is not None else 0)
        layers: list[nn.Module] = []
        for h in config.hidden_sizes:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.01)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        if self.layout is not None:
            x = obs.float() / 255.0
            if self.layout == "hwc":
                x = x.permute(0, 3, 1, 2)
            return self.trunk(x)
        assert self.obs_flat is not None
        x = self.obs_flat(obs)
        if self.obs_flat.kind == "Box":
            x = ((x - self.obs_mean) / self.obs_std).clamp(-_CLIP, _CLIP)
        return x

    def forward(self, obs: torch.Tensor, act: torch.Tensor | None = None) -> torch.Tensor:
        """Per-step rewards, shape (B,), for B observations (and actions)."""
        x = self.features(obs)
        if self.act_flat is not None:
            if act is None:
                raise ValueError("this reward model uses actions (include_action=True): "
                                 "pass the actions too")
            x = torch.cat([x, self.act_flat(act)], dim=1)
        return self.head(x).squeeze(-1)

# ----------------------------------------------------------------------------- saving spaces


def space_to_json(space: gym.Space | None) -> dict[str, Any] | None:
    def num(x: float) -> float | str:
        return float(x) if math.isfinite(x) else ("inf" if x > 0 else "-inf")

    if space is None:
        return None
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": num(float(np.min(space.low))), "high": num(float(np.max(space.high)))}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist(),
                "start": np.asarray(space.start).tolist()}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    raise _unsupported(space, "a")


def space_from_json(d: dict[str, Any] | None) -> gym.Space | None:
    if d is None:
        return None
    kind = d.get("type")
    if kind == "Box":
        return gym.spaces.Box(float(d["low"]), float(d["high"]), shape=tuple(d["shape"]),
                              dtype=np.dtype(d["dtype"]))
    if kind == "Discrete":
        return gym.spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(np.asarray(d["nvec"]), start=np.asarray(d["start"]))
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(d["n"])
    raise UserInputError(f"saved space type {kind!r} is not one this rlhf_hgt knows")
