"""Pause, resume and stop keys at the terminal a run was started from.

While a training command runs in an interactive terminal (and no one labels in it), a
background thread reads single keys: ``p`` pauses, ``r`` resumes, ``s`` stops. Each key
writes the same act ``rlhf-hgt oversee`` writes (:func:`rlhf_hgt.governance.oversight.
record_act`, by the login name, with the key as the reason), so the loop obeys it at its
next safe point and the record shows it. The terminal is given back as it was.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KEYS = {"p": "pause", "r": "resume", "s": "stop"}
HINT = "keys: p pause, r resume, s stop (or `rlhf-hgt oversee {run} ACT` from any terminal)"


@contextlib.contextmanager
def oversight_keys(run_dir: str | Path, console: Any, enabled: bool = True) -> Iterator[None]:
    """Read the keys while the block runs (nothing when ``enabled`` is False or stdin is
    not a terminal)."""
    try:
        interactive = enabled and sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    try:
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)
    except termios.error:
        yield
        return
    done = threading.Event()
    reader = threading.Thread(target=_read_keys, args=(fd, Path(run_dir), console, done),
                              daemon=True)
    reader.start()
    console.print(HINT.format(run=run_dir))
    try:
        yield
    finally:
        done.set()
        reader.join(timeout=1.0)
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _read_keys(fd: int, run_dir: Path, console: Any, done: threading.Event) -> None:
    from rlhf_hgt.feedback.annotators import default_annotator
    from rlhf_hgt.feedback.errors import UserInputError
    from rlhf_hgt.governance.oversight import record_act

    who = default_annotator()
    while not done.is_set():
        try:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            key = os.read(fd, 1).decode("utf-8", "ignore").lower()
        except OSError:
            return  # the terminal went away: the run goes on
        act = KEYS.get(key)
        if act is None:
            continue
        try:
            record_act(run_dir, act, f"key '{key}' at the run's terminal", who)
        except (UserInputError, OSError) as exc:
            console.print(f"could not record {act}: {exc}")
            continue
        console.print(f"{act} asked for (key '{key}'); the run obeys at its next safe point")
