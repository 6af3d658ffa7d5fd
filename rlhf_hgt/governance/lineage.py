"""Lineage: the answers behind every checkpoint of a run, recorded when the checkpoint is written.

The loops (control, lm reward/dpo/ppo/online, attention) call :func:`record_checkpoint` after
each checkpoint they write; ``rlhf-hgt lineage RUN_DIR`` reads the record back
(:mod:`rlhf_hgt.governance.lineage_view`) and ``--verify`` checks it against the disk and the
store (:func:`verify`).

The record: ``RUN_DIR/lineage.jsonl``, append-only, one JSON object a line, one line per
checkpoint written (a checkpoint written again, after a resume or a rollback, gets a new line;
the latest line of a name is the one in force)::

    {"format": "rlhf_hgt.lineage/1",
     "checkpoint": "round-003",          a name: round-NNN, final, model, ...
     "role": "policy",                   what it holds (policy, reward model, model, ...)
     "round": 3,                         loops with rounds
     "written_at": "2025-01-01T12:00:00Z",
     "files": {"rounds/round-003/checkpoints/policy.safetensors": "<sha256>", ...},
                                         relative to RUN_DIR (absolute when outside it)
     "store": "feedback.db",             the preference store (relative to RUN_DIR when inside)
     "answer_ids": [1, 2, 5],            the active answers the fit behind it saw (store ids);
                                         null when it learned from no store
     "mark_ids": [3, 4],                 attention marks it learned from (attention --marks)
     "data": {"path", "sha256", "lines": [{"line", "annotator", "answer"}]},
                                         a JSONL data file (lm reward/dpo --data)
     "inherits": {"run", "checkpoint"},  lm ppo: the reward-model run whose answers it used
     "chain": {"answers": h, "last_answer_id": n, "events": h, "last_event_id": n,
               "marks": h, "last_mark_id": n, "columns": {"answers": [...], ...}},
     "answer_hashes": {"5": "<16 hex>"}, the answers first seen by this line (each answer's
     "mark_hashes": {"3": "<16 hex>"},   hash is recorded once, by the first line that saw it)
     "recorded_late": true}              written after a resume (a kill between the checkpoint
                                         and its line); its answers were staged before the kill

The chain is a hash chain over the store's rows in id order, up to the last id when the fit
read the store: ``h_0 = ""``, ``h_i = sha256(h_{i-1} + row_i)``, with ``row_i`` the canonical
JSON (sorted keys, no spaces) of all the row's columns. An answer's own hash covers its row
and the reasons (feature marks, word highlights) in force at that point, so verify can name
the answer that was changed or removed after training.

A loop that can be killed between writing a checkpoint and its line stages the answers first
(:func:`stage` writes ``lineage.json`` into the checkpoint folder before it is saved); the
line written later, or on the next run (:func:`backfill`), takes the answers from there.

Light: no torch, numpy only through the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.db import StoreURL, is_url
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.governance.manifest import file_sha256

FORMAT = "rlhf_hgt.lineage/1"
LINEAGE_FILE = "lineage.jsonl"
STAGED = "lineage.json"  # staged answers inside a checkpoint folder
SHORT = 16  # hex digits of a per-row hash
TABLES = ("answers", "events", "marks")
#: files of a run folder that are records, not checkpoints (rewritten freely)
NOT_CHECKPOINT = {LINEAGE_FILE, "metrics.json", "manifest.json", "README.md", "report.md",
                  "report.html", "state.json", "learning_curve.png", "saliency.png"}
NOT_CHECKPOINT_DIRS = {"report_files", "__pycache__"}

StoreLike = Any  # a PreferenceStore, a path, a team store's URL, or None
Location = Path | StoreURL  # where a store is: a file, or a PostgreSQL database


def location(value: Any) -> Location:
    """A store's place: a file path, or a team store's URL (shown with its password masked;
    a URL read back from a record connects without it, as libpq does: PGPASSWORD or
    ~/.pgpass)."""
    return StoreURL(value) if is_url(str(value)) else Path(value)


def exists(where: Location) -> bool:
    """A store file that is there; a URL counts (reading it says what is wrong)."""
    return isinstance(where, StoreURL) or where.is_file()


# ----------------------------------------------------------------------------- the store


class _Reader:
    """A read snapshot of a store: every query inside one read transaction."""

    def __init__(self, store: StoreLike):
        from rlhf_hgt.feedback.store import PreferenceStore

        self.own = not isinstance(store, PreferenceStore)
        self.store = PreferenceStore(store, create=False) if self.own else store
        self.conn = self.store.conn

    def __enter__(self) -> _Reader:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
            self.began = True
        else:
            self.began = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.began:
            self.conn.execute("COMMIT")
        if self.own:
            self.store.close()

    def has(self, table: str) -> bool:
        return table in self.conn.tables()  # SQLite or PostgreSQL (feedback.db)

    def columns(self, table: str) -> list[str]:
        return self.conn.columns(table)

    def rows(self, table: str, columns: list[str], upto: int | None = None
             ) -> Iterable[tuple[int, str]]:
        """(id, canonical JSON) of each row, in id order, up to id ``upto``."""
        sql = f"SELECT {', '.join(columns)} FROM {table}"
        args: tuple = ()
        if upto is not None:
            sql += " WHERE id <= ?"
            args = (upto,)
        for row in self.conn.execute(sql + " ORDER BY id", args):
            record = dict(zip(columns, row, strict=True))
            yield int(record["id"]), canonical(record)

    def reasons(self, upto: int) -> dict[int, Any]:
        """answer id -> its latest reasons among events up to id ``upto``."""
        rows = self.conn.execute("SELECT answer_id, data FROM events WHERE kind = 'reasons' "
                                 "AND id <= ? ORDER BY id", (upto,))
        return {aid: json.loads(data) for aid, data in rows}

    def last_id(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0])


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row_hash(row_json: str, reasons: Any = None) -> str:
    """An answer's (or mark's) own hash: its row and, for an answer, its reasons."""
    return _sha(row_json + "|" + canonical(reasons))[:SHORT]


def store_chain(reader: _Reader) -> dict[str, Any]:
    """The chain heads of the store now (see the module docstring)."""
    chain: dict[str, Any] = {"columns": {}}
    for table in TABLES:
        if not reader.has(table):
            continue
        cols = reader.columns(table)
        head, last = "", 0
        for rid, text in reader.rows(table, cols):
            head, last = _sha(head + text), rid
        chain[table], chain[f"last_{table[:-1]}_id"] = head, last
        chain["columns"][table] = cols
    return chain


def _row_hashes(reader: _Reader, chain: Mapping[str, Any], known: Mapping[str, set[str]]
                ) -> dict[str, dict[str, str]]:
    """Hashes of the answers and marks up to the chain's last ids not in ``known``."""
    out: dict[str, dict[str, str]] = {"answers": {}, "marks": {}}
    if "answers" in chain:
        reasons = reader.reasons(int(chain.get("last_event_id") or 0))
        for rid, text in reader.rows("answers", chain["columns"]["answers"],
                                     int(chain["last_answer_id"])):
            if str(rid) not in known["answers"]:
                out["answers"][str(rid)] = row_hash(text, reasons.get(rid))
    if "marks" in chain:
        for rid, text in reader.rows("marks", chain["columns"]["marks"],
                                     int(chain["last_mark_id"])):
            if str(rid) not in known["marks"]:
                out["marks"][str(rid)] = row_hash(text)
    return out


# ----------------------------------------------------------------------------- recording


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def checkpoint_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The files of a checkpoint: each file given, and every file under each folder given,
    leaving out records that are rewritten after the fact (cards, reports, metrics)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += [f for f in sorted(p.rglob("*")) if f.is_file()
                    and f.name not in NOT_CHECKPOINT and not f.name.endswith(".tmp")
                    and not NOT_CHECKPOINT_DIRS & set(f.relative_to(p).parts)]
    return out


def read_lines(run_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[int]]:
    """The lines of RUN_DIR/lineage.jsonl in order, and the numbers of unreadable lines (a
    line cut short by a kill)."""
    path = Path(run_dir) / LINEAGE_FILE
    if not path.is_file():
        return [], []
    good, bad = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            bad.append(n)
            continue
        if isinstance(value, dict) and "checkpoint" in value:
            good.append(value)
        else:
            bad.append(n)
    return good, bad


def _append(run_dir: Path, entry: dict[str, Any]) -> None:
    path = run_dir / LINEAGE_FILE
    text = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
    with open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell():  # a line cut short by a kill is closed, not continued
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write(text.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def _store_path(store: StoreLike) -> Location | None:
    if store is None:
        return None
    return location(getattr(store, "path", store))


def stage(folder: str | os.PathLike, store: StoreLike, answer_ids: Iterable[int] | None,
          **extra: Any) -> dict[str, Any]:
    """Write ``folder/lineage.json``: the answers a checkpoint about to be saved in
    ``folder`` learned from, and the store's chain now. Returns what it wrote."""
    from rlhf_hgt.feedback.files import write_json_atomic

    staged: dict[str, Any] = {"answer_ids": None if answer_ids is None else
                              [int(i) for i in answer_ids], **extra}
    path = _store_path(store)
    if path is not None:
        with _Reader(store) as reader:
            staged["chain"] = store_chain(reader)
        staged["store"] = str(path if isinstance(path, StoreURL) else path.resolve())
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(folder) / STAGED, staged)
    return staged


def _staged(files: Iterable[Path]) -> dict[str, Any] | None:
    for f in files:
        if f.name == STAGED:
            try:
                value = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return None
            return value if isinstance(value, dict) else None
    return None


def record_checkpoint(run_dir: str | os.PathLike, store: StoreLike, name: str,
                      files: Iterable[str | os.PathLike],
                      answer_ids: Iterable[int] | None = None, **extra: Any) -> dict[str, Any]:
    """Append the line of one checkpoint to RUN_DIR/lineage.jsonl and return it.

    ``files``: the checkpoint's files or folders (hashed now). ``answer_ids``: the active
    answers the fit behind it saw; None takes them (and the chain) from a folder staged with
    :func:`stage`, else records none. ``extra`` lands in the line (role, round, data, ...)."""
    run = Path(run_dir)
    paths = checkpoint_files(files)
    staged = _staged(paths) if answer_ids is None else None
    entry: dict[str, Any] = {"format": FORMAT, "checkpoint": name, "written_at": _now(),
                             "files": {_rel(p, run): file_sha256(p) for p in paths}}
    if staged is not None:
        entry |= {k: v for k, v in staged.items() if k not in ("store", "chain")}
    else:
        entry["answer_ids"] = None if answer_ids is None else [int(i) for i in answer_ids]
    entry |= extra
    path = _store_path(store) or (location(staged["store"]) if staged and staged.get("store")
                                  else None)
    if path is not None and exists(path):
        entry["store"] = str(path) if isinstance(path, StoreURL) else _rel(path, run)
        lines, _ = read_lines(run)
        known = {t: {k for e in lines for k in (e.get(f"{t[:-1]}_hashes") or {})}
                 for t in ("answers", "marks")}
        with _Reader(store if store is not None else path) as reader:
            chain = (staged or {}).get("chain") or store_chain(reader)
            hashes = _row_hashes(reader, chain, known)
        entry["chain"] = chain
        entry["answer_hashes"], entry["mark_hashes"] = hashes["answers"], hashes["marks"]
    _append(run, entry)
    return entry


def backfill(run_dir: str | os.PathLike, store: StoreLike,
             checkpoints: Mapping[str, str | os.PathLike], **extra: Any) -> list[str]:
    """Record the checkpoints (name -> folder) that have staged answers but no line (the run
    was killed between writing one and recording it). Returns the names recorded."""
    lines, _ = read_lines(run_dir)
    have = {e["checkpoint"] for e in lines}
    done = []
    for name, folder in checkpoints.items():
        if name not in have and any(Path(folder).rglob(STAGED)):
            record_checkpoint(run_dir, store, name, [folder], recorded_late=True, **extra)
            done.append(name)
    return done


def record_run_end(run_dir: str | os.PathLike, store: StoreLike, files: Iterable[
                       str | os.PathLike], kept: str | os.PathLike | None = None,
                   name: str = "final", **extra: Any) -> dict[str, Any]:
    """At the end of a run: record the kept checkpoints under ``kept`` (one folder each) that
    a kill left without a line (:func:`backfill`), then the final files, whose answers are
    those staged in them (the checkpoint the run ends with)."""
    if kept is not None and Path(kept).is_dir():
        folders = {d.name: d for d in sorted(Path(kept).iterdir())
                   if d.is_dir() and not d.name.endswith(".tmp")}
        backfill(run_dir, store, folders)
    return record_checkpoint(run_dir, store, name, files, **extra)


def latest_answer_ids(run_dir: str | os.PathLike) -> list[int] | None:
    """The answers of the latest line (what a final export of the last round learned from)."""
    lines, _ = read_lines(run_dir)
    return lines[-1].get("answer_ids") if lines else None


def store_text_answer_ids(store: StoreLike) -> list[int]:
    """The active, non-skip answers to text queries: what ``lm reward|dpo --store`` and the
    online loop's fits read (:func:`rlhf_hgt.lm.data.load_pairs`)."""
    with _Reader(store) as reader:
        rows = reader.conn.execute(
            "SELECT a.id FROM active_answers a JOIN queries q ON q.id = a.query_id "
            "WHERE q.kind = 'text' AND a.answer != 'skip' ORDER BY a.id").fetchall()
    return [int(r[0]) for r in rows]


def jsonl_lines(path: str | os.PathLike) -> dict[str, Any]:
    """A JSONL data file's labelled lines (line number, annotator, answer) and its sha256."""
    from rlhf_hgt.feedback.jsonl import read_jsonl

    parsed = read_jsonl(path)
    lines = [{"line": r.line, "annotator": r.annotator or None,
              "answer": "tie" if r.tie else "chosen",
              "highlights": bool(r.highlights and any(r.highlights)),
              "response_time": r.fields.get("response_time")}
             for r in parsed.records if r.labelled]
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(Path(path)),
            "lines": lines}


def used_mark_ids(store: StoreLike, dataset_id: str) -> list[int]:
    """The marks an attention run reads (:func:`rlhf_hgt.feedback.marks.load_marks`): each
    annotator's latest active mark of an image, with at least one cell."""
    from rlhf_hgt.feedback.marks import latest_marks

    return sorted(m.id for m in latest_marks(store, dataset_id).values()
                  if not m.skipped and m.cells)


def find_lineage_run(folder: str | os.PathLike) -> Path | None:
    """The run folder holding lineage for a model folder: itself or a parent (two up)."""
    p = Path(folder).resolve()
    for cand in (p, p.parent, p.parent.parent):
        if (cand / LINEAGE_FILE).is_file():
            return cand
    return None


def inherited(reward_model: str | os.PathLike) -> dict[str, Any]:
    """What ``lm ppo --reward-model DIR`` records of the reward model it trained against:
    the reward run's latest line (its answers and store), or a note that it has none."""
    run = find_lineage_run(reward_model)
    lines, _ = read_lines(run) if run is not None else ([], [])
    if not lines:
        return {"inherits": {"reward_model": str(Path(reward_model).resolve()),
                             "note": "the reward model has no lineage record"}}
    last = lines[-1]
    store = last.get("store")
    if store and not is_url(store) and not Path(store).is_absolute():
        store = str((run / store).resolve())  # type: ignore[operator]
    return {"inherits": {"reward_model": str(Path(reward_model).resolve()), "run": str(run),
                         "checkpoint": last["checkpoint"], "files": last.get("files")},
            "answer_ids": last.get("answer_ids"), "data": last.get("data"),
            "mark_ids": last.get("mark_ids"), "_store": store}


def summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The lineage summary of the run report (:mod:`rlhf_hgt.governance.lineage_view`)."""
    from rlhf_hgt.governance.lineage_view import summary as _summary

    return _summary(run_dir)


# ----------------------------------------------------------------------------- verify


def resolve_store(run_dir: Path, name: str | None) -> Location | None:
    if not name:
        return None
    if is_url(name):
        return StoreURL(name)
    p = Path(name)
    return p if p.is_absolute() else run_dir / p


def verify(run_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Check the record against the disk and the store: (problems, notes). Problems: a
    checkpoint file changed or missing, an answer or mark changed or removed after a
    checkpoint used it, the store's chain of answers or events broken, a data file changed.
    Notes: what holds but a reader should know (an answer undone after it was used)."""
    run = Path(run_dir)
    lines, bad = read_lines(run)
    if not lines:
        raise UserInputError(f"{run / LINEAGE_FILE}: no lineage recorded; runs record it as "
                             f"they write checkpoints (give the RUN_DIR of a run)")
    problems: list[str] = []
    notes = [f"{LINEAGE_FILE} line {n}: unreadable (cut short by a kill?), skipped"
             for n in bad]
    _verify_files(run, lines, problems, notes)
    by_store: dict[Location, list[dict[str, Any]]] = {}
    for e in lines:
        path = resolve_store(run, e.get("store"))
        if path is not None and "chain" in e:
            by_store.setdefault(path, []).append(e)
    for path, entries in by_store.items():
        if not exists(path):
            problems.append(f"store {path}: missing (recorded by {entries[0]['checkpoint']})")
            continue
        _verify_store(path, entries, problems, notes)
    for e in lines:
        data = e.get("data")
        if isinstance(data, dict) and data.get("sha256") and data.get("path"):
            p = Path(data["path"])
            if not p.is_file():
                notes.append(f"data file {p} ({e['checkpoint']}): not on this machine")
            elif file_sha256(p) != data["sha256"]:
                problems.append(f"data file {p}: changed since {e['checkpoint']} used it "
                                f"(sha256 differs)")
    return problems, list(dict.fromkeys(notes))


def _verify_files(run: Path, lines: list[dict[str, Any]], problems: list[str],
                  notes: list[str]) -> None:
    latest: dict[str, tuple[str, str]] = {}  # path -> (sha, checkpoint): a later line wins
    for e in lines:
        for rel, sha in (e.get("files") or {}).items():
            latest[rel] = (sha, e["checkpoint"])
    gone: dict[str, list[str]] = {}
    for rel, (sha, name) in latest.items():
        p = Path(rel) if Path(rel).is_absolute() else run / rel
        if not p.is_file():
            gone.setdefault(name, []).append(rel)
        elif file_sha256(p) != sha:
            problems.append(f"checkpoint {name}: {rel} changed (sha256 {sha[:12]}… recorded, "
                            f"now differs)")
    prunable = {e["checkpoint"] for e in lines if e.get("prunable")}
    for name, rels in gone.items():
        whole = all(r in rels for r, (_, n) in latest.items() if n == name)
        if whole and name in prunable:
            notes.append(f"checkpoint {name}: no longer on disk (the run keeps only its "
                         f"latest checkpoints)")
        else:
            problems += [f"checkpoint {name}: {rel} missing" for rel in rels]


def _verify_store(path: Location, entries: list[dict[str, Any]], problems: list[str],
                  notes: list[str]) -> None:
    try:
        reader = _Reader(path)
    except UserInputError as exc:
        if isinstance(path, StoreURL):  # nothing checked: the user must fix the access (exit 2)
            raise UserInputError(f"{exc} (lineage --verify reads the run's team store)") \
                from None
        problems.append(f"store {path}: cannot be read ({exc})")
        return
    with reader:
        for table, key in (("answers", "answer"), ("events", "event"), ("marks", "mark")):
            checks = {int(e["chain"][f"last_{key}_id"]): e for e in entries
                      if table in e["chain"]}
            if not checks or not reader.has(table):
                continue
            cols = entries[-1]["chain"]["columns"][table]
            head, heads = "", {0: ""}
            for rid, text in reader.rows(table, cols, max(checks)):
                head = _sha(head + text)
                heads[rid] = head
            ids = sorted(heads)
            for last, e in sorted(checks.items()):
                got = heads[max(i for i in ids if i <= last)] if ids else ""
                if got != e["chain"][table] or last not in heads:
                    problems.append(f"store {path.name}: the {table} up to id {last} no longer "
                                    f"match the chain recorded with {e['checkpoint']} (a row "
                                    f"was changed or removed after it was written)")
        _verify_rows(reader, path, entries, problems, notes)


def _verify_rows(reader: _Reader, path: Location, entries: list[dict[str, Any]],
                 problems: list[str], notes: list[str]) -> None:
    current_cols = {t: entries[-1]["chain"]["columns"].get(t) for t in ("answers", "marks")}
    named: set[str] = set()
    for e in entries:
        for table, key in (("answers", "answer"), ("marks", "mark")):
            recorded = e.get(f"{key}_hashes") or {}
            if not recorded or not current_cols[table]:
                continue
            reasons = reader.reasons(int(e["chain"].get("last_event_id") or 0)) \
                if table == "answers" else {}
            now = {str(rid): row_hash(text, reasons.get(rid) if table == "answers" else None)
                   for rid, text in reader.rows(table, current_cols[table],
                                                max(int(i) for i in recorded))}
            for rid, h in recorded.items():
                what = f"{key} {rid}"
                if what in named:
                    continue
                if rid not in now:
                    problems.append(f"store {path.name}: {what} removed (recorded with "
                                    f"{e['checkpoint']})")
                    named.add(what)
                elif now[rid] != h:
                    problems.append(f"store {path.name}: {what} changed after "
                                    f"{e['checkpoint']} recorded it")
                    named.add(what)
    undone = {int(r[0]) for r in reader.conn.execute(
        "SELECT answer_id FROM events WHERE kind = 'undo' AND answer_id IS NOT NULL")}
    for e in entries:
        late = sorted(undone & set(e.get("answer_ids") or []))
        if late:
            notes.append(f"{e['checkpoint']}: learned from answer(s) "
                         f"{', '.join(map(str, late))}, undone afterwards")
