"""Attention marks: storage (append-only, undo, skips, annotators, schema migration), grids
to pixel masks, the synthetic marker, and the marking prompt driven through a real pty."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pexpect
import pytest

from rlhf_hgt.feedback import store as store_mod
from rlhf_hgt.feedback.errors import UserInputError
from rlhf_hgt.feedback.mark_terminal import (
    MarkOptions,
    cell_picture,
    default_grid,
    fit_cells,
    overlay,
    prepare_images,
    run_marking,
)
from rlhf_hgt.feedback.marks import (
    SYNTHETIC_INTERFACE,
    SYNTHETIC_MARKER,
    cell_coverage,
    cell_edges,
    cell_name,
    list_marks,
    load_marks,
    marks_to_masks,
    mask_to_cells,
    parse_cell,
    parse_cells,
    pending_images,
    record_mark,
    synthetic_marks,
    undo_mark,
)
from rlhf_hgt.feedback.stats import compute_stats, print_stats
from rlhf_hgt.feedback.store import SCHEMA_VERSION, PreferenceStore, StoreError, TextPair

TIMEOUT = 10


@pytest.fixture
def store(tmp_path):
    s = PreferenceStore(tmp_path / "s.db")
    yield s
    s.close()


def grid_of(cells, shape=(7, 7)) -> np.ndarray:
    g = np.zeros(shape, dtype=bool)
    for r, c in cells:
        g[r, c] = True
    return g


# ----------------------------------------------------------------------------- storage


def test_round_trip_with_provenance_after_reopening(tmp_path):
    path = tmp_path / "s.db"
    with PreferenceStore(path) as st:
        mid = record_mark(st, "ds", 3, 7, ["B3", (2, 2)], "alice", 10.0, 12.5,
                          image_hash="abc")
    got = load_marks(path, "ds")
    assert list(got) == [3] and np.array_equal(got[3], grid_of([(2, 1), (2, 2)]))
    (m,) = list_marks(path, "ds")
    assert (m.id, m.annotator, m.synthetic, m.skipped) == (mid, "alice", False, False)
    assert (m.shown_at, m.answered_at, m.seconds, m.interface) == (10.0, 12.5, 2.5, "api/1")
    assert m.cells == ((2, 1), (2, 2)) and m.grid == (7, 7) and m.image_hash == "abc"
    assert load_marks(path, "other") == {}


def test_remark_supersedes_and_undo_restores_the_previous_mark(store):
    first = record_mark(store, "ds", 0, 7, [(0, 0)], "alice", 1.0, 2.0)
    second = record_mark(store, "ds", 0, 7, [(1, 1)], "alice", 3.0, 4.0)
    assert np.array_equal(load_marks(store, "ds")[0], grid_of([(1, 1)]))
    undo_mark(store, second, "alice")
    assert np.array_equal(load_marks(store, "ds")[0], grid_of([(0, 0)]))
    undo_mark(store, first, "alice")
    assert load_marks(store, "ds") == {} and pending_images(store, "ds", 2, "alice") == [0, 1]
    # append-only: two marks and two undo rows, nothing changed or removed
    kinds = store.conn.execute("SELECT kind, undoes FROM marks ORDER BY id").fetchall()
    assert kinds == [("mark", None), ("mark", None), ("undo", second), ("undo", first)]
    assert len(list_marks(store, "ds", include_undone=True)) == 2
    with pytest.raises(StoreError, match="already undone"):
        undo_mark(store, first)
    with pytest.raises(StoreError, match="no mark with id"):
        undo_mark(store, 99)


def test_skips_and_empty_marks_are_left_out_but_count_as_done(store):
    record_mark(store, "ds", 0, 4, [], "alice", None, None, skipped=True)
    record_mark(store, "ds", 1, 4, [], "alice")  # a mark with no cell says nothing
    record_mark(store, "ds", 2, 4, [(0, 0)], "alice")
    record_mark(store, "ds", 2, 4, [], "alice", skipped=True)  # skipped on second thought
    assert load_marks(store, "ds") == {}
    assert pending_images(store, "ds", 4, "alice") == [3]
    with pytest.raises(UserInputError, match="a skip has no cells"):
        record_mark(store, "ds", 0, 4, [(0, 0)], "alice", skipped=True)


def test_annotators_union_latest_and_filter(store):
    record_mark(store, "ds", 0, 4, ["A1"], "alice")
    record_mark(store, "ds", 0, 4, ["B2"], "bob")
    record_mark(store, "ds", 1, 4, ["D4"], "bob")
    union = load_marks(store, "ds")
    assert np.array_equal(union[0], grid_of([(0, 0), (1, 1)], (4, 4)))
    assert np.array_equal(load_marks(store, "ds", combine="latest")[0],
                          grid_of([(1, 1)], (4, 4)))
    alice = load_marks(store, "ds", annotator="alice")
    assert list(alice) == [0] and np.array_equal(alice[0], grid_of([(0, 0)], (4, 4)))
    assert pending_images(store, "ds", 3, "alice") == [1, 2]
    assert pending_images(store, "ds", 3, "bob") == [2]
    # a finer grid from another annotator is resampled by cell centres onto the newest one
    record_mark(store, "ds", 0, 2, [(1, 1)], "carol")  # the lower right quarter
    got = load_marks(store, "ds")[0]
    assert got.shape == (2, 2) and got.tolist() == [[True, False], [False, True]]
    with pytest.raises(UserInputError, match="combine"):
        load_marks(store, "ds", combine="vote")


def test_bad_marks_are_refused(store):
    for cells, match in [([(7, 0)], "outside"), (["H1"], "outside"), (["3B"], "not a cell"),
                         ([(1,)], "a cell is")]:
        with pytest.raises(UserInputError, match=match):
            record_mark(store, "ds", 0, 7, cells, "alice")
    with pytest.raises(UserInputError, match="annotator"):
        record_mark(store, "ds", 0, 7, [], " ")
    with pytest.raises(UserInputError, match="index"):
        record_mark(store, "ds", -1, 7, [], "alice")
    with pytest.raises(UserInputError, match="grid"):
        record_mark(store, "ds", 0, 0, [], "alice")
    assert store.conn.execute("SELECT COUNT(*) FROM marks").fetchone()[0] == 0


def test_a_retried_token_is_saved_once(store):
    a = record_mark(store, "ds", 0, 4, ["A1"], "alice", token="t1")
    assert record_mark(store, "ds", 0, 4, ["A1"], "alice", token="t1") == a
    assert len(list_marks(store, include_undone=True)) == 1


def test_a_schema_1_store_is_migrated_on_open_and_keeps_its_answers(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(store_mod._SCHEMA)  # the tables of schema 1, as an old rlhf_hgt made them
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("app", store_mod.APP_ID),
                                                       ("schema_version", "1")])
    con.commit()
    con.close()
    with PreferenceStore(path) as st:
        assert st.get_setting("schema_version") == str(SCHEMA_VERSION) == "3"
        qid = st.add_text_queries([TextPair("p", "a", "b")])[0]
        st.record_answer(qid, "left", "alice")
        record_mark(st, "ds", 0, 4, ["A1"], "alice")
    with PreferenceStore(path) as st:
        assert len(st.answers()) == 1 and len(list_marks(st)) == 1
        assert st.integrity_check() == "ok"


# ----------------------------------------------------------------------------- cells and masks


def test_cell_names():
    assert [cell_name(0, 0), cell_name(2, 1), cell_name(0, 26)] == ["A1", "B3", "AA1"]
    assert parse_cell("b3", 7) == (2, 1) and parse_cell("AA1", (1, 27)) == (0, 26)
    assert parse_cells("A1, c2 B1-C2", 4) == [(0, 0), (1, 2), (0, 1), (0, 2), (1, 1), (1, 2)]
    with pytest.raises(UserInputError, match="Z9 x"):
        parse_cells("A1 Z9 x", 4)


def test_cell_edges_divisible_and_not():
    assert cell_edges(28, 7).tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    assert cell_edges(28, 8).tolist() == [0, 4, 7, 11, 14, 18, 21, 25, 28]  # halves round up
    assert cell_edges(10, 3).tolist() == [0, 3, 7, 10]
    with pytest.raises(UserInputError, match="at least one pixel"):
        cell_edges(4, 5)


def test_marks_to_masks_divisible_grid():
    mask, has = marks_to_masks({1: grid_of([(0, 0), (6, 6)])}, (28, 28), 3)
    assert mask.shape == (3, 28, 28) and mask.dtype == np.float32
    assert has.tolist() == [False, True, False] and mask[[0, 2]].sum() == 0
    want = np.zeros((28, 28), np.float32)
    want[:4, :4] = want[24:, 24:] = 1
    assert np.array_equal(mask[1], want)


def test_marks_to_masks_grid_that_does_not_divide():
    # 10 rows in 3 cells: rows 0-2, 3-6, 7-9; 7 columns in 2 cells: 0-3, 4-6 (3.5 rounds up)
    mask, has = marks_to_masks({0: grid_of([(1, 1)], (3, 2))}, (10, 7), 1)
    want = np.zeros((10, 7), np.float32)
    want[3:7, 4:7] = 1
    assert has.tolist() == [True] and np.array_equal(mask[0], want)
    with pytest.raises(UserInputError, match="other data"):
        marks_to_masks({5: grid_of([(0, 0)])}, (28, 28), 5)


def test_store_to_masks_end_to_end(store):
    record_mark(store, "ds", 1, 7, ["A1"], "alice")
    mask, has = marks_to_masks(load_marks(store, "ds"), (28, 28), 2)
    assert has.tolist() == [False, True] and mask[1].sum() == 16 and mask[1, :4, :4].all()


# ----------------------------------------------------------------------------- synthetic marker


def test_synthetic_marker_without_noise_follows_the_half_cover_rule(store):
    masks = np.zeros((2, 8, 8))
    masks[0, :4, :4] = 1          # cell A1 (4x4) fully covered
    masks[0, 4:6, 4:8] = 1        # cell B2 exactly half covered: marked
    masks[0, 0:1, 4:8] = 1        # cell B1 a quarter covered: not marked
    masks[1, 4:8, 0:4] = 0.5      # a graded map: mean 0.5 counts as half covered
    n = synthetic_marks(store, "ds", masks, 2)
    assert n == 2
    got = load_marks(store, "ds")
    assert got[0].tolist() == [[True, False], [False, True]]
    assert got[1].tolist() == [[False, False], [True, False]]
    for i in (0, 1):
        assert np.array_equal(got[i], mask_to_cells(masks[i], 2))
    assert cell_coverage(masks[0], 2).tolist() == [[1.0, 0.25], [0.0, 0.5]]
    m = list_marks(store, "ds")[0]
    assert (m.annotator, m.synthetic, m.interface) == (SYNTHETIC_MARKER, True,
                                                       SYNTHETIC_INTERFACE)
    (event,) = store.events("synthetic_marks")
    assert event["data"]["noise"] == 0.0 and event["data"]["grid"] == [2, 2]


def test_synthetic_marker_noise_flips_the_expected_share(store):
    rng = np.random.default_rng(1)
    masks = (rng.random((100, 28, 28)) < 0.5).astype(float)
    clean = np.stack([mask_to_cells(m, 7) for m in masks])
    synthetic_marks(store, "ds", masks, 7, noise=0.2, seed=3, annotator="noisy")
    got = load_marks(store, "ds", annotator="noisy")
    marked = np.stack([got.get(i, np.zeros((7, 7), bool)) for i in range(100)])
    assert abs((marked != clean).mean() - 0.2) < 0.03
    # the same seed gives the same marks; indices pick images
    synthetic_marks(store, "ds", masks, 7, noise=0.2, seed=3, annotator="again",
                    indices=range(100))
    again = load_marks(store, "ds", annotator="again")
    assert all(np.array_equal(again[i], got[i]) for i in got)
    assert synthetic_marks(store, "ds", masks, 7, indices=[5, 7], annotator="two") == 2
    assert sorted(load_marks(store, "ds", annotator="two")) == [5, 7]
    with pytest.raises(UserInputError, match="noise"):
        synthetic_marks(store, "ds", masks, 7, noise=1.5)
    with pytest.raises(UserInputError, match=r"\(N, H, W\)"):
        synthetic_marks(store, "ds", masks[0], 7)


def test_stats_count_marks(store):
    store.add_text_queries([TextPair("p", "a", "b")])
    record_mark(store, "ds", 0, 4, ["A1"], "alice", 1.0, 3.0)
    record_mark(store, "ds", 1, 4, [], "alice", 1.0, 2.0, skipped=True)
    undo_mark(store, record_mark(store, "ds", 2, 4, ["A1"], "alice"))
    synthetic_marks(store, "ds", np.ones((2, 8, 8)), 4)
    s = compute_stats(store)["marks"]
    assert (s["total"], s["skipped"], s["undone"], s["datasets"]) == (3, 1, 1, ["ds"])
    assert s["by_annotator"]["alice"]["median_seconds_per_mark"] == 1.5
    assert s["by_annotator"][SYNTHETIC_MARKER]["synthetic"] is True
    from rich.console import Console

    out = io.StringIO()
    print_stats(compute_stats(store), Console(file=out, width=120))
    assert "Attention marks" in out.getvalue()


# ----------------------------------------------------------------------------- prompt pieces


def test_options_and_images_are_checked(tmp_path):
    assert MarkOptions(annotator="a").grid is None
    assert [default_grid(28, 28), default_grid(8, 8), default_grid(224, 200),
            default_grid(3, 40)] == [7, 4, 14, 3]
    for kw, match in [({"limit": 0}, "--limit"), ({"grid": 1}, "--grid"),
                      ({"annotator": ""}, "--annotator")]:
        with pytest.raises(UserInputError, match=match):
            MarkOptions(**{"annotator": "a", **kw})
    assert prepare_images(np.zeros((2, 5, 6))).shape == (2, 5, 6, 3)
    assert prepare_images(np.ones((2, 1, 5, 6)))[0, 0, 0].tolist() == [255, 255, 255]
    assert prepare_images(np.zeros((2, 3, 5, 6), np.uint8)).shape == (2, 5, 6, 3)
    for bad, match in [(np.zeros((0, 5, 5)), "no images"), (np.zeros((5, 5)), "shape"),
                       (np.zeros((2, 4, 5, 5)), "shape"), (np.array([["a"]] * 3), "numbers")]:
        with pytest.raises(UserInputError, match=match):
            run_marking(tmp_path / "s.db", bad, "ds", MarkOptions(annotator="a"))
    with pytest.raises(UserInputError, match="finer"):
        run_marking(tmp_path / "s.db", np.zeros((2, 5, 5)), "ds",
                    MarkOptions(annotator="a", grid=6))
    assert not (tmp_path / "s.db").exists()  # nothing written on bad input


def test_picture_cells_line_up_with_the_grid():
    img = np.zeros((10, 7, 3), np.uint8)
    img[3:7, 4:7] = 200  # exactly cell (1, 1) of a 3x2 grid (see cell_edges)
    pic = cell_picture(img, (3, 2), 4, 3)
    assert pic.shape == (12, 6, 3)
    assert (pic[4:8, 3:6] == 200).all() and pic.sum() == 200 * 3 * 4 * 3
    assert fit_cells((7, 7), 28, 28, 160, 40, 2) == (8, 8)
    assert fit_cells((7, 7), 28, 28, 160, 10, 2) is None
    shown = overlay(pic, (3, 2), 4, 3, {(0, 0)}, (2, 1))
    assert shown[9, 3].tolist() == [255, 230, 0]  # the cursor frame
    assert shown[1, 1, 0] > 100 and shown[1, 1, 2] == 0  # the marked cell's tint


# ----------------------------------------------------------------------------- the prompt in a pty

SCRIPT = r"""
import sys
import numpy as np
from rlhf_hgt.feedback.mark_terminal import MarkOptions, run_marking
n, limit = int(sys.argv[2]), sys.argv[4]
x = np.zeros((n, 28, 28))
for i in range(n):
    x[i, 4 + i:20, 8:18] = 1.0
opts = MarkOptions(annotator=sys.argv[3], limit=int(limit) if limit else None)
sys.exit(run_marking(sys.argv[1], x, "toy", opts))
"""


def spawn(store: Path, n: int = 4, annotator: str = "alice", limit: int | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(OMP_NUM_THREADS="1", TERM="xterm-256color")
    child = pexpect.spawn(sys.executable, ["-c", SCRIPT, str(store), str(n), annotator,
                                           str(limit or "")],
                          env=env, dimensions=(40, 120), encoding="utf-8", timeout=TIMEOUT)
    child.logfile_read = io.StringIO()
    return child


def finish(child) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus


def cells_of(path: Path, annotator: str = "alice") -> dict[int, list[str]]:
    return {i: [cell_name(r, c) for r, c in zip(*np.nonzero(g), strict=True)]
            for i, g in load_marks(path, "toy", annotator=annotator).items()}


def test_prompt_marks_undoes_skips_quits_and_resumes(tmp_path):
    path = tmp_path / "s.db"
    child = spawn(path)
    child.expect_exact("left: 4")
    child.expect_exact("cursor D4")  # the cursor starts in the middle of the 7x7 grid
    child.send("\r")  # nothing marked yet: not saved
    child.expect_exact("nothing marked")
    child.send(" ")            # D4
    child.expect_exact("marked (1)")
    child.send("\x1b[C")       # right arrow: E4
    child.expect_exact("cursor E4")
    child.send(" ")
    child.expect_exact("marked (2)")
    child.send("k")            # up: E3
    child.expect_exact("cursor E3")
    child.send(" ")
    child.expect_exact("marked (3)")
    child.send("u")            # undo the last toggle
    child.expect_exact("marked (2)")
    child.send("\r")
    child.expect_exact("left: 3")
    child.send("s")            # skip image 1
    child.expect_exact("left: 2")
    child.send("c")
    child.expect_exact("nothing to clear")
    child.send("?")
    child.expect_exact("Mark where the evidence is")
    child.send("x")            # any key leaves the help
    child.expect_exact("left: 2")
    child.send("q")
    assert finish(child) == 0
    out = child.logfile_read.getvalue()
    assert "2 images marked or skipped by alice" in out and out.endswith(
        "Run the same command again to go on.\r\n")
    assert "\x1b[?1049l" in out  # the alternate screen was left
    assert cells_of(path) == {0: ["D4", "E4"]}
    marks = list_marks(path, "toy")
    assert [(m.image, m.skipped) for m in marks] == [(0, False), (1, True)]
    assert all(m.interface == "terminal-marks/1" and not m.synthetic and m.image_hash
               and 0 <= m.seconds < TIMEOUT for m in marks)
    assert pending_images(path, "toy", 4, "alice") == [2, 3]

    # resume: only images 2 and 3 are left; cells typed by name
    child = spawn(path)
    child.expect_exact("image 2 · left: 2")
    child.send(":")
    child.expect_exact("cells to mark or unmark")
    child.send("B2-C3 G7\r")
    child.expect_exact("cursor G7")  # the cursor goes to the last cell typed
    child.expect_exact("marked (5)")
    child.send("\r")
    child.expect_exact("image 3 · left: 1")
    child.send(":")
    child.expect_exact("cells to mark or unmark")
    child.send("Z1\r")
    child.expect_exact("not a cell of the grid: Z1")
    child.send(" ")
    child.send("\r")
    assert finish(child) == 0
    assert "All done" in child.logfile_read.getvalue()
    got = cells_of(path)
    assert got[2] == ["B2", "C2", "B3", "C3", "G7"] and got[3] == ["G7"]
    stops = [e for e in PreferenceStore(path, create=False).events("session_stop")]
    assert [e["data"]["reason"] for e in stops] == ["quit", "done"]

    child = spawn(path)  # nothing left for alice; another annotator still has all 4
    assert finish(child) == 0 and "Nothing to mark" in child.logfile_read.getvalue()
    assert pending_images(path, "toy", 4, "bob") == [0, 1, 2, 3]


def test_prompt_undo_after_saving_shows_the_image_again(tmp_path):
    path = tmp_path / "s.db"
    child = spawn(path, n=3, limit=2)
    child.expect_exact("left: 3")
    child.send(" ")
    child.expect_exact("marked (1)")
    child.send("\r")
    child.expect_exact("left: 2")
    child.send("u")  # no change on image 1: takes back the saved mark of image 0
    child.expect_exact("image 0 · left: 3")
    child.expect_exact("marked (1)")
    child.expect_exact("undone: your mark of image 0")
    child.send("l")
    child.send(" ")
    child.expect_exact("marked (2)")
    child.send("\r")
    child.expect_exact("image 1 · left: 2")
    child.send("s")  # the second image given: --limit 2 stops here
    assert finish(child) == 0
    assert "Stopped after --limit 2" in child.logfile_read.getvalue()
    assert cells_of(path) == {0: ["D4", "E4"]}
    rows = sqlite3.connect(path).execute("SELECT image, kind FROM marks ORDER BY id").fetchall()
    assert rows == [(0, "mark"), (0, "undo"), (0, "mark"), (1, "skip")]


def test_prompt_ctrl_c_keeps_saved_marks_and_restores_the_terminal(tmp_path):
    path = tmp_path / "s.db"
    child = spawn(path)
    child.expect_exact("left: 4")
    child.send(" ")
    child.send("\r")
    child.expect_exact("left: 3")
    child.send(" ")  # marked on screen, not saved
    child.expect_exact("marked (1)")
    child.kill(signal.SIGINT)
    assert finish(child) == 130
    out = child.logfile_read.getvalue()
    assert "Stopped (interrupt)" in out and "\x1b[?1049l" in out
    assert cells_of(path) == {0: ["D4"]} and pending_images(path, "toy", 4, "alice") == [1, 2, 3]


def test_prompt_needs_a_terminal(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "s.db"), "2", "a", ""],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode != 0 and "not one (a pipe or a file)" in proc.stderr
    assert not (tmp_path / "s.db").exists()
