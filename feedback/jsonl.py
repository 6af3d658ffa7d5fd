"""Import and export of text preferences as JSONL, in TRL's preference format.

Import (``rlhf-hgt feedback import STORE FILE.jsonl``; the reading and checking of each line is
:mod:`.jsonl_read`) reads one JSON object per line:

- a labelled pair ``{"prompt", "chosen", "rejected"}``, optionally with ``"annotator"`` and
  ``"rationale"`` (strings), ``"synthetic": true`` (a synthetic teacher gave the label, kept
  as such in the store's provenance) and ``"tie": true`` (the two were judged equal; which one is
  "chosen" then does not matter);
- a pending query ``{"prompt", "a", "b"}`` that waits for a person, optionally with
  ``"gold": "a" | "b" | "tie"`` (a gold query, its answer known) and ``"source_a"``,
  ``"source_b"`` (the model or policy that wrote each response);
- a judged query: a pending query with ``"label": "a" | "b" | "tie" | "skip"``, the answer
  an annotator gave (``"skip"``: seen and skipped, as the terminal's skip key records it).
  ``"annotator"``, ``"rationale"`` and ``"synthetic"`` on such a line describe that answer, as
  on a labelled pair. Other tools' names for the same field are read too: ``choice``,
  ``preference``, ``preferred``, ``winner`` and ``selected`` (one per line), and so are the
  values ``"left"``/``"right"`` (Label Studio, the store) and ``"model_a"``, ``"model_b"``,
  ``"tie (bothbad)"`` (Chatbot Arena's ``winner``), in any case;
- a Label Studio task, one per line, as its JSON export holds them (``jq -c '.[]'
  export.json > tasks.jsonl``): ``{"data": {"prompt", "answer1", "answer2"}, "annotations":
  [{"completed_by": 1, "result": [{"type": "pairwise", "value": {"selected": "left"}}]}]}``.
  The texts are the two data keys the pairwise result's ``to_name`` names, else data's
  ``a``/``b``, ``answer1``/``answer2``, ``text1``/``text2``, ``response1``/``response2`` or
  ``response_a``/``response_b``; "left" is the first. Each annotation is one answer by its
  ``completed_by`` (``label-studio:<user id>``, or the user's email), a cancelled (skipped)
  one a skip; a task without annotations is a pending query.

A judgement that is none of these is refused, never dropped or kept as mere metadata:
``"label": "banana"``, a ``label``/``choice``/... field on a labelled pair (``chosen`` says
which is preferred already), and, on a pending query, a field that carries the pair's verdict
(a name ending in a verdict word, e.g. ``"human_preference"``, ``"user_choice"``,
``"chosen_side"``; verdict values under a plural or ranking name, e.g. ``"votes": ["a", "b"]``;
a Label Studio ``{"selected": "left"}`` or Argilla's responses). Every other field is kept:
with the answer for a line that records one (stored as a ``fields`` event on that answer), with
the query for a pending line (its ``meta["fields"]``); on a labelled pair every other field is
kept, whatever its name (HelpSteer2's ``preference_strength``, a ``labels`` list...). A Label
Studio task keeps the rest of the task and of the annotation under ``"label_studio"``, which
an export writes as a column and a re-import keeps as it is. Export writes them back.

Both forms may also be written in TRL's conversational form: ``prompt`` and the two responses
are lists of ``{"role", "content"}`` messages. The store keeps text, so a conversation is
stored rendered as text with role markers (see :func:`render_messages`; the terminal shows
that text), and the original messages go into the query's ``meta`` under
``"conversational"`` (the prompt's messages, and each response's messages keyed by the
content hash of its rendered text, so a swapped orientation maps back). Export writes such
pairs back as messages. Two conversations that render to the same text are the same query;
the messages of the first one imported are kept.

A labelled pair may also leave out ``prompt`` (TRL's implicit-prompt form): the prompt is
then the start ``chosen`` and ``rejected`` share, cut at its last whitespace for text and
after the shared messages for a conversation; a pair that shares no start is refused.

Word highlights (the words that decided): a labelled pair may carry ``"chosen_highlights"``
and ``"rejected_highlights"``, each a list of ``[start, end)`` character offsets (Python
``str`` characters, i.e. code points: an emoji, a CJK character and a combining mark count one
each) into the ``chosen`` / ``rejected`` text, e.g. ``"chosen_highlights": [[0, 5], [12,
20]]``; ``null``, ``[]`` or a missing field is none. A conversation's offsets count in its
response rendered as text (:func:`render_messages`, ``<|role|>`` lines, as the store and the
terminal show it); in the implicit-prompt form they count in the field as written and must lie
after the shared prompt. Each span is checked (two whole numbers, ``0 <= start < end <=
len(text)``; else the import stops with the file, line, field and span, nothing written);
overlapping and touching spans are merged and sorted (:mod:`.highlights`). They are stored as
the answer's ``reasons`` event (``{"highlights": {"left": [...], "right": [...]}}``, oriented
like the stored query), not as kept fields, so the terminal, the stats and training read them
like highlights given at the prompt. A pending line ``{"prompt", "a", "b"}`` has no answer to
hold them and is refused with highlights; a judged one with ``"label": "a"`` or ``"b"`` takes
them (``chosen`` is then the preferred response). A skip's highlights are not stored.

Blank lines are ignored. The whole file is checked before anything is written, and the import
is one transaction: it lands whole or not at all. A bad line raises :class:`UserInputError`
naming the file, the line, the field and the fix. Each answer becomes one stored answer
(interface ``import/1``) whose token comes from the file's sha256 and the line number, and the
import event carries the file's sha256 as its token, so importing the same file again adds
nothing (not even answers undone since); an annotator answers a pair at most once (a second
line with the same pair and annotator is skipped and counted); the store's
annotators-per-query quota does not limit imports, since each line records a label already
given. A pending line whose pair is already stored is a duplicate: the stored query (its gold
and fields) is kept, and a differing gold or unstored fields are noted. An empty rationale is
the same as none.

Export (``rlhf-hgt feedback export STORE FILE.jsonl``) writes one line per active answer of a
text query: ``{"prompt", "chosen", "rejected"}`` plus, with provenance, ``"annotator"``,
``"rationale"`` and the kept fields (the query's, then the answer's). TRL's trainers drop
columns they do not use, so these columns load and train as they are. A ``"synthetic"``
column (true for a synthetic teacher's answers) is written, on every line, when any exported
answer is synthetic. ``"chosen_highlights"`` / ``"rejected_highlights"`` are written, on
every line (``[]`` for none), when any exported answer has word highlights (reasons given at
the prompt or imported), oriented to chosen/rejected. The ``rationale`` column is written on
every line (``""`` for none) or on none, and a kept field on every line (``null`` where a
pair has none), because ``datasets`` infers a column's type from the first rows and fails on a
column that appears later. Ties and skips have no place in TRL's format: they are left out
and counted (and logged as a warning).
Conversations are written as messages only when every exported pair came in as one (one file
must have one form to load in ``datasets``); otherwise all pairs are written as text. The file
is written to a temporary file beside the target and renamed over it, so a failure leaves no
half-written file. """

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .db import DatabaseError, is_url, mask_url
from .errors import UserInputError
from .files import write_bytes_atomic
from .highlights import highlight_reasons, oriented
from .jsonl_read import GOLD_TO_SIDE, ParsedFile, Record, read_jsonl, render_messages
from .store import PreferenceStore, StoreError, TextPair, content_hash

__all__ = ["ExportCount", "ImportSummary", "ParsedFile", "Record", "conversation_of",
           "export_jsonl", "import_jsonl", "read_jsonl", "render_messages"]

log = logging.getLogger(__name__)

IMPORT_INTERFACE = "import/1"
EXPORT_FORMS = ("auto", "text")
FIELDS_EVENT = "fields"  # an event on one answer: the fields its line carried, kept as metadata
REASONS_EVENT = "reasons"  # an event on one answer: why it was given (PreferenceStore.reasons)

# ----------------------------------------------------------------------------- import


@dataclass
class ImportSummary:
    """What an import did."""

    file: str
    store: str
    sha256: str
    records: int
    labelled_added: int = 0
    pending_added: int = 0
    skips_added: int = 0
    duplicates_skipped: int = 0
    highlighted: int = 0  # answers stored with word highlights
    kept_fields: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        skips = f", {self.skips_added} skips" if self.skips_added else ""
        lines = [f"imported {self.labelled_added} labelled pairs{skips} and {self.pending_added} "
                 f"pending queries from {self.file} into {self.store}; skipped "
                 f"{self.duplicates_skipped} duplicates ({self.records} records read)"]
        if self.highlighted:
            lines.append(f"stored word highlights with {self.highlighted} answers")
        if self.kept_fields:
            lines.append(f"kept other fields as metadata (export writes them again): "
                         f"{', '.join(self.kept_fields)}")
        lines.extend(self.notes[:10])
        if len(self.notes) > 10:
            lines.append(f"... and {len(self.notes) - 10} more notes")
        return "\n".join(lines)


def _query_meta(rec: Record, parsed: ParsedFile) -> dict:
    meta: dict = {"imported_from": {"file": parsed.path.name, "sha256": parsed.sha256,
                                    "line": rec.line}}
    if rec.messages is not None:
        meta["conversational"] = {
            "prompt": rec.messages["prompt"],
            "sides": {content_hash(rec.first): rec.messages["first"],
                      content_hash(rec.second): rec.messages["second"]},
        }
    if rec.fields and not rec.judged:  # a judged line's fields go with its answer
        meta["fields"] = rec.fields
    return meta


def import_jsonl(store_path: str | os.PathLike, file_path: str | os.PathLike,
                 default_annotator: str | None = None) -> ImportSummary:
    """Import a JSONL file of labelled pairs and pending queries into a store, all or nothing.

    ``default_annotator`` names the annotator of labelled lines that name none (default
    ``import:<file name>``)."""
    if default_annotator is not None and not default_annotator.strip():
        raise UserInputError("--annotator: is empty; give an annotator id or leave it out")
    if is_url(file_path):  # the two arguments swapped: name the URL with its password masked
        raise UserInputError(f"{mask_url(str(file_path))}: a store URL where the JSONL file "
                             "goes; the store comes first: `rlhf-hgt feedback import STORE "
                             "FILE.jsonl`")
    parsed = read_jsonl(file_path)  # every line checked before the store is touched
    default = default_annotator or f"import:{parsed.path.name}"
    store = PreferenceStore(store_path)
    summary = ImportSummary(str(parsed.path), str(store.path), parsed.sha256,
                            len(parsed.records), kept_fields=parsed.kept_fields)
    try:
        with store.transaction() as cur:
            _import_records(store, cur, parsed, default, summary)
    except (sqlite3.Error, DatabaseError) as exc:
        raise StoreError(f"{store.path}: could not write to the store ({exc}); nothing was "
                         "imported; check the disk and that no other program locks it, "
                         "then run the import again") from None
    finally:
        store.close()
    return summary


def _import_records(store: PreferenceStore, cur: sqlite3.Cursor, parsed: ParsedFile,
                    default: str, summary: ImportSummary) -> None:
    event_token = f"import:{parsed.sha256}"
    before = cur.execute("SELECT at FROM events WHERE token = ?", (event_token,)).fetchone()
    if before is not None:  # the same file again: nothing new, not even what was undone since
        summary.duplicates_skipped = len(parsed.records)
        summary.notes.append(f"this file (sha256 {parsed.sha256[:12]}...) was imported into "
                             f"this store before, at {time.ctime(before[0])}")
        return
    max_before = cur.execute("SELECT COALESCE(MAX(id), 0) FROM queries").fetchone()[0]
    created: set[int] = set()
    now = time.time()
    for rec in parsed.records:
        token = f"import:{parsed.sha256}:{rec.line}" + (f":{rec.part}" if rec.part else "")
        if rec.judged and cur.execute("SELECT 1 FROM answers WHERE token = ?",
                                      (token,)).fetchone():
            summary.duplicates_skipped += 1
            continue
        pair = TextPair(rec.prompt, rec.a, rec.b, rec.source_a, rec.source_b,
                        GOLD_TO_SIDE.get(rec.gold or ""), _query_meta(rec, parsed))
        qid = store.add_text_queries([pair], cur=cur)[0]
        is_new = qid > max_before and qid not in created
        created.add(qid)
        left_hash, gold = cur.execute("SELECT left_hash, gold FROM queries WHERE id = ?",
                                      (qid,)).fetchone()
        if not rec.judged:
            if is_new:
                summary.pending_added += 1
            else:
                summary.duplicates_skipped += 1
                _note_duplicate(rec, gold, left_hash != content_hash(rec.a), summary)
            continue
        annotator = rec.annotator or default
        if cur.execute("SELECT 1 FROM active_answers WHERE query_id = ? AND annotator = ?",
                       (qid, annotator)).fetchone():
            summary.duplicates_skipped += 1
            continue
        if rec.skip or rec.tie:
            answer = "skip" if rec.skip else "tie"
        else:  # first is the chosen response
            answer = "left" if left_hash == content_hash(rec.first) else "right"
        cur.execute("INSERT INTO answers (query_id, annotator, synthetic, answer, shown_at, "
                    "answered_at, rationale, interface, token) VALUES (?,?,?,?,?,?,?,?,?)",
                    (qid, annotator, int(rec.synthetic), answer, None, now, rec.rationale,
                     IMPORT_INTERFACE, token))
        answer_id = cur.lastrowid
        if rec.fields:
            store.log_event(FIELDS_EVENT, annotator, rec.fields, answer_id=answer_id, cur=cur)
        reasons = None if rec.skip or rec.highlights is None else (
            highlight_reasons(*rec.highlights) if left_hash == content_hash(rec.first)
            else highlight_reasons(*reversed(rec.highlights)))
        if reasons is not None:  # as PreferenceStore.record_reasons stores them
            store.log_event(REASONS_EVENT, annotator, reasons, answer_id=answer_id, cur=cur)
            summary.highlighted += 1
        if rec.skip:
            summary.skips_added += 1
        else:
            summary.labelled_added += 1
    if summary.labelled_added or summary.pending_added or summary.skips_added:
        store.log_event("import", data={
            "file": parsed.path.name, "path": str(parsed.path.resolve()),
            "sha256": parsed.sha256, "records": len(parsed.records),
            "labelled_added": summary.labelled_added, "pending_added": summary.pending_added,
            "skips_added": summary.skips_added,
            "duplicates_skipped": summary.duplicates_skipped,
            "default_annotator": default}, token=event_token, cur=cur)


def _note_duplicate(rec: Record, gold: str | None, swapped: bool,
                    summary: ImportSummary) -> None:
    """A pending line whose pair is stored already: say what of it was not stored."""
    if rec.gold is not None:
        want = GOLD_TO_SIDE[rec.gold]
        if swapped and want != "tie":
            want = "right" if want == "left" else "left"
        if gold != want:
            summary.notes.append(f"line {rec.line}: the pair is already stored with gold "
                                 f"{gold!r}; kept that, not gold {rec.gold!r}")
    if rec.fields:
        summary.notes.append(f"line {rec.line}: the pair is already stored; its fields "
                             f"{', '.join(rec.fields)} were not added to it")


# ----------------------------------------------------------------------------- export


class ExportCount(int):
    """The number of lines written (an ``int``), with what was left out and why."""

    ties_left_out: int
    skips_left_out: int
    flattened: int
    path: str

    def __new__(cls, written: int, ties: int = 0, skips: int = 0, flattened: int = 0,
                path: str = "") -> ExportCount:
        obj = super().__new__(cls, written)
        obj.ties_left_out, obj.skips_left_out, obj.flattened, obj.path = (
            ties, skips, flattened, path)
        return obj

    def notes(self) -> list[str]:
        """What a user should know beyond the count: answers left out, forms changed."""
        out = []
        if self.ties_left_out or self.skips_left_out:
            out.append(f"left out {self.ties_left_out} ties and {self.skips_left_out} skips "
                       "(TRL's preference format has no place for them)")
        if self.flattened:
            out.append(f"wrote {self.flattened} conversational pairs as text with role "
                       "markers, because the store also holds plain-text pairs")
        return out

    def describe(self) -> str:
        return "; ".join([f"wrote {int(self)} labelled pairs to {self.path}", *self.notes()])


def _write_lines(path: Path, lines: list[bytes]) -> None:
    try:
        write_bytes_atomic(path, lines)
    except OSError as exc:
        raise UserInputError(f"{path}: could not be written ({exc.strerror or exc}); nothing "
                             "was written; choose a writable folder with free space") from None


def export_jsonl(store_path: str | os.PathLike, file_path: str | os.PathLike,
                 provenance: bool = True, form: str = "auto") -> ExportCount:
    """Write the labelled text pairs of a store as TRL-format JSONL; return the lines written.

    ``provenance`` adds the annotator, rationale and synthetic columns and the fields kept
    from import lines (without it: prompt, chosen and rejected only). ``form="auto"`` writes
    conversations as messages when every exported pair came in as a conversation, and
    everything as text otherwise (one file must have one form to load in ``datasets``);
    ``form="text"`` always writes text."""
    if form not in EXPORT_FORMS:
        raise ValueError(f"form must be one of {', '.join(EXPORT_FORMS)}, got {form!r}")
    path = Path(file_path)
    if path.is_dir():
        raise UserInputError(f"{path}: is a folder; give the path of the JSONL file to write")
    with PreferenceStore(store_path, create=False) as store:
        rows, ties, skips = [], 0, 0
        for query, ans in store.labelled(kind="text", include_skips=True):
            if ans.answer in ("tie", "skip"):
                ties += ans.answer == "tie"
                skips += ans.answer == "skip"
                continue
            rows.append((query, ans))
        answer_fields = ({e["answer_id"]: e["data"] for e in store.events(FIELDS_EVENT)}
                         if provenance and rows else {})
        reasons = store.reasons() if provenance and rows else {}
    conv = [conversation_of(q) for q, _ in rows]
    as_messages = form == "auto" and bool(rows) and all(c is not None for c in conv)
    flattened = 0 if as_messages else sum(c is not None for c in conv)
    with_rationale = provenance and any(a.rationale for _, a in rows)
    with_synthetic = provenance and any(a.synthetic for _, a in rows)
    highlights = [oriented(reasons.get(a.id), a.answer) for _, a in rows]
    with_highlights = any(c or r for c, r in highlights)
    kept = [_kept_fields(q, answer_fields.get(a.id)) if provenance else {} for q, a in rows]
    kept_names = list(dict.fromkeys(name for fields in kept for name in fields))
    out = []
    for (query, ans), messages, fields, (chosen_hl, rejected_hl) in zip(
            rows, conv, kept, highlights, strict=True):
        chosen, rejected = ((query.left, query.right) if ans.answer == "left"
                            else (query.right, query.left))
        if as_messages:
            record: dict[str, Any] = {"prompt": messages["prompt"],
                                      "chosen": messages["sides"][content_hash(chosen)],
                                      "rejected": messages["sides"][content_hash(rejected)]}
        else:
            record = {"prompt": query.prompt, "chosen": chosen, "rejected": rejected}
        if provenance:
            record["annotator"] = ans.annotator
            if with_rationale:
                record["rationale"] = ans.rationale or ""
            if with_synthetic:
                record["synthetic"] = bool(ans.synthetic)
            if with_highlights:  # every line, [] where a pair has none
                record["chosen_highlights"] = chosen_hl
                record["rejected_highlights"] = rejected_hl
            for name in kept_names:  # every line has every column (None where a pair has none)
                record.setdefault(name, fields.get(name))
        out.append((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    _write_lines(path, out)
    result = ExportCount(len(out), ties, skips, flattened, str(path))
    for note in result.notes():
        log.warning("%s: %s", path, note)
    return result


def _kept_fields(query: Any, answer_fields: Any) -> dict:
    """The fields kept from import lines for one answer: its query's, then its own."""
    fields = query.meta.get("fields") if isinstance(query.meta, dict) else None
    out = dict(fields) if isinstance(fields, dict) else {}
    if isinstance(answer_fields, dict):
        out.update(answer_fields)
    return out


def conversation_of(query: Any) -> dict | None:
    """A stored text query's original messages (``{"prompt": [...], "sides": {hash: [...]}}``)
    when it was imported as a conversation, else None."""
    conv = query.meta.get("conversational") if isinstance(query.meta, dict) else None
    if not isinstance(conv, dict):
        return None
    sides = conv.get("sides", {})
    if content_hash(query.left) in sides and content_hash(query.right) in sides:
        return conv
    return None
