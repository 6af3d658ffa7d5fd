"""The terminal labelling prompt, driven like a person would: through a real pseudo-terminal.

Every session test spawns ``python -m rlhf_hgt.cli label STORE`` in a 40x160 pty, waits
for a marker the screen prints ("left: N" or the query header) and only then sends a key.
"""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pexpect
import pytest
from PIL import Image

from rlhf_hgt.feedback.render import (
    SPARK_CHARS,
    build_segment_view,
    fit_frames,
    halfblock_lines,
    sanitize,
    sparkline,
    step_features,
)
from rlhf_hgt.feedback.store import PreferenceStore, TextPair

TIMEOUT = 10
HEADER = re.compile(r"query (\d+) · (text|segment)")


# ----------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(OMP_NUM_THREADS="1", TERM="xterm-256color")
    return env


def spawn(store: Path, *extra: str, annotator: str = "alice") -> pexpect.spawn:
    child = pexpect.spawn(sys.executable,
                          ["-m", "rlhf_hgt.cli", "label", str(store), "--annotator", annotator,
                           *extra],
                          env=_env(), dimensions=(40, 160), encoding="utf-8", timeout=TIMEOUT)
    child.logfile_read = io.StringIO()
    return child


def label(store: Path, keys: str, left: int, *extra: str,
          annotator: str = "alice") -> pexpect.spawn:
    """Spawn the prompt and answer like a person: before each key, wait until the screen says
    "left: N", N counting down from ``left``."""
    child = spawn(store, *extra, annotator=annotator)
    for i, key in enumerate(keys):
        child.expect_exact(f"left: {left - i}")
        child.send(key)
    return child


def run_plain(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", *args], env=_env(),
                          capture_output=True, text=True, timeout=60, **kw)


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus


def text_store(path: Path, n: int) -> list[int]:
    with PreferenceStore(path) as store:
        return store.add_text_queries(
            [TextPair(f"prompt number {i}", f"answer a{i} " * (i + 1), f"answer b{i}",
                      gold="left") for i in range(n)])


def segment(rng: np.random.Generator, frames: bool, steps: int = 6) -> dict[str, np.ndarray]:
    side = {"obs": rng.normal(size=(steps, 3)).astype(np.float32),
            "actions": rng.integers(0, 2, size=steps),
            "true_rewards": rng.normal(size=steps)}
    if frames:
        side["frames"] = rng.integers(0, 256, size=(steps, 16, 16, 3), dtype=np.uint8)
    return side


def claims(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM claims").fetchall()


def read_store(path: Path):
    store = PreferenceStore(path, create=False)
    try:
        return store.answers(), store.answers(include_undone=True), store.events()
    finally:
        store.close()


def shown_ids(output: str) -> list[int]:
    ids: list[int] = []
    for m in HEADER.finditer(output):
        if not ids or ids[-1] != int(m.group(1)):
            ids.append(int(m.group(1)))
    return ids


# ----------------------------------------------------------------------------- sessions


def test_keys_in_answers_and_timings_out(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    ids = text_store(path, 3)
    child = label(path, "12t", left=3)
    assert finish(child) == 0
    out = child.logfile_read.getvalue()
    assert "All done" in out
    assert "prompt number 0" in out and "answer b2" in out

    answers, _, events = read_store(path)
    assert [(a.query_id, a.answer) for a in answers] == list(zip(ids, ["left", "right", "tie"],
                                                                 strict=True))
    for a in answers:
        assert a.annotator == "alice" and not a.synthetic
        assert a.interface == "terminal/1"
        assert a.shown_at is not None and a.shown_at <= a.answered_at
    kinds = [e["kind"] for e in events]
    assert kinds == ["session_start", "session_stop"]
    assert events[1]["data"]["reason"] == "done" and events[1]["data"]["answers"] == 3
    assert claims(path) == []


def test_undo_then_reanswer_with_rationale(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    q1, q2 = text_store(path, 2)
    child = label(path, "1u", left=2)
    child.expect_exact("left: 2")  # the undone pair is pending again ...
    child.expect_exact("undone")  # ... and back on screen
    child.send("r")
    child.expect_exact("rationale for this pair")
    child.sendline("the second one rambles")
    child.expect_exact("rationale: the second one rambles")
    child.send("2")
    child.expect(HEADER)
    assert child.match.group(1) == str(q2)
    child.send("q")
    assert finish(child) == 0

    active, every, events = read_store(path)
    assert [(a.query_id, a.answer, a.rationale) for a in every] == [
        (q1, "left", None), (q1, "right", "the second one rambles")]
    assert [(a.query_id, a.answer) for a in active] == [(q1, "right")]
    undos = [e for e in events if e["kind"] == "undo"]
    assert len(undos) == 1 and undos[0]["answer_id"] == every[0].id
    assert undos[0]["annotator"] == "alice"
    assert claims(path) == []


def test_quit_then_resume_shows_only_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    ids = text_store(path, 4)
    child = label(path, "1sq", left=4)
    assert finish(child) == 0
    assert claims(path) == []  # the prefetched next pair is given back

    child = label(path, "22", left=2)
    assert finish(child) == 0
    second = child.logfile_read.getvalue()
    assert shown_ids(second) == ids[2:]

    answers, _, events = read_store(path)
    assert [(a.query_id, a.answer) for a in answers] == list(
        zip(ids, ["left", "skip", "right", "right"], strict=True))
    assert [e["kind"] for e in events].count("session_start") == 2
    assert [e["data"]["reason"] for e in events if e["kind"] == "session_stop"] == [
        "quit", "done"]

    child = spawn(path)  # nothing left: say so and exit 0
    child.expect_exact("Nothing to label")
    assert finish(child) == 0


def test_segments_with_and_without_frames(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    rng = np.random.default_rng(0)
    with PreferenceStore(path) as store:
        with_frames = store.add_segment_query(segment(rng, True), segment(rng, True),
                                              env_id="Toy-v0", left_source="policy-a",
                                              right_source="policy-b")
        without = store.add_segment_query(segment(rng, False), segment(rng, False),
                                          env_id="Toy-v0")
    child = spawn(path)
    child.expect_exact("left: 2")
    child.expect_exact("left gif: ")
    child.send("p")  # replay
    child.expect_exact("▀")
    child.send("1")
    child.expect_exact("left: 1")
    child.expect_exact("no frames stored")
    child.send("2")
    assert finish(child) == 0
    out = child.logfile_read.getvalue()
    assert "▀" in out and "\x1b[38;2;" in out and "obs[0]" in out and "action" in out
    assert "reward" not in out.lower()  # hidden truth never reaches the screen
    assert "policy-a" not in out  # nor which policy made which side

    gifs = sorted((tmp_path / "gifs").glob("*.gif"))
    assert len(gifs) == 2
    assert gifs[0].name.endswith("-left.gif") and gifs[1].name.endswith("-right.gif")
    for g in gifs:
        assert str(g) in out.replace("\r\n", "")
        with Image.open(g) as im:
            assert im.n_frames == 6
    answers, _, _ = read_store(path)
    assert [(a.query_id, a.answer) for a in answers] == [(with_frames, "left"),
                                                          (without, "right")]


def test_no_animation_and_gif_dir_flags(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    rng = np.random.default_rng(1)
    with PreferenceStore(path) as store:
        store.add_segment_query(segment(rng, True), segment(rng, True))
    gif_dir = tmp_path / "elsewhere"
    child = spawn(path, "--no-animation", "--gif-dir", str(gif_dir))
    child.expect_exact("left: 1")
    child.expect_exact("obs[2]")
    child.send("t")
    assert finish(child) == 0
    assert "▀" not in child.logfile_read.getvalue()
    assert len(list(gif_dir.glob("*.gif"))) == 2


def test_ctrl_c_keeps_every_acknowledged_answer(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    ids = text_store(path, 4)
    child = label(path, "12", left=4)
    child.expect_exact("left: 2")
    child.sendintr()
    child.expect(pexpect.EOF)
    attrs = termios.tcgetattr(child.child_fd)  # the pty's mode after the program left
    child.close()
    assert child.exitstatus == 130
    assert attrs[3] & termios.ECHO and attrs[3] & termios.ICANON  # terminal mode restored
    out = child.logfile_read.getvalue()
    assert "\x1b[?25h" in out and "\x1b[?1049l" in out  # cursor back, main screen back
    assert "Traceback" not in out

    answers, _, events = read_store(path)
    assert [(a.query_id, a.answer) for a in answers] == [(ids[0], "left"), (ids[1], "right")]
    assert events[-1]["kind"] == "session_stop" and events[-1]["data"]["reason"] == "interrupt"
    assert claims(path) == []


@pytest.mark.parametrize("how", ["sigterm", "close-terminal"])
def test_sigterm_and_closed_terminal_lose_nothing(tmp_path: Path, how: str) -> None:
    path = tmp_path / "s.db"
    ids = text_store(path, 3)
    child = label(path, "t", left=3)
    child.expect_exact("left: 2")
    if how == "sigterm":
        child.kill(signal.SIGTERM)
        assert finish(child) == 128 + signal.SIGTERM
    else:
        child.close(force=True)  # the kernel sends SIGHUP, as when a window is closed
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        _, _, events = read_store(path)
        if events and events[-1]["kind"] == "session_stop":
            break
        time.sleep(0.1)
    answers, _, events = read_store(path)
    assert [(a.query_id, a.answer) for a in answers] == [(ids[0], "tie")]
    assert events[-1]["kind"] == "session_stop"
    assert events[-1]["data"]["reason"] == ("terminated" if how == "sigterm" else "hangup")
    assert claims(path) == []


def test_limit_stops_after_n_answers(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    text_store(path, 3)
    child = label(path, "2", 3, "--limit", "1")
    assert finish(child) == 0
    assert "--limit 1" in child.logfile_read.getvalue()
    answers, _, _ = read_store(path)
    assert len(answers) == 1
    assert claims(path) == []


def test_two_labellers_never_see_the_same_pair(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    ids = text_store(path, 4)
    alice = spawn(path, annotator="alice")
    alice.expect(HEADER)
    time.sleep(0.3)  # let alice's prefetch claim her next pair
    bob = spawn(path, annotator="bob")
    bob.expect(HEADER)
    seen: dict[str, list[int]] = {"alice": [int(alice.match.group(1))],
                                  "bob": [int(bob.match.group(1))]}
    live = {"alice": alice, "bob": bob}
    while live:
        for name, child in list(live.items()):
            child.send("1")
            if child.expect([HEADER, pexpect.EOF]) == 1:
                child.close()
                assert child.exitstatus == 0
                del live[name]
            else:
                seen[name].append(int(child.match.group(1)))
    assert not set(seen["alice"]) & set(seen["bob"])
    answers, _, _ = read_store(path)
    assert sorted(a.query_id for a in answers) == ids
    assert {a.annotator for a in answers} == {"alice", "bob"}


def test_resize_redraws(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    text_store(path, 2)
    child = spawn(path)
    child.expect_exact("left: 2")
    child.setwinsize(30, 100)
    child.expect_exact("left: 2")  # drawn again for the new size
    child.send("1")
    child.expect_exact("left: 1")
    child.send("q")
    assert finish(child) == 0


def test_stdin_not_a_terminal_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    text_store(path, 1)
    res = run_plain("label", str(path), "--annotator", "alice", stdin=subprocess.DEVNULL)
    assert res.returncode == 2
    assert "terminal" in res.stderr and "stdin" in res.stderr
    assert "Traceback" not in res.stderr
    assert read_store(path)[0] == []


def test_missing_store_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    res = run_plain("label", str(path), "--annotator", "alice", stdin=subprocess.DEVNULL)
    assert res.returncode == 2
    assert "no such store" in res.stderr and "Traceback" not in res.stderr
    assert not path.exists()


# ----------------------------------------------------------------------------- pure drawing


def _parse_halfblocks(lines: list[str], width: int) -> np.ndarray:
    """Decode ANSI half-block lines back into pixels (lower pixel -1 where no background)."""
    out = np.full((2 * len(lines), width, 3), -1)
    token = re.compile(r"\x1b\[([0-9;]*)m|(▀)")
    for y, line in enumerate(lines):
        fg = bg = None
        x = 0
        for m in token.finditer(line):
            if m.group(2):
                out[2 * y, x] = fg
                if bg is not None:
                    out[2 * y + 1, x] = bg
                x += 1
                continue
            p = [int(v) for v in m.group(1).split(";") if v]
            i = 0
            while i < len(p):
                if p[i] in (38, 48):
                    if p[i] == 38:
                        fg = p[i + 2:i + 5]
                    else:
                        bg = p[i + 2:i + 5]
                    i += 5
                else:
                    if p[i] == 49:
                        bg = None
                    i += 1
        assert x == width
    return out


def test_halfblock_exact_codes() -> None:
    frame = np.array([[[255, 0, 0], [0, 0, 255]],
                      [[0, 255, 0], [0, 255, 0]]], dtype=np.uint8)
    assert halfblock_lines(frame) == [
        "\x1b[38;2;255;0;0;48;2;0;255;0m▀\x1b[38;2;0;0;255m▀\x1b[0m"]


def test_halfblock_round_trip_odd_height() -> None:
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 4, size=(5, 7, 3), dtype=np.uint8) * 60  # repeats colour runs
    lines = halfblock_lines(frame)
    assert len(lines) == 3 and all(line.endswith("\x1b[0m") for line in lines)
    back = _parse_halfblocks(lines, 7)
    assert np.array_equal(back[:5], frame.astype(int))
    assert (back[5] == -1).all()  # the odd last row keeps the terminal's background


def test_sparkline() -> None:
    assert sparkline(range(8)) == SPARK_CHARS
    assert sparkline([3.0, 3.0, 3.0]) == "▄▄▄"
    assert sparkline([0.0, float("nan"), 1.0]) == "▁ █"
    assert sparkline([0, 5], lo=0, hi=10) == "▁▅"  # a shared scale across the two sides
    squeezed = sparkline(np.arange(100), width=10)
    assert len(squeezed) == 10 and list(squeezed) == sorted(squeezed)
    assert sparkline([]) == ""


def test_fit_frames_fits_the_panel() -> None:
    small = np.zeros((2, 16, 16, 3), np.uint8)
    assert fit_frames(small, 78, 19).shape == (2, 32, 32, 3)  # whole-factor enlargement
    big = np.zeros((2, 400, 600, 3), np.uint8)
    fitted = fit_frames(big, 60, 20)
    assert fitted.shape[2] <= 60 and fitted.shape[1] <= 40


def test_true_rewards_are_never_drawn() -> None:
    rng = np.random.default_rng(0)
    side = {"true_rewards": rng.normal(size=6), "obs": rng.normal(size=(6, 2))}
    feats, _ = step_features(side)
    assert [label for label, _ in feats] == ["obs[0]", "obs[1]"]
    only_rewards = {"true_rewards": np.arange(6.0)}

    class Q:
        id, uid, kind, env_id, meta = 1, "abc", "segment", None, {}
        left, right = only_rewards, only_rewards

    view = build_segment_view(Q(), 120, 40, gif_dir=None)
    text = "\n".join(view.lines)
    assert "reward" not in text.lower() and not set(SPARK_CHARS) & set(text)


def test_text_is_made_safe_to_print() -> None:
    assert sanitize("a\x1b[31mb\tc\r\nd") == "a\\x1b[31mb    c\nd"
    assert sanitize(None) == ""


def test_segment_view_with_frames_on_one_side_only() -> None:
    rng = np.random.default_rng(2)

    class Q:
        id, uid, kind, env_id, meta = 7, "abcdef123", "segment", "Toy-v0", {"fps": 5}
        left, right = segment(rng, True), segment(rng, False)

    view = build_segment_view(Q(), 120, 40, gif_dir=Path("/nonexistent/gifs"))
    anim = view.animation
    assert anim is not None and anim.n_frames == 6 and anim.delay == pytest.approx(0.2)
    frame_lines = view.lines[anim.first_line:anim.first_line + anim.rows]
    assert "▀" in frame_lines[0] and "(no frames)" in frame_lines[0]
    assert anim.line(5, 0) != anim.line(0, 0)  # the frames differ, so the picture moves
    assert [str(p) for _, p, _ in view.gif_jobs] == view.gif_paths  # only the left side
    assert view.gif_paths[0].endswith("query7-abcdef12-left.gif")


@pytest.mark.slow
def test_sigkill_of_the_label_prompt_loses_no_acknowledged_answer(tmp_path):
    """Kill -9 the real prompt at random moments, many times: every answer the screen
    acknowledged ("answered this session: N") is in the store, nothing is duplicated."""
    import random

    store = tmp_path / "s.db"
    text_store(store, 60)
    rng = random.Random(7)
    acknowledged = 0
    for _ in range(8):
        child = spawn(store, annotator="kim")
        child.expect(r"answered this session: 0")
        seen = 0
        for _ in range(rng.randint(1, 5)):
            child.send(rng.choice("12ts"))
            if rng.random() < 0.7:  # sometimes wait for the acknowledgement, sometimes not
                child.expect(rf"answered this session: {seen + 1}\b")
                seen += 1
        time.sleep(rng.uniform(0, 0.05))
        child.kill(signal.SIGKILL)
        child.close(force=True)
        acknowledged += seen
        with PreferenceStore(store) as s:
            answers = [a for a in s.answers() if a.annotator == "kim"]
            assert s.integrity_check() == "ok"
        assert len(answers) >= acknowledged
        assert len({a.query_id for a in answers}) == len(answers)
        acknowledged = len(answers)  # the unacknowledged ones that did land count on


# ----------------------------------------------------------------------------- reasons


def reasons_of(path: Path) -> tuple[list, dict]:
    with PreferenceStore(path, create=False) as store:
        return store.answers(), store.reasons()


def test_feature_marks_key_saves_the_features_with_the_answer(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    rng = np.random.default_rng(2)
    with PreferenceStore(path) as store:
        q1 = store.add_segment_query(segment(rng, False), segment(rng, False), env_id="Toy-v0")
        q2 = store.add_segment_query(segment(rng, False), segment(rng, False), env_id="Toy-v0")
    child = spawn(path)
    child.expect_exact("left: 2")
    child.expect_exact("m mark features")  # the key is on the keys line
    child.send("m")
    child.expect_exact("features that decided, 0-2")
    child.sendline("1")
    child.expect_exact("features 1 marked")
    child.send("1")
    child.expect_exact("with marked features")
    child.send("u")  # the undo drops the features with the answer
    child.expect_exact("undone")
    child.send("m")
    child.expect_exact("features that decided")
    child.sendline("0,7")  # out of range: said on the screen, asked again
    child.expect_exact("not kept: feature 7 is out of range: this pair has 3 observation")
    child.expect_exact("features that decided")
    child.sendline("2-0")
    child.expect_exact("runs backwards; write 0-2")
    child.sendline("0, 2")
    child.expect_exact("features 0,2 marked")
    child.send("2")
    child.expect_exact("left: 1")
    child.send("h")  # highlighting is for text pairs
    child.expect_exact("on a pair of segments, m marks")
    child.send("m")
    child.expect_exact("features that decided")
    child.sendline("")  # none
    child.expect_exact("no features marked")
    child.send("1")
    assert finish(child) == 0

    answers, reasons = reasons_of(path)
    assert [(a.query_id, a.answer) for a in answers] == [(q1, "right"), (q2, "left")]
    assert reasons == {answers[0].id: {"features": [0, 2]}}


def test_highlight_keys_save_word_spans_with_the_answer(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    left, right = "The acting was great 🎉 really", "dull 电影 plot, cafe\u0301 bad"
    with PreferenceStore(path) as store:
        q1, q2 = store.add_text_queries([TextPair("Which review? 日本", left, right),
                                         TextPair("second prompt", "one two", "three four")])
    child = spawn(path)
    child.expect_exact("left: 2")
    child.expect_exact("h highlight words")
    child.send("h")
    child.expect_exact("Enter keep · Esc cancel")  # highlight mode's keys
    child.send("\x1b[C\x1b[C\x1b[C")  # → "great"
    child.send(" ")
    child.expect_exact("“great” highlighted")
    child.send("\x1b[C")
    child.send(" ")
    child.expect_exact("“🎉” highlighted")
    child.send("u")  # undo the emoji
    child.expect_exact("undone: the last change")
    child.send("\t")  # the right side: a span from "dull" to "电影"
    child.expect_exact("now on the right response")
    child.send("v")
    child.expect_exact("span starts at “dull”")
    child.send("\x1b[C")
    child.send("v")
    child.expect_exact("span highlighted: 2 words")
    child.send("\r")  # Enter keeps them; the notice line says what waits for the answer
    child.expect_exact("highlighted: left “great” · right “dull 电影”")
    out = child.logfile_read.getvalue()
    assert "\x1b[30;43m" in out  # spans shown in colour
    child.send("1")
    child.expect_exact("saved: left for query")  # the next pair is on screen
    child.send("h")
    child.expect_exact("Enter keep · Esc cancel")
    child.send(" ")
    child.expect_exact("“one” highlighted")
    child.send("\x1b")  # escape: nothing kept
    child.expect_exact("highlighting cancelled")
    child.send("2")
    assert finish(child) == 0

    answers, reasons = reasons_of(path)
    assert [(a.query_id, a.answer) for a in answers] == [(q1, "left"), (q2, "right")]
    great, dull = left.index("great"), right.index("电影") + 2
    assert reasons == {answers[0].id: {"highlights": {"left": [[great, great + 5]],
                                                      "right": [[0, dull]]}}}
    assert right[0:dull] == "dull 电影"


def test_the_text_titles_count_words_in_the_singular_and_the_plural():
    from types import SimpleNamespace

    from rlhf_hgt.feedback.render import text_header

    query = SimpleNamespace(prompt="Say it", left="Yes", right="Yes indeed")
    shown = "\n".join(text_header(query, 100, color=False))
    assert "1 word" in shown and "1 words" not in shown and "2 words" in shown
