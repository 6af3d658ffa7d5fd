"""``rlhf-hgt lineage RUN_DIR``: the record of :mod:`rlhf_hgt.governance.lineage`, read back.

:func:`read_lineage` joins RUN_DIR/lineage.jsonl with the store it names: for the run's result
(its latest checkpoint that no oversight act rejected) or for one checkpoint (``--checkpoint
FILE``, matched by path or by sha256), every answer it learned from with its annotator, answer,
times, response time, rationale, the query's source models, its reasons (feature marks, word
highlights) and whether its response time weighted it; the attention marks of an attention run;
the lines of a JSONL data file; counts per annotator and per kind of teacher; the checkpoints
in order with their answers and sha256; and the oversight acts. :func:`render` prints it.

Light: no torch; rich only to print.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.governance.lineage import (
    LINEAGE_FILE,
    Location,
    _Reader,
    canonical,
    exists,
    read_lines,
    resolve_store,
)
from rlhf_hgt.governance.manifest import file_sha256


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def checkpoint_sha256(files: dict[str, str]) -> str | None:
    """One sha256 for a checkpoint: its file's, or over the sorted (path, sha256) of its files."""
    if not files:
        return None
    if len(files) == 1:
        return next(iter(files.values()))
    return hashlib.sha256(canonical(sorted(files.items())).encode()).hexdigest()


def current_entries(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The line in force for each checkpoint name (the latest), in the order last written."""
    latest: dict[str, dict[str, Any]] = {}
    for e in lines:
        latest.pop(e["checkpoint"], None)
        latest[e["checkpoint"]] = e
    return list(latest.values())


def _names(e: dict[str, Any]) -> set[str]:
    names = {str(e["checkpoint"])}
    if isinstance(e.get("round"), int):
        names |= {str(e["round"]), f"round-{e['round']:03d}"}
    return names


def _oversight(run: Path) -> list[dict[str, Any]]:
    from rlhf_hgt.governance.run_info import load_run

    try:
        info = load_run(run, need_metrics=False)
    except UserInputError:
        return []
    out = []
    for ev in info.oversight:
        data = ev.get("data") or {}
        out.append({"at": _iso(ev.get("at")), "act": data.get("act"),
                    "by": data.get("by") or ev.get("annotator"), "reason": data.get("reason"),
                    "to": data.get("to"), "checkpoint": data.get("checkpoint")})
    return out


def _match(run: Path, entries: list[dict[str, Any]], target: str) -> dict[str, Any]:
    """The latest checkpoint that holds FILE (a file or folder path, or a sha256)."""
    given = Path(target)
    cands = [given, run / given]
    paths = {c.resolve() for c in cands if c.exists()}
    sha = file_sha256(next(iter(paths))) if len(paths) == 1 and next(iter(paths)).is_file() \
        else (target.lower() if len(target) == 64 else None)
    for e in reversed(entries):
        files = e.get("files") or {}
        for rel, digest in files.items():
            p = (Path(rel) if Path(rel).is_absolute() else run / rel).resolve()
            if digest == sha or p in paths or any(p.is_relative_to(q) for q in paths
                                                  if q.is_dir()):
                return e
        if target in _names(e):
            return e
    raise UserInputError(f"--checkpoint {target}: no checkpoint of {run} holds it (give a file "
                         f"or folder of the run's checkpoints, its sha256, or a name from "
                         f"`rlhf-hgt lineage {run}`)")


def read_lineage(run_dir: str | os.PathLike, checkpoint: str | None = None) -> dict[str, Any]:
    """The lineage of a run, or of the checkpoint holding ``checkpoint`` (see the module
    docstring), as one JSON-ready object. Bad input raises UserInputError naming the path."""
    run = Path(run_dir)
    if not run.is_dir():
        what = "is a file, not a run folder" if run.exists() else "no such folder"
        raise UserInputError(f"{run}: {what}; give the RUN_DIR of a run")
    lines, bad = read_lines(run)
    if not lines:
        if not ((run / "manifest.json").is_file() or (run / "state.json").is_file()):
            raise UserInputError(f"{run}: not a run folder (no {LINEAGE_FILE}, no "
                                 f"manifest.json); give the RUN_DIR a run wrote")
        raise UserInputError(f"{run / LINEAGE_FILE}: no lineage recorded (the run was written "
                             f"by an rlhf_hgt without lineage, or wrote no checkpoint yet)")
    entries = current_entries(lines)
    oversight = _oversight(run)
    rejected = {str(o["checkpoint"]) for o in oversight
                if o["act"] == "reject" and o["checkpoint"] is not None}
    chosen = _match(run, entries, checkpoint) if checkpoint else next(
        (e for e in reversed(entries) if str(e["checkpoint"]) not in rejected), entries[-1])
    store = resolve_store(run, chosen.get("store"))
    if chosen.get("store") and (store is None or not exists(store)):
        raise UserInputError(f"{store}: the store {chosen['checkpoint']} learned from is "
                             f"missing; put it back to read its answers")
    manifest = _json(run / "manifest.json")
    config = manifest.get("config") or {}
    out: dict[str, Any] = {
        "run": str(run), "kind": _kind(run, config), "store": None if store is None else
        str(store), "checkpoint": chosen["checkpoint"], "answers": [], "marks": [],
        "annotators": {}, "teachers": {}, "guidance": {}, "checkpoints": [],
        "oversight": oversight, "notes": [f"{LINEAGE_FILE} line {n}: unreadable, skipped"
                                          for n in bad]}
    if chosen.get("inherits"):
        out["inherits"] = chosen["inherits"]
    reward_cfg = config.get("reward")  # the online loop's reward settings (ppo: a name)
    weighted = bool(config.get("time_weighting") or (
        isinstance(reward_cfg, dict) and reward_cfg.get("time_weighting")))
    if store is not None:
        _answers_from_store(out, store, chosen, weighted)
    data = chosen.get("data")
    if isinstance(data, dict) and data.get("lines"):
        out["data"] = {k: data.get(k) for k in ("path", "sha256")}
        out["answers"] += [{"id": None, **line} for line in data["lines"]]
    _counts(out, weighted)
    for e in entries:
        files = e.get("files") or {}
        out["checkpoints"].append({
            "checkpoint": e["checkpoint"], "role": e.get("role"), "round": e.get("round"),
            "written_at": e.get("written_at"),
            "answers": len(e.get("answer_ids") or (e.get("data") or {}).get("lines") or []),
            "answer_ids": e.get("answer_ids"), "marks": len(e.get("mark_ids") or []),
            "sha256": checkpoint_sha256(files), "files": files,
            "rejected": str(e["checkpoint"]) in rejected,  # by name: round-001.1 is not round-001
            **({"recorded_late": True} if e.get("recorded_late") else {})})
    if chosen.get("answer_ids") is None and not out["answers"] and not out["marks"]:
        out["notes"].append(f"{chosen['checkpoint']} learned from no stored answer "
                            f"(a built-in score, a data file without annotators, or none)")
    return out


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _kind(run: Path, config: dict[str, Any]) -> str:
    from rlhf_hgt.governance.run_info import detect_kind

    return detect_kind(_json(run / "metrics.json") or _json(run / "state.json"), config)


def _answers_from_store(out: dict[str, Any], store: Location, chosen: dict[str, Any],
                        weighted: bool) -> None:
    ids = [int(i) for i in chosen.get("answer_ids") or []]
    mark_ids = [int(i) for i in chosen.get("mark_ids") or []]
    last_event = int((chosen.get("chain") or {}).get("last_event_id") or 0) or 2**62
    with _Reader(store) as reader:
        reasons = reader.reasons(last_event)
        undone = {int(r[0]) for r in reader.conn.execute(
            "SELECT answer_id FROM events WHERE kind = 'undo' AND answer_id IS NOT NULL")}
        rows = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            rows |= {r[0]: r for r in reader.conn.execute(
                "SELECT a.id, a.annotator, a.synthetic, a.answer, a.shown_at, a.answered_at, "
                "a.rationale, a.interface, a.query_id, q.kind, q.left_source, q.right_source, "
                f"q.env_id, q.round FROM answers a JOIN queries q ON q.id = a.query_id "
                f"WHERE a.id IN ({','.join('?' * len(part))})", part)}
        marks = {}
        if mark_ids and reader.has("marks"):
            for chunk in range(0, len(mark_ids), 500):
                part = mark_ids[chunk:chunk + 500]
                marks |= {r[0]: r for r in reader.conn.execute(
                    "SELECT id, annotator, synthetic, dataset, image, kind, cells, shown_at, "
                    f"answered_at FROM marks WHERE id IN ({','.join('?' * len(part))})", part)}
    for aid in ids:
        r = rows.get(aid)
        if r is None:
            out["notes"].append(f"answer {aid}: no longer in the store (`--verify` says more)")
            continue
        seconds = None if r[4] is None else max(0.0, r[5] - r[4])
        item = {"id": aid, "annotator": r[1], "synthetic": bool(r[2]), "answer": r[3],
                "shown_at": _iso(r[4]), "answered_at": _iso(r[5]), "response_time": seconds,
                "rationale": r[6], "interface": r[7], "query_id": r[8], "query_kind": r[9],
                "left_source": r[10], "right_source": r[11], "env_id": r[12], "round": r[13]}
        if aid in reasons:
            item["reasons"] = reasons[aid]
        if weighted and seconds is not None and math.isfinite(seconds):
            item["time_weighted"] = True
        if aid in undone:
            item["undone_later"] = True
        out["answers"].append(item)
    for mid in mark_ids:
        m = marks.get(mid)
        if m is None:
            out["notes"].append(f"mark {mid}: no longer in the store (`--verify` says more)")
            continue
        out["marks"].append({
            "id": mid, "annotator": m[1], "synthetic": bool(m[2]), "dataset": m[3],
            "image": m[4], "skipped": m[5] == "skip", "cells": json.loads(m[6]),
            "shown_at": _iso(m[7]), "answered_at": _iso(m[8]),
            "response_time": None if m[7] is None else max(0.0, m[8] - m[7])})


def _counts(out: dict[str, Any], weighted: bool) -> None:
    annotators: dict[str, int] = {}
    teachers = {"human": 0, "synthetic": 0}
    for item in out["answers"] + out["marks"]:
        name = item.get("annotator") or "not named"
        annotators[name] = annotators.get(name, 0) + 1
        if "synthetic" in item:
            teachers["synthetic" if item["synthetic"] else "human"] += 1
        else:
            teachers["not stated"] = teachers.get("not stated", 0) + 1
    out["annotators"], out["teachers"] = annotators, teachers
    answers = out["answers"]
    out["guidance"] = {
        "comparisons": len(answers),
        "feature_marks": sum("features" in (a.get("reasons") or {}) for a in answers),
        "word_highlights": sum("highlights" in (a.get("reasons") or {}) or bool(
            a.get("highlights")) for a in answers),
        "time_weighted": sum(bool(a.get("time_weighted")) for a in answers) if weighted else 0,
        "attention_marks": len(out["marks"])}


def summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The short form the run report shows (no per-answer list)."""
    full = read_lineage(run_dir)
    return {"result": full["checkpoint"], "store": full["store"],
            "answers used": len(full["answers"]), "annotators": full["annotators"],
            "teachers": full["teachers"], "guidance": full["guidance"],
            "checkpoints": [{"checkpoint": c["checkpoint"], "role": c["role"],
                             "answers": c["answers"], "marks": c["marks"],
                             "sha256": (c["sha256"] or "")[:16],
                             "rejected": "yes" if c["rejected"] else ""}
                            for c in full["checkpoints"]],
            **({"oversight": full["oversight"]} if full["oversight"] else {}),
            **({"notes": full["notes"]} if full["notes"] else {})}


def render(obj: dict[str, Any], console: Any) -> None:
    """Print the lineage for a person: the summary, the checkpoints, the oversight acts."""
    from rich.table import Table

    console.print(f"[bold]{obj['run']}[/bold] ({obj['kind']}): {obj['checkpoint']} learned "
                  f"from {len(obj['answers'])} answers"
                  + (f" and {len(obj['marks'])} attention marks" if obj["marks"] else "")
                  + (f", store {obj['store']}" if obj["store"] else ""))
    if obj.get("inherits"):
        console.print(f"  through the reward model {obj['inherits'].get('reward_model')}")
    if obj.get("data"):
        console.print(f"  data file {obj['data']['path']} (sha256 {obj['data']['sha256'][:16]})")
    who = ", ".join(f"{n}: {c}" for n, c in sorted(obj["annotators"].items()))
    console.print(f"  annotators: {who or 'none'}")
    console.print("  teachers: " + ", ".join(f"{k} {v}" for k, v in obj["teachers"].items()))
    console.print("  guidance: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                             for k, v in obj["guidance"].items()))
    table = Table("checkpoint", "role", "answers", "marks", "sha256", "rejected",
                  title="checkpoints, in the order written")
    for c in obj["checkpoints"]:
        table.add_row(str(c["checkpoint"]) + (" (recorded late)" if c.get("recorded_late")
                                               else ""), str(c["role"] or ""),
                      str(c["answers"]), str(c["marks"]), (c["sha256"] or "")[:16],
                      "REJECTED" if c["rejected"] else "")
    console.print(table)
    for o in obj["oversight"]:
        console.print(f"  oversight {o['at']}: {o['act']}"
                      + (f" of {o['checkpoint']}" if o.get("checkpoint") else "")
                      + f" by {o['by']}" + (f" to {o['to']}" if o.get("to") else "")
                      + f": {o['reason']}")
    for note in obj["notes"]:
        console.print(f"  note: {note}")
    console.print(f"every answer: `rlhf-hgt lineage {obj['run']} --json`; check against the "
                  f"store and the files: `--verify`")
