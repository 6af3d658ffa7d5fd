"""What every settings dataclass shares: old field names that still work after a rename.

Config names follow TRL where TRL has the same knob (``learning_rate``,
``gradient_accumulation_steps``, ``lora_target_modules``...). A renamed field keeps its old
name for one release: :func:`renamed` lets ``Config(old=...)`` and ``config.old`` work with
a DeprecationWarning, and records the mapping in ``__renamed_fields__`` so the command
line can offer the old flag as an alias. Imports nothing of ours (the core level).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def renamed(**old_to_new: str) -> Callable[[type[T]], type[T]]:
    """Class decorator for a dataclass whose fields ``old`` were renamed to ``new``.

    A dataclass that subclasses a renamed config gets its own ``__init__``: decorate it too
    (``@renamed()`` with no names keeps the parent's)."""

    def decorate(cls: type[T]) -> type[T]:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        old_to_new_all = {**getattr(cls, "__renamed_fields__", {}), **old_to_new}
        for old, new in old_to_new_all.items():
            if new not in names:
                raise TypeError(f"{cls.__name__}: renamed field {old!r} -> {new!r}, but "
                                f"{new!r} is not a field")
        init = cls.__init__
        init_names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            # dataclasses.replace(config, old=...) passes every init field as well: then the
            # old name is the change asked for, and wins over the copied value
            replacing = init_names <= kwargs.keys()
            for old, new in old_to_new_all.items():
                if old in kwargs:
                    if new in kwargs and not replacing:
                        raise TypeError(f"{cls.__name__}: give {new}= only ({old}= is its "
                                        "old name)")
                    warnings.warn(f"{cls.__name__}({old}=...) is now {new}=...; the old name "
                                  "goes in the next release", DeprecationWarning,
                                  stacklevel=3 if replacing else 2)  # the caller of replace
                    kwargs[new] = kwargs.pop(old)
            init(self, *args, **kwargs)

        cls.__init__ = __init__  # type: ignore[method-assign]
        for old, new in old_to_new_all.items():
            setattr(cls, old, _alias_property(cls.__name__, old, new))
        cls.__renamed_fields__ = old_to_new_all  # type: ignore[attr-defined]
        return cls

    return decorate


def _alias_property(owner: str, old: str, new: str) -> property:
    def get(self: Any) -> Any:
        warnings.warn(f"{owner}.{old} is now {owner}.{new}", DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    def set_(self: Any, value: Any) -> None:
        warnings.warn(f"{owner}.{old} is now {owner}.{new}", DeprecationWarning, stacklevel=2)
        setattr(self, new, value)

    return property(get, set_, doc=f"Old name of {new!r}.")


def renamed_fields(cls: type) -> dict[str, str]:
    """{old name: new name} of a config class (empty when nothing was renamed)."""
    return dict(getattr(cls, "__renamed_fields__", {}))
