"""Reading a JSONL file of text preferences (TRL's preference format and the judged and foreign
forms listed in :mod:`.jsonl`): each line checked and turned into :class:`Record` objects; a bad
line raises UserInputError naming the file, the line, the field and the fix."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import UserInputError
from .highlights import HIGHLIGHT_FIELDS, SpanError, check_spans

LABELLED_FIELDS = ("prompt", "chosen", "rejected")
PENDING_FIELDS = ("prompt", "a", "b")
LABELLED_ONLY = ("chosen", "rejected", "tie")
PENDING_ONLY = ("a", "b", "gold", "source_a", "source_b")
ANSWER_FIELDS = ("annotator", "rationale", "synthetic")  # who answered, why, whether a teacher
GOLD_TO_SIDE = {"a": "left", "b": "right", "tie": "tie"}

#: The fields that may carry a pending query's judgement (one per line), and the values each
#: may take: ours ("a", "b", "tie", "skip"), the store's and Label Studio's sides ("left",
#: "right") and Chatbot Arena's ``winner`` values. Matched after trimming, in any case.
JUDGEMENT_FIELDS = ("label", "choice", "preference", "preferred", "winner", "selected")
JUDGEMENT_VALUES = {"a": "a", "b": "b", "tie": "tie", "skip": "skip", "left": "a", "right": "b",
                    "model_a": "a", "model_b": "b", "tie (bothbad)": "tie"}
KNOWN_FIELDS = frozenset((*LABELLED_FIELDS, *PENDING_FIELDS, *LABELLED_ONLY, *PENDING_ONLY,
                          *ANSWER_FIELDS, *JUDGEMENT_FIELDS, *HIGHLIGHT_FIELDS))

#: The importer's own metadata keys (a Label Studio task's rest, under "label_studio"): kept as
#: they are when an export is imported again.
OWN_METADATA = frozenset(("label_studio",))

# A pending query's unknown field whose name ends in one of these words carries the pair's
# verdict (human_preference, user_choice, gold_label, a_is_better...): it is read as an answer
# or refused, never kept as metadata. So is a name that joins a verdict word to a side
# (chosen_side, preferred_response, winning_side). Other names (preference_strength,
# label_source, num_votes, ranking_model, labels) are kept as metadata, unless their value
# holds answers (see _holds_judgement).
_VERDICT_HEADS = frozenset((
    "label", "choice", "preference", "preferred", "winner", "verdict", "judgement", "judgment",
    "vote", "selected", "selection", "chosen", "better"))
_VERDICT_WORDS = _VERDICT_HEADS | {"winning", "choose", "chose", "picked"}
_SIDE_WORDS = frozenset(("side", "response", "answer", "option", "completion"))
# Words of a name whose value is read: it is refused when it holds verdict values ("a", "b",
# "left"...), as in "votes": ["a", "b", "a"] or "rankings": ["b", "a"].
_VERDICT_LIST_WORDS = frozenset((
    "labels", "choices", "preferences", "winners", "votes", "judgements", "judgments", "rank",
    "ranks", "ranking", "rankings", "annotations", "selections", "verdicts"))

_LABELLED_EXAMPLE = '{"prompt": "...", "chosen": "...", "rejected": "..."}'
_PENDING_EXAMPLE = '{"prompt": "...", "a": "...", "b": "..."}'
_FORMS_HINT = (f"write a labelled pair {_LABELLED_EXAMPLE} or a pending query "
               f"{_PENDING_EXAMPLE}")
_JUDGEMENT_HINT = ('write the judgement on a pending query as "label": "a", "b", "tie" or '
                   '"skip", e.g. {"prompt": "...", "a": "...", "b": "...", "label": "a"}')
_VALUES_HINT = ('"a", "b", "tie" or "skip" (also read: "left", "right", "model_a", "model_b", '
                '"tie (bothbad)")')

# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Record:
    """One answer or pending query read from an import file (a Label Studio task with several
    annotations gives one record per annotation, numbered by ``part``).

    ``first``/``second`` are chosen/rejected for a labelled pair (``labelled``), and a/b for a
    tie, a skip or a pending query, as text (conversations rendered); ``a_first`` is False when
    ``first`` is the line's response "b" (a judged pending query that preferred b).
    ``messages`` keeps a conversation's original messages, oriented like first/second;
    ``source_a``/``source_b`` and ``gold`` refer to the line's a and b. ``fields`` are the
    line's other fields, kept as metadata (with the answer when there is one, else with the
    query). ``highlights`` are the line's ``chosen_highlights`` and ``rejected_highlights``,
    checked, merged and oriented like first/second (None when the line gives none).
    """

    line: int
    labelled: bool
    prompt: str
    first: str
    second: str
    tie: bool = False
    annotator: str | None = None
    rationale: str | None = None
    synthetic: bool = False
    gold: str | None = None  # 'a', 'b' or 'tie'
    source_a: str | None = None
    source_b: str | None = None
    messages: dict | None = None  # {"prompt": [...], "first": [...], "second": [...]}
    skip: bool = False  # the annotator saw the pair and skipped it
    a_first: bool = True
    fields: dict = field(default_factory=dict)
    part: int = 0
    highlights: tuple[list[list[int]], list[list[int]]] | None = None

    @property
    def judged(self) -> bool:
        """The line records an answer (a preference, a tie or a skip)."""
        return self.labelled or self.skip

    @property
    def a(self) -> str:
        return self.first if self.a_first else self.second

    @property
    def b(self) -> str:
        return self.second if self.a_first else self.first


@dataclass
class ParsedFile:
    path: Path
    sha256: str
    records: list[Record]
    kept_fields: list[str] = field(default_factory=list)


def render_messages(messages: list[dict], trailing_newline: bool = False) -> str:
    """A conversation as text: each message as ``<|role|>`` on its own line, then its content.

    A prompt is rendered with a trailing newline so that prompt + response reads as one
    conversation."""
    text = "\n".join(f"<|{m['role']}|>\n{m['content']}" for m in messages)
    return text + "\n" if trailing_newline else text


def single_user_text(messages: Any) -> str | None:
    """The text of a conversation that is one user message (a prompt PPO can send through
    the model's chat template), else None."""
    if isinstance(messages, list) and len(messages) == 1:
        msg = messages[0]
        if (isinstance(msg, dict) and msg.get("role") == "user"
                and isinstance(msg.get("content"), str)):
            return msg["content"]
    return None


# ----------------------------------------------------------------------------- reading


class _LineError(Exception):
    """A problem with one line; turned into a UserInputError with the file and line."""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _LineError(f"field {key!r}: appears twice in one object; keep one")
        out[key] = value
    return out


def _check_unicode(value: Any, where: str) -> None:
    """Refuse lone surrogates (JSON escapes like \\ud800 that are no UTF-8 text)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _LineError(
                f"field {where!r}: holds an unpaired surrogate escape "
                f"(\\u{ord(value[exc.start]):04x} at character {exc.start}); "
                "write the character itself or a complete surrogate pair") from None
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_unicode(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, f"{where} key")
            _check_unicode(item, f"{where}.{key}")


def _text(obj: dict, name: str) -> str:
    value = obj[name]
    if not value.strip():
        raise _LineError(f"field {name!r}: is empty; give the text, or remove the line")
    return value


def _messages(obj: dict, name: str) -> list[dict]:
    value = obj[name]
    if not value:
        raise _LineError(f"field {name!r}: is an empty list of messages; give at least one "
                         '{"role": ..., "content": ...} message, or remove the line')
    for i, msg in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            raise _LineError(f"field {where!r}: is {_type_name(msg)}, not a message; write "
                             '{"role": "user", "content": "..."}')
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str) or not role.strip() or "\n" in role:
            raise _LineError(f"field {where + '.role'!r}: must be a one-line, non-empty string "
                             f"such as \"user\" or \"assistant\", got {_type_name(role)}")
        if not isinstance(content, str):
            raise _LineError(f"field {where + '.content'!r}: must be a string (only text "
                             f"messages are supported), got {_type_name(content)}")
    _check_unicode(value, name)
    if not any(m["content"].strip() for m in value):
        raise _LineError(f"field {name!r}: every message is empty; give the text, "
                         "or remove the line")
    return value


def _split_implicit_prompt(obj: dict) -> dict:
    """TRL's implicit-prompt form: ``chosen`` and ``rejected`` each hold the whole text (or
    conversation), and the prompt is what they share at the start. Text is cut at the last
    whitespace of the shared start (so both responses begin with it, as in TRL's explicit form);
    a conversation is cut after the messages both share. Returns the line with an explicit
    prompt; one that has no shared start, or whose fields are not both text or both lists, is
    returned as it is (the missing prompt is then reported)."""
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        cut = max((i for i in range(n) if chosen[i].isspace()), default=0)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        cut = 0
        while cut < min(len(chosen), len(rejected)) - 1 and chosen[cut] == rejected[cut]:
            cut += 1
    else:
        return obj
    prompt = chosen[:cut]
    if not (prompt.strip() if isinstance(prompt, str) else prompt):
        raise _LineError(
            "field 'prompt': is missing, and 'chosen' and 'rejected' do not begin with a shared "
            "prompt to take instead (TRL's implicit-prompt form); add the prompt, e.g. "
            f"{_LABELLED_EXAMPLE}")
    return {**obj, "prompt": prompt, "chosen": chosen[cut:], "rejected": rejected[cut:]}


def _optional_str(obj: dict, name: str, allowed: Iterable[str] | None = None) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _LineError(f"field {name!r}: must be a string, got {_type_name(value)}; "
                         "fix it or remove the field")
    _check_unicode(value, name)
    if allowed is not None and value not in allowed:
        raise _LineError(f"field {name!r}: must be one of {', '.join(map(repr, allowed))}, "
                         f"got {value!r}")
    return value


def _judgement_like(key: str, value: Any) -> str | None:
    """Why an unknown field of a pending query carries the pair's verdict, or None: by its name
    (human_preference, chosen_side...), by a verdict value under a plural or ranking name
    ("votes": ["a", "b"]), or by a Label Studio pairwise choice ``{"selected": "left"}`` or
    Argilla responses ``[{"user_id", "value", ...}]`` in its value."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()
    words = [w for w in re.split(r"[^0-9a-z]+", name) if w]
    if words and (words[-1] in _VERDICT_HEADS or (
            words[-1] in _SIDE_WORDS and any(w in _VERDICT_WORDS for w in words[:-1]))):
        return "its name says it is the pair's verdict"
    if any(w in _VERDICT_LIST_WORDS for w in words) and _verdict_values(value):
        return f"it holds the verdict {value!r}"
    if _holds_judgement(value, depth=0):
        return ("it holds a judgement (a Label Studio pairwise choice {\"selected\": \"left\"} "
                "or Argilla responses)")
    return None


def _verdict_values(value: Any) -> bool:
    """A verdict ("a", "b", "tie", "left"...) or a non-empty list of verdicts."""
    def one(v: Any) -> bool:
        return isinstance(v, str) and v.strip().lower() in JUDGEMENT_VALUES
    return one(value) or (isinstance(value, list) and bool(value) and all(map(one, value)))


def _holds_judgement(value: Any, depth: int) -> bool:
    """A pairwise choice (``{"selected": "left"|"right"}``) or Argilla responses (objects with
    ``user_id`` and ``value``) in the value, its items or their values (not deeper: a kept
    Label Studio task may hold model predictions, which are no answers)."""
    if depth > 2:
        return False
    if isinstance(value, dict):
        selected = value.get("selected")
        if (isinstance(selected, str) and selected.strip().lower() in ("left", "right")
                or {"user_id", "value"} <= value.keys()):
            return True
        return any(_holds_judgement(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_holds_judgement(v, depth + 1) for v in value)
    return False


def _kept_fields(obj: dict, labelled: bool) -> dict:
    """The fields of a line that are not ours, kept as metadata. On a labelled pair every one is
    kept ('chosen' is its verdict already); on a pending query one that carries the pair's
    verdict is refused, never kept (that would drop an answer without a word)."""
    kept = {}
    for key, value in obj.items():
        if key in KNOWN_FIELDS:
            continue
        _check_unicode(key, "a field name")
        why = None if labelled or key in OWN_METADATA else _judgement_like(key, value)
        if why is not None:
            raise _LineError(
                f"field {key!r}: is not read as an answer, and {why}, so it is not kept as mere "
                f"metadata; {_JUDGEMENT_HINT}; if it is no judgement, nest it in an object, e.g. "
                f'"meta": {{{json.dumps(key)}: ...}}')
        _check_unicode(value, key)
        kept[key] = value
    return kept


def _judgement(obj: dict) -> tuple[str | None, str | None]:
    """The judgement field of a line and its value as "a", "b", "tie" or "skip" (a null value
    is no judgement), or (None, None)."""
    given = [k for k in JUDGEMENT_FIELDS if obj.get(k) is not None]
    if not given:
        return None, None
    if len(given) > 1:
        raise _LineError(f"field {given[1]!r}: the line holds two judgements ({given[0]!r} "
                         f"and {given[1]!r}); keep one")
    name = given[0]
    value = obj[name]
    if not isinstance(value, str):
        raise _LineError(f"field {name!r}: must be {_VALUES_HINT}, got {_type_name(value)}")
    _check_unicode(value, name)
    judgement = JUDGEMENT_VALUES.get(value.strip().lower())
    if judgement is None:
        raise _LineError(f"field {name!r}: must be {_VALUES_HINT}, got {value!r}")
    return name, judgement


def _answer_fields(obj: dict) -> dict:
    """annotator, rationale and synthetic of a line that records an answer, checked."""
    annotator = _optional_str(obj, "annotator")
    if annotator is not None and not annotator.strip():
        raise _LineError("field 'annotator': is empty; give an annotator id or remove "
                         "the field")
    synthetic = obj.get("synthetic")
    if synthetic is not None and not isinstance(synthetic, bool):
        raise _LineError(f"field 'synthetic': must be true (a synthetic teacher answered) "
                         f"or false, got {_type_name(synthetic)}")
    return {"annotator": annotator, "rationale": _optional_str(obj, "rationale") or None,
            "synthetic": bool(synthetic)}


def _parse_object(obj: Any, line: int) -> Record:
    if not isinstance(obj, dict):
        raise _LineError(f"the line is {_type_name(obj)}, not a JSON object; {_FORMS_HINT}")
    has_labelled = [k for k in LABELLED_ONLY if k in obj]
    has_pending = [k for k in PENDING_ONLY if k in obj]
    if has_labelled and has_pending:
        raise _LineError(
            f"field {has_pending[0]!r}: the line mixes a labelled pair (it has "
            f"{', '.join(map(repr, has_labelled))}) with a pending query (it has "
            f"{', '.join(map(repr, has_pending))}); {_FORMS_HINT}")
    if not has_labelled and not has_pending:
        raise _LineError(f"field 'chosen' (or 'a'): is missing, so the line is neither a "
                         f"labelled pair nor a pending query; {_FORMS_HINT}")
    labelled = not has_pending
    judgement_name, judgement = _judgement(obj)
    if labelled and judgement_name is not None:
        raise _LineError(
            f"field {judgement_name!r}: a labelled pair says which response is preferred by "
            f"'chosen' already; remove {judgement_name!r}, or write the line as a pending "
            'query with "a", "b" and "label"')
    if not labelled and judgement is None:
        for name in ANSWER_FIELDS:
            if name in obj:
                raise _LineError(f"field {name!r}: belongs to an answer, but this pending query "
                                 f"holds no judgement; {_JUDGEMENT_HINT}, or remove {name!r}")
    names = LABELLED_FIELDS if labelled else PENDING_FIELDS
    implicit = labelled and "prompt" not in obj
    if implicit:
        original = obj
        obj = _split_implicit_prompt(obj)
        implicit = obj is not original
    for name in names:
        if obj.get(name) is None:
            what = "a labelled pair" if labelled else "a pending query"
            raise _LineError(f"field {name!r}: is missing{'' if name not in obj else ' (null)'}"
                             f"; {what} needs {', '.join(map(repr, names))}, e.g. "
                             f"{_LABELLED_EXAMPLE if labelled else _PENDING_EXAMPLE}")
    values = [obj[n] for n in names]
    conversational = isinstance(values[0], list)
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, str | list):
            raise _LineError(f"field {name!r}: must be a string (or a list of messages), "
                             f"got {_type_name(value)}")
        if isinstance(value, list) != conversational:
            raise _LineError(
                f"field {name!r}: is {_type_name(value)} but field {names[0]!r} is "
                f"{_type_name(values[0])}; write all of {', '.join(map(repr, names))} as text, "
                "or all as lists of messages")
    messages = None
    if conversational:
        msgs = [_messages(obj, n) for n in names]
        prompt = render_messages(msgs[0], trailing_newline=True)
        first, second = render_messages(msgs[1]), render_messages(msgs[2])
        messages = {"prompt": msgs[0], "first": msgs[1], "second": msgs[2]}
    else:
        for name in names:
            _check_unicode(obj[name], name)
        prompt, first, second = (_text(obj, n) for n in names)
    if first == second:
        raise _LineError(f"field {names[2]!r}: is the same as {names[1]!r}; a pair needs two "
                         "different responses; fix or remove the line")
    fields = _kept_fields(obj, labelled)
    if labelled:
        tie = obj.get("tie")
        if tie is not None and not isinstance(tie, bool):
            raise _LineError(f"field 'tie': must be true or false, got {_type_name(tie)}")
        highlights = _highlights(obj, first, second, len(prompt) if implicit else 0,
                                 conversational)
        return Record(line, True, prompt, first, second, tie=bool(tie), messages=messages,
                      fields=fields, highlights=highlights, **_answer_fields(obj))
    highlights = None
    if any(obj.get(name) is not None for name in HIGHLIGHT_FIELDS):
        if judgement not in ("a", "b"):
            name = next(n for n in HIGHLIGHT_FIELDS if obj.get(n) is not None)
            raise _LineError(
                f"field {name!r}: highlights belong to an answer that prefers one response, "
                f"and this line {'holds none' if judgement is None else f'is a {judgement}'}; "
                "give them on a labelled pair {\"prompt\", \"chosen\", \"rejected\", "
                '"chosen_highlights": [[start, end], ...], "rejected_highlights": [...]}, or '
                'on a line with "label": "a" or "b" (chosen is then the preferred response), '
                "or remove the field")
        highlights = (_highlights(obj, first, second, 0, conversational) if judgement == "a"
                      else _highlights(obj, second, first, 0, conversational))
    record = Record(line, False, prompt, first, second,
                    gold=_optional_str(obj, "gold", allowed=tuple(GOLD_TO_SIDE)),
                    source_a=_optional_str(obj, "source_a"),
                    source_b=_optional_str(obj, "source_b"), messages=messages, fields=fields)
    if judgement is None:
        return record
    answer = _answer_fields(obj)
    if judgement == "b":  # first/second become chosen/rejected
        swapped = None if messages is None else {**messages, "first": messages["second"],
                                                 "second": messages["first"]}
        return replace(record, labelled=True, first=second, second=first, messages=swapped,
                       a_first=False, highlights=highlights, **answer)
    return replace(record, labelled=judgement != "skip", tie=judgement == "tie",
                   skip=judgement == "skip", highlights=highlights, **answer)


def _highlights(obj: dict, chosen: str, rejected: str, shift: int,
                conversational: bool) -> tuple[list[list[int]], list[list[int]]] | None:
    """The line's chosen/rejected highlights, checked against the texts (as rendered, for a
    conversation) and merged; None when it gives none. ``shift`` is the length of a prompt
    split off the front of both fields (TRL's implicit-prompt form): offsets then count in the
    field as written, and must lie after the shared prompt."""
    if all(obj.get(name) is None for name in HIGHLIGHT_FIELDS):
        return None
    out = []
    for name, text in zip(HIGHLIGHT_FIELDS, (chosen, rejected), strict=True):
        what = repr(name.split("_")[0]) + (" (its messages rendered as text)"
                                           if conversational else "")
        try:
            spans = check_spans(obj.get(name), " " * shift + text, name, what)
        except SpanError as exc:
            raise _LineError(str(exc)) from None
        inside = [s for s in spans if s[0] < shift]
        if inside:
            raise _LineError(
                f"field {name!r}: span {inside[0]} lies in the prompt that 'chosen' and "
                f"'rejected' share (their first {shift} characters, TRL's implicit-prompt form); "
                "highlights mark words of the response: start them at or after "
                f"{shift}, or give the prompt as its own field and count from the response")
        out.append([[s - shift, e - shift] for s, e in spans])
    return out[0], out[1]


# ----------------------------------------------------------------------------- Label Studio


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise UserInputError(f"{path}: no such file; give the path of a JSONL file "
                             f"(one JSON object per line)")
    if path.is_dir():
        raise UserInputError(f"{path}: is a folder; give the path of a JSONL file "
                             "(one JSON object per line)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"{path}: cannot be read ({exc.strerror}); check the path "
                             "and its permissions") from None


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserInputError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset "
            f"{exc.start}, byte {column} of the line); save the file as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_jsonl(file_path: str | os.PathLike) -> ParsedFile:
    """Read and check a whole import file; raise UserInputError at the first bad line."""
    from .label_studio import is_label_studio_task, label_studio_records

    path = Path(file_path)
    data = _read_bytes(path)
    text = _decode(path, data)
    records: list[Record] = []
    kept: set[str] = set()
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            try:
                obj = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as exc:
                raise _LineError(f"malformed JSON ({exc.msg} at column {exc.colno}); write "
                                 "one complete JSON object per line") from None
            except RecursionError:
                raise _LineError("malformed JSON (nested too deeply); write one flat JSON "
                                 "object per line") from None
            except ValueError as exc:  # e.g. an integer with too many digits
                raise _LineError(f"malformed JSON ({exc}); write one JSON object per "
                                 "line") from None
            if is_label_studio_task(obj):
                found = label_studio_records(obj, number)
            else:
                found = [_parse_object(obj, number)]
        except _LineError as exc:
            raise UserInputError(f"{path}:{number}: {exc}") from None
        records.extend(found)
        kept.update(k for rec in found for k in rec.fields)
    if not records:
        raise UserInputError(f"{path}: holds no records (empty or only blank lines); "
                             f"{_FORMS_HINT}, one per line")
    return ParsedFile(path, hashlib.sha256(data).hexdigest(), records, sorted(kept))
