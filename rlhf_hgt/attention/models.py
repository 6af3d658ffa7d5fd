"""Image classifiers for attention guidance: an MLP (Ross et al.'s 50-30), a small CNN whose
last convolution serves Grad-CAM, and the architectural integration: an attention branch
that predicts where people look and gates the input of either.

Every model maps (N, C, H, W) images to (N, K) logits and works for any image size (the MLP
and the CNN's head are built for the size they are given).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

ARCHS = ("mlp", "cnn")


class MLP(nn.Module):
    """Flatten, two ReLU hidden layers (50, 30 as in Ross et al. 2017), logits."""

    def __init__(self, shape: tuple[int, int, int], classes: int,
                 hidden: tuple[int, ...] = (50, 30)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = shape[0] * shape[1] * shape[2]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Three 3x3 convolutions (the last two with stride 2), then a ReLU hidden layer of 64
    and the logits. ``features`` gives the last convolution's activations (Grad-CAM's
    layer); the head is built for the image size it is given."""

    def __init__(self, shape: tuple[int, int, int], classes: int,
                 widths: tuple[int, int, int] = (16, 32, 32), hidden: int = 64):
        super().__init__()
        c, h, w = shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, widths[0], 3, padding=1), nn.ReLU(),
            nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(widths[1], widths[2], 3, stride=2, padding=1), nn.ReLU())
        fh, fw = (h + 3) // 4, (w + 3) // 4  # two stride-2 convolutions with padding 1
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(widths[2] * fh * fw, hidden),
                                  nn.ReLU(), nn.Linear(hidden, classes))

    @property
    def last_conv(self) -> nn.Module:
        return self.conv[4]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class AttentionGate(nn.Module):
    """Predicts an attention map (N, H, W) in (0, 1) from the image: three 5x5 convolutions
    (a 13-pixel view), then a sigmoid. Starts near 'look everywhere' (bias +2)."""

    def __init__(self, channels: int, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 5, padding=2), nn.ReLU(),
            nn.Conv2d(width, width, 5, padding=2), nn.ReLU(),
            nn.Conv2d(width, 1, 5, padding=2))
        nn.init.constant_(self.net[-1].bias, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x)).squeeze(1)


class Gated(nn.Module):
    """Architectural integration: the classifier sees only the pixels the attention branch
    says people would look at (predicted map > 0.5; a hard gate, so nothing of the rest leaks
    through a small weight). Training supervises the map with people's masks where there is
    one (:mod:`rlhf_hgt.attention.guidance`); at test the predicted map is used alone."""

    def __init__(self, base: nn.Module, channels: int):
        super().__init__()
        self.gate = AttentionGate(channels)
        self.base = base
        self.last_map: torch.Tensor | None = None

    @property
    def last_conv(self) -> nn.Module | None:
        return getattr(self.base, "last_conv", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_map = self.gate(x)
        keep = (self.last_map.detach() > 0.5).to(x.dtype)
        return self.base(x * keep.unsqueeze(1))


def build_model(arch: str, shape: tuple[int, int, int], classes: int,
                gated: bool = False) -> nn.Module:
    """The classifier for ``arch`` (mlp or cnn), gated when asked."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    base = MLP(shape, classes) if arch == "mlp" else CNN(shape, classes)
    return Gated(base, shape[0]) if gated else base


def downsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) maps averaged down to (N, h, w) (a feature map's grid)."""
    return F.adaptive_avg_pool2d(maps.unsqueeze(1), size).squeeze(1)
