"""The shared preference core: one Bradley–Terry likelihood for every stack.

A person prefers side A over side B with probability

    P(A > B) = (1 - noise) * sigmoid((s_A - s_B) / temperature) + noise / 2

where s are scores (summed learned rewards of a trajectory segment, a reward model's
output for a response, or DPO's implicit reward) and ``noise`` is the probability that an
answer is random (a label-noise term, as in Christiano et al. 2017, who use 0.1).
Ties are a 0.5 target; skips carry no information and are dropped.

Both the control stack and the language stack call :func:`preference_loss`; nothing here
knows about storage, environments or models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

#: Answer strings (as stored) to the probability that the *left* side is preferred.
ANSWER_TARGETS: dict[str, float] = {"left": 1.0, "right": 0.0, "tie": 0.5}


def answer_to_target(answer: str) -> float | None:
    """left -> 1.0, right -> 0.0, tie -> 0.5, skip -> None (dropped)."""
    if answer == "skip":
        return None
    try:
        return ANSWER_TARGETS[answer]
    except KeyError:
        raise ValueError(f"answer must be left, right, tie or skip, got {answer!r}") from None


def answers_to_targets(answers: Iterable[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for a list of answers, and a boolean mask that is False for skips."""
    targets, keep = [], []
    for a in answers:
        t = answer_to_target(a)
        targets.append(0.5 if t is None else t)
        keep.append(t is not None)
    return torch.tensor(targets, dtype=torch.float32), torch.tensor(keep, dtype=torch.bool)


def _check(noise: float, temperature: float) -> None:
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise is a probability of a random answer: use 0 <= noise < 1, "
                         f"got {noise}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def preference_logprobs(score_left: torch.Tensor, score_right: torch.Tensor,
                        noise: float = 0.0,
                        temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(left preferred) and log P(right preferred) under the noisy Bradley–Terry model."""
    _check(noise, temperature)
    margin = (score_left - score_right) / temperature
    log_l, log_r = F.logsigmoid(margin), F.logsigmoid(-margin)
    if noise > 0:
        # log((1-e) * p + e/2), computed stably in log space
        log_keep, log_rand = math.log1p(-noise), math.log(noise / 2)
        log_rand_t = torch.full_like(log_l, log_rand)
        log_l = torch.logaddexp(log_l + log_keep, log_rand_t)
        log_r = torch.logaddexp(log_r + log_keep, log_rand_t)
    return log_l, log_r


def preference_loss(score_left: torch.Tensor, score_right: torch.Tensor,
                    target: torch.Tensor | Sequence[float], mask: torch.Tensor | None = None,
                    noise: float = 0.0, temperature: float = 1.0,
                    weight: torch.Tensor | None = None,
                    reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the Bradley–Terry model against soft targets (1 left, 0 right, 0.5 tie).

    ``mask`` (bool) drops entries (skips); ``weight`` scales entries (e.g. per-annotator
    trust). Returns the mean over kept entries (0 when none is kept)."""
    target = torch.as_tensor(target, dtype=score_left.dtype, device=score_left.device)
    if score_left.shape != score_right.shape or score_left.shape != target.shape:
        raise ValueError(f"scores and targets must have one shape, got {tuple(score_left.shape)}"
                         f", {tuple(score_right.shape)} and {tuple(target.shape)}")
    if ((target < 0) | (target > 1)).any():
        raise ValueError("targets must lie in [0, 1] (1 left, 0 right, 0.5 tie)")
    log_l, log_r = preference_logprobs(score_left, score_right, noise, temperature)
    loss = -(target * log_l + (1 - target) * log_r)
    w = torch.ones_like(loss)
    if weight is not None:
        w = w * torch.as_tensor(weight, dtype=loss.dtype, device=loss.device)
    if mask is not None:
        w = w * mask.to(loss.dtype)
    if reduction == "none":
        return loss * w
    if reduction == "sum":
        return (loss * w).sum()
    if reduction != "mean":
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


def preference_accuracy(score_left: torch.Tensor, score_right: torch.Tensor,
                        target: torch.Tensor | Sequence[float]) -> float:
    """Share of strict preferences (ties excluded) where the higher score is the chosen side.

    Equal scores count as half right. Returns nan when there is no strict preference."""
    target = torch.as_tensor(target, dtype=torch.float32)
    strict = target != 0.5
    if not strict.any():
        return float("nan")
    diff = (score_left - score_right).detach().float().cpu()[strict.cpu()]
    want_left = target.cpu()[strict.cpu()] > 0.5
    right = torch.where(diff == 0, torch.full_like(diff, 0.5),
                        ((diff > 0) == want_left).float())
    return float(right.mean())
