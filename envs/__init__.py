"""Gymnasium tasks and wrappers for learning from preferences (installed as `rlhf_hgt.envs`).

Importing this package registers our tasks with gymnasium (`rlhf_hgt/PendulumAtAngle-v0`,
`rlhf_hgt/CartPoleLeft-v0`) and stays light: the wrappers, which need stable-baselines3 (and so
torch), load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import tasks
from .tasks import *  # noqa: F403 - the tasks' public names are this package's too
from .tasks import register_tasks

_LAZY_WRAPPERS = (
    "DISTRACTOR_KINDS",
    "DistractorWrapper",
    "HiddenRewardWrapper",
    "LearnedRewardVecEnv",
    "add_distractors",
    "RewardFn",
)

__all__ = [*tasks.__all__, *_LAZY_WRAPPERS]

register_tasks()


def __getattr__(name: str) -> Any:
    if name in _LAZY_WRAPPERS:
        return getattr(importlib.import_module(f"{__name__}.wrappers"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
