"""Statistics of a preference store: counts, annotators, agreement and gold accuracy.

:func:`compute_stats` returns plain JSON-serialisable data (``rlhf-hgt feedback stats STORE
--json`` prints it); :func:`print_stats` draws it as rich tables. Everything is computed from
*active* answers (an undone answer is counted only under ``answers.undone``).

Definitions
- pending: queries with fewer active answers than the store's ``annotators_per_query``
  (a skip counts as an answer, as it does for the labelling queue).
- seconds per label: ``answered_at - shown_at`` for answers that record when the pair was
  shown (negative spans, from clock changes, are ignored). The overall median is over
  human (non-synthetic) answers only: teachers answer instantly and would hide the
  human figure; each teacher's own median is still listed with its annotator entry.
- agreement: on queries that two or more annotators answered with left, right or tie
  (skips say nothing about a preference and are left out; if an annotator has several
  active answers on a query, the last one counts). With exactly two such annotators the
  headline is Cohen's kappa over the queries both answered; with three or more it is
  Krippendorff's alpha (nominal), which uses every query answered by at least two and
  needs no complete table. Both are also given whenever they are defined, and so is
  Cohen's kappa for every pair of annotators with at least ``min_overlap`` shared queries.
  A coefficient is ``None`` where it is undefined (e.g. every answer the same category:
  no variation to agree on).
- gold accuracy: on queries with a gold answer, the share of non-skip answers equal to
  gold (exact match: a tie is right only when gold is tie, and wrong against a
  left/right gold; skips are left out and counted under ``skipped``). Per annotator, and
  overall pooled over every annotator's answers.
- marks (attention marks on image grids, :mod:`.marks`): active marks and skips per
  annotator, undone ones, and the median seconds per mark of people.

No torch here; kappa and alpha are computed with numpy.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from .marks import mark_stats
from .store import ANSWERS, KINDS, Answer, PreferenceStore

CATEGORIES = ("left", "right", "tie")
MIN_PAIR_OVERLAP = 5


# ----------------------------------------------------------------------------- coefficients


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable],
                categories: Sequence[Hashable] | None = None) -> float | None:
    """Cohen's kappa of two raters over the same items: (p_o - p_e) / (1 - p_e).

    ``a[i]`` and ``b[i]`` are the two ratings of item i. ``None`` when there are no items
    or chance agreement is 1 (both raters always used the same single category)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs the same number of ratings from each rater, "
                         f"got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return None
    cats = list(categories) if categories is not None else sorted(set(a) | set(b), key=str)
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)), dtype=np.float64)
    for x, y in zip(a, b, strict=True):
        if x not in index or y not in index:
            raise ValueError(f"rating {x if x not in index else y!r} is not one of {cats}")
        table[index[x], index[y]] += 1
    p_o = np.trace(table) / n
    p_e = float(np.dot(table.sum(axis=1), table.sum(axis=0))) / (n * n)
    if np.isclose(p_e, 1.0):
        return None
    return float((p_o - p_e) / (1.0 - p_e))


def _coincidences(ratings: Sequence[Sequence[Hashable | None]]) -> np.ndarray:
    """Krippendorff's coincidence matrix; rows of ``ratings`` are raters, columns units."""
    rows = [list(r) for r in ratings]
    if rows and len({len(r) for r in rows}) != 1:
        raise ValueError("every rater's row must have one entry per unit (None where missing)")
    values = sorted({v for r in rows for v in r if v is not None}, key=str)
    index = {c: i for i, c in enumerate(values)}
    k = len(values)
    o = np.zeros((k, k), dtype=np.float64)
    for unit in zip(*rows, strict=True) if rows else ():
        counts = np.zeros(k, dtype=np.float64)
        for v in unit:
            if v is not None:
                counts[index[v]] += 1
        m = counts.sum()
        if m < 2:
            continue  # a unit with fewer than two values cannot be paired
        o += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    return o


def krippendorff_alpha_nominal(ratings: Sequence[Sequence[Hashable | None]]) -> float | None:
    """Krippendorff's alpha for nominal data: 1 - D_o / D_e, with missing values as None.

    ``ratings[r][u]`` is rater r's value for unit u (None when r did not rate u). Units with
    fewer than two values are left out. ``None`` when no unit is pairable or every pairable
    value is the same category (expected disagreement 0)."""
    o = _coincidences(ratings)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n < 2:
        return None
    expected = n * n - float(np.dot(n_c, n_c))  # sum over c != k of n_c * n_k
    if expected <= 0:
        return None
    observed = o.sum() - np.trace(o)  # sum over c != k of o_ck
    return float(1.0 - (n - 1) * observed / expected)


def observed_agreement(ratings: Sequence[Sequence[Hashable | None]]) -> float | None:
    """The share of pairable value pairs (within a unit) that agree."""
    o = _coincidences(ratings)
    n = o.sum()
    return float(np.trace(o) / n) if n > 0 else None


# ----------------------------------------------------------------------------- the store


def _median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def _durations(answers: list[Answer]) -> list[float]:
    return [a.answered_at - a.shown_at for a in answers
            if a.shown_at is not None and a.answered_at - a.shown_at >= 0]


def _gold_block(answers: list[Answer], gold: dict[int, str]) -> dict[str, Any]:
    correct = judged = skipped = 0
    for a in answers:
        g = gold.get(a.query_id)
        if g is None:
            continue
        if a.answer == "skip":
            skipped += 1
            continue
        judged += 1
        correct += a.answer == g
    return {"answers": judged, "correct": correct, "skipped": skipped,
            "accuracy": correct / judged if judged else None}


def compute_stats(store_path: str | Path | PreferenceStore,
                  min_overlap: int = MIN_PAIR_OVERLAP) -> dict[str, Any]:
    """Counts, per-annotator numbers, agreement and gold accuracy of a store (JSON-ready).

    The store must exist (a missing one raises StoreError); it is only read."""
    if min_overlap < 1:
        raise ValueError(f"min_overlap must be >= 1, got {min_overlap}")
    own = not isinstance(store_path, PreferenceStore)
    store = PreferenceStore(store_path, create=False) if own else store_path
    try:
        return _compute(store, min_overlap)
    finally:
        if own:
            store.close()


def _compute(store: PreferenceStore, min_overlap: int) -> dict[str, Any]:
    qrows = store.query_kinds()
    kind_of = {qid: kind for qid, kind, _ in qrows}
    gold = {qid: g for qid, _, g in qrows if g is not None}
    every = store.answers(include_undone=True)
    active = store.answers()
    need = store.annotators_per_query

    per_query = Counter(a.query_id for a in active)
    pending = sum(1 for qid in kind_of if per_query[qid] < need)
    by_value = Counter(a.answer for a in active)
    by_kind = Counter(kind_of.get(a.query_id, "?") for a in active)

    by_annotator: dict[str, list[Answer]] = defaultdict(list)
    for a in active:
        by_annotator[a.annotator].append(a)
    annotators = {}
    for name in sorted(by_annotator):
        mine = by_annotator[name]
        values = Counter(a.answer for a in mine)
        durations = _durations(mine)
        annotators[name] = {
            "answers": len(mine),
            "by_value": {v: values.get(v, 0) for v in ANSWERS},
            "synthetic": all(a.synthetic for a in mine),
            "median_seconds_per_label": _median(durations),
            "timed_answers": len(durations),
            "gold": _gold_block(mine, gold),
        }

    human_durations = _durations([a for a in active if not a.synthetic])
    return {
        "store": str(store.path),
        "annotators_per_query": need,
        "queries": {
            "total": len(qrows),
            "by_kind": {k: sum(1 for v in kind_of.values() if v == k) for k in KINDS},
            "gold": len(gold),
        },
        "answers": {
            "total": len(active),
            "by_value": {v: by_value.get(v, 0) for v in ANSWERS},
            "by_kind": {k: by_kind.get(k, 0) for k in KINDS},
            "synthetic": sum(1 for a in active if a.synthetic),
            "human": sum(1 for a in active if not a.synthetic),
            "undone": len(every) - len(active),
        },
        "pending": pending,
        "undone": len(every) - len(active),
        "timing": {
            "median_seconds_per_label": _median(human_durations),
            "timed_answers": len(human_durations),
            "over": "human answers",
        },
        "annotators": annotators,
        "agreement": _agreement(active, min_overlap),
        "gold": {
            "queries": len(gold),
            "queries_answered": len({a.query_id for a in active
                                     if a.query_id in gold and a.answer != "skip"}),
            "overall": _gold_block(active, gold),
            "rule": "exact match with gold; skips left out",
        },
        "marks": mark_stats(store),
    }


def _agreement(active: list[Answer], min_overlap: int) -> dict[str, Any]:
    labels: dict[int, dict[str, str]] = defaultdict(dict)
    for a in active:  # oldest first, so the last active answer wins
        if a.answer in CATEGORIES:
            labels[a.query_id][a.annotator] = a.answer
    shared = {qid: ans for qid, ans in labels.items() if len(ans) >= 2}
    raters = sorted({name for ans in shared.values() for name in ans})
    units = sorted(shared)
    table = [[shared[q].get(r) for q in units] for r in raters]

    kappa = None
    if len(raters) == 2:
        kappa = cohen_kappa(table[0], table[1], CATEGORIES)  # both rated every shared unit
    alpha = krippendorff_alpha_nominal(table) if raters else None
    if len(raters) == 2:
        method, value = "cohen_kappa", kappa
    elif len(raters) > 2:
        method, value = "krippendorff_alpha", alpha
    else:
        method, value = None, None

    pairwise = []
    for x, y in combinations(raters, 2):
        both = [q for q in units if x in shared[q] and y in shared[q]]
        if len(both) < min_overlap:
            continue
        ax, ay = [shared[q][x] for q in both], [shared[q][y] for q in both]
        pairwise.append({
            "a": x, "b": y, "overlap": len(both),
            "agreement": sum(u == v for u, v in zip(ax, ay, strict=True)) / len(both),
            "kappa": cohen_kappa(ax, ay, CATEGORIES),
        })
    return {
        "annotators": raters,
        "queries": len(units),
        "method": method,
        "value": value,
        "cohen_kappa": kappa,
        "krippendorff_alpha": alpha,
        "observed_agreement": observed_agreement(table) if raters else None,
        "min_overlap": min_overlap,
        "pairwise": pairwise,
        "categories": list(CATEGORIES),
    }


# ----------------------------------------------------------------------------- printing


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def print_stats(stats: dict[str, Any], console: Any = None) -> None:
    """Draw the statistics as rich tables (on stdout unless a rich Console is given)."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    q, a = stats["queries"], stats["answers"]
    summary = Table(title=f"Preference store {stats['store']}", show_header=False)
    summary.add_column("what", style="bold")
    summary.add_column("value", justify="right")
    summary.add_row("queries", str(q["total"]))
    for kind, n in q["by_kind"].items():
        summary.add_row(f"  {kind}", str(n))
    summary.add_row("  with gold answer", str(q["gold"]))
    summary.add_row("answers (active)", str(a["total"]))
    for value, n in a["by_value"].items():
        summary.add_row(f"  {value}", str(n))
    summary.add_row("  by people / by teachers", f"{a['human']} / {a['synthetic']}")
    summary.add_row("undone answers", str(stats["undone"]))
    summary.add_row(f"pending (want {stats['annotators_per_query']} answer(s) each)",
                    str(stats["pending"]))
    summary.add_row("median seconds per label (people)",
                    _f(stats["timing"]["median_seconds_per_label"], 1))
    con.print(summary)

    if stats["annotators"]:
        people = Table(title="Annotators")
        people.add_column("annotator", overflow="fold", min_width=10)
        for col in ("kind", "n", *ANSWERS, "s/label", "gold acc"):
            people.add_column(col, justify="right")
        for name, s in stats["annotators"].items():
            g = s["gold"]
            acc = f"{_f(g['accuracy'], 2)} of {g['answers']}" if g["answers"] else "–"
            people.add_row(name, "teacher" if s["synthetic"] else "person", str(s["answers"]),
                           *(str(s["by_value"][v]) for v in ANSWERS),
                           _f(s["median_seconds_per_label"], 1), acc)
        con.print(people)

    ag = stats["agreement"]
    if ag["method"] is None:
        con.print("Agreement: no query was answered (left/right/tie) by two annotators.")
    else:
        label = "Cohen's kappa" if ag["method"] == "cohen_kappa" else "Krippendorff's alpha"
        con.print(f"Agreement over {ag['queries']} shared queries, {len(ag['annotators'])} "
                  f"annotators: {label} = {_f(ag['value'])}, observed agreement "
                  f"{_f(ag['observed_agreement'])}")
    if ag["pairwise"]:
        pairs = Table(title=f"Pairwise agreement (at least {ag['min_overlap']} shared queries)")
        for col in ("annotator A", "annotator B", "shared", "agreement", "Cohen's kappa"):
            pairs.add_column(col, justify="left" if col.startswith("annotator") else "right")
        for p in ag["pairwise"]:
            pairs.add_row(p["a"], p["b"], str(p["overlap"]), _f(p["agreement"]),
                          _f(p["kappa"]))
        con.print(pairs)

    marks = stats.get("marks")
    if marks and (marks["total"] or marks["skipped"] or marks["undone"]):
        table = Table(title=f"Attention marks ({', '.join(marks['datasets']) or '–'}; "
                            f"{marks['undone']} undone)")
        table.add_column("annotator", overflow="fold", min_width=10)
        for col in ("kind", "marks", "skips", "s/mark"):
            table.add_column(col, justify="right")
        for name, m in marks["by_annotator"].items():
            table.add_row(name, "synthetic" if m["synthetic"] else "person", str(m["marks"]),
                          str(m["skips"]), _f(m["median_seconds_per_mark"], 1))
        con.print(table)

    gold = stats["gold"]
    if gold["queries"]:
        o = gold["overall"]
        con.print(f"Gold accuracy: {_f(o['accuracy'])} on {o['answers']} answers to "
                  f"{gold['queries_answered']} of {gold['queries']} gold queries "
                  f"({o['skipped']} skipped; {gold['rule']})")
