"""Input-gradient penalties shared by every stack: "Right for the Right Reasons" (Ross et
al. 2017) as a share of the gradient energy that lies outside what a person marked.

A penalty here is a share in [0, 1]: it neither grows with the number of inputs nor with
the scale of the gradients, so one weight can serve images, feature vectors and rewards.

- :func:`outside_share` per example, the share of a non-negative energy map that lies
  outside a mask (graded masks weight each place by ``1 - mask``); used by the image
  guidance (:mod:`rlhf_hgt.attention.guidance`, maps (N, H, W)) and by the control reward
  ensemble (feature vectors (N, F)).
- :func:`feature_gradient_share` RRR applied to a model's output on feature vectors:
  the gradient of a scalar output (e.g. a reward model's summed predicted reward) with
  respect to inputs ``x`` (B, ..., F), its squared energy per example and feature, and
  the mean share on the features NOT in the keep set. The gradient is taken with
  ``create_graph=True``, so the share can be added to a loss and trained through.

Torch only; imports nothing of this project. Part of the core (like preference.py): the
attention, control and language stacks all use it, and none of them imports another.
"""

from __future__ import annotations

import torch

__all__ = ["EPS", "feature_energy", "feature_gradient_share", "outside_share"]

EPS = 1e-8


def outside_share(energy: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per example: the share of ``energy`` (N, ...) non-negative, lying outside ``keep``.

    ``keep`` is 1 (or True) where people marked the evidence and 0 elsewhere, graded values
    in [0, 1] weight each place by ``1 - keep``; it has the shape of one example (shared by
    all, e.g. (F,)) or of the whole batch (per example, e.g. (N, F)). Returns (N,) shares in
    [0, 1]; an example with no energy at all has share 0."""
    keep = keep.to(energy.dtype)
    if keep.dim() == energy.dim() - 1:
        keep = keep.unsqueeze(0)
    total = energy.flatten(1).sum(1) + EPS
    return ((1 - keep) * energy).flatten(1).sum(1) / total


def feature_energy(grad: torch.Tensor) -> torch.Tensor:
    """Squared gradient (B, ..., F) summed over the middle axes (e.g. time): (B, F)."""
    g2 = grad.square()
    return g2.reshape(g2.shape[0], -1, g2.shape[-1]).sum(1)


def feature_gradient_share(output: torch.Tensor, x: torch.Tensor, keep: torch.Tensor,
                           scale: torch.Tensor | None = None) -> torch.Tensor:
    """Right for the Right Reasons on feature vectors: the mean over examples of the share
    of squared input-gradient energy on features outside ``keep``.

    ``x`` (B, ..., F) requires grad; ``output`` is computed from it (summed to a scalar
    here); ``keep`` is (F,) or (B, F), bool or float in [0, 1]. ``scale`` (F,), optional,
    multiplies the gradient per feature before squaring: pass a normaliser's std to measure
    the gradient with respect to the normalised features (unit-free). The gradient is taken
    with ``create_graph=True``: the result is differentiable in the model's parameters.
    Applied to a reward model's summed reward this is RRR for the Bradley–Terry reward: 0
    when the reward depends only on the marked features, 1 when only on the others."""
    if not x.requires_grad:
        raise ValueError("x must require grad (x.requires_grad_(True) before the forward pass)")
    (grad,) = torch.autograd.grad(output.sum(), x, create_graph=True)
    if scale is not None:
        grad = grad * scale
    return outside_share(feature_energy(grad), keep).mean()
