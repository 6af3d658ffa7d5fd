"""How human attention enters training: one small role, :class:`Guidance`, per method.

Each method turns a batch (images x, labels y, attention maps m, which images have a map)
into the training loss. The loss integrations are written so that one weight serves every
data set and image size: each penalty is a share in [0, 1] (of the squared input gradient,
or of the Grad-CAM mass, that lies where people did not look), averaged over the images
that carry a map, so it neither grows with the number of pixels nor with the scale of the
gradients. Methods:

- ``none``: cross-entropy alone (the baseline).
- ``augment`` (data): each guided image also enters as a counterfactual copy whose pixels
  outside the map come from another training image, so only the marked evidence predicts
  the label.
- ``gate`` (architecture): the model's attention branch (:class:`models.Gated`) learns
  the map (binary cross-entropy) and gates the input.
- ``rrr`` (loss, Ross et al. 2017): penalise the input gradient of the summed
  log-probabilities outside the map; a graded map weights each pixel by how little
  attention it got (1 - m).
- ``gradcam`` (loss, GRADIA): the Grad-CAM map of the true class at the last convolution
  should lie inside the map (downsampled to the feature grid); CNN only. The map is
  squared, not ReLU'd: evidence that argues against the class (negative Grad-CAM) counts
  too, otherwise a decoy can hide behind the ReLU (measured: 0.77 with the ReLU, 0.91
  squared, Decoy MNIST CNN).
- ``gaze-kl`` (loss, as gaze-guided learning, Saran et al. 2020): KL divergence between the
  normalised map and the normalised input-gradient saliency of the true class.
- ``random-mask``: ``rrr`` with each map moved to a random place (same shape and area): the
  control arm that tells guidance from mere regularisation (the data module moves them).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from rlhf_hgt.attention.models import Gated, downsample
from rlhf_hgt.penalties import outside_share  # (N, H, W) maps; shared with control

METHODS = ("none", "augment", "gate", "rrr", "gradcam", "gaze-kl", "random-mask")
GUIDED = tuple(m for m in METHODS if m != "none")
#: the methods whose weight warms up at the start of training: rrr and its control arm.
#: Measured on Decoy MNIST, seed 0: gradcam 0.77 with a warm-up against 0.92 without, gaze-kl
#: 0.83 against 0.88, so theirs does not
LOSS_METHODS = ("rrr", "random-mask")
EPS = 1e-8
POOL = 4  # gaze-kl compares maps on a grid of 4x4-pixel cells


class Guidance(Protocol):
    """Turns a batch into (loss, logits of the original images)."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
             has: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class Weighted:
    """A guidance role with a weight on its term (which the training loop may warm up)."""

    def __init__(self, weight: float):
        self.weight = weight


class Plain:
    def loss(self, model, x, y, m, has):
        logits = model(x)
        return F.cross_entropy(logits, y), logits


class Augment(Weighted):
    """Counterfactual copies: outside-the-map pixels taken from a shuffled batch."""

    def loss(self, model, x, y, m, has):
        logits = model(x)
        task = F.cross_entropy(logits, y)
        if not bool(has.any()):
            return task, logits
        xg, mg = x[has], m[has].unsqueeze(1)
        other = x[torch.randperm(len(x), device=x.device)[: len(xg)]]
        counter = mg * xg + (1 - mg) * other
        extra = F.cross_entropy(model(counter), y[has])
        return task + self.weight * extra, logits


class Gate(Weighted):
    """Supervise the attention branch with the maps (BCE) where there are maps."""

    def loss(self, model, x, y, m, has):
        if not isinstance(model, Gated):
            raise TypeError("the gate method needs a gated model (build_model(gated=True))")
        logits = model(x)
        task = F.cross_entropy(logits, y)
        if not bool(has.any()):
            return task, logits
        pred = model.last_map[has].clamp(1e-6, 1 - 1e-6)
        target = m[has]
        # balanced: evidence often covers a few per cent of the pixels, and a plain BCE would
        # learn to close the gate everywhere (the classifier then sees nothing)
        pos = target.sum().clamp(min=1.0)
        weight = torch.where(target > 0.5, (target.numel() - pos) / pos, 1.0).clamp(max=100.0)
        bce = F.binary_cross_entropy(pred, target, weight=weight) / weight.mean()
        return task + self.weight * bce, logits


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, has: torch.Tensor,
                   of_true_class: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(cross-entropy, logits, d/dx of the log-probabilities kept in the graph for double
    backpropagation: of every class summed, as Ross et al., or of the true class); the
    gradient is None when no image of the batch has a map."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    task = F.cross_entropy(logits, y)
    if not bool(has.any()):
        return task, logits, None
    logp = F.log_softmax(logits, dim=1)
    if of_true_class:
        logp = logp.gather(1, y[:, None])
    (grad,) = torch.autograd.grad(logp.sum(), x, create_graph=True)
    return task, logits, grad


class RightReasons(Weighted):
    """Ross et al.'s input-gradient penalty, as a share of the gradient energy."""

    def loss(self, model, x, y, m, has):
        task, logits, grad = input_gradient(model, x, y, has, of_true_class=False)
        if grad is None:
            return task, logits
        energy = grad.pow(2).sum(1)[has]
        return task + self.weight * outside_share(energy, m[has]).mean(), logits


class GradCAMAlign(Weighted):
    """GRADIA-style: the true class's (squared) Grad-CAM mass outside the downsampled map."""

    def loss(self, model, x, y, m, has):
        base = model.base if isinstance(model, Gated) else model
        if not hasattr(base, "features"):
            raise TypeError("gradcam needs the CNN (--arch cnn): an MLP has no feature map")
        feats = base.features(x)
        logits = base.classify(feats)
        task = F.cross_entropy(logits, y)
        if not bool(has.any()):
            return task, logits
        score = logits.gather(1, y[:, None]).sum()
        (grads,) = torch.autograd.grad(score, feats, create_graph=True)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = (weights * feats).sum(1).pow(2)[has]
        share = outside_share(cam, downsample(m[has], cam.shape[1:]))
        return task + self.weight * share.mean(), logits


class GazeKL(Weighted):
    """KL(map || saliency), both normalised to sum 1 per image."""

    def loss(self, model, x, y, m, has):
        task, logits, grad = input_gradient(model, x, y, has, of_true_class=True)
        if grad is None:
            return task, logits
        sal = grad.abs().sum(1)[has]
        grid = (max(1, sal.shape[1] // POOL), max(1, sal.shape[2] // POOL))
        sal = downsample(sal, grid).flatten(1)  # gaze is coarse: compare on a coarser grid
        sal = sal / (sal.sum(1, keepdim=True) + EPS)
        target = downsample(m[has], grid).flatten(1)
        target = target / (target.sum(1, keepdim=True) + EPS)
        kl = (target * (torch.log(target + EPS) - torch.log(sal + EPS))).sum(1)
        return task + self.weight * kl.mean(), logits


#: default guidance weight per method, chosen on Decoy MNIST (8-20 epochs; gradcam: 1 -> 0.63,
#: 10 -> 0.77, 100 -> 0.91, 300 -> 0.88, 1000 -> 0.75 test accuracy) and checked on other
#: data and sizes (BENCHMARKS.md, attention): every penalty is a share in [0, 1] or a KL
DEFAULT_WEIGHTS = {"none": 0.0, "augment": 1.0, "gate": 1.0, "rrr": 10.0,
                   "random-mask": 10.0, "gradcam": 100.0, "gaze-kl": 1.0}


def make_guidance(method: str, weight: float | None = None) -> Guidance:
    """The role for ``method`` with ``weight`` (default :data:`DEFAULT_WEIGHTS`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    w = DEFAULT_WEIGHTS[method] if weight is None else weight
    roles = {"none": lambda: Plain(), "augment": lambda: Augment(w), "gate": lambda: Gate(w),
             "rrr": lambda: RightReasons(w), "random-mask": lambda: RightReasons(w),
             "gradcam": lambda: GradCAMAlign(w), "gaze-kl": lambda: GazeKL(w)}
    return roles[method]()
