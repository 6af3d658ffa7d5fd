"""Tasks whose goal is not the built-in reward, and `make_env` for any gymnasium id.

Each task wraps a gymnasium base env and replaces its reward by a task reward that is a pure
function of the observation the action was taken in and the action, `r(obs_t, a_t)`, as a learned
reward model sees it. The same function is exposed vectorised (`pendulum_at_angle_reward`,
`cartpole_left_reward`, and each wrapper's `true_reward`) so a synthetic teacher or an evaluation
can recompute it from stored segments.

Tasks register with gymnasium when `rlhf_hgt.envs` is imported (idempotent):

- ``rlhf_hgt/PendulumAtAngle-v0``: hold the pendulum at `target_angle` radians from upright.
- ``rlhf_hgt/CartPoleLeft-v0``: keep the pole up and the cart left of `target_x`.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import find_highest_version, get_env_id, parse_env_id

__all__ = [
    "CARTPOLE_LEFT_ID",
    "DEFAULT_TARGET_ANGLE",
    "PENDULUM_AT_ANGLE_ID",
    "TASK_IDS",
    "CartPoleLeft",
    "EnvCreationError",
    "OffscreenRender",
    "PendulumAtAngle",
    "TaskRewardWrapper",
    "UnknownEnvError",
    "cartpole_left_reward",
    "make_cartpole_left",
    "make_env",
    "make_pendulum_at_angle",
    "pendulum_at_angle_reward",
    "register_tasks",
    "suggest_env_ids",
]

PENDULUM_AT_ANGLE_ID = "rlhf_hgt/PendulumAtAngle-v0"
CARTPOLE_LEFT_ID = "rlhf_hgt/CartPoleLeft-v0"
TASK_IDS = (PENDULUM_AT_ANGLE_ID, CARTPOLE_LEFT_ID)

# Pendulum-v1 (g=10, m=l=1, max torque 2) can hold an angle th from upright only while the
# gravity torque m*g*l*sin(th)/2 stays below the max torque: |th| <= asin(0.4) ~= 0.41 rad.
# pi/10 (18 degrees) needs 1.55 of the 2.0 available, leaving room to correct.
DEFAULT_TARGET_ANGLE = math.pi / 10


class UnknownEnvError(ValueError):
    """An env id that gymnasium does not know, or whose `module:` part cannot be imported."""

    def __init__(self, env_id: str, reason: str, suggestions: list[str] | None = None) -> None:
        self.env_id = env_id
        self.suggestions = list(suggestions or [])
        message = f"unknown environment id {env_id!r}: {reason}"
        if self.suggestions:
            message += "; did you mean " + ", ".join(repr(s) for s in self.suggestions) + "?"
        message += (
            " (an id 'pkg.module:EnvName-v0' imports the module first, which registers its envs;"
            " gymnasium.pprint_registry() lists the known ids)"
        )
        super().__init__(message)


class EnvCreationError(ValueError):
    """A known env id that could not be built: a missing optional dependency or a bad argument."""


# --------------------------------------------------------------------------- reward functions


def _angle_normalize(x: np.ndarray) -> np.ndarray:
    return ((x + np.pi) % (2 * np.pi)) - np.pi


def pendulum_at_angle_reward(
    obs: np.ndarray,
    actions: np.ndarray,
    target_angle: float = DEFAULT_TARGET_ANGLE,
    max_torque: float = 2.0,
) -> np.ndarray:
    """Reward of PendulumAtAngle for observations `(..., 3)` = (cos th, sin th, thdot).

    `-(angle_diff^2 + 0.1 * thdot^2 + 0.001 * u^2)` with `angle_diff` the signed angle from
    `target_angle` in [-pi, pi) and `u` the torque clipped to `max_torque`, as Pendulum-v1 clips
    it. Actions have shape `(..., 1)` or `(...)`. Returns shape `obs.shape[:-1]`.
    """
    obs = np.asarray(obs, dtype=np.float64)
    if obs.shape[-1:] != (3,):
        raise ValueError(f"pendulum observations must end in a dimension of 3, got {obs.shape}")
    u = np.asarray(actions, dtype=np.float64)
    if u.shape == obs.shape[:-1] + (1,):
        u = u[..., 0]
    u = np.clip(u, -max_torque, max_torque)
    theta = np.arctan2(obs[..., 1], obs[..., 0])
    diff = _angle_normalize(theta - target_angle)
    return -(diff**2 + 0.1 * obs[..., 2] ** 2 + 0.001 * u**2)


def cartpole_left_reward(
    obs: np.ndarray,
    actions: np.ndarray | None = None,
    target_x: float = -0.5,
    bonus: float = 1.0,
    shaped: bool = False,
) -> np.ndarray:
    """Reward of CartPoleLeft for observations `(..., 4)` = (x, x_dot, theta, theta_dot).

    1 per step the pole is up (as CartPole) plus `bonus` while the cart is left of `target_x`;
    with `shaped`, the bonus grows linearly from 0 at the centre to `bonus` at `target_x`
    (and stays there further left). The action does not matter. Returns `obs.shape[:-1]`.
    """
    del actions  # the reward depends on the state only
    obs = np.asarray(obs, dtype=np.float64)
    if obs.shape[-1:] != (4,):
        raise ValueError(f"cartpole observations must end in a dimension of 4, got {obs.shape}")
    x = obs[..., 0]
    if shaped:
        left = np.clip(x / target_x, 0.0, 1.0)
    else:
        left = (x < target_x).astype(np.float64)
    return 1.0 + bonus * left


# --------------------------------------------------------------------------- task wrappers


class TaskRewardWrapper(gym.Wrapper):
    """Replaces the env's reward by `true_reward(obs_t, a_t)` of the observation acted in.

    The built-in reward is kept in `info["base_reward"]`. Subclasses define `true_reward`
    (vectorised over leading dimensions).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._last_obs: np.ndarray | None = None

    def true_reward(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = np.array(obs, copy=True)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._last_obs is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        reward = float(self.true_reward(self._last_obs, np.asarray(action)))
        obs, base_reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["base_reward"] = float(base_reward)
        self._last_obs = np.array(obs, copy=True)
        return obs, reward, terminated, truncated, info


class PendulumAtAngle(TaskRewardWrapper):
    """Pendulum that should be held still at `target_angle` radians from upright (not at upright).

    Raises ValueError when the env's max torque cannot hold that angle against gravity (the
    task would have no resting optimum); pass `allow_unholdable=True` to accept it anyway.
    """

    def __init__(
        self,
        env: gym.Env,
        target_angle: float = DEFAULT_TARGET_ANGLE,
        allow_unholdable: bool = False,
    ) -> None:
        super().__init__(env)
        obs_shape = getattr(env.observation_space, "shape", None)
        act_shape = getattr(env.action_space, "shape", None)
        if obs_shape != (3,) or act_shape != (1,):
            raise ValueError(
                "PendulumAtAngle wraps a Pendulum env (observation (cos, sin, thdot), action "
                f"(torque,)); got observation shape {obs_shape} and action shape {act_shape}"
            )
        target = float(target_angle)
        if not math.isfinite(target):
            raise ValueError(f"target_angle must be a finite number of radians, got {target_angle}")
        base = env.unwrapped
        self.max_torque = float(getattr(base, "max_torque", 2.0))
        mass, gravity, length = (
            float(getattr(base, k, d)) for k, d in (("m", 1.0), ("g", 10.0), ("l", 1.0))
        )
        needed = mass * gravity * length * abs(math.sin(target)) / 2.0
        if needed > self.max_torque and not allow_unholdable:
            limit = math.asin(min(1.0, 2.0 * self.max_torque / (mass * gravity * length)))
            raise ValueError(
                f"target_angle={target:.3f} rad cannot be held: it takes torque {needed:.2f} "
                f"against gravity and the pendulum has at most {self.max_torque:.2f}. Choose "
                f"|target_angle| <= {limit:.3f} rad (or within {limit:.3f} of pi), lower g, or "
                "pass allow_unholdable=True"
            )
        self.target_angle = target

    def true_reward(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return pendulum_at_angle_reward(obs, actions, self.target_angle, self.max_torque)


class CartPoleLeft(TaskRewardWrapper):
    """CartPole where the person also wants the cart left of `target_x`; episodes end as in
    CartPole (pole past 12 degrees or cart past 2.4), the time limit comes from registration."""

    def __init__(
        self, env: gym.Env, target_x: float = -0.5, bonus: float = 1.0, shaped: bool = False
    ) -> None:
        super().__init__(env)
        obs_shape = getattr(env.observation_space, "shape", None)
        if obs_shape != (4,):
            raise ValueError(
                "CartPoleLeft wraps a CartPole env (observation (x, x_dot, theta, theta_dot)); "
                f"got observation shape {obs_shape}"
            )
        x_limit = float(getattr(env.unwrapped, "x_threshold", 2.4))
        if not -x_limit < float(target_x) < 0.0:
            raise ValueError(
                f"target_x must lie left of centre and inside the track, in ({-x_limit}, 0); "
                f"got {target_x}"
            )
        if not (math.isfinite(float(bonus)) and bonus > 0):
            raise ValueError(f"bonus must be a positive number, got {bonus}")
        self.target_x = float(target_x)
        self.bonus = float(bonus)
        self.shaped = bool(shaped)

    def true_reward(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return cartpole_left_reward(obs, actions, self.target_x, self.bonus, self.shaped)


# --------------------------------------------------------------------------- registration


def make_pendulum_at_angle(
    target_angle: float = DEFAULT_TARGET_ANGLE,
    g: float = 10.0,
    allow_unholdable: bool = False,
    render_mode: str | None = None,
) -> gym.Env:
    """Entry point of `rlhf_hgt/PendulumAtAngle-v0` (gymnasium.make adds the 200-step limit)."""
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    return PendulumAtAngle(
        PendulumEnv(render_mode=render_mode, g=g), target_angle, allow_unholdable
    )


def make_cartpole_left(
    target_x: float = -0.5,
    bonus: float = 1.0,
    shaped: bool = True,
    render_mode: str | None = None,
) -> gym.Env:
    """Entry point of `rlhf_hgt/CartPoleLeft-v0` (gymnasium.make adds the 500-step limit).

    The registered task is shaped: a person who wants the cart kept left prefers "further
    left" by degrees, not only past a line (`shaped=False` gives the all-or-nothing bonus)."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    return CartPoleLeft(CartPoleEnv(render_mode=render_mode), target_x, bonus, shaped)


_TASK_SPECS: tuple[dict[str, Any], ...] = (
    {
        "id": PENDULUM_AT_ANGLE_ID,
        "entry_point": "rlhf_hgt.envs.tasks:make_pendulum_at_angle",
        "max_episode_steps": 200,
    },
    {
        "id": CARTPOLE_LEFT_ID,
        "entry_point": "rlhf_hgt.envs.tasks:make_cartpole_left",
        "max_episode_steps": 500,
    },
)


def register_tasks() -> None:
    """Register our tasks with gymnasium; calling it again is a no-op."""
    for spec in _TASK_SPECS:
        if spec["id"] not in gym.registry:
            gym.register(**spec)


# --------------------------------------------------------------------------- make_env


def suggest_env_ids(env_id: str, n: int = 3) -> list[str]:
    """Registered ids closest to `env_id` (case-insensitive; the namespace may be left out).

    Ties go to ids matched with their namespace, then to newer versions.
    """
    query = env_id.rpartition(":")[2].strip().lower()
    scored: list[tuple[float, bool, int, str]] = []
    for key in gym.registry:
        lowered = key.lower()
        full = difflib.SequenceMatcher(None, query, lowered).ratio()
        short = difflib.SequenceMatcher(None, query, lowered.rpartition("/")[2]).ratio()
        score = round(max(full, short), 6)
        if score >= 0.6:
            version = gym.registry[key].version
            scored.append((score, full >= short, -1 if version is None else version, key))
    scored.sort(key=lambda item: (-item[0], not item[1], -item[2], item[3]))
    return [item[3] for item in scored[:n]]


def _resolve_id(env_id: str) -> str:
    """The registered id for `env_id` (importing its `module:` part), or UnknownEnvError."""
    if not isinstance(env_id, str) or not env_id.strip():
        raise UnknownEnvError(str(env_id), "expected a non-empty string such as 'CartPole-v1'")
    module, sep, name = env_id.strip().partition(":")
    if not sep:
        module, name = "", module
    elif not module or not name or ":" in name:
        raise UnknownEnvError(env_id, "expected 'EnvName-v0' or 'module.path:EnvName-v0'")
    if module:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure while importing a user's module is theirs to fix
            raise UnknownEnvError(
                env_id,
                f"cannot import module {module!r} ({type(exc).__name__}: {exc}); check that it "
                "is installed or on PYTHONPATH and that importing it registers the env",
            ) from exc
    try:
        ns, base_name, version = parse_env_id(name)
    except gym.error.Error as exc:
        raise UnknownEnvError(env_id, str(exc).rstrip("."), suggest_env_ids(name)) from exc
    try:
        gym.spec(name)
    except gym.error.Error as exc:
        if not isinstance(exc, gym.error.DeprecatedEnv) and version is None:
            latest = find_highest_version(ns, base_name)
            if latest is not None:  # an unversioned id means the newest version, as in gymnasium
                return get_env_id(ns, base_name, latest)
        if isinstance(exc, gym.error.DeprecatedEnv | gym.error.VersionNotFound):
            reason = str(exc).rstrip(".")
        else:
            reason = "no environment with this id is registered"
        if module:
            reason += f" (after importing {module!r})"
        raise UnknownEnvError(env_id, reason, suggest_env_ids(name)) from exc
    return name


# SDL drivers that draw and play nothing: enough for rendering to arrays
_OFFSCREEN_SDL = {"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}


@contextmanager
def _offscreen_sdl() -> Iterator[None]:
    """SDL's dummy drivers for what runs inside, unless the user chose drivers."""
    added = [k for k in _OFFSCREEN_SDL if k not in os.environ]
    for key in added:
        os.environ[key] = _OFFSCREEN_SDL[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class OffscreenRender(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """An env rendered to arrays that never touches the terminal or the desktop.

    gymnasium's pygame renderers (classic control, toy text, box2d) start SDL on first use,
    and SDL probes the desktop's video and audio: with no desktop session (a terminal, ssh,
    CI) that probe prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment."
    on every new env. While this env resets, steps and renders, SDL gets its dummy drivers,
    which draw the same arrays and show nothing; a user's own SDL_VIDEODRIVER or
    SDL_AUDIODRIVER is left as it is, and nothing is changed outside these calls.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(self, **kwargs: Any) -> Any:
        with _offscreen_sdl():
            return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        with _offscreen_sdl():
            return self.env.step(action)

    def render(self) -> Any:
        with _offscreen_sdl():
            return self.env.render()


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """`gymnasium.make(env_id, **kwargs)` with errors a user can act on.

    Accepts any registered id, our tasks (registered on import of `rlhf_hgt.envs`), and
    `"module.path:EnvName-v0"` ids whose module registers the env when imported. Raises
    `UnknownEnvError` (a ValueError) naming the id and close matches, or `EnvCreationError`
    (a ValueError) when a dependency is missing or a keyword argument is not accepted.
    An env rendered to arrays (``render_mode="rgb_array"``) comes in :class:`OffscreenRender`,
    so rendering it prints nothing.
    """
    register_tasks()
    name = _resolve_id(env_id)
    try:
        if str(kwargs.get("render_mode")).startswith("rgb_array"):
            with _offscreen_sdl():
                return OffscreenRender(gym.make(name, **kwargs))
        return gym.make(name, **kwargs)
    except gym.error.DependencyNotInstalled as exc:
        raise EnvCreationError(
            f"environment {env_id!r} needs a package that is missing: {exc}"
        ) from exc
    except ImportError as exc:
        raise EnvCreationError(
            f"environment {env_id!r} is registered but its code cannot be imported: {exc}"
        ) from exc
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise EnvCreationError(
            f"environment {env_id!r} does not accept the arguments {sorted(kwargs)}: {exc}"
        ) from exc
