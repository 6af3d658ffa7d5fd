"""Trajectory fragments: roll a policy out, then cut fixed-length segments to compare.

An **episode** (what :func:`collect_rollouts` returns a list of) is a dict of numpy arrays:

``obs``           (L, *obs_shape), float32 (uint8 image observations stay uint8)
``actions``       (L, *act_shape)
``true_rewards``  (L,) float32: ``info["true_reward"]`` when the env reports it, else the
                  env's reward (the learner never sees it; synthetic teachers do)
``terminated``    () bool: the episode ended in a terminal state
``truncated``     () bool: a time limit stopped it (neither flag: collection stopped it)
``final_obs``     (*obs_shape): the observation after the last action
``frames``        (L, H, W, 3) uint8 and ``final_frame`` (H, W, 3), only with record_frames

A **segment** (what :func:`cut_segments` returns, and what the store keeps as one side of a
query) is a dict of arrays of one fixed length T: ``obs``, ``actions``, ``true_rewards``,
``valid`` (T,) bool and, when recorded, ``frames``.

Segments and episode ends (the choice made here, and why)
---------------------------------------------------------
Segments never cross an episode boundary. All segments have the same length T, so the
sums of rewards a teacher and the reward model compare are over equally many steps.

* An episode that ends in a **terminal** state (the pole fell; the goal was reached) is
  followed, as in the MDP, by an absorbing state that earns nothing forever. A segment may
  run past the end: the steps after it repeat the terminal observation (and frame), carry
  a zero true reward and a zero action, and are marked ``valid = False``. The reward model
  gives such steps exactly zero (they are masked out of the segment's sum). So a segment
  whose episode ends early is worse than one that survives when the per-step reward of
  living is positive (CartPole) and better when it is negative (reaching a goal quickly),
  as the teacher's sums say; and the offset that a Bradley–Terry model otherwise leaves
  free is pinned: the learned reward is measured against "the episode is over" = 0, which
  is what an RL agent, whose return stops at termination, needs. Windows start at any
  step of such an episode, so every segment holds at least one real step.
* An episode stopped by a **time limit** or by the end of collection has an unknown
  future: its segments lie wholly inside it (no padding), and an episode shorter than T
  gives none.

Windows are drawn uniformly from all allowed (episode, start) pairs, without repeats.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from rlhf_hgt.feedback.render import rgb_uint8

Episode = dict[str, np.ndarray]
Segment = dict[str, np.ndarray]
PolicyFn = Callable[[np.ndarray], Any]

__all__ = ["Episode", "Segment", "collect_rollouts", "cut_segments", "episode_returns"]


# ----------------------------------------------------------------------------- collecting


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _is_sb3_vec_env(env: Any) -> bool:
    return all(hasattr(env, name) for name in ("num_envs", "step_async", "step_wait"))


def _actor(policy: Any, action_space: gym.Space, rng: np.random.Generator,
           n: int, deterministic: bool) -> Callable[[np.ndarray], np.ndarray]:
    """obs batch -> action batch, from None (uniform random), an SB3 model or a callable."""
    if policy is None:
        space = copy.deepcopy(action_space)
        space.seed(int(rng.integers(2**31 - 1)))
        return lambda obs: np.stack([np.asarray(space.sample()) for _ in range(len(obs))])
    if hasattr(policy, "predict"):
        return lambda obs: np.asarray(policy.predict(obs, deterministic=deterministic)[0])
    if callable(policy):
        return lambda obs: np.asarray(policy(obs))
    raise ValueError(f"policy_fn must be a callable obs_batch -> actions, a model with "
                     f".predict (stable-baselines3), or None for random actions; "
                     f"got {type(policy).__name__}")


def _obs_array(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError("observations must be numeric arrays; flatten Dict/Tuple observations "
                         "with gymnasium.wrappers.FlattenObservation")
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def _frame(img: Any, size: tuple[int, int] | None) -> np.ndarray:
    """An rgb uint8 frame, downscaled with PIL to ``size`` = (height, width)."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"env.render() gave an array of shape {arr.shape}; an rgb image "
                         "(H, W, 3) is needed: make the env with render_mode='rgb_array'")
    arr = rgb_uint8(arr)
    if size is not None and arr.shape[:2] != tuple(size):
        from PIL import Image

        h, w = size
        arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(arr, dtype=np.uint8)


class _EpisodeBuffer:
    def __init__(self) -> None:
        self.obs: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.frames: list[np.ndarray] = []

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float,
            frame: np.ndarray | None) -> None:
        self.obs.append(obs)
        self.actions.append(np.asarray(action))
        self.rewards.append(float(reward))
        if frame is not None:
            self.frames.append(frame)

    def finish(self, final_obs: np.ndarray, terminated: bool, truncated: bool,
               final_frame: np.ndarray | None) -> Episode:
        ep: Episode = {
            "obs": _obs_array(np.stack(self.obs)),
            "actions": np.stack(self.actions),
            "true_rewards": np.asarray(self.rewards, dtype=np.float32),
            "terminated": np.asarray(bool(terminated)),
            "truncated": np.asarray(bool(truncated) and not terminated),
            "final_obs": _obs_array(final_obs),
        }
        if self.frames:
            ep["frames"] = np.stack(self.frames)
            ep["final_frame"] = final_frame if final_frame is not None else self.frames[-1]
        return ep


def _true_reward(info: Any, reward: Any) -> float:
    if isinstance(info, dict) and "true_reward" in info:
        return float(info["true_reward"])
    return float(reward)


def collect_rollouts(env: Any, policy_fn: Any = None, n_steps: int = 1000,
                     rng: np.random.Generator | int | None = None, record_frames: bool = False,
                     frame_size: tuple[int, int] | None = (64, 64),
                     deterministic: bool = False) -> list[Episode]:
    """Run ``policy_fn`` for ``n_steps`` env steps and return the episodes (see module doc).

    ``env``: a ``gymnasium.Env`` or a stable-baselines3 ``VecEnv`` (then ``n_steps`` is the
    total over its envs, rounded up to a whole vector step). The env is reset first; give a
    separate env, not the one an agent is training on. ``policy_fn``: a callable from a batch
    of observations to a batch of actions, an SB3 model (``predict`` is used, stochastic
    unless ``deterministic``) or None for uniform random actions. The last, unfinished
    episode of each env is returned too, with both flags False. ``record_frames`` needs
    ``render_mode="rgb_array"``; frames are resized to ``frame_size`` = (height, width), or
    kept as rendered when it is None. (In a VecEnv the terminal frame is not rendered before
    the automatic reset, so ``final_frame`` repeats the last frame seen.)
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    if frame_size is not None:
        if len(frame_size) != 2 or min(int(s) for s in frame_size) < 1:
            raise ValueError(f"frame_size must be (height, width) with both >= 1, "
                             f"got {frame_size!r}")
        frame_size = (int(frame_size[0]), int(frame_size[1]))
    rng = _as_rng(rng)
    if isinstance(env, gym.vector.VectorEnv):
        raise ValueError("gymnasium vector envs are not supported: pass one gymnasium.Env, or "
                         "wrap the env makers in stable_baselines3's DummyVecEnv")
    if record_frames and getattr(env, "render_mode", None) != "rgb_array":
        raise ValueError(f"record_frames needs an env made with render_mode='rgb_array' "
                         f"(this one has render_mode={getattr(env, 'render_mode', None)!r}), "
                         "e.g. gymnasium.make(env_id, render_mode='rgb_array')")
    if _is_sb3_vec_env(env):
        return _collect_vec(env, policy_fn, n_steps, rng, record_frames, frame_size,
                            deterministic)
    if isinstance(env, gym.Env):
        return _collect_single(env, policy_fn, n_steps, rng, record_frames, frame_size,
                               deterministic)
    raise ValueError(f"env must be a gymnasium.Env or a stable-baselines3 VecEnv, "
                     f"got {type(env).__name__}")


def _collect_single(env: gym.Env, policy: Any, n_steps: int, rng: np.random.Generator,
                    record: bool, size: tuple[int, int] | None,
                    deterministic: bool) -> list[Episode]:
    act = _actor(policy, env.action_space, rng, 1, deterministic)
    episodes: list[Episode] = []
    obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
    frame = _frame(env.render(), size) if record else None
    buf = _EpisodeBuffer()
    for _ in range(n_steps):
        action = act(np.asarray(obs)[None])[0]
        next_obs, reward, terminated, truncated, info = env.step(action)
        buf.add(_obs_array(obs), action, _true_reward(info, reward), frame)
        frame = _frame(env.render(), size) if record else None
        obs = next_obs
        if terminated or truncated:
            episodes.append(buf.finish(next_obs, bool(terminated), bool(truncated), frame))
            buf = _EpisodeBuffer()
            obs, _ = env.reset()
            frame = _frame(env.render(), size) if record else None
    if buf.obs:
        episodes.append(buf.finish(obs, False, False, frame))
    return episodes


def _collect_vec(env: Any, policy: Any, n_steps: int, rng: np.random.Generator, record: bool,
                 size: tuple[int, int] | None, deterministic: bool) -> list[Episode]:
    n = int(env.num_envs)
    act = _actor(policy, env.action_space, rng, n, deterministic)
    env.seed(int(rng.integers(2**31 - 1)))
    obs = env.reset()

    def images() -> list[np.ndarray | None]:
        if not record:
            return [None] * n
        return [_frame(img, size) for img in env.get_images()]

    frames = images()
    bufs = [_EpisodeBuffer() for _ in range(n)]
    episodes: list[Episode] = []
    for _ in range(math.ceil(n_steps / n)):
        actions = act(obs)
        next_obs, rewards, dones, infos = env.step(actions)
        new_frames = images()
        for i in range(n):
            bufs[i].add(_obs_array(obs[i]), actions[i], _true_reward(infos[i], rewards[i]),
                        frames[i])
            if dones[i]:
                truncated = bool(infos[i].get("TimeLimit.truncated", False))
                final = infos[i].get("terminal_observation", next_obs[i])
                episodes.append(bufs[i].finish(final, not truncated, truncated, frames[i]))
                bufs[i] = _EpisodeBuffer()
        obs, frames = next_obs, new_frames
    for i, buf in enumerate(bufs):
        if buf.obs:
            episodes.append(buf.finish(obs[i], False, False, frames[i]))
    return episodes


def episode_returns(episodes: Sequence[Episode], complete_only: bool = True) -> np.ndarray:
    """True returns of the episodes (by default only those that ended or hit a time limit)."""
    keep = [e for e in episodes if not complete_only
            or bool(e.get("terminated", False)) or bool(e.get("truncated", False))]
    return np.asarray([float(np.sum(e["true_rewards"])) for e in keep], dtype=np.float64)


# ----------------------------------------------------------------------------- cutting


def _check_episode(i: int, ep: Any) -> int:
    if not isinstance(ep, dict):
        raise ValueError(f"episode {i} must be a dict of arrays (obs, actions, true_rewards), "
                         f"got {type(ep).__name__}")
    missing = [k for k in ("obs", "actions", "true_rewards") if k not in ep]
    if missing:
        raise ValueError(f"episode {i} lacks {', '.join(missing)}: episodes need obs, actions "
                         "and true_rewards (as collect_rollouts returns them)")
    length = len(ep["obs"])
    for key in ("actions", "true_rewards", "frames"):
        if key in ep and len(ep[key]) != length:
            raise ValueError(f"episode {i}: {key} has {len(ep[key])} steps but obs has "
                             f"{length}; every per-step array needs one entry per step")
    return length


def _window(ep: Episode, start: int, length: int) -> Segment:
    """Steps [start, start + length) of ``ep``, padded past a terminal state (module doc)."""
    n = len(ep["obs"])
    end = min(start + length, n)
    pad = length - (end - start)

    def padded(arr: np.ndarray, fill: np.ndarray) -> np.ndarray:
        part = np.asarray(arr[start:end])
        if not pad:
            return np.ascontiguousarray(part)
        fill = np.broadcast_to(np.asarray(fill, dtype=part.dtype), part.shape[1:])
        return np.concatenate([part, np.repeat(fill[None], pad, axis=0)])

    last_obs = ep["final_obs"] if "final_obs" in ep else ep["obs"][n - 1]
    seg: Segment = {
        "obs": padded(ep["obs"], last_obs),
        "actions": padded(ep["actions"], np.zeros_like(np.asarray(ep["actions"][0]))),
        "true_rewards": padded(np.asarray(ep["true_rewards"], dtype=np.float32),
                               np.float32(0.0)),
        "valid": np.arange(length) < (end - start),
    }
    if "frames" in ep:
        last_frame = ep["final_frame"] if "final_frame" in ep else ep["frames"][n - 1]
        seg["frames"] = padded(ep["frames"], last_frame)
    return seg


def cut_segments(episodes: Sequence[Episode], length: int, n: int,
                 rng: np.random.Generator | int | None = None,
                 pad_terminal: bool = True) -> list[Segment]:
    """Up to ``n`` distinct random segments of ``length`` steps (see the module doc).

    Fewer than ``n`` come back when the episodes hold fewer distinct windows. With
    ``pad_terminal=False`` no segment runs past a terminal state. Raises ValueError when no
    episode can give a segment (collect more steps or shorten ``length``)."""
    if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 1:
        raise ValueError(f"segment length must be a positive integer, got {length!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"number of segments n must be an integer >= 0, got {n!r}")
    rng = _as_rng(rng)
    counts = []
    for i, ep in enumerate(episodes):
        steps = _check_episode(i, ep)
        if steps == 0:
            counts.append(0)
        elif pad_terminal and bool(ep.get("terminated", False)):
            counts.append(steps)  # any start: the absorbing tail pads the window
        else:
            counts.append(max(0, steps - length + 1))
    total = int(sum(counts))
    if total == 0:
        longest = max((len(e["obs"]) for e in episodes), default=0)
        raise ValueError(f"no segment of {length} steps fits in these {len(episodes)} "
                         f"episodes (longest: {longest} steps, none ends in a terminal state "
                         "that could be padded): collect more steps or use shorter segments")
    if n == 0:
        return []
    picks = rng.choice(total, size=min(int(n), total), replace=False)
    bounds = np.cumsum(counts)
    segments = []
    for flat in picks:
        e = int(np.searchsorted(bounds, flat, side="right"))
        start = int(flat - (bounds[e] - counts[e]))
        segments.append(_window(episodes[e], start, length))
    return segments
