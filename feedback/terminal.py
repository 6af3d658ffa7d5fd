"""``rlhf-hgt label STORE``: answer pending queries at the terminal, one key per answer.

The loop: claim the next pending query (so that two people labelling the same store are
not shown the same pair), draw it, wait for a key, save the answer at once, draw the next
one. While the person looks at a pair, a worker thread claims and lays out the next one
(frames scaled, half-block strings and GIFs made), so the next pair is on screen as soon as
an answer is saved.

Before answering, a person may say why (:mod:`.reasons_prompt`): ``m`` on a pair of
trajectory segments reads the observation features that decided (``0,1,4-5``), ``h`` on a
text pair enters highlight mode to pick the words that decided (arrows move, ``Tab`` switches
side, ``space`` a word, ``v`` starts and ends a span, ``u`` undoes, ``Enter`` keeps, ``Esc``
cancels). They are saved with the answer given next (``record_reasons``, in the same guarded
step), never with a skip, and dropped with the answer by an undo. ``?`` lists every key.

Keys are read one at a time in cbreak mode (``termios``/``tty`` + ``select``, in
:mod:`.term_io`), so a frame animation can be interrupted by a key. Ctrl-C, SIGTERM and a
closed terminal (SIGHUP) lose nothing: every answer is committed when it is given; the
terminal mode is restored, the claims released and a ``session_stop`` event logged on the
way out. A team store's server that goes away (a restart) is said on screen while the
connection layer reconnects (up to 30 s) and the answer is saved again under its token, so
it is stored once (:mod:`.db`); a server away longer ends the session with exit 2.

Never shown: the hidden true rewards of segments, the gold answer of text pairs, and which
policy or model produced which side.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .annotators import default_annotator
from .db import DatabaseError, is_url
from .errors import UserInputError
from .reasons_prompt import (
    ask_features,
    describe,
    highlight_view,
    n_features,
    reasons_spans,
    run_highlighter,
)
from .render import (
    CHROME_ROWS,
    HEAD_ROWS,
    GifWriter,
    View,
    build_view,
    compose_screen,
    error_view,
    sanitize,
)
from .store import CLAIM_SECONDS, PreferenceStore
from .term_io import GuardedSession, Stop, Terminal

INTERFACE = "terminal/1"
ANSWER_KEYS = {"1": "left", "2": "right", "t": "tie", "s": "skip"}
SCROLL_KEYS = {"j": 1, "down": 1, "k": -1, "up": -1, " ": "page", "pgdn": "page",
               "f": "page", "b": "-page", "pgup": "-page", "g": "top", "home": "top",
               "G": "end", "end": "end"}
STACK_VIEWS = 5  # views kept for undo (older ones are read from the store again)


@dataclass
class LabelOptions:
    """How a labelling session runs (the flags of ``rlhf-hgt label``)."""

    annotator: str = field(default_factory=default_annotator, metadata={
        "help": "who is labelling; stored with every answer", "metavar": "NAME",
        "default_text": "your login name"})
    per_query: int | None = field(default=None, metadata={
        "help": "answers wanted per query from different annotators (default: the store's "
                "setting, 1)"})
    limit: int | None = field(default=None, metadata={
        "help": "stop after this many answers (default: until none is left)"})
    gif_dir: str | None = field(default=None, metadata={
        "help": "where GIFs of trajectory clips are saved (default: a folder gifs/ beside "
                "the store)", "metavar": "DIR"})
    animate: bool = field(default=True, metadata={
        "help": "play clips as frame animations in the terminal (--no-animate: sparklines "
                "only)"})

    def __post_init__(self) -> None:
        if not self.annotator or not self.annotator.strip():
            raise UserInputError("--annotator: give a non-empty name, e.g. --annotator alice")
        if self.per_query is not None and self.per_query < 1:
            raise UserInputError(f"--per-query must be 1 or more, got {self.per_query}")
        if self.limit is not None and self.limit < 1:
            raise UserInputError(f"--limit must be 1 or more, got {self.limit}; "
                                 "leave it out to label until none is left")


@dataclass
class _Given:
    """An answer given in this session (kept for undo and the timing numbers)."""

    answer_id: int
    query_id: int
    seconds: float
    view: View | None


class _Session(GuardedSession):
    def __init__(self, store: PreferenceStore, path: Path, opts: LabelOptions, gif_dir: Path,
                 term: Terminal, console: Console):
        self.store, self.path, self.opts, self.gif_dir = store, path, opts, gif_dir
        self.term, self.console = term, console
        self.who = opts.annotator
        self.held: set[int] = set()  # queries claimed by this session and not yet answered
        self.claimed: set[int] = set()  # every query this session claimed (released at exit)
        self.given: list[_Given] = []
        self.undone = 0
        self.pushed_back: list[View] = []  # displaced by an undo; shown again after it
        self.current: View | None = None
        self.future: Future | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlhf-hgt-prefetch")
        self.gifs = GifWriter()
        self._bg_store: PreferenceStore | None = None
        self.shown_at = 0.0
        self.left = 0
        self.offset = 0
        self.help = False
        self.notice = ""
        self.rationale: str | None = None
        self.reasons: dict | None = None  # features or highlights, saved with the next answer
        self.anim_t: int | None = None  # the next frame to play (None: not playing)
        self.anim_shown: int | None = None  # the frame on screen
        self.anim_next = 0.0
        self.drawn: dict[int, str] = {}
        self.resized = False
        self.latencies: list[float] = []  # seconds from a key to the next pair on screen
        self.init_guard()
        store.conn.notify = self._connection_notice

    def _connection_notice(self, message: str) -> None:
        """The connection layer lost a team store's server and reconnects, or did: say so."""
        text = "store: " + message.removeprefix(f"{self.path}: ")
        if self.term.saved is None or self.current is None:
            self._print(text)
        else:
            with contextlib.suppress(Exception):
                self._say(text)

    # -- the session

    def run(self) -> int:
        with self.signals():
            reason, code = self._session()
        if reason != "nothing":
            self._print(self._summary(reason))
        return code

    def _session(self) -> tuple[str, int]:
        reason, code, started = "quit", 0, False
        try:
            with self._protect():
                first = self.store.claim_next(self.who, self.opts.per_query)
                if first is not None:
                    self._claimed(first)
            if first is None:
                self._print(f"Nothing to label: no pending queries for {self.who} "
                            f"in {self.path}.")
                return "nothing", 0
            with self._protect():
                self.store.log_event("session_start", self.who, {
                    "interface": INTERFACE, "pid": os.getpid(), "per_query": self.opts.per_query,
                    "limit": self.opts.limit, "terminal": "x".join(map(str, self.term.size()))})
            started = True
            self.term.start()
            self.current = self._build(first, self.term.size())
            reason = self._loop()
        except Stop as stop:
            reason, code = stop.reason, stop.code
        finally:
            self._closing = True
            self.term.stop()
            self._shutdown(reason if started else None)
        return reason, code

    def _print(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # the terminal may be gone (SIGHUP)
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def _loop(self) -> str:
        self._show(new=True)
        while True:
            key = self._wait_key()
            if key is None:
                continue
            if self.help:
                self.help = False
                self._draw()
            elif key in ANSWER_KEYS:
                if self.current is not None and self.current.kind == "error" and key != "s":
                    self._say("this query cannot be shown; press s to skip it")
                    continue
                t_key = time.monotonic()
                self._answer(ANSWER_KEYS[key])
                if self.opts.limit is not None and len(self.given) >= self.opts.limit:
                    return "limit"
                nxt = self._next_view()
                if nxt is None:
                    return "done"
                self.current = nxt
                self._show(new=True)
                self.latencies.append(time.monotonic() - t_key)
            elif key == "u":
                self._undo()
            elif key == "r":
                self._ask_rationale()
            elif key == "m":
                self._mark_features()
            elif key == "h":
                self._highlight()
            elif key == "p":
                self._start_animation(replay=True)
            elif key == "q":
                return "quit"
            elif key == "?":
                self.help = True
                self.anim_t = None
                self._draw()
                self.anim_shown = None
            elif key in SCROLL_KEYS:
                self._scroll(SCROLL_KEYS[key])
            elif key == "\x0c":
                self._draw()
            else:
                self._say(f"unknown key {key.encode('unicode_escape').decode()!r}: "
                          "press ? for help")

    def _wait_key(self) -> str | None:
        for message in self.gifs.failures():
            self._say(message)
        if self.resized:
            self.resized = False
            self._relayout()
        timeout = 0.25
        if self.anim_t is not None:
            timeout = max(0.0, min(timeout, self.anim_next - time.monotonic()))
        key = self.term.read_key(timeout)
        if key is None and self.anim_t is not None and time.monotonic() >= self.anim_next:
            self._anim_step()
        return key

    # -- answers

    def _answer(self, answer: str) -> None:
        view = self.current
        assert view is not None
        answered_at = time.time()
        reasons = self.reasons if answer != "skip" else None
        with self._protect():
            answer_id = self.store.record_answer(
                view.query_id, answer, self.who, shown_at=self.shown_at,
                answered_at=answered_at, rationale=self.rationale, interface=INTERFACE,
                per_query=self.opts.per_query)
            self.held.discard(view.query_id)
            if answer_id is not None:
                if reasons:  # right after its answer, before a signal may stop the session
                    self.store.record_reasons(answer_id, reasons, self.who)
                seconds = answered_at - self.shown_at
                self.given.append(_Given(answer_id, view.query_id, seconds, view))
        if answer_id is None:
            with self._protect():
                self.store.release_claims(self.who, [view.query_id])
            self.notice = (f"not saved: query {view.query_id} already has the answers it needs "
                           "(someone else answered it)")
            return
        if len(self.given) > STACK_VIEWS:
            self.given[-STACK_VIEWS - 1].view = None
        note = " with rationale" if self.rationale else ""
        if reasons:
            note += " with " + ("marked features" if "features" in reasons else "highlights")
        self.notice = f"saved: {answer} for query {view.query_id}{note}"

    def _undo(self) -> None:
        if not self.given:
            self._say("nothing to undo in this session")
            return
        last = self.given[-1]
        with self._protect():
            self.store.undo(last.answer_id, self.who, reason="undo key in the terminal")
            self.given.pop()
            self.undone += 1
            # claim it again while it is re-answered
            self.store.claim(last.query_id, self.who, CLAIM_SECONDS)
            self._claimed(last.query_id)
        if self.current is not None:
            self.pushed_back.append(self.current)
        view = last.view
        if view is None or (view.width, view.height) != self.term.size():
            view = self._build(last.query_id, self.term.size())
        self.current = view
        self.notice = f"undone: your answer to query {last.query_id}; give it again"
        self._show(new=True)

    def _ask_rationale(self) -> None:
        self.anim_t = None
        _, rows = self.term.size()
        text = self.term.read_line("rationale for this pair (Enter to attach, empty to cancel): ",
                                   rows)
        text = sanitize(text).replace("\n", " ").strip()
        if text:
            self.rationale = text
            self.notice = "rationale attached: it is saved with your answer to this pair"
        else:
            self.notice = "no rationale added"
        self._draw()

    def _mark_features(self) -> None:
        view = self.current
        n = n_features(view.query) if view is not None and view.kind == "segment" else 0
        if view is None or view.kind != "segment":
            self._say("m marks features of trajectory segments; on a text pair, h highlights "
                      "the words that decided")
            return
        if n == 0:
            self._say("this pair has no observation features to mark")
            return
        self.anim_t = None
        features = ask_features(self.term, n, (self.reasons or {}).get("features", ()))
        self.reasons = {"features": features} if features else None
        self.notice = ("features marked: saved with your answer to this pair" if features
                       else "no features marked")
        self._draw()

    def _highlight(self) -> None:
        view = self.current
        if view is None or view.kind != "text" or view.query is None:
            self._say("h highlights words of text pairs; on a pair of segments, m marks the "
                      "features that decided")
            return
        self.anim_t = None
        kept, reasons = run_highlighter(
            self.term, view.query, self.reasons,
            lambda v, offset, keys, notice: self._put(v, offset, keys, notice))
        if kept:
            self.reasons = reasons
            self.notice = ("highlights kept: saved with your answer to this pair" if reasons
                           else "no words highlighted")
        else:
            self.notice = "highlighting cancelled: nothing changed"
        self._draw()

    # -- queries: claim, build, prefetch

    def _claimed(self, query_id: int) -> None:
        self.held.add(query_id)
        self.claimed.add(query_id)

    def _build(self, query: int | Any, size: tuple[int, int],
               store: PreferenceStore | None = None) -> View:
        """Lay out a query (an id, read from ``store``, or a Query) for a terminal size."""
        cols, rows = size
        qid = query if isinstance(query, int) else query.id
        try:
            if isinstance(query, int) and store is None:
                with self._protect():
                    query = self.store.get_query(qid)
            elif isinstance(query, int):
                query = store.get_query(qid)
            view = build_view(query, cols, rows, self.opts.animate, self.gif_dir)
            self.gifs.submit(view)
            return view
        except Stop:
            raise
        except Exception as exc:  # a broken payload must not end the session
            return error_view(qid, cols, rows, f"{type(exc).__name__}: {exc}")

    def _prefetch_job(self, exclude: set[int], size: tuple[int, int]) -> tuple[int, View] | None:
        if self._bg_store is None:
            self._bg_store = PreferenceStore(self.path, create=False)
            self._bg_store.conn.notify = lambda message: None  # the main thread tells
        qid = self._bg_store.claim_next(self.who, self.opts.per_query, exclude=exclude)
        if qid is None:
            return None
        # known at once, so that a session stopped before this job's result is read (a
        # closed terminal, a slow build under load) still releases the claim at exit
        self.claimed.add(qid)
        return qid, self._build(qid, size, store=self._bg_store)

    def _ensure_prefetch(self) -> None:
        if self.future is None and not self._closing:
            exclude = set(self.held) | {v.query_id for v in self.pushed_back}
            self.future = self.pool.submit(self._prefetch_job, exclude, self.term.size())

    def _take_prefetch(self) -> View | None:
        if self.future is None:
            return None
        try:
            got = self.future.result()
        except (DatabaseError, UserInputError):  # a lost server: the main thread claims
            got = None
        self.future = None
        if got is None:
            return None
        qid, view = got
        self._claimed(qid)
        return view

    def _next_view(self) -> View | None:
        if self.pushed_back:
            return self.pushed_back.pop()
        view = self._take_prefetch()
        if view is None:  # maybe new queries arrived since the prefetch looked
            with self._protect():
                qid = self.store.claim_next(self.who, self.opts.per_query, exclude=self.held)
                if qid is not None:
                    self._claimed(qid)
            if qid is None:
                return None
            view = self._build(qid, self.term.size())
        return view

    def _shutdown(self, reason: str | None) -> None:
        """Release claims, close the worker's store, log the end (never raises)."""
        if self.future is not None:
            with contextlib.suppress(Exception):
                got = self.future.result(timeout=30)
                if got is not None:
                    self.claimed.add(got[0])

        def close_bg() -> None:
            if self._bg_store is not None:
                self._bg_store.close()

        with contextlib.suppress(Exception):
            self.pool.submit(close_bg).result(timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.gifs.close()  # GIFs whose paths were shown get written
        with contextlib.suppress(Exception):
            if self.claimed:
                self.store.release_claims(self.who, sorted(self.claimed))
        if reason is None:
            return
        secs = [g.seconds for g in self.given]
        data = {"reason": reason, "answers": len(self.given), "undone": self.undone,
                "interface": INTERFACE,
                "median_seconds_per_label": statistics.median(secs) if secs else None,
                "mean_seconds_per_label": statistics.fmean(secs) if secs else None,
                "max_next_pair_ms": round(max(self.latencies) * 1000, 1)
                if self.latencies else None}
        with contextlib.suppress(Exception):
            self.store.log_event("session_stop", self.who, data)

    def _summary(self, reason: str) -> str:
        n = len(self.given)
        head = f"{n} answer{'s' if n != 1 else ''} saved by {self.who} to {self.path}"
        if reason == "done":
            return f"All done: {head}; nothing left to label."
        if reason == "limit":
            return f"Stopped after --limit {self.opts.limit}: {head}."
        if reason == "quit":
            return f"{head}. Run the same command again to go on."
        return f"Stopped ({reason}): {head}; nothing was lost."

    # -- drawing

    def _show(self, new: bool) -> None:
        view = self.current
        assert view is not None
        if (view.width, view.height) != self.term.size() and view.query is not None:
            self.current = self._build(view.query, self.term.size())
        if new:
            self.offset = 0
            self.rationale = self.reasons = None
            with self._protect():
                self.left = self.store.count_pending(self.who, self.opts.per_query)
        self.anim_t = self.anim_shown = None
        if new:  # keys typed before this pair is on screen were meant for an earlier one
            self.term.drop_typeahead()
        self._draw()
        if new:
            self.shown_at = time.time()
            self._start_animation()
            self._ensure_prefetch()

    def _relayout(self) -> None:
        if self.current is not None and self.current.query is not None:
            self.current = self._build(self.current.query, self.term.size())
        self.term.write("\x1b[2J")
        self._draw()

    def _body_rows(self) -> int:
        return max(1, self.term.size()[1] - CHROME_ROWS)

    def _stats(self) -> str:
        secs = [g.seconds for g in self.given]
        timing = (f"median {statistics.median(secs):.1f} s, mean {statistics.fmean(secs):.1f} s"
                  if secs else "–")
        return (f"left: {self.left}  ·  answered this session: {len(self.given)}  ·  "
                f"time per label: {timing}")

    def _draw(self) -> None:
        assert self.current is not None
        view = self.current
        cols, rows = self.term.size()
        spans = reasons_spans(self.reasons)
        if spans is not None and view.kind == "text" and view.query is not None:
            view = highlight_view(view.query, cols, rows, spans=spans)[0]
        pending = [describe(self.reasons, view.query, cols),
                   f"rationale: {self.rationale}" if self.rationale else ""]
        last = " · ".join(p for p in pending if p) or self.notice
        self.offset = self._put(view, self.offset, None, last, self.anim_shown)

    def _put(self, view: View, offset: int, keys: str | None, last: str,
             frame: int | None = None) -> int:
        """Draw a whole screen with ``view``'s body from ``offset``; returns the offset used."""
        cols, rows = self.term.size()
        title = f"rlhf-hgt label · {self.path.name} · annotator {self.who}"
        screen, offset = compose_screen(view, cols, rows, title, self._stats(), last, offset,
                                        self.help, frame, keys=keys)
        self.term.write("".join(f"\x1b[{r};1H\x1b[0m{line}\x1b[0m\x1b[K"
                                for r, line in enumerate(screen, 1)))
        self.drawn = {}
        return offset

    # -- animation

    def _start_animation(self, replay: bool = False) -> None:
        view = self.current
        if view is None or view.animation is None or self.help:
            self.anim_t = None
            if replay:
                self._say("no frames to play for this pair")
            return
        self.anim_t = 0
        self.anim_next = time.monotonic()
        self._anim_step()

    def _anim_step(self) -> None:
        """Draw the next frame: only the rows of the frame area that changed."""
        anim = self.current.animation if self.current is not None else None
        if anim is None or self.anim_t is None:
            self.anim_t = None
            return
        t = self.anim_t
        body_h = self._body_rows()
        out = []
        for i in range(anim.rows):
            index = anim.first_line + i
            if not self.offset <= index < self.offset + body_h:
                continue
            line = anim.line(t, i)
            if self.drawn.get(i) != line:
                out.append(f"\x1b[{HEAD_ROWS + 1 + index - self.offset};1H{line}")
                self.drawn[i] = line
        if out:
            self.term.write("".join(out))
        self.anim_shown = t
        self.anim_t = t + 1 if t + 1 < anim.n_frames else None
        self.anim_next += anim.delay

    def _scroll(self, how: int | str) -> None:
        body_h = self._body_rows()
        n = len(self.current.lines) if self.current else 0
        if how == "page":
            self.offset += max(1, body_h - 1)
        elif how == "-page":
            self.offset -= max(1, body_h - 1)
        elif how == "top":
            self.offset = 0
        elif how == "end":
            self.offset = n
        else:
            self.offset += int(how)
        self.offset = max(0, min(self.offset, n - body_h))
        self._draw()

    def _say(self, message: str) -> None:
        self.notice = message
        self._draw()


def run_labelling(store_path: str | os.PathLike, opts: LabelOptions) -> int:
    """Label the pending queries of a store at this terminal; returns the exit code
    (0 done, quit or limit; 128+N after signal N). Raises UserInputError (exit 2) for a
    missing store or when stdin is not a terminal."""
    path: Any = store_path if is_url(store_path) else Path(store_path)  # a team store's URL
    store = PreferenceStore(path, create=False)
    try:
        for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)):
            if stream is None or not stream.isatty():
                raise UserInputError(
                    f"rlhf-hgt label reads single keys and draws on a terminal, but {name} is "
                    "not one (a pipe or a file); run it in an interactive terminal, or use "
                    "`rlhf-hgt feedback import` to add labels from a file")
        console = Console(file=sys.stdout, force_terminal=True, color_system="truecolor")
        gif_dir = Path(opts.gif_dir) if opts.gif_dir else (
            Path("gifs") if is_url(path) else path.parent / "gifs")
        term = Terminal(sys.stdin.fileno(), console.file)
        # store.path: the file, or the URL (password masked, reopens; .name the database)
        return _Session(store, store.path, opts, gif_dir, term, console).run()
    finally:
        store.close()
