"""Learned rewards for control: a reward net per step, an ensemble of them, fit on comparisons.

A segment's score is the sum of the per-step rewards r(s, a) over its valid steps (steps
after a terminal state, marked ``valid = False`` by :mod:`rlhf_hgt.control.fragments`,
score exactly 0). The ensemble learns from pairs of segments and answers with the shared
Bradley–Terry core (:func:`rlhf_hgt.preference.preference_loss`: ties are 0.5, skips are
dropped, a label-noise term), each member on its own bootstrap sample of the pairs
(Christiano et al. 2017). The members' disagreement about P(left preferred) picks the
next queries (PEBBLE / B-Pref).

Each member is a :class:`rlhf_hgt.control.reward_net.RewardNet`, chosen from the gymnasium
spaces (an MLP for vectors, a small CNN for uint8 images).

Feature marks (``fit(..., marks=keep, mark_weight=w)``): the features of a vector
observation that a person says decide what is better. Each member's loss then adds ``w``
times the share of its input-gradient energy (of the summed predicted reward) on the other
features (:func:`rlhf_hgt.penalties.feature_gradient_share`: Right for the Right
Reasons applied to the Bradley–Terry reward). The gradient is taken with respect to the raw
observation tensor and scaled by each member's input std, i.e. measured on the normalised
features, so the share does not depend on the features' units. Without marks (or with
weight 0) nothing is computed and the losses are bitwise those of a fit without them.

Saved as a folder: ``reward_model.safetensors`` (weights and buffers) and ``config.json``
(config, spaces, state); nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlhf_hgt.control.reward_config import RewardModelConfig, device_missing
from rlhf_hgt.control.reward_net import (
    RewardNet,
    image_layout,
    space_from_json,
    space_to_json,
)
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.files import write_bytes_atomic, write_json_atomic
from rlhf_hgt.penalties import feature_gradient_share
from rlhf_hgt.preference import (
    ANSWER_TARGETS,
    preference_accuracy,
    preference_logprobs,
    preference_loss,
)

__all__ = ["RewardEnsemble", "RewardModelConfig", "RewardNet", "image_layout"]

FORMAT = "rlhf_hgt.reward_ensemble/1"
WEIGHTS_FILE = "reward_model.safetensors"
CONFIG_FILE = "config.json"


# ----------------------------------------------------------------------------- data


def _segment_hash(seg: dict[str, np.ndarray]) -> bytes:
    h = hashlib.sha256()
    for key in ("obs", "actions", "valid"):
        if key in seg:
            arr = np.ascontiguousarray(seg[key])
            h.update(key.encode() + str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(arr.tobytes())
    return h.digest()


def _pair_unit(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> float:
    """A number in [0, 1) fixed by the pair's content (either order): a stable split, so a
    pair held out once is held out in every later fit and a warm start never saw it."""
    a, b = sorted((_segment_hash(left), _segment_hash(right)))
    return int.from_bytes(hashlib.sha256(a + b).digest()[:7], "big") / 2.0**56


def _targets(targets: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(float targets, keep mask) from answer strings or numbers (NaN = skip)."""
    items = list(targets.tolist() if hasattr(targets, "tolist") else targets)
    if len(items) != n:
        raise UserInputError(f"got {n} pairs but {len(items)} targets: give one answer per pair")
    out, keep = np.full(n, 0.5), np.ones(n, dtype=bool)
    for i, t in enumerate(items):
        if isinstance(t, str):
            if t == "skip":
                keep[i] = False
            elif t in ANSWER_TARGETS:
                out[i] = ANSWER_TARGETS[t]
            else:
                raise UserInputError(f"target {i}: {t!r} is not an answer; use left, right, tie "
                                     "or skip (or 1, 0, 0.5, nan)")
        elif t is None or (isinstance(t, float) and math.isnan(t)):
            keep[i] = False
        else:
            v = float(t)
            if not 0 <= v <= 1:
                raise UserInputError(f"target {i} is {v}; targets are P(left preferred): "
                                     "1 left, 0 right, 0.5 tie, nan skip")
            out[i] = v
    return out, keep


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    missing = device_missing(name)
    if missing:
        raise UserInputError(f"--reward-device {name} (RewardModelConfig.device): {missing}")
    return torch.device(name)


# ----------------------------------------------------------------------------- ensemble


class RewardEnsemble(nn.Module):
    """k reward nets; predictions are their mean, query selection uses their spread."""

    def __init__(self, obs_space: gym.Space, act_space: gym.Space | None, k: int | None = None,
                 config: RewardModelConfig | None = None, seed: int = 0):
        super().__init__()
        config = config or RewardModelConfig()
        if k is not None:
            config = replace(config, ensemble_size=int(k))
        self.config = config
        self.obs_space, self.act_space = obs_space, act_space
        self.seed = int(seed)
        with torch.random.fork_rng(devices=[]):
            members = []
            for i in range(config.ensemble_size):
                torch.manual_seed(self.seed * 1009 + i)
                members.append(RewardNet(obs_space, act_space, config))
        self.members = nn.ModuleList(members)
        for name, value in (("norm_shift", 0.0), ("norm_scale", 1.0),
                            ("norm_mean", 0.0), ("norm_std", 1.0)):
            self.register_buffer(name, torch.tensor(value))
        self.device = _resolve_device(config.device)
        self.to(self.device)
        self.fitted = False          # fit has run at least once
        self.inputs_set = False      # vector input statistics are frozen after the first fit
        self.saw_termination = False  # a training segment ran past a terminal state
        self.normalized = False

    @property
    def k(self) -> int:
        return len(self.members)

    @property
    def uses_actions(self) -> bool:
        return bool(self.config.include_action and self.act_space is not None)

    # -- data to tensors

    def _check_obs(self, obs: np.ndarray, where: str) -> None:
        want = tuple(self.obs_space.shape or ())
        got = tuple(obs.shape[1:])
        flat_ok = image_layout(self.obs_space) is None and \
            int(np.prod(got)) == max(1, int(np.prod(want)))
        if got != want and not flat_ok:
            raise UserInputError(f"{where}: observations of shape {got} per step, but the reward "
                                 f"model's observation space is {self.obs_space}: these come "
                                 "from another env, or the model was built for another one")

    def _stack(self, segments: Sequence[dict[str, np.ndarray]], side: str):
        """(obs (N,T,...), actions (N,T,...) or None, mask (N,T) float, ran_past_terminal)."""
        if not segments:
            raise UserInputError("no segments given")
        lengths = []
        for i, seg in enumerate(segments):
            if not isinstance(seg, dict) or "obs" not in seg:
                raise UserInputError(f"{side} segment {i}: not a segment (a dict of arrays with "
                                     "obs, actions, ...)")
            if self.uses_actions and "actions" not in seg:
                raise UserInputError(f"{side} segment {i} has no actions, but this reward model "
                                     "uses them (include_action=True)")
            obs = np.asarray(seg["obs"])
            if obs.ndim < 1 or len(obs) < 1:
                raise UserInputError(f"{side} segment {i} is empty")
            self._check_obs(obs, f"{side} segment {i}")
            lengths.append(len(obs))
        n, t_max = len(segments), max(lengths)
        first = np.asarray(segments[0]["obs"])
        obs = np.zeros((n, t_max, *first.shape[1:]), dtype=first.dtype
                       if first.dtype == np.uint8 else np.float32)
        mask = np.zeros((n, t_max), dtype=np.float32)
        acts = None
        if self.uses_actions:
            a0 = np.asarray(segments[0]["actions"])
            acts = np.zeros((n, t_max, int(np.prod(a0.shape[1:], dtype=int))), dtype=np.float32)
        past_end = False
        for i, seg in enumerate(segments):
            t = lengths[i]
            obs[i, :t] = np.asarray(seg["obs"]).reshape(t, *first.shape[1:])
            valid = np.asarray(seg.get("valid", np.ones(t, dtype=bool)), dtype=bool)
            if valid.shape != (t,):
                raise UserInputError(f"{side} segment {i}: valid has shape {valid.shape}, "
                                     f"want ({t},)")
            past_end |= bool((~valid).any())
            mask[i, :t] = valid
            if acts is not None:
                a = np.asarray(seg["actions"]).reshape(t, -1)
                if a.shape[1] != acts.shape[2]:
                    raise UserInputError(f"{side} segment {i}: actions have {a.shape[1]} values "
                                         f"per step, the first segment {acts.shape[2]}")
                acts[i, :t] = a
        dev = self.device
        return (torch.from_numpy(obs).to(dev),
                None if acts is None else torch.from_numpy(acts).to(dev),
                torch.from_numpy(mask).to(dev), past_end)

    @staticmethod
    def _score(member: RewardNet, obs: torch.Tensor, acts: torch.Tensor | None,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(segment scores (N,), per-step rewards (N, T)) of one member."""
        n, t = mask.shape
        r = member(obs.reshape(n * t, *obs.shape[2:]),
                   None if acts is None else acts.reshape(n * t, -1)).reshape(n, t)
        return (r * mask).sum(1), r

    def _member_scores(self, member: RewardNet, obs, acts, mask,
                       batch: int = 256) -> torch.Tensor:
        """(N,) scores of one member, in eval mode, no grad, in chunks of segments."""
        member.eval()
        with torch.no_grad():
            parts = [self._score(member, obs[s:s + batch],
                                 None if acts is None else acts[s:s + batch],
                                 mask[s:s + batch])[0] for s in range(0, len(mask), batch)]
        return torch.cat(parts)

    def _all_scores(self, obs, acts, mask) -> torch.Tensor:
        """(k, N) scores, no grad."""
        return torch.stack([self._member_scores(m, obs, acts, mask) for m in self.members])

    def segment_scores(self, segments: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
        """(k, N) summed rewards of each segment by each member (raw, not normalised)."""
        obs, acts, mask, _ = self._stack(segments, "")
        return self._all_scores(obs, acts, mask).cpu().numpy()

    def _set_input_stats(self, obs: torch.Tensor, mask: torch.Tensor) -> None:
        if self.inputs_set or image_layout(self.obs_space) is not None:
            self.inputs_set = True
            return
        first = self.members[0]
        assert first.obs_flat is not None
        if first.obs_flat.kind == "Box":
            flat = obs.reshape(-1, *obs.shape[2:])[mask.reshape(-1) > 0]
            if len(flat) < 2:
                return  # too little to measure: try again at the next fit
            x = first.obs_flat(flat)
            mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-2)
            for m in self.members:
                m.obs_mean.copy_(mean)
                m.obs_std.copy_(std)
        self.inputs_set = True

    # -- fitting

    def fit(self, segments_left: Sequence[dict[str, np.ndarray]],
            segments_right: Sequence[dict[str, np.ndarray]], targets: Any,
            holdout_fraction: float = 0.2, rng: np.random.Generator | int | None = None,
            weights: Sequence[float] | None = None, marks: Any = None,
            mark_weight: float = 0.0) -> dict[str, Any]:
        """Fit every member on the pairs and return metrics.

        ``targets``: one per pair, an answer ('left', 'right', 'tie', 'skip') or P(left
        preferred) (1, 0, 0.5; NaN or None = skip). Skips are dropped. ``weights``: optional
        per-pair weights (e.g. annotator trust). A pair is held out when a hash of its
        content falls below ``holdout_fraction``, so the split is the same in every fit
        (members keep their weights between fits). Each member trains on a bootstrap
        resample of the rest, with early stopping on its held-out loss. ``marks``: the
        observation features that decide, a keep mask (F,) over the flat vector observation
        (bool, or graded in [0, 1]) or one per pair (n_pairs, F); with ``mark_weight`` > 0
        each step adds ``mark_weight`` times the input-gradient share outside them, and the
        metrics gain ``mark_share`` (that share on the training pairs). Metrics (None where
        there is nothing to measure): train_loss, train_accuracy, holdout_loss,
        holdout_accuracy (pairwise, ties excluded), n_pairs, n_used, n_skipped, n_ties,
        n_train, n_holdout, updates."""
        cfg = self.config
        if len(segments_left) != len(segments_right):
            raise UserInputError(f"{len(segments_left)} left segments but "
                                 f"{len(segments_right)} right ones: give pairs")
        if not 0 <= holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must lie in [0, 1), got {holdout_fraction}")
        n_pairs = len(segments_left)
        target, keep = _targets(targets, n_pairs)
        w = np.ones(n_pairs) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (n_pairs,) or (w < 0).any() or not np.isfinite(w).all():
            raise UserInputError("weights must be one finite number >= 0 per pair")
        used = np.flatnonzero(keep & (w > 0))
        if len(used) == 0:
            raise UserInputError("no pair to learn from: every answer is a skip (or has weight "
                                 "0); collect some left/right/tie answers first")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        left = [segments_left[i] for i in used]
        right = [segments_right[i] for i in used]
        obs, acts, mask, past_end = self._stack(left + right, "left/right")
        self.saw_termination |= past_end
        n = len(used)
        t_vec = torch.as_tensor(target[used], dtype=torch.float32, device=self.device)
        w_vec = torch.as_tensor(w[used], dtype=torch.float32, device=self.device)

        hold = np.array([_pair_unit(a, b) < holdout_fraction for a, b in zip(left, right,
                                                                              strict=True)])
        if hold.all():
            hold[:] = False  # too few pairs to hold any out: train on all, report no holdout
        train_idx, hold_idx = np.flatnonzero(~hold), np.flatnonzero(hold)
        seen = torch.as_tensor(np.concatenate([train_idx, train_idx + n]), device=self.device)
        self._set_input_stats(obs[seen], mask[seen])

        def pairs(idx: np.ndarray):
            one = torch.as_tensor(idx, dtype=torch.long, device=self.device)
            both = torch.cat([one, one + n])
            return (obs[both], None if acts is None else acts[both], mask[both],
                    t_vec[one], w_vec[one])

        held = pairs(hold_idx) if len(hold_idx) else None
        bpe = math.ceil(len(train_idx) / cfg.batch_size)
        total = max(cfg.epochs * bpe, cfg.min_updates)
        check_every = max(1, math.ceil(total / cfg.epochs))
        fkeep = self._keep(marks, n_pairs)
        fkeep = None if fkeep is None else fkeep[torch.as_tensor(used, device=self.device)]
        marked = (fkeep, float(mark_weight)) if fkeep is not None and mark_weight > 0 else None
        updates = []
        for member in self.members:
            sample = rng.choice(train_idx, size=len(train_idx), replace=True) \
                if cfg.bootstrap and len(train_idx) > 1 else train_idx
            updates.append(self._fit_member(member, sample, pairs, held, total, check_every,
                                            rng, marked))
        self.fitted = True

        def evaluate(idx: np.ndarray) -> tuple[float | None, float | None]:
            if not len(idx):
                return None, None
            o, a, m, t, wt = pairs(idx)
            s = self._all_scores(o, a, m).mean(0)
            sl, sr = s[: len(idx)], s[len(idx):]
            loss = float(preference_loss(sl, sr, t, noise=cfg.label_noise, weight=wt))
            acc = preference_accuracy(sl, sr, t)
            return loss, (None if math.isnan(acc) else acc)

        train_loss, train_acc = evaluate(train_idx)
        hold_loss, hold_acc = evaluate(hold_idx)
        extra = {}
        if fkeep is not None:
            o, a, m, _, _ = pairs(train_idx)
            k_tr = fkeep[torch.as_tensor(train_idx, device=self.device)]
            extra["mark_share"] = self._share(o, a, m, torch.cat([k_tr, k_tr]))
        return extra | {"train_loss": train_loss, "train_accuracy": train_acc,
                "holdout_loss": hold_loss, "holdout_accuracy": hold_acc,
                "n_pairs": n_pairs, "n_used": n, "n_skipped": int((~keep).sum()),
                "n_ties": int((target[used] == 0.5).sum()), "n_train": len(train_idx),
                "n_holdout": len(hold_idx), "updates": float(np.mean(updates))}

    def _fit_member(self, member: RewardNet, sample: np.ndarray, pairs, held, total: int,
                    check_every: int, rng: np.random.Generator, marked=None) -> int:
        cfg = self.config
        opt = torch.optim.AdamW(member.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best, best_state, bad = math.inf, None, 0
        order: np.ndarray = np.empty(0, dtype=int)
        step = 0
        while step < total:
            if len(order) == 0:
                order = rng.permutation(sample)
            batch, order = order[: cfg.batch_size], order[cfg.batch_size:]
            member.train()
            o, a, m, t, wt = pairs(batch)
            if marked is not None:
                o = o.detach().requires_grad_(True)
            s, r = self._score(member, o, a, m)
            b = len(batch)
            loss = preference_loss(s[:b], s[b:], t, noise=cfg.label_noise, weight=wt)
            if cfg.output_l2:
                loss = loss + cfg.output_l2 * (r.square() * m).sum() / m.sum().clamp_min(1)
            if marked is not None:
                kb = marked[0][torch.as_tensor(batch, device=self.device)]
                loss = loss + marked[1] * feature_gradient_share(
                    r * m, o, torch.cat([kb, kb]), member.obs_std)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if held is not None and cfg.patience and (step % check_every == 0 or step == total):
                ho, ha, hm, ht, hw = held
                hs = self._member_scores(member, ho, ha, hm)
                k = len(ht)
                h_loss = float(preference_loss(hs[:k], hs[k:], ht, noise=cfg.label_noise,
                                               weight=hw))
                if h_loss < best - 1e-6:
                    best, bad = h_loss, 0
                    best_state = {k: v.detach().clone() for k, v in member.state_dict().items()}
                else:
                    bad += 1
                    if bad >= cfg.patience:
                        break
        if best_state is not None:
            member.load_state_dict(best_state)
        member.eval()
        return step

    # -- feature marks

    def _keep(self, marks: Any, n_pairs: int) -> torch.Tensor | None:
        """Feature marks as a keep mask (n_pairs, F) float on the device, or None."""
        if marks is None:
            return None
        first = self.members[0]
        if first.obs_flat is None or first.obs_flat.kind != "Box" or \
                len(self.obs_space.shape or ()) != 1:
            raise UserInputError(f"feature marks apply to vector observations (a 1-D Box); "
                                 f"this reward model's observation space is {self.obs_space}")
        f = first.obs_flat.dim
        keep = np.asarray(marks, dtype=np.float32)
        if keep.shape == (f,):
            keep = np.broadcast_to(keep, (n_pairs, f))
        if keep.shape != (n_pairs, f) or not ((keep >= 0) & (keep <= 1)).all():
            raise UserInputError(f"feature marks must be a mask of {f} values in [0, 1] (one "
                                 f"per observation feature), or one such row per pair; got "
                                 f"shape {np.asarray(marks).shape}")
        return torch.as_tensor(np.ascontiguousarray(keep), device=self.device)

    def _share(self, obs, acts, mask, keep: torch.Tensor, batch: int = 256) -> float:
        """Mean over members and segments of the input-gradient share outside ``keep``."""
        shares = []
        for member in self.members:
            member.eval()
            for s in range(0, len(mask), batch):
                o = obs[s:s + batch].detach().requires_grad_(True)
                _, r = self._score(member, o, None if acts is None else acts[s:s + batch],
                                   mask[s:s + batch])
                share = feature_gradient_share(r * mask[s:s + batch], o, keep[s:s + batch],
                                               member.obs_std)
                shares.append(float(share.detach()) * len(o))
        return sum(shares) / (self.k * len(mask))

    def feature_share(self, segments: Sequence[dict[str, np.ndarray]], marks: Any) -> float:
        """The members' mean share of input-gradient energy (on the normalised features)
        outside the marked features, over these segments: 0 when the learned reward looks
        at the marked features only. ``marks`` as in :meth:`fit` ((F,) or one per segment)."""
        obs, acts, mask, _ = self._stack(segments, "")
        return self._share(obs, acts, mask, self._keep(marks, len(segments)))  # type: ignore[arg-type]

    # -- prediction

    def _raw(self, obs: np.ndarray, actions: np.ndarray | None, batch_size: int) -> torch.Tensor:
        obs = np.asarray(obs)
        if obs.ndim == 0:
            raise UserInputError("predict takes a batch of observations, shape (N, *obs_shape)")
        self._check_obs(obs, "predict")
        uses_actions = self.uses_actions
        if uses_actions:
            if actions is None:
                raise UserInputError("this reward model scores (observation, action) pairs: "
                                     "pass the actions too")
            actions = np.asarray(actions).reshape(len(obs), -1)
        out = []
        with torch.inference_mode():
            for s in range(0, len(obs), batch_size):
                o = torch.as_tensor(obs[s:s + batch_size], device=self.device)
                if o.dtype != torch.uint8:
                    o = o.float()
                a = None if not uses_actions else torch.as_tensor(
                    actions[s:s + batch_size], dtype=torch.float32, device=self.device)
                rs = torch.stack([member.eval()(o, a) for member in self.members])
                r = rs.mean(0)
                if self.config.pessimism > 0 and self.k > 1:
                    r = r - self.config.pessimism * rs.std(0, unbiased=False)
                out.append(r)
        return torch.cat(out) if out else torch.zeros(0)

    def predict(self, obs: np.ndarray, actions: np.ndarray | None = None,
                normalize: bool = True, batch_size: int = 8192) -> np.ndarray:
        """Per-step learned rewards (N,) float32: the members' mean (less ``pessimism``
        times their standard deviation), then normalised as set
        by :meth:`fit_normalization` (identity before it is called)."""
        r = self._raw(obs, actions, batch_size)
        if normalize:
            r = (r - self.norm_shift) / self.norm_scale
        return r.float().cpu().numpy()

    def fit_normalization(self, obs: np.ndarray, actions: np.ndarray | None = None,
                          center: bool | None = None) -> dict[str, float]:
        """Make predict() have std 1 (and mean 0, when centring) on this data, e.g. recent
        policy steps. ``center`` overrides config.center_rewards (None = auto, see there)."""
        r = self._raw(obs, actions, 8192)
        if len(r) < 2:
            raise UserInputError("fit_normalization needs at least 2 steps of data")
        if center is None:
            center = self.config.center_rewards
        if center is None:
            center = not self.saw_termination
        mean, std = float(r.mean()), float(r.std(unbiased=False))
        scale = std if std > 1e-8 else 1.0
        self.norm_mean.fill_(mean)
        self.norm_std.fill_(std)
        self.norm_shift.fill_(mean if center else 0.0)
        self.norm_scale.fill_(scale)
        self.normalized = True
        return {"mean": mean, "std": std, "shift": float(self.norm_shift),
                "scale": scale, "centered": bool(center)}

    def disagreement(self, left: Sequence[dict[str, np.ndarray]],
                     right: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
        """Std over members of P(left preferred), one per pair (0 for a single member)."""
        if len(left) != len(right):
            raise ValueError(f"{len(left)} left segments but {len(right)} right ones")
        if not len(left):
            return np.zeros(0, dtype=np.float32)
        obs, acts, mask, _ = self._stack(list(left) + list(right), "left/right")
        s = self._all_scores(obs, acts, mask)
        n = len(left)
        log_l, _ = preference_logprobs(s[:, :n], s[:, n:], noise=self.config.label_noise)
        return log_l.exp().std(0, unbiased=False).cpu().numpy().astype(np.float32)

    # -- saving

    def _meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "config": asdict(self.config), "seed": self.seed,
                "obs_space": space_to_json(self.obs_space),
                "act_space": space_to_json(self.act_space),
                "state": {"fitted": self.fitted, "inputs_set": self.inputs_set,
                          "saw_termination": self.saw_termination,
                          "normalized": self.normalized}}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the folder ``path`` (weights as safetensors, config as JSON); returns it."""
        from safetensors.torch import save

        folder = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_bytes_atomic(folder / WEIGHTS_FILE, save(tensors))
        write_json_atomic(folder / CONFIG_FILE, self._meta())
        return folder

    @staticmethod
    def _read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(path)
        weights, meta_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
        if not weights.exists() or not meta_path.exists():
            raise UserInputError(f"{folder}: not a saved reward model (needs {WEIGHTS_FILE} and "
                                 f"{CONFIG_FILE}); give the folder RewardEnsemble.save wrote")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserInputError(f"{meta_path}: unreadable JSON ({exc})") from None
        found = meta.get("format") if isinstance(meta, dict) else None
        if found != FORMAT:
            raise UserInputError(f"{meta_path}: format is {found!r}, want {FORMAT!r}; "
                                 "save the model again with this rlhf_hgt")
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError) as exc:
            raise UserInputError(f"{weights}: unreadable safetensors file ({exc})") from None
        return meta, tensors

    def load(self, path: str | os.PathLike) -> RewardEnsemble:
        """Load weights and state saved by :meth:`save` into this ensemble (same spaces and
        architecture); returns self. To build one from the folder alone use
        :meth:`from_saved`."""
        meta, tensors = self._read(path)
        mine = self.state_dict()
        if set(tensors) != set(mine) or any(tensors[k].shape != mine[k].shape for k in mine):
            raise UserInputError(f"{path}: saved for a different model (ensemble size, layers "
                                 "or spaces differ); build the ensemble with the saved config, "
                                 "or use RewardEnsemble.from_saved")
        self.load_state_dict({k: v.to(mine[k].dtype) for k, v in tensors.items()})
        state = meta.get("state", {})
        self.fitted = bool(state.get("fitted", True))
        self.inputs_set = bool(state.get("inputs_set", True))
        self.saw_termination = bool(state.get("saw_termination", False))
        self.normalized = bool(state.get("normalized", False))
        return self

    @classmethod
    def from_saved(cls, path: str | os.PathLike, device: str | None = None) -> RewardEnsemble:
        """A new ensemble from a folder written by :meth:`save`."""
        meta, _ = cls._read(path)
        cfg = dict(meta.get("config", {}))
        if device is not None:
            cfg["device"] = device
        config = RewardModelConfig.from_dict(cfg, where=f"{path}/{CONFIG_FILE}")
        ens = cls(space_from_json(meta["obs_space"]), space_from_json(meta["act_space"]),
                  config=config, seed=int(meta.get("seed", 0)))
        return ens.load(path)
