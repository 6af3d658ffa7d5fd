"""A person's hand on a run: pause, resume, stop, reject and roll back, from any terminal.

``rlhf-hgt oversee RUN_DIR ACT --reason TEXT [--by NAME] [--to ROUND]`` writes the act as an
``oversight`` event in the run's own store, ``RUN_DIR/feedback.db`` (who, when, why; the
same file a control run keeps its labels in by default, created when the run has none), so
it is kept with the rest of the run's record and read by ``lineage``, the report and the
model card. The running loop holds an :class:`Overseer` and asks it at its safe points
(between rounds, and between policy updates inside a round's training): acts written
while it runs are obeyed within about a second of a safe point.

The acts:

- ``pause`` holds training at the next safe point until ``resume`` (or ``stop``,
  ``reject``, ``rollback``); people may go on labelling meanwhile.
- ``stop`` ends the run cleanly: the round in progress is cut short, its checkpoint
  written, then the usual final evaluation, metrics (``oversight.stopped`` says who and
  why), manifest and cards; exit code 0.
- ``reject`` marks the latest checkpoint rejected: a running loop rolls back to the last
  checkpoint before it that is not rejected (a fresh start when there is none) and goes on
  from there; a rejected checkpoint is never resumed from.
- ``rollback --to N`` makes the loop continue from round N's kept checkpoint
  (``rounds/round-NNN``): rounds after N are trained again on new clips. Answers given
  meanwhile stay in the store and are learned from.

Acts written before a run (re)starts are history, except rejections: a run resumed after
a kill does not start from a rejected checkpoint. Light: no torch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.errors import UserInputError

ACTS = ("pause", "resume", "stop", "reject", "rollback")
KIND = "oversight"
STORE_NAME = "feedback.db"
#: what a run folder holds (one of them, or nothing yet: a run that has just started)
RUN_FILES = ("state.json", "metrics.json", "manifest.json", "lineage.jsonl", STORE_NAME,
             "checkpoints", "rounds")
#: how often a loop's safe point looks at the store (seconds): acts take effect this fast
POLL_SECONDS = 0.5


def run_store(run_dir: str | os.PathLike) -> Path:
    """Where a run's oversight acts are written: RUN_DIR/feedback.db."""
    return Path(run_dir) / STORE_NAME


def round_name(rnd: int) -> str:
    return f"round-{rnd:03d}"


def parse_round(text: str | int) -> int:
    """``3``, ``round-003`` or a path ending in ``round-003`` -> 3 (``round0003``, lm
    online's ``checkpoints/round0003[.K]``, too)."""
    name = Path(str(text)).name
    name = name.removeprefix("round-").removeprefix("round").split(".")[0]
    if not name.isdigit():
        raise UserInputError(f"--to {text!r}: give a round number (e.g. --to 2) or a kept "
                             f"checkpoint folder (e.g. RUN_DIR/rounds/round-002)")
    return int(name)


def kept_rounds(run_dir: Path) -> list[int]:
    """Rounds whose checkpoint a run keeps (``rounds/round-NNN[.K]/state.json``; lm online:
    ``checkpoints/roundNNNN[.K]/state.json``)."""
    found = set()
    run = Path(run_dir)
    for d in [*(run / "rounds").glob("round-*"), *(run / "checkpoints").glob("round*")]:
        number = d.name.removeprefix("round-").removeprefix("round").split(".")[0]
        if number.isdigit() and not d.name.endswith(".tmp") and (d / "state.json").is_file():
            found.add(int(number))
    return sorted(found)


def current_checkpoint(run_dir: Path) -> str | None:
    """The name of the run's latest checkpoint (from state.json: ``round-NNN``, or
    ``round-NNN.K`` for a round trained again after a rollback), if any."""
    try:
        state = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    rnd = state.get("round")
    name = state.get("checkpoint")  # lm online: checkpoints/roundNNNN[.G], named as lineage does
    return Path(name).name if name else (round_name(rnd) if isinstance(rnd, int) else None)


def record_act(run_dir: str | os.PathLike, act: str, reason: str, by: str,
               to: str | int | None = None) -> dict[str, Any]:
    """Write one act into the run's store and return the event's data. A UserInputError
    (exit 2 at the CLI) for what the person can fix: an unknown act, no reason, a rollback
    without ``--to`` or to a round the run does not keep."""
    from rlhf_hgt.feedback.store import PreferenceStore

    run = Path(run_dir)
    if not run.is_dir():
        raise UserInputError(f"{run}: no such run folder (give the --out of a run)")
    if any(run.iterdir()) and not any((run / name).exists() for name in RUN_FILES):
        raise UserInputError(f"{run}: not a run folder (none of {', '.join(RUN_FILES)} in "
                             "it); give the --out of a run")
    if act not in ACTS:
        raise UserInputError(f"act {act!r}: choose one of {', '.join(ACTS)}")
    if not reason.strip():
        raise UserInputError("--reason: say why (it is kept in the run's record)")
    data: dict[str, Any] = {"act": act, "reason": reason.strip(), "by": by,
                            "run": str(run.resolve())}
    if act == "rollback":
        if to is None:
            raise UserInputError("rollback needs --to ROUND (a round whose checkpoint is kept: "
                                 f"see {run}/rounds)")
        rnd = parse_round(to)
        kept = kept_rounds(run)
        if rnd not in kept:
            # a control run prints 'round 1/N' for rounds/round-000: say which number --to takes
            hint = ("; --to counts from 0 as the folders rounds/round-NNN do: the progress "
                    "line 'round 1/N' is --to 0") if (run / "rounds").is_dir() else ""
            raise UserInputError(f"--to {to}: {run} keeps no checkpoint of round {rnd} "
                                 f"(kept: {', '.join(map(str, kept)) or 'none'}{hint})")
        data["to"] = round_name(rnd)
    elif to is not None:
        raise UserInputError(f"--to is for rollback only, not {act}")
    if act == "reject":
        data["checkpoint"] = current_checkpoint(run) or "final"
    with PreferenceStore(run_store(run)) as store:
        store.log_event(KIND, annotator=by, data=data)
    if act == "reject":
        mark_rejected_cards(run, data)
    return data


def mark_rejected_cards(run: Path, data: dict[str, Any]) -> list[Path]:
    """Say on the rejected checkpoint's own model cards that it was rejected (by whom, when,
    why), so that someone who picks up its files sees it: a line under each card's title.
    Other cards are rewritten by the loops and list every act already."""
    name = str(data.get("checkpoint") or "final")
    if name == "final":
        from rlhf_hgt.governance.card import model_folders

        folders = model_folders(run)
    else:
        folders = [d for d in (run / "rounds" / name, run / "checkpoints" / name) if d.is_dir()]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    notice = (f"> **Rejected** ({name}) on {when} by {data.get('by')}: {data.get('reason')}. "
              "Not to be used as a result or resumed from (`rlhf-hgt oversee ... reject`).")
    marked = []
    for card in sorted({c for d in folders for c in d.rglob("README.md")}):
        lines = card.read_text(encoding="utf-8").splitlines()
        title = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
        if title is None or notice in lines:
            continue
        lines[title + 1:title + 1] = ["", notice]
        from rlhf_hgt.feedback.files import write_bytes_atomic

        write_bytes_atomic(card, ("\n".join(lines) + "\n").encode("utf-8"))
        marked.append(card)
    return marked


@dataclass
class Overseer:
    """What a running loop asks at its safe points (see the module docstring).

    ``pending`` holds the act the loop must carry out (``stop``, ``reject``, ``rollback``)
    once :meth:`gate` returns False; the loop clears it with :meth:`done`.
    """

    run_dir: Path
    progress: Callable[[str, dict[str, Any]], None] = lambda event, info: None
    poll_seconds: float = POLL_SECONDS
    pending: dict[str, Any] | None = None
    stopped: dict[str, Any] | None = None
    acts: list[dict[str, Any]] = field(default_factory=list)  # obeyed by this process
    refused: list[dict[str, Any]] = field(default_factory=list)  # acts this loop cannot do
    _last_id: int = 0
    _queue: list[dict[str, Any]] = field(default_factory=list)  # read, not yet obeyed
    _last_poll: float = 0.0
    _store: Any = None
    _paused: dict[str, Any] | None = None  # the pause a stop/reject/rollback came in
    _hold: dict[str, Any] | None = None  # a pause gate() goes on holding (a refused act's)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self._last_id = max((e["id"] for e in self._events(0)), default=0)

    # -- reading the store

    def _open(self) -> Any:
        if self._store is None:
            from rlhf_hgt.feedback.store import PreferenceStore

            self._store = PreferenceStore(run_store(self.run_dir))
        return self._store

    def _events(self, since: int) -> list[dict[str, Any]]:
        if not run_store(self.run_dir).exists():
            return []
        rows = self._open().conn.execute(
            "SELECT id, at, annotator, data FROM events WHERE kind = ? AND id > ? ORDER BY id",
            (KIND, since)).fetchall()
        mine = str(self.run_dir.resolve())
        out = []
        for id_, at, who, data in rows:
            d = json.loads(data or "{}")
            if d.get("run") in (None, mine):
                out.append({"id": id_, "at": at, "annotator": who, **d})
        return out

    def rejected(self) -> set[str]:
        """Checkpoint names a person rejected (every act ever written, not only new ones)."""
        return {e["checkpoint"] for e in self._events(0)
                if e.get("act") == "reject" and e.get("checkpoint")}

    def poll(self, force: bool = False) -> list[dict[str, Any]]:
        """Acts written since the last look (at most every ``poll_seconds``)."""
        now = time.monotonic()
        if not force and now - self._last_poll < self.poll_seconds:
            return []
        self._last_poll = now
        new = self._events(self._last_id)
        if new:
            self._last_id = new[-1]["id"]
        return new

    # -- the safe point

    def gate(self, force: bool = False) -> bool:
        """True: go on. False: stop what you are doing and carry out :attr:`pending`. A
        pause blocks here (polling) until another act ends it."""
        if self.pending is not None:
            return False
        paused, self._hold = self._hold, None
        acts, self._queue = self._queue + self.poll(force), []
        while True:
            for i, act in enumerate(acts):
                self.acts.append(act)
                kind = act.get("act")
                if kind == "pause":
                    if paused is None:
                        self.progress("paused", _who(act))
                    paused = act
                elif kind == "resume":
                    if paused is not None:
                        self.progress("resumed", _who(act))
                    paused = None
                elif kind in ("stop", "reject", "rollback"):
                    self.pending, self._paused = act, paused
                    self._queue = acts[i + 1:]  # acts that came with it: the next call's
                    self.progress("oversight", _who(act))
                    return False
            if paused is None:
                return True
            time.sleep(self.poll_seconds)
            acts = self.poll(force=True)

    def done(self) -> None:
        """The loop carried out :attr:`pending`; a stop is remembered for the metrics."""
        if self.pending is not None and self.pending.get("act") == "stop":
            self.stopped = self.pending
        self.pending = None

    def summary(self) -> dict[str, Any]:
        """For metrics.json: the acts this process obeyed and who stopped it, if anyone."""
        out: dict[str, Any] = {"acts": [_who(a) | {"at": a.get("at")} for a in self.acts]}
        if self.stopped is not None:
            out["stopped"] = _who(self.stopped) | {"at": self.stopped.get("at")}
        if self.refused:
            out["refused"] = list(self.refused)
        return out

    # -- loops that keep no earlier checkpoint (lm ppo, attention train)

    def refuse(self, why: str) -> None:
        """Do not carry out :attr:`pending` (a reject or rollback this loop cannot do): say
        so in one line on stderr, keep it for the metrics, and go on."""
        import sys

        act = self.pending or {}
        self.pending, self._hold = None, self._paused  # a pause it came in goes on
        entry = _who(act) | {"at": act.get("at"), "refused": why}
        self.refused.append(entry)
        self.progress("refused", entry)
        print(f"oversight: {act.get('act')} by {act.get('by')} refused: {why} (recorded; "
              f"`rlhf-hgt oversee RUN_DIR stop` ends the run)", file=sys.stderr, flush=True)

    def single_run_gate(self, force: bool = False) -> bool:
        """The safe point of a run that keeps no earlier checkpoint to go back to: True go
        on, False a stop is pending; a pause holds; reject and rollback are refused."""
        while not self.gate(force):
            if (self.pending or {}).get("act") == "stop":
                return False
            self.refuse("this run keeps no earlier checkpoint to go back to")
        return True

    def outcome(self) -> dict[str, Any]:
        """For metrics.json at the end of a run: ``oversight`` (:meth:`summary`) and
        ``status`` ("stopped by NAME: REASON") when a person acted; carries out a pending
        stop. Empty when nobody acted."""
        if (self.pending or {}).get("act") == "stop":
            self.done()
        out: dict[str, Any] = {}
        if self.acts:
            out["oversight"] = self.summary()
        if self.stopped is not None:
            out["status"] = f"stopped by {self.stopped.get('by')}: {self.stopped.get('reason')}"
        return out

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def say(event: str, info: dict[str, Any]) -> str | None:
    """One line for a person about an oversight event of :class:`Overseer` or a loop
    (paused, resumed, oversight, rolled_back); None for other events."""
    if event in ("paused", "resumed", "oversight"):
        what = event if event != "oversight" else info.get("act")
        hint = " (`rlhf-hgt oversee RUN_DIR resume --reason ...` continues)" \
            if event == "paused" else ""
        return f"{what} by {info.get('by')}: {info.get('reason')}{hint}"
    if event == "rolled_back":
        rnd = info.get("round", -1)
        return (f"{info.get('act')}: continuing from round {rnd}'s checkpoint" if rnd >= 0
                else f"{info.get('act')}: starting again from a fresh policy")
    if event == "rejected":
        return "the last checkpoint was rejected: resuming from an earlier one"
    return None


def announce(progress: Callable[[str, dict[str, Any]], None]
             ) -> Callable[[str, dict[str, Any]], None]:
    """``progress`` that also prints the oversight events (:func:`say`) on stderr: for
    loops whose progress display knows nothing of oversight."""
    import sys

    def hear(event: str, info: dict[str, Any]) -> None:
        line = say(event, info)
        if line is not None:
            print(f"oversight: {line}", file=sys.stderr, flush=True)
        progress(event, info)

    return hear


def _who(act: dict[str, Any]) -> dict[str, Any]:
    return {k: act.get(k) for k in ("act", "by", "reason", "to", "checkpoint")
            if act.get(k) is not None}
