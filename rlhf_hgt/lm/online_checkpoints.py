"""The kept round checkpoints of ``rlhf-hgt lm online`` and where a person's reject or
rollback sends the loop back to (:mod:`rlhf_hgt.governance.oversight`).

Each round's folder ``RUN_DIR/checkpoints/roundNNNN[.G]`` holds the policy and the loop's
state as it was then (``state.json``: round, history, the checkpoint the round started from
as ``parent``); G counts the times the run went back, so no checkpoint is overwritten.
Light: no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.governance.oversight import parse_round

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"


def folder_name(rnd: int, generation: int) -> str:
    """``round0003``, or ``round0003.G`` for a round trained again after going back."""
    return f"round{rnd:04d}" + (f".{generation}" if generation else "")


def kept(out: Path) -> list[Path]:
    """The kept round checkpoints that hold the loop's state, oldest written first."""
    found = [d for d in (Path(out) / CHECKPOINTS).glob("round*")
             if d.is_dir() and (d / STATE_FILE).is_file()]
    return sorted(found, key=lambda d: ((d / STATE_FILE).stat().st_mtime_ns, d.name))


def to_prune(out: Path, keep: int) -> list[Path]:
    """The round folders beyond the newest ``keep`` written (older layouts first)."""
    newest = kept(out)
    legacy = sorted(d for d in (Path(out) / CHECKPOINTS).glob("round*")
                    if d.is_dir() and d not in newest)
    return [*legacy, *newest][:-keep]


def newest_of_round(out: Path, rnd: int) -> Path | None:
    """Round ``rnd``'s newest kept checkpoint folder (None: none kept)."""
    found = [d for d in kept(out) if parse_round(d.name) == rnd]
    return found[-1] if found else None


def before(out: Path, name: str, rejected: set[str]) -> Path | None:
    """Where to go back to when checkpoint ``name`` (``roundNNNN[.G]``, as lineage names it;
    rejected: such names) is rejected: the checkpoint its round started from (or that
    one's, when it is rejected or no longer kept); when ``name`` is gone, the newest kept one
    of an earlier round that is not rejected; None: a fresh start."""
    out = Path(out)
    folder = out / CHECKPOINTS / Path(name).name if name else None
    while folder is not None and (folder / STATE_FILE).is_file():
        parent = json.loads((folder / STATE_FILE).read_text()).get("parent")
        folder = out / parent if parent else None
        if folder is not None and folder.name not in rejected \
                and (folder / STATE_FILE).is_file():
            return folder
    if folder is None:
        return None
    rnd = round_of(name)
    earlier = [d for d in kept(out) if parse_round(d.name) < rnd
               and d.name not in rejected]
    return max(earlier, key=lambda d: parse_round(d.name)) if earlier else None


def round_of(name: str) -> int:
    """The round of a checkpoint's name (0 for a name that has none, e.g. "final")."""
    try:
        return parse_round(name)
    except UserInputError:
        return 0
