"""Which process this is: a lone one, or one of several started by ``accelerate launch``,
``torchrun`` or MPI. One reading of the launchers' environment for the whole language stack
(the TRL trainers, our PPO, the online loop), so every part agrees on who writes files.

Before torch.distributed is set up, the launcher's variables tell (``RANK``/``WORLD_SIZE``
from accelerate and torchrun, ``PMI_*`` from Intel MPI/MPICH, ``OMPI_COMM_WORLD_*`` from
Open MPI); afterwards the process group does. Imports of torch and accelerate happen inside
the functions: importing this module is light.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["accelerate_cpu", "accelerator_if_launched", "gather_map", "is_main_process",
           "launched_by_accelerate", "wait_for_everyone", "world_size"]

RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def _dist() -> Any:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def _env_int(names: Sequence[str], default: int) -> int:
    for name in names:
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return default


def world_size() -> int:
    """Processes taking part (1 without a launcher; N under accelerate, torchrun or MPI)."""
    dist = _dist()
    if dist is not None:
        return dist.get_world_size()
    return max(1, _env_int(SIZE_VARIABLES, 1))


def is_main_process() -> bool:
    """True in a lone process and in rank 0 of a launched group (before and after set-up)."""
    dist = _dist()
    if dist is not None:
        return dist.get_rank() == 0
    return _env_int(RANK_VARIABLES, 0) == 0


def launched_by_accelerate() -> bool:
    """True under ``accelerate launch`` (any number of processes, ``--cpu`` included) or any
    multi-process launch (``torchrun``, MPI)."""
    return world_size() > 1 or os.environ.get("ACCELERATE_USE_CPU") is not None


def accelerate_cpu() -> bool:
    """Whether processes should run on CPU: ``accelerate launch --cpu``, or no CUDA GPU (then
    several CPU processes train together over gloo, e.g. under ``torchrun``)."""
    import torch

    flag = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower()
    return flag in ("1", "true", "yes") or not torch.cuda.is_available()


def accelerator_if_launched() -> Any:
    """An ``accelerate.Accelerator`` when launched (see :func:`launched_by_accelerate`; its
    device is then the one to use, e.g. CPU under ``--cpu``), else None."""
    if not launched_by_accelerate():
        return None
    from accelerate import Accelerator

    return Accelerator(mixed_precision="no", cpu=accelerate_cpu())


def _state() -> Any:
    from accelerate import PartialState

    return PartialState()


def wait_for_everyone() -> None:
    """A barrier across the processes (nothing in a lone process)."""
    if world_size() > 1:
        _state().wait_for_everyone()


def gather_map(fn: Callable[[list[Any]], list[Any]], items: Sequence[Any]) -> list[Any]:
    """``fn`` over ``items`` sharded between the processes; every process gets all the results,
    in the order of ``items``. In a lone process it is just ``fn(list(items))``."""
    items = list(items)
    if world_size() == 1:
        return list(fn(items))
    from accelerate.utils import gather_object

    state = _state()
    with state.split_between_processes(items) as shard:
        local = list(fn(list(shard))) if len(shard) else []
    return list(gather_object(local))
