"""DPO for control policies: learn the policy straight from preferences, no reward model.

A segment's score is the policy's implicit reward, the (optionally discounted) sum of the
log-ratio of its actions under the policy and a frozen reference,

    score(segment) = alpha * sum_t gamma^t [log pi(a_t | s_t) - log pi_ref(a_t | s_t)],

and the loss is the shared Bradley–Terry likelihood of the stored answers
(:func:`rlhf_hgt.preference.preference_loss`). This is DPO (Rafailov et al. 2023) with a
trajectory segment in place of a response, and Contrastive Preference Learning (Hejna et
al. 2023) with the reference's log-probabilities subtracted. Two options from CPL:

* ``conservative_lambda`` < 1 scales the rejected side's score, so the loss can no longer be
  lowered by only pushing the rejected actions down: the chosen ones must rise;
* ``bc_weight`` > 0 adds behaviour cloning (negative log-likelihood) on preferred segments.

Only the actor is trained (policy MLP, action head, log_std; a separate actor features
extractor when the policy has one); the critic is left as it is. Works for SB3's
ActorCriticPolicy (PPO, A2C) with any action space it supports, and SAC's policy (its
actor); a policy with LoRA adapters (:mod:`rlhf_hgt.control.lora`) trains its adapters only.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy

from rlhf_hgt.control.config import PolicyDPOConfig
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.preference import preference_accuracy, preference_loss

Segment = Mapping[str, np.ndarray]
Preference = tuple[Segment, Segment, float]

_EVAL_CHUNK = 8192  # steps per forward pass when scoring without gradients


# --------------------------------------------------------------------------- the policy


def as_policy(model_or_policy: Any) -> BasePolicy:
    """The SB3 policy of an algorithm (``model.policy``) or the policy itself, checked."""
    policy = getattr(model_or_policy, "policy", model_or_policy)
    if isinstance(policy, ActorCriticPolicy):
        return policy
    actor = getattr(policy, "actor", None)
    if isinstance(policy, BasePolicy) and actor is not None and hasattr(
            actor, "get_action_dist_params"):
        if getattr(actor, "use_sde", False):
            raise ValueError("DPO on a SAC policy with use_sde=True is not supported; "
                             "build SAC with use_sde=False or use PPO/A2C")
        return policy
    raise ValueError(
        f"DPO needs a stochastic SB3 policy (PPO or A2C's ActorCriticPolicy, or SAC's), got "
        f"{type(policy).__name__}; deterministic policies (TD3, DDPG, DQN) have no "
        f"log-probabilities to compare")


def frozen_reference(model_or_policy: Any) -> BasePolicy:
    """A frozen copy of the policy (eval mode, no gradients) to measure the log-ratio against."""
    ref = copy.deepcopy(as_policy(model_or_policy))
    ref.set_training_mode(False)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def actor_parameters(model_or_policy: Any) -> list[torch.nn.Parameter]:
    """The trainable parameters that shape the action distribution, critic excluded.

    ActorCriticPolicy: features extractor only when not shared with the critic, policy MLP,
    action head, log_std. SAC: the actor. Frozen parameters (e.g. LoRA base weights) are
    left out, so an adapted policy trains its adapters only."""
    policy = as_policy(model_or_policy)
    if isinstance(policy, ActorCriticPolicy):
        modules: list[torch.nn.Module] = [policy.mlp_extractor.policy_net, policy.action_net]
        if not policy.share_features_extractor:
            modules.append(policy.pi_features_extractor)
        params = [p for m in modules for p in m.parameters()]
        log_std = getattr(policy, "log_std", None)
        if isinstance(log_std, torch.nn.Parameter):
            params.append(log_std)
    else:
        params = list(policy.actor.parameters())
    seen: set[int] = set()
    out = []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def action_log_prob(policy: BasePolicy, obs: torch.Tensor,
                    actions: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) per step, shape (N,)."""
    if isinstance(policy, ActorCriticPolicy):
        return policy.get_distribution(obs).log_prob(actions)
    actor = policy.actor  # SAC: squashed Gaussian over actions rescaled to [-1, 1]
    space = policy.action_space
    low = torch.as_tensor(space.low, dtype=actions.dtype, device=actions.device)
    high = torch.as_tensor(space.high, dtype=actions.dtype, device=actions.device)
    scaled = (2.0 * (actions - low) / (high - low) - 1.0).clamp(-1 + 1e-6, 1 - 1e-6)
    mean, log_std, kwargs = actor.get_action_dist_params(obs)
    dist = actor.action_dist.proba_distribution(mean, log_std, **kwargs)
    return dist.log_prob(scaled)


# --------------------------------------------------------------------------- the data


@dataclass
class _Packed:
    """All segments' steps in one flat batch; segment 2i is pair i's left, 2i+1 its right."""

    obs: torch.Tensor
    actions: torch.Tensor
    step_weight: torch.Tensor      # gamma^t within each segment
    offsets: np.ndarray            # first step of each segment
    lengths: np.ndarray            # steps of each segment
    targets: torch.Tensor          # (n_pairs,) 1 left, 0 right, 0.5 tie


def _check_segment(seg: Any, where: str, policy: BasePolicy) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(seg, Mapping) or "obs" not in seg or "actions" not in seg:
        raise UserInputError(f"{where}: a segment must be a dict with 'obs' and 'actions' "
                             f"arrays (and 'true_rewards'), got {type(seg).__name__}")
    obs_space, act_space = policy.observation_space, policy.action_space
    if isinstance(obs_space, spaces.Dict):
        raise UserInputError(f"{where}: dict observation spaces are not supported by DPO yet")
    obs, act = np.asarray(seg["obs"]), np.asarray(seg["actions"])
    if "valid" in seg:  # steps padded after an episode's end were never acted in
        keep = np.asarray(seg["valid"], dtype=bool).reshape(-1)
        if keep.shape[0] == len(obs) == len(act):
            obs, act = obs[keep], act[keep]
    n = len(obs) if obs.ndim else 0
    if n < 1:
        raise UserInputError(f"{where}: field 'obs' is empty; a segment needs at least one step")
    if obs.shape[1:] != obs_space.shape:
        raise UserInputError(f"{where}: field 'obs' has shape {obs.shape}, expected (T, "
                             f"{', '.join(map(str, obs_space.shape))}) for {obs_space}")
    if act.ndim == 0 or len(act) != n:
        raise UserInputError(f"{where}: field 'actions' has {len(act) if act.ndim else 0} steps"
                             f" but 'obs' has {n}; both must have one row per step")
    if isinstance(act_space, spaces.Discrete):
        act = act.reshape(n, -1)
        if act.shape[1] != 1 or not np.all(np.equal(np.mod(act, 1), 0)):
            raise UserInputError(f"{where}: field 'actions' must hold one whole number per "
                                 f"step for {act_space}, got shape {np.shape(seg['actions'])}")
        act = act.reshape(n).astype(np.int64)
        if act.min() < act_space.start or act.max() >= act_space.start + act_space.n:
            raise UserInputError(f"{where}: field 'actions' holds values outside {act_space}")
        act = act - int(act_space.start)
    elif isinstance(act_space, spaces.Box):
        if act.size != n * int(np.prod(act_space.shape)):
            raise UserInputError(f"{where}: field 'actions' has shape {act.shape}, expected "
                                 f"(T, {', '.join(map(str, act_space.shape))}) for {act_space}")
        act = act.reshape(n, *act_space.shape).astype(np.float32)
        if not np.all(np.isfinite(act)):
            raise UserInputError(f"{where}: field 'actions' holds NaN or infinite values")
    else:
        act = act.reshape(n, *act_space.shape)
    return obs, act


def _pack(preferences: Sequence[Preference], policy: BasePolicy, discount: float) -> _Packed:
    obs_parts, act_parts, lengths, targets = [], [], [], []
    for i, pref in enumerate(preferences):
        if not isinstance(pref, Sequence) or len(pref) != 3:
            raise UserInputError(f"preference {i}: expected (left_segment, right_segment, "
                                 f"target), got {type(pref).__name__}")
        left, right, target = pref
        try:
            t = float(target)
        except (TypeError, ValueError):
            raise UserInputError(f"preference {i}: field 'target' must be a number (1 left, "
                                 f"0 right, 0.5 tie), got {target!r}") from None
        if not 0 <= t <= 1:
            raise UserInputError(f"preference {i}: field 'target' must lie in [0, 1] (1 left, "
                                 f"0 right, 0.5 tie; drop skips), got {t}")
        for side, seg in (("left", left), ("right", right)):
            o, a = _check_segment(seg, f"preference {i} ({side})", policy)
            obs_parts.append(o)
            act_parts.append(a)
            lengths.append(len(o))
        targets.append(t)
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths_arr)[:-1]]).astype(np.int64)
    t_in_seg = np.concatenate([np.arange(n) for n in lengths_arr])
    device = policy.device
    obs_all = np.concatenate(obs_parts)
    obs_dtype = torch.float32 if np.issubdtype(obs_all.dtype, np.floating) else None
    return _Packed(
        obs=torch.as_tensor(obs_all, dtype=obs_dtype, device=device),
        actions=torch.as_tensor(np.concatenate(act_parts), device=device),
        step_weight=torch.as_tensor(discount ** t_in_seg, dtype=torch.float32, device=device),
        offsets=offsets, lengths=lengths_arr,
        targets=torch.tensor(targets, dtype=torch.float32, device=device))


def _steps_of(packed: _Packed, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat step indices of the given segments, and the position (0..) of each step's segment."""
    lens = packed.lengths[segments]
    starts = packed.offsets[segments]
    total = int(lens.sum())
    first = np.cumsum(lens) - lens
    idx = np.arange(total) + np.repeat(starts - first, lens)
    owner = np.repeat(np.arange(len(segments)), lens)
    return idx, owner


def _log_probs_no_grad(policy: BasePolicy, packed: _Packed) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for s in range(0, len(packed.obs), _EVAL_CHUNK):
            sl = slice(s, s + _EVAL_CHUNK)
            out.append(action_log_prob(policy, packed.obs[sl], packed.actions[sl]))
    return torch.cat(out).float()


# --------------------------------------------------------------------------- the loss


def dpo_loss(score_left: torch.Tensor, score_right: torch.Tensor, target: torch.Tensor,
             conservative_lambda: float = 1.0, noise: float = 0.0) -> torch.Tensor:
    """Per-pair loss: the shared Bradley–Terry loss, the rejected side's score scaled by lambda.

    With soft targets each side is the chosen one with weight t (left) or 1 - t (right); for
    lambda = 1 this is exactly ``preference_loss(score_left, score_right, target)``."""
    ones, zeros = torch.ones_like(target), torch.zeros_like(target)
    lam = conservative_lambda
    left_chosen = preference_loss(score_left, lam * score_right, ones, noise=noise,
                                  reduction="none")
    right_chosen = preference_loss(lam * score_left, score_right, zeros, noise=noise,
                                   reduction="none")
    return target * left_chosen + (1 - target) * right_chosen


def _segment_scores(logratio: torch.Tensor, packed: _Packed, idx: np.ndarray,
                    owner: np.ndarray, n_segments: int, alpha: float) -> torch.Tensor:
    owner_t = torch.as_tensor(owner, device=logratio.device)
    w = packed.step_weight.to(logratio.device)[torch.as_tensor(idx, device=logratio.device)]
    scores = torch.zeros(n_segments, dtype=logratio.dtype, device=logratio.device)
    return alpha * scores.index_add(0, owner_t, w * logratio)


def _pair_segments(pairs: np.ndarray) -> np.ndarray:
    return np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)


def _evaluate(policy_lp: torch.Tensor, ref_lp: torch.Tensor, packed: _Packed,
              pairs: np.ndarray, cfg: PolicyDPOConfig) -> dict[str, float | None]:
    """Loss, implicit-preference accuracy and mean per-step log-ratios on the given pairs."""
    if len(pairs) == 0:
        return {"loss": None, "accuracy": None, "logratio_chosen": None,
                "logratio_rejected": None}
    segs = _pair_segments(pairs)
    idx, owner = _steps_of(packed, segs)
    lr = (policy_lp.cpu() - ref_lp.cpu())[torch.as_tensor(idx)]
    scores = _segment_scores(lr, packed, idx, owner, len(segs), cfg.alpha).view(-1, 2)
    target = packed.targets.cpu()[torch.as_tensor(pairs)]
    loss = dpo_loss(scores[:, 0], scores[:, 1], target, cfg.conservative_lambda,
                    cfg.label_noise).mean()
    acc = preference_accuracy(scores[:, 0], scores[:, 1], target)
    # mean per-step log-ratio on chosen and rejected sides (strict preferences only)
    owner_t = torch.as_tensor(owner)
    left_pref = (target > 0.5).repeat_interleave(2)
    is_left = torch.arange(len(segs)) % 2 == 0
    strict = (target != 0.5).repeat_interleave(2)
    chosen_seg = strict & (is_left == left_pref)
    rejected_seg = strict & (is_left != left_pref)
    chosen_steps, rejected_steps = chosen_seg[owner_t], rejected_seg[owner_t]

    def _mean(mask: torch.Tensor) -> float | None:
        return float(lr[mask].mean()) if bool(mask.any()) else None

    return {"loss": float(loss), "accuracy": None if math.isnan(acc) else acc,
            "logratio_chosen": _mean(chosen_steps), "logratio_rejected": _mean(rejected_steps)}


# --------------------------------------------------------------------------- training


def _pair_hash(pref: Preference) -> float:
    """A number in [0, 1) fixed by the pair's content (observations and actions)."""
    h = hashlib.blake2b(digest_size=8)
    for seg in pref[:2]:
        for key in ("obs", "actions"):
            arr = np.ascontiguousarray(seg[key])
            h.update(f"{key}{arr.dtype}{arr.shape}".encode())
            h.update(arr.tobytes())
    return int.from_bytes(h.digest(), "big") / 2.0 ** 64


def _split(preferences: Sequence[Preference], cfg: PolicyDPOConfig,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n, fraction = len(preferences), cfg.holdout_fraction
    if cfg.stable_split and fraction > 0:
        u = np.array([_pair_hash(p) for p in preferences])
        hold = u < fraction
        if 0 < hold.sum() < n:
            return np.flatnonzero(~hold), np.flatnonzero(hold)
    order = rng.permutation(n)  # too few pairs for the hash to split: a random split
    n_hold = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        n_hold = min(max(n_hold, 1), n - 1)
    else:
        n_hold = 0
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def train_policy_dpo(model_or_policy: Any, preferences: Sequence[Preference],
                     config: PolicyDPOConfig | None = None,
                     rng: np.random.Generator | int | None = None,
                     reference: Any | None = None,
                     on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train the policy's actor in place on (left, right, target) preferences.

    ``reference`` defaults to a frozen copy of the policy as it is now (pass the same
    reference in every round of a loop to keep measuring against the starting policy).
    ``on_epoch(epoch, mean_loss)`` reports progress. Returns JSON-ready metrics:
    ``holdout_accuracy`` (implicit-preference accuracy on held-out pairs; None when none is
    held out or all held-out pairs are ties), ``holdout_accuracy_before``, ``train_accuracy``,
    ``loss_curve`` (mean training loss per epoch), ``holdout_loss``, mean per-step log-ratios
    of chosen and rejected actions, and the counts."""
    cfg = config or PolicyDPOConfig()
    policy = as_policy(model_or_policy)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if len(preferences) == 0:
        raise UserInputError("no preferences to learn from: label some pairs first "
                             "(skips are dropped)")
    ref = frozen_reference(policy) if reference is None else as_policy(reference)
    if (ref.observation_space.shape != policy.observation_space.shape
            or ref.action_space != policy.action_space):
        raise ValueError("the reference policy must have the policy's observation and action "
                         "spaces")
    params = actor_parameters(policy)
    if not params:
        raise ValueError("the policy has no trainable actor parameters (all frozen)")

    packed = _pack(preferences, policy, cfg.discount)
    ref_lp = _log_probs_no_grad(ref, packed)
    train, hold = _split(preferences, cfg, gen)
    before = _evaluate(_log_probs_no_grad(policy, packed), ref_lp, packed, hold, cfg)

    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    was_training = policy.training
    policy.set_training_mode(True)
    loss_curve: list[float] = []
    steps = 0
    try:
        for epoch in range(cfg.epochs):
            order = gen.permutation(train)
            total, count = 0.0, 0
            for s in range(0, len(order), cfg.batch_size):
                pairs = order[s:s + cfg.batch_size]
                loss = _batch_loss(policy, ref_lp, packed, pairs, cfg)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                steps += 1
                total += float(loss.detach()) * len(pairs)
                count += len(pairs)
            loss_curve.append(total / count)
            if on_epoch is not None:
                on_epoch(epoch, loss_curve[-1])
    finally:
        policy.set_training_mode(was_training)

    policy_lp = _log_probs_no_grad(policy, packed)
    after_hold = _evaluate(policy_lp, ref_lp, packed, hold, cfg)
    after_train = _evaluate(policy_lp, ref_lp, packed, train, cfg)
    return {
        "n_preferences": len(preferences), "n_train": int(len(train)),
        "n_holdout": int(len(hold)), "optimizer_steps": steps,
        "loss_curve": loss_curve, "loss_first": loss_curve[0], "loss_last": loss_curve[-1],
        "train_accuracy": after_train["accuracy"], "train_loss": after_train["loss"],
        "holdout_accuracy": after_hold["accuracy"], "holdout_loss": after_hold["loss"],
        "holdout_accuracy_before": before["accuracy"], "holdout_loss_before": before["loss"],
        "logratio_chosen": (after_hold if len(hold) else after_train)["logratio_chosen"],
        "logratio_rejected": (after_hold if len(hold) else after_train)["logratio_rejected"],
        "config": asdict(cfg),
    }


def _batch_loss(policy: BasePolicy, ref_lp: torch.Tensor, packed: _Packed, pairs: np.ndarray,
                cfg: PolicyDPOConfig) -> torch.Tensor:
    segs = _pair_segments(pairs)
    idx, owner = _steps_of(packed, segs)
    idx_t = torch.as_tensor(idx, device=packed.obs.device)
    lp = action_log_prob(policy, packed.obs[idx_t], packed.actions[idx_t]).float()
    scores = _segment_scores(lp - ref_lp[idx_t], packed, idx, owner, len(segs),
                             cfg.alpha).view(-1, 2)
    target = packed.targets[torch.as_tensor(pairs, device=packed.obs.device)]
    loss = dpo_loss(scores[:, 0], scores[:, 1], target, cfg.conservative_lambda,
                    cfg.label_noise).mean()
    if cfg.bc_weight > 0:
        # each segment's weight as the preferred side: t for the left, 1 - t for the right
        seg_w = torch.stack([target, 1 - target], dim=1).reshape(-1)
        step_w = seg_w[torch.as_tensor(owner, device=lp.device)]
        bc = -(step_w * lp).sum() / step_w.sum().clamp_min(1e-12)
        loss = loss + cfg.bc_weight * bc
    return loss
