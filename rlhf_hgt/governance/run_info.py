"""What a run folder says about itself, read once for the report and the model cards.

Every kind of run the project writes is read the same way: ``metrics.json`` (required for a
finished run), ``manifest.json`` (config, versions, git revision, hashes), ``state.json``
(the rounds so far of a control or online run), and the preference store behind the run
(the store named in the config, the marks store of an attention run, a store given as
data, or ``RUN_DIR/feedback.db``): its counts, agreement and gold accuracy
(:func:`rlhf_hgt.feedback.stats.compute_stats`), response times, reasons, teachers and the
oversight events (``rlhf-hgt oversee``).

No torch, no matplotlib: a loop may call this at every checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.db import StoreURL, is_url
from rlhf_hgt.feedback.errors import UserInputError

RUN_KINDS = ("control", "lm reward", "lm dpo", "lm ppo", "lm online", "attention", "unknown")
STORE_NAME = "feedback.db"


@dataclass
class RunInfo:
    """One run folder, read (see the module docstring)."""

    path: Path
    kind: str
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    state: dict[str, Any]
    config: dict[str, Any]
    store: Path | StoreURL | None = None  # a file, or a team store's URL (masked)
    store_note: str | None = None  # why no store was read, or that it may be shared
    stats: dict[str, Any] | None = None  # compute_stats of the store
    durations: dict[str, list[float]] = field(default_factory=dict)  # annotator -> seconds
    reasons: dict[str, int] = field(default_factory=dict)  # features / highlights -> answers
    teachers: dict[str, int] = field(default_factory=dict)  # teacher name -> answers it gave
    oversight: list[dict[str, Any]] = field(default_factory=list)
    file_annotators: dict[str, int] | None = None  # annotators named in a JSONL data file
    data_file: Path | None = None

    @property
    def history(self) -> list[dict[str, Any]]:
        """Rows per round (control, online) or per step (lm ppo), oldest first."""
        rows = self.metrics.get("history") or self.metrics.get("curve")
        if not rows and self.kind in ("control", "lm online"):
            rows = self.state.get("history")
        return [r for r in rows or [] if isinstance(r, dict)]

    @property
    def annotators(self) -> dict[str, dict[str, Any]]:
        return (self.stats or {}).get("annotators") or {}

    @property
    def marks(self) -> dict[str, Any]:
        return (self.stats or {}).get("marks") or {}

    @property
    def labels(self) -> int:
        """Active answers in the store (0 without one)."""
        return int(((self.stats or {}).get("answers") or {}).get("total") or 0)


# ----------------------------------------------------------------------------- reading


def read_json(path: Path, required: bool) -> dict[str, Any]:
    """A JSON object file; ``{}`` when missing and not required. Bad files raise
    UserInputError naming the path."""
    if not path.is_file():
        if required:
            raise UserInputError(
                f"{path}: no such file; {path.parent} is not a finished run folder (a run "
                f"writes metrics.json when it ends: `rlhf-hgt control|lm|attention ... --out "
                f"RUN_DIR`)")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserInputError(f"{path}: holds a JSON {type(value).__name__}, not an object")
    return value


def detect_kind(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """Which command wrote the run (one of :data:`RUN_KINDS`)."""
    command = str(metrics.get("command") or config.get("command") or "")
    if command in ("lm reward", "lm dpo", "lm online", "lm ppo"):
        return command
    if command == "attention train" or "accuracy_per_epoch" in metrics:
        return "attention"
    if str(metrics.get("format", "")).startswith("rlhf_hgt.lm_online"):
        return "lm online"
    if "env_id" in metrics or "env_id" in config:
        return "control"
    if "curve" in metrics and "reward" in metrics or "kl_coef" in config:
        return "lm ppo"
    return "unknown"


def load_run(run_dir: str | Path, *, config: dict[str, Any] | None = None,
             metrics: dict[str, Any] | None = None, store: Any = None,
             need_metrics: bool = True) -> RunInfo:
    """Read a run folder. ``config``/``metrics``/``store`` override what is on disk (a loop
    writing a card at a checkpoint has no metrics.json yet: it passes what it has and
    ``need_metrics=False``). Raises UserInputError naming the path for a folder that is not
    a run."""
    path = Path(run_dir)
    if not path.is_dir():
        what = "is a file, not a run folder" if path.exists() else "no such folder"
        raise UserInputError(f"{path}: {what}; give the RUN_DIR a run wrote (it holds "
                             f"metrics.json and manifest.json)")
    got_metrics = metrics if metrics is not None else read_json(path / "metrics.json",
                                                                need_metrics)
    manifest = read_json(path / "manifest.json", False)
    state = read_json(path / "state.json", False)
    cfg = config if config is not None else (manifest.get("config") or {})
    info = RunInfo(path=path, kind=detect_kind(got_metrics, cfg), metrics=got_metrics,
                   manifest=manifest, state=state, config=cfg)
    _read_store(info, store)
    _read_data_file(info)
    return info


# ----------------------------------------------------------------------------- the store


def _is_sqlite(path: Path) -> bool:
    from rlhf_hgt.feedback.sqlite_files import is_sqlite

    return is_sqlite(path)  # never a plain open() of a store (see that module)


def _resolve(name: Any, info: RunInfo) -> Path | None:
    """A file named in a config or manifest: inside this run folder when it was inside the
    run's folder when the run wrote it (so a moved or copied run reads its own files), else
    as written (relative to the run's working directory), else by its name in the folder."""
    if not name or not isinstance(name, str) or "://" in name:
        return None
    p = Path(name)
    candidates = []
    out = info.config.get("out")
    if isinstance(out, str) and out:
        try:
            candidates.append(info.path / p.relative_to(Path(out)))
        except ValueError:
            pass
    candidates += [p, info.path / p.name]
    return next((c for c in candidates if c.is_file()), None)


def store_candidates(info: RunInfo) -> list[Path]:
    """Stores that may hold the run's labels, most specific first (no duplicates)."""
    cfg, data = info.config, info.manifest.get("data") or {}
    names: list[Any] = [cfg.get("store"), cfg.get("marks")]
    names += [(data.get(k) or {}).get("path") for k in ("preference_store", "marks", "data")]
    names.append(str(info.path / STORE_NAME))
    out: list[Path] = []
    for name in names:
        p = _resolve(name, info)
        if p is not None and _is_sqlite(p) and p.resolve() not in {q.resolve() for q in out}:
            out.append(p)
    return out


def team_store(info: RunInfo) -> StoreURL | None:
    """The run's PostgreSQL team store, when its config or manifest names one."""
    cfg, data = info.config, info.manifest.get("data") or {}
    names = [cfg.get("store"), (data.get("preference_store") or {}).get("path")]
    return next((StoreURL(n) for n in names if is_url(n)), None)


def _read_store(info: RunInfo, given: Any) -> None:
    from rlhf_hgt.feedback.store import PreferenceStore

    url = team_store(info) if given is None else None
    if url is not None:  # masked in the manifest: the password from PGPASSWORD or ~/.pgpass
        given = url
    if isinstance(given, PreferenceStore):
        _from_store(info, given)
        _oversight_elsewhere(info)
        return
    paths = [given if is_url(given) else Path(given)] if given is not None \
        else store_candidates(info)
    if not paths:
        info.store_note = "no preference store was recorded with this run"
        return
    try:
        store = PreferenceStore(paths[0], create=False)
    except UserInputError as exc:  # one line; a missing password says where to give it
        info.store_note = f"the store could not be read: {exc}"
        return
    try:
        _from_store(info, store)
    finally:
        store.close()
    _oversight_elsewhere(info)


def _from_store(info: RunInfo, store: Any) -> None:
    from rlhf_hgt.feedback.stats import compute_stats

    info.store = store.path if is_url(store.path) else Path(store.path)
    info.stats = compute_stats(store)
    for a in store.answers():
        if a.shown_at is None:
            continue
        seconds = a.answered_at - a.shown_at
        # a teacher without simulated times answers the instant it is asked: no time to show
        if seconds < 0 or (a.synthetic and seconds == 0):
            continue
        info.durations.setdefault(a.annotator, []).append(float(seconds))
    for reasons in store.reasons().values():
        for key in reasons:
            info.reasons[key] = info.reasons.get(key, 0) + 1
    for event in store.events("teacher"):
        name = str((event["data"] or {}).get("teacher") or event["annotator"] or "?")
        info.teachers[name] = info.teachers.get(name, 0) + int(
            (event["data"] or {}).get("answered") or 0)
    info.oversight += [e for e in store.events("oversight") if _about(e, info.path)]
    if isinstance(info.store, StoreURL):
        info.store_note = (f"the team store {info.store} may be shared with other runs: its "
                           f"counts cover every answer in it")
        return
    try:
        inside = info.store.resolve().is_relative_to(info.path.resolve())
    except OSError:
        inside = True
    if not inside:
        info.store_note = (f"the store {info.store} lies outside the run folder and may be "
                           f"shared with other runs: its counts cover every answer in it")


def _oversight_elsewhere(info: RunInfo) -> None:
    """Oversight acts written to RUN_DIR/feedback.db when the labels live elsewhere."""
    own = info.path / STORE_NAME
    if not own.is_file() or (isinstance(info.store, Path)
                             and own.resolve() == info.store.resolve()):
        return
    from rlhf_hgt.feedback.store import PreferenceStore

    try:
        store = PreferenceStore(own, create=False)
    except UserInputError:
        return
    try:
        info.oversight += [e for e in store.events("oversight") if _about(e, info.path)]
    finally:
        store.close()
    info.oversight.sort(key=lambda e: e["at"])


def _about(event: dict[str, Any], run_dir: Path) -> bool:
    """An oversight event that names a run applies to that run only."""
    run = (event.get("data") or {}).get("run")
    if not run:
        return True
    try:
        return Path(run).resolve() == run_dir.resolve()
    except OSError:
        return False


# ----------------------------------------------------------------------------- data files


def _read_data_file(info: RunInfo, limit_bytes: int = 200 << 20) -> None:
    """A JSONL file of labelled pairs (``lm reward|dpo --data``): who it names as annotators."""
    data = info.manifest.get("data") or {}
    name = info.config.get("data") or (data.get("data") or {}).get("path")
    p = _resolve(name, info)
    if p is None or _is_sqlite(p):
        return
    info.data_file = p
    if p.suffix != ".jsonl" or p.stat().st_size > limit_bytes:
        return
    counts: dict[str, int] = {}
    with open(p, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "chosen" in row:
                who = str(row.get("annotator") or "not named in the file")
                counts[who] = counts.get(who, 0) + 1
    info.file_annotators = counts
