"""Store statistics: counts, timing, Cohen's kappa, Krippendorff's alpha, gold accuracy, CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from rlhf_hgt.feedback.stats import (
    _coincidences,
    cohen_kappa,
    compute_stats,
    krippendorff_alpha_nominal,
    observed_agreement,
    print_stats,
)
from rlhf_hgt.feedback.store import PreferenceStore, StoreError, TextPair

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- coefficients


def _expand(table: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    a, b = [], []
    for (x, y), n in table.items():
        a += [x] * n
        b += [y] * n
    return a, b


def test_cohen_kappa_textbook_examples():
    # Wikipedia "Cohen's kappa", worked example: 50 proposals, yes/yes 20, yes/no 5,
    # no/yes 10, no/no 15: p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5, kappa = 0.4
    a, b = _expand({("y", "y"): 20, ("y", "n"): 5, ("n", "y"): 10, ("n", "n"): 15})
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    # same observed agreement (0.6), different kappas:
    # 45/15/25/15: p_e = 0.6*0.7 + 0.4*0.3 = 0.54 -> kappa = 0.06/0.46 = 0.1304
    a, b = _expand({("y", "y"): 45, ("y", "n"): 15, ("n", "y"): 25, ("n", "n"): 15})
    assert cohen_kappa(a, b) == pytest.approx(0.06 / 0.46)
    assert round(cohen_kappa(a, b), 4) == 0.1304
    # 25/35/5/35: p_e = 0.6*0.3 + 0.4*0.7 = 0.46 -> kappa = 0.14/0.54 = 0.2593
    a, b = _expand({("y", "y"): 25, ("y", "n"): 35, ("n", "y"): 5, ("n", "n"): 35})
    assert round(cohen_kappa(a, b), 4) == 0.2593


def test_cohen_kappa_edge_cases():
    assert cohen_kappa(["left", "right", "tie"], ["left", "right", "tie"]) == pytest.approx(1.0)
    assert cohen_kappa(["left"] * 4, ["left"] * 4) is None  # no variation: undefined
    assert cohen_kappa([], []) is None
    # systematic disagreement is below chance
    assert cohen_kappa(["left", "right"] * 5, ["right", "left"] * 5) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same number"):
        cohen_kappa(["left"], [])
    with pytest.raises(ValueError, match="not one of"):
        cohen_kappa(["left"], ["up"], ["left", "right", "tie"])


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", example C: nominal
# data, 4 observers, 12 units, missing values; reported alpha = 0.743.
KRIPP_A = [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None]
KRIPP_B = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3]
KRIPP_C = [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None]
KRIPP_D = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]


def test_krippendorff_alpha_textbook_example():
    data = [KRIPP_A, KRIPP_B, KRIPP_C, KRIPP_D]
    assert round(krippendorff_alpha_nominal(data), 3) == 0.743
    # the paper's coincidence matrix: value totals n_c = 9, 13, 10, 5, 3 (n = 40)
    o = _coincidences(data)
    assert o.sum(axis=1).tolist() == pytest.approx([9, 13, 10, 5, 3])
    assert o[0, 0] == pytest.approx(7) and o[0, 1] == pytest.approx(4 / 3)
    assert observed_agreement(data) == pytest.approx(32 / 40)


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha_nominal([["a", "b", "a"], ["a", "b", "a"]]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]) is None  # no variation
    assert krippendorff_alpha_nominal([["a", None], [None, "b"]]) is None  # nothing pairable
    assert krippendorff_alpha_nominal([]) is None
    with pytest.raises(ValueError, match="one entry per unit"):
        krippendorff_alpha_nominal([["a"], ["a", "b"]])
    # with two raters and no missing data, alpha is close to (not equal to) kappa
    a, b = _expand({("y", "y"): 20, ("y", "n"): 5, ("n", "y"): 10, ("n", "n"): 15})
    assert krippendorff_alpha_nominal([a, b]) == pytest.approx(0.4, abs=0.02)


# ----------------------------------------------------------------------------- a known store

ALICE = "L L L L R R R T T L".split()
BOB = "L L L R R R T T L L".split()
GOLD = {0: "left", 1: "left", 2: "right", 3: "left", 7: "tie"}
WORD = {"L": "left", "R": "right", "T": "tie"}


def _segment(r) -> dict:
    return {"obs": np.zeros((2, 1), np.float32), "true_rewards": np.asarray(r, np.float32)}


def _known_store(path: Path) -> list[int]:
    with PreferenceStore(path) as store:
        pairs = [TextPair(f"prompt {i}", f"a{i}", f"b{i}", gold=GOLD.get(i)) for i in range(10)]
        ids = store.add_text_queries(pairs)
        store.add_segment_query(_segment([1, 2]), _segment([0, 0]))
        store.add_segment_query(_segment([3, 2]), _segment([0, 5]))
        for i, qid in enumerate(ids):
            # alice: shown 100, answered after 2, 4, ..., 20 s -> median 11
            store.record_answer(qid, WORD[ALICE[i]], "alice", shown_at=100.0,
                                answered_at=100.0 + 2 * (i + 1), per_query=3)
            if i == 9:  # bob first answers q9 wrongly, undoes it, answers again
                wrong = store.record_answer(qid, "right", "bob", per_query=3)
                store.undo(wrong, "bob")
            store.record_answer(qid, WORD[BOB[i]], "bob",
                                shown_at=50.0 if i < 3 else None, answered_at=51.0 + i,
                                per_query=3)
        store.record_answer(ids[0], "skip", "carol", shown_at=0.0, answered_at=3.0, per_query=3)
    return ids


def test_stats_of_a_known_store(store_at):  # on SQLite and on PostgreSQL
    path = store_at
    _known_store(path)
    s = compute_stats(path)
    json.loads(json.dumps(s, allow_nan=False))  # strict JSON
    assert s["queries"] == {"total": 12, "by_kind": {"text": 10, "segment": 2}, "gold": 5}
    assert s["answers"]["total"] == 21
    assert s["answers"]["by_value"] == {"left": 10, "right": 6, "tie": 4, "skip": 1}
    assert s["answers"]["by_kind"] == {"text": 21, "segment": 0}
    assert s["answers"]["human"] == 21 and s["answers"]["synthetic"] == 0
    assert s["undone"] == 1 and s["answers"]["undone"] == 1
    assert s["pending"] == 2  # the two segment queries (one answer wanted per query)

    alice, bob, carol = (s["annotators"][n] for n in ("alice", "bob", "carol"))
    assert alice["answers"] == 10 and alice["synthetic"] is False
    assert alice["by_value"] == {"left": 5, "right": 3, "tie": 2, "skip": 0}
    assert alice["median_seconds_per_label"] == pytest.approx(11.0)
    assert bob["median_seconds_per_label"] == pytest.approx(2.0)  # 1, 2, 3 s
    assert bob["timed_answers"] == 3
    assert carol["by_value"]["skip"] == 1
    # overall (people): alice 2..20, bob 1, 2, 3, carol 3 -> 14 values, median (6 + 8) / 2
    assert s["timing"]["timed_answers"] == 14
    assert s["timing"]["median_seconds_per_label"] == pytest.approx(7.0)

    ag = s["agreement"]
    # carol only skipped: no preference, so not a rater
    assert ag["annotators"] == ["alice", "bob"] and ag["queries"] == 10
    assert ag["method"] == "cohen_kappa"
    # p_o = 7/10; both marginals L 5, R 3, T 2: p_e = .25 + .09 + .04 = .38
    assert ag["value"] == pytest.approx((0.7 - 0.38) / (1 - 0.38))
    assert ag["cohen_kappa"] == ag["value"]
    assert ag["krippendorff_alpha"] is not None
    assert ag["observed_agreement"] == pytest.approx(0.7)
    assert len(ag["pairwise"]) == 1
    pair = ag["pairwise"][0]
    assert (pair["a"], pair["b"], pair["overlap"]) == ("alice", "bob", 10)
    assert pair["agreement"] == pytest.approx(0.7) and pair["kappa"] == pytest.approx(ag["value"])

    # gold q0 L, q1 L, q2 R, q3 L, q7 T: alice L L L L T -> 4/5; bob L L L R T -> 3/5
    assert alice["gold"] == {"answers": 5, "correct": 4, "skipped": 0, "accuracy": 0.8}
    assert bob["gold"]["accuracy"] == pytest.approx(0.6)
    assert carol["gold"] == {"answers": 0, "correct": 0, "skipped": 1, "accuracy": None}
    assert s["gold"]["overall"] == {"answers": 10, "correct": 7, "skipped": 1, "accuracy": 0.7}
    assert s["gold"]["queries_answered"] == 5


def test_three_annotators_use_krippendorff_alpha(store_at):  # on SQLite and on PostgreSQL
    path = store_at
    rows = {  # query -> answers of r1, r2, r3 (None: not answered)
        0: ("left", "left", "left"),
        1: ("right", "right", "right"),
        2: ("left", "left", "right"),
        3: ("tie", "left", None),
    }
    with PreferenceStore(path) as store:
        ids = store.add_text_queries([TextPair(f"p{i}", "x", f"y{i}") for i in rows])
        for qid, answers in zip(ids, rows.values(), strict=True):
            for rater, answer in zip(("r1", "r2", "r3"), answers, strict=True):
                if answer:
                    store.record_answer(qid, answer, rater, synthetic=rater == "r3",
                                        per_query=3)
    s = compute_stats(path, min_overlap=4)
    ag = s["agreement"]
    assert ag["method"] == "krippendorff_alpha" and ag["annotators"] == ["r1", "r2", "r3"]
    # coincidences: LL 3+1, RR 3, LR = RL 1, LT = TL 1 -> n_L 6, n_R 4, n_T 1, n 11
    # alpha = 1 - (n - 1) * 4 / (121 - 36 - 16 - 1) = 1 - 40/68
    assert ag["value"] == pytest.approx(1 - 40 / 68)
    assert ag["observed_agreement"] == pytest.approx(7 / 11)
    assert ag["cohen_kappa"] is None
    # only r1-r2 share 4 queries: r1 L R L T, r2 L R L L -> p_o 3/4, p_e 7/16, kappa 5/9
    assert [(p["a"], p["b"]) for p in ag["pairwise"]] == [("r1", "r2")]
    assert ag["pairwise"][0]["kappa"] == pytest.approx(5 / 9)
    assert compute_stats(path)["agreement"]["pairwise"] == []  # default needs 5 shared
    assert s["annotators"]["r3"]["synthetic"] is True
    assert s["answers"]["synthetic"] == 3 and s["timing"]["timed_answers"] == 0


def test_stats_of_an_empty_store_and_printing(tmp_path):
    path = tmp_path / "prefs.db"
    PreferenceStore(path).close()
    s = compute_stats(path)
    assert s["queries"]["total"] == 0 and s["answers"]["total"] == 0 and s["pending"] == 0
    assert s["agreement"]["method"] is None and s["agreement"]["value"] is None
    assert s["gold"]["overall"]["accuracy"] is None
    out = io.StringIO()
    print_stats(s, Console(file=out, width=120))
    assert "no query was answered" in out.getvalue()

    _known_store(tmp_path / "known.db")
    out = io.StringIO()
    print_stats(compute_stats(tmp_path / "known.db"), Console(file=out, width=140))
    text = out.getvalue()
    for fragment in ("Annotators", "alice", "Cohen's kappa = 0.516", "Gold accuracy: 0.700"):
        assert fragment in text


def test_compute_stats_does_not_create_a_missing_store(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        compute_stats(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


# ----------------------------------------------------------------------------- the CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_stats_json_and_tables(tmp_path):
    path = tmp_path / "prefs.db"
    _known_store(path)
    res = _cli("feedback", "stats", str(path), "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["answers"]["by_value"] == {"left": 10, "right": 6, "tie": 4, "skip": 1}
    assert s["agreement"]["value"] == pytest.approx(0.32 / 0.62)
    res = _cli("feedback", "stats", str(path))
    assert res.returncode == 0, res.stderr
    assert "alice" in res.stdout and "Traceback" not in res.stderr


def test_cli_stats_on_a_missing_or_foreign_store_exits_2(tmp_path):
    res = _cli("feedback", "stats", str(tmp_path / "missing.db"), "--json")
    assert res.returncode == 2
    assert "no such store" in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n")
    res = _cli("feedback", "stats", str(junk))
    assert res.returncode == 2 and "not a preference store" in res.stderr
