"""Gymnasium tasks and wrappers for learning from preferences (installed as `rlhf_hgt.envs`).

Importing this package registers our tasks with gymnasium (`rlhf_hgt/PendulumAtAngle-v0`,
`rlhf_hgt/CartPoleLeft-v0`) and stays light: the wrappers, which need stable-baselines3 (and so
torch), load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from .tasks import (
    CARTPOLE_LEFT_ID,
    DEFAULT_TARGET_ANGLE,
    PENDULUM_AT_ANGLE_ID,
    TASK_IDS,
    CartPoleLeft,
    EnvCreationError,
    PendulumAtAngle,
    TaskRewardWrapper,
    UnknownEnvError,
    cartpole_left_reward,
    make_env,
    pendulum_at_angle_reward,
    register_tasks,
    suggest_env_ids,
)

_LAZY_WRAPPERS = (
    "DISTRACTOR_KINDS",
    "DistractorWrapper",
    "HiddenRewardWrapper",
    "LearnedRewardVecEnv",
    "RewardFn",
)

__all__ = [
    "CARTPOLE_LEFT_ID",
    "DEFAULT_TARGET_ANGLE",
    "PENDULUM_AT_ANGLE_ID",
    "TASK_IDS",
    "CartPoleLeft",
    "EnvCreationError",
    "PendulumAtAngle",
    "TaskRewardWrapper",
    "UnknownEnvError",
    "cartpole_left_reward",
    "make_env",
    "pendulum_at_angle_reward",
    "register_tasks",
    "suggest_env_ids",
    *_LAZY_WRAPPERS,
]

register_tasks()


def __getattr__(name: str) -> Any:
    if name in _LAZY_WRAPPERS:
        return getattr(importlib.import_module(f"{__name__}.wrappers"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
