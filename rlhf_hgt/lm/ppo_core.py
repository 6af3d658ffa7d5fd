"""Pure functions of PPO for language models: each small, stateless (but the KL controller),
and tested against values computed by hand.

Shapes: ``(batch, response_tokens)`` tensors with a ``mask`` of the same shape that is 1 on
the response tokens (from the first generated token up to and including the first end token)
and 0 on the padding after them. The mask of a row is a prefix: ones, then zeros.

- masked statistics: :func:`masked_sum`, :func:`masked_mean`, :func:`masked_var`,
  :func:`masked_whiten`
- the response mask: :func:`response_mask`
- KL estimators between the policy and the reference, per token: :func:`kl_k1`,
  :func:`kl_k2`, :func:`kl_k3` (Schulman, "Approximating KL divergence", 2020)
- rewards per token: :func:`token_rewards` (score at the last token, minus beta * KL per token)
- generalised advantage estimation over response tokens: :func:`gae`
- the clipped losses of PPO: :func:`policy_loss`, :func:`value_loss`
- the adaptive KL coefficient of Ziegler et al. (2019): :class:`KLController`
- log-probabilities of the taken tokens without full-vocabulary fp32 copies:
  :func:`token_logprobs`
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# ----------------------------------------------------------------------------- masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is 1."""
    return (x * mask).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (over everything, or along ``dim``).
    An empty mask gives 0, not NaN."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the masked positions (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` to unit variance over the masked positions, and to zero mean when
    ``shift_mean``; the unmasked positions are 0 in the result."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ----------------------------------------------------------------------------- the response mask


def response_mask(tokens: torch.Tensor, eos_ids: list[int] | tuple[int, ...]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, finished) for generated ``tokens`` (batch, T): the mask is 1 up to and including
    the first end token of each row and 0 after it; ``finished`` says which rows hold an end
    token at all (the others were cut at the token limit)."""
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= tokens == e
    # eos seen strictly before t: cumulative count shifted right by one
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (before == 0).long()
    return mask, is_eos.any(dim=1)


# ----------------------------------------------------------------------------- KL estimators


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """log p - log q per token: unbiased for KL(p||q) under samples of p, can be negative."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """0.5 (log p - log q)^2 per token: biased, low variance, never negative."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(r - 1) - log r with r = q/p per token: unbiased for KL(p||q), never negative."""
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


# ----------------------------------------------------------------------------- rewards, GAE


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * kl`` on every response token, plus the sequence's score
    on its last response token (the last 1 of each row of ``mask``)."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores.to(rewards.dtype) * (mask.sum(dim=1) > 0)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation (Schulman et al., 2016) over
    the response tokens; the step after the last response token is terminal (value 0).

    ``delta_t = r_t + gamma V_{t+1} - V_t``; ``A_t = delta_t + gamma lam A_{t+1}``;
    ``returns = A + V``. Positions outside ``mask`` are 0 in both results."""
    rewards, values = rewards * mask, values * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


# ----------------------------------------------------------------------------- clipped losses


@dataclass
class LossStats:
    """A loss (with gradient) and its detached statistics."""

    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor | None = None


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float, normaliser: float | None = None
                ) -> LossStats:
    """PPO's clipped surrogate, averaged over masked tokens.

    ``max(-A r, -A clip(r, 1-eps, 1+eps))`` with ``r = exp(logp - logp_old)``. ``normaliser``
    (the token count of the whole minibatch) replaces the mask's own count, so that
    micro-batches of one minibatch add up to the minibatch's mean (gradient accumulation).
    ``approx_kl`` is the k3 estimate of KL(old || new)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.maximum(unclipped, clipped)
    n = mask.sum().clamp(min=1) if normaliser is None else normaliser
    with torch.no_grad():
        clipfrac = masked_sum((clipped > unclipped).float(), mask) / n
        approx_kl = masked_sum(torch.expm1(-log_ratio) + log_ratio, mask) / n
    return LossStats(masked_sum(per_token, mask) / n, clipfrac, approx_kl)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float, normaliser: float | None = None
               ) -> LossStats:
    """Clipped value loss: ``0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``,
    averaged over masked tokens (``normaliser`` as in :func:`policy_loss`)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value,
                                              cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    per_token = 0.5 * torch.maximum(unclipped, clipped)
    n = mask.sum().clamp(min=1) if normaliser is None else normaliser
    with torch.no_grad():
        clipfrac = masked_sum((clipped > unclipped).float(), mask) / n
    return LossStats(masked_sum(per_token, mask) / n, clipfrac)


# ----------------------------------------------------------------------------- KL controller


class KLController:
    """The KL coefficient beta: fixed (``target`` None) or adaptive (Ziegler et al., 2019).

    Adaptive: ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta *= 1 + e * n / horizon`` after
    each batch of ``n`` sequences, so beta grows while the KL is above target and shrinks
    while it is below, by at most 20% per ``horizon`` sequences."""

    def __init__(self, init_kl_coef: float, target: float | None = None,
                 horizon: int = 10_000) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if target is not None and target <= 0:
            raise ValueError(f"target KL must be > 0 (or None for a fixed coefficient), "
                             f"got {target}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update beta from the mean KL per sequence of the last batch; returns the new beta."""
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


# ----------------------------------------------------------------------------- log-probabilities


def _chunk_rows(vocab: int) -> int:
    return max(1, (1 << 22) // max(vocab, 1))  # about 16 MB of fp32 per chunk


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(logits / T)[token] (and optionally the entropy) row chunk by row chunk in
    fp32, saving only the logits as they are (e.g. bf16) and the log-normaliser for the
    backward pass: no full-vocabulary fp32 copy lives beyond one chunk."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
                with_entropy: bool):  # type: ignore[override]
        rows, vocab = logits.shape
        step = _chunk_rows(vocab)
        out = torch.empty(rows, dtype=torch.float32, device=logits.device)
        lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
        entropy = torch.empty(rows if with_entropy else 0, dtype=torch.float32,
                              device=logits.device)
        for s in range(0, rows, step):
            x = logits[s:s + step].float()
            if temperature != 1.0:
                x = x / temperature
            norm = torch.logsumexp(x, dim=-1)
            out[s:s + step] = x.gather(-1, tokens[s:s + step, None]).squeeze(-1) - norm
            lse[s:s + step] = norm
            if with_entropy:
                x = torch.softmax(x, dim=-1).mul_(x)
                entropy[s:s + step] = norm - x.sum(-1)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_entropy: torch.Tensor
                 ):  # type: ignore[override]
        logits, tokens, lse = ctx.saved_tensors
        temperature = ctx.temperature
        grad = torch.empty_like(logits)
        step = _chunk_rows(logits.shape[1])
        for s in range(0, logits.shape[0], step):
            x = logits[s:s + step].float()
            if temperature != 1.0:
                x = x / temperature
            g = grad_out[s:s + step, None].float()
            chunk = torch.exp(x - lse[s:s + step, None]).mul_(-g)
            chunk.scatter_add_(-1, tokens[s:s + step, None], g)
            if temperature != 1.0:
                chunk /= temperature
            grad[s:s + step] = chunk.to(grad.dtype)
        return grad, None, None, None


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logprobs, entropy) of ``tokens`` (…,) under ``softmax(logits / temperature)``
    (…, vocab), in fp32, differentiable in ``logits``; entropy (no gradient) only when asked."""
    shape = tokens.shape
    flat_logits = logits.reshape(-1, logits.shape[-1])
    out, entropy = _TokenLogProbs.apply(flat_logits, tokens.reshape(-1).long(),
                                        float(temperature), with_entropy)
    return out.view(shape), (entropy.view(shape) if with_entropy else None)
