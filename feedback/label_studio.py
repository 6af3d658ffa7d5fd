"""Label Studio's JSON export, one task per line (``jq -c '.[]' export.json``): a pairwise
task becomes one answer per annotation (``"left"`` = the first text), a cancelled
annotation a skip, a task without annotations a pending query; everything else of the task
is kept under the record's ``fields["label_studio"]``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .jsonl_read import (
    LABELLED_FIELDS,
    PENDING_FIELDS,
    Record,
    _check_unicode,
    _LineError,
    _parse_object,
    _type_name,
)

# Label Studio tasks: where the two texts may sit in ``data`` when the pairwise result does
# not name them (its ``to_name`` holds the names of the Text tags, often the data keys).
LABEL_STUDIO_SIDES = (("a", "b"), ("answer1", "answer2"), ("text1", "text2"),
                      ("response1", "response2"), ("response_a", "response_b"))



def is_label_studio_task(obj: Any) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("data"), dict)
            and not any(k in obj for k in (*LABELLED_FIELDS, *PENDING_FIELDS)))


def _label_studio_sides(data: dict, results: list[dict]) -> tuple[str, str]:
    """The data keys of the two texts: those the pairwise result names in ``to_name`` when
    both are data keys, else the first pair of :data:`LABEL_STUDIO_SIDES` present."""
    for result in results:
        names = result.get("to_name")
        if isinstance(names, str):
            names = names.split(",")
        if (isinstance(names, list) and len(names) == 2
                and all(isinstance(n, str) and n.strip() in data for n in names)):
            return names[0].strip(), names[1].strip()
    for a, b in LABEL_STUDIO_SIDES:
        if a in data and b in data:
            return a, b
    raise _LineError(
        "field 'data': a Label Studio task needs the prompt in data.prompt and the two texts in "
        f"data.{' or data.'.join('/'.join(p) for p in LABEL_STUDIO_SIDES)} (or under the two "
        "names of the pairwise result's to_name); rename the keys in data")


def _label_studio_annotator(annotation: dict) -> str | None:
    """``completed_by``: a user id (``label-studio:<id>``), or a user object (its email)."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        email = who.get("email")
        if isinstance(email, str) and email.strip():
            return email
        who = who.get("id")
    if isinstance(who, int) and not isinstance(who, bool):
        return f"label-studio:{who}"
    return who if isinstance(who, str) and who.strip() else None


def label_studio_records(task: dict, line: int) -> list[Record]:
    """A task of Label Studio's JSON export: ``data`` holds the prompt and the two texts; each
    annotation's pairwise result (``value.selected`` "left" = the first text) is one answer,
    a cancelled (skipped) annotation a skip; a task without annotations is a pending query.
    The rest of the task and of each annotation is kept under ``fields["label_studio"]``."""
    data = task["data"]
    key = "annotations" if "annotations" in task else "completions"  # completions: LS < 1.0
    annotations = task.get(key) or []
    if not isinstance(annotations, list):
        raise _LineError(f"field {key!r}: must be a list of annotations, got "
                         f"{_type_name(annotations)}")
    choices = []  # (annotation without its pairwise result, the result or None, the label)
    for i, ann in enumerate(annotations):
        where = f"{key}[{i}]"
        results = (ann.get("result") or []) if isinstance(ann, dict) else None
        if not isinstance(results, list):
            raise _LineError(f"field {where!r}: must be an annotation object whose 'result' "
                             "is a list")
        pairwise = [r for r in results if isinstance(r, dict) and r.get("type") == "pairwise"]
        rest = {k: v for k, v in ann.items() if k != "result"}
        if ann.get("was_cancelled") is True or ann.get("skipped") is True:
            if results:
                rest["result"] = results
            choices.append((rest, None, "skip"))
            continue
        if any(r not in pairwise for r in results):
            rest["result"] = [r for r in results if r not in pairwise]
        if len(pairwise) != 1:
            raise _LineError(
                f"field {where + '.result'!r}: holds {len(pairwise) or 'no'} pairwise results; "
                "an annotation needs one (Label Studio's Pairwise tag: {\"type\": \"pairwise\", "
                '"value": {"selected": "left"}}); fix the labelling config or remove the '
                "annotation")
        value = pairwise[0].get("value")
        selected = value.get("selected") if isinstance(value, dict) else None
        if selected not in ("left", "right"):
            raise _LineError(f"field {where + '.result[].value.selected'!r}: must be \"left\" "
                             f"or \"right\", got {selected!r}")
        choices.append((rest, pairwise[0], selected))
    side_a, side_b = _label_studio_sides(data, [r for _, r, _ in choices if r is not None])
    flat = {"prompt": data.get("prompt"), "a": data.get(side_a), "b": data.get(side_b)}
    context = (f" (in this Label Studio task 'prompt' is data.prompt, 'a' and 'b' are "
               f"data.{side_a} and data.{side_b})")
    task_meta = {k: v for k, v in task.items() if k not in ("data", key)}
    others = {k: v for k, v in data.items() if k not in ("prompt", side_a, side_b)}
    if others:
        task_meta["data"] = others
    records = []
    for part, (rest, result, label) in enumerate(choices or [({}, None, None)]):
        obj = dict(flat)
        if label is not None:
            obj["label"] = label
            who = _label_studio_annotator(rest)
            if who is not None:
                obj["annotator"] = who
        try:
            record = _parse_object(obj, line)
        except _LineError as exc:
            raise _LineError(f"{exc}{context}") from None
        kept = {"task": task_meta, **({"annotation": rest} if label is not None else {})}
        if result is not None and isinstance(result.get("to_name"), str | list):
            kept["to_name"] = result["to_name"]
        _check_unicode(kept, "label_studio")
        records.append(replace(record, fields={"label_studio": kept}, part=part))
    return records
