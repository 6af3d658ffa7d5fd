"""The terminal side of ``rlhf-hgt label`` (:mod:`.terminal`): single keys read in cbreak mode
(``termios``/``tty`` + ``select``, so a frame animation can be interrupted by a key), a line of
text read in cooked mode, and whole-screen drawing on the alternate screen.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import signal
import termios
import tty
from collections.abc import Iterator
from typing import TextIO

ESCAPES = {"\x1b[A": "up", "\x1bOA": "up", "\x1b[B": "down", "\x1bOB": "down",
           "\x1b[5~": "pgup", "\x1b[6~": "pgdn", "\x1b[H": "home", "\x1bOH": "home",
           "\x1b[1~": "home", "\x1b[F": "end", "\x1bOF": "end", "\x1b[4~": "end"}


class Stop(Exception):
    """Leave the session now (a signal, or the terminal went away)."""

    def __init__(self, reason: str, code: int):
        super().__init__(reason)
        self.reason, self.code = reason, code


class Terminal:
    """Single keys in cbreak mode and whole-screen drawing on the alternate screen."""

    def __init__(self, in_fd: int, out: TextIO):
        self.fd, self.out = in_fd, out
        self.saved: list | None = None
        self.buf = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def start(self) -> None:
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)
        self.write("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")

    def stop(self) -> None:
        """Give the terminal back as it was (safe to call twice, and on a dead terminal)."""
        if self.saved is None:
            return
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        with contextlib.suppress(OSError, ValueError):
            self.write("\x1b[0m\x1b[?25h\x1b[?1049l")
        self.saved = None

    def size(self) -> tuple[int, int]:
        for fd in (self.out.fileno(), self.fd):
            try:
                cols, rows = os.get_terminal_size(fd)
                if cols > 0 and rows > 0:
                    return max(40, cols), max(12, rows)
            except OSError:
                continue
        return 100, 30

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def drop_typeahead(self) -> None:
        """Forget keys typed before the pair now on screen was drawn."""
        with contextlib.suppress(termios.error, OSError):
            termios.tcflush(self.fd, termios.TCIFLUSH)
        self.buf = ""

    def _fill(self, timeout: float | None) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        data = os.read(self.fd, 1024)
        if not data:  # end of input: the terminal is gone
            raise Stop("hangup", 128 + signal.SIGHUP)
        self.buf += self.decoder.decode(data)
        return True

    def read_key(self, timeout: float | None) -> str | None:
        """The next key (a character, or a name like 'pgdn'), or None after ``timeout``."""
        if not self.buf and not self._fill(timeout):
            return None
        if self.buf == "\x1b":  # a lone escape, or the start of a sequence still arriving
            self._fill(0.03)
        b = self.buf
        if b[:2] in ("\x1b[", "\x1bO") and len(b) > 2:
            end = next((i for i in range(2, len(b)) if "\x40" <= b[i] <= "\x7e"), len(b) - 1)
            key, self.buf = b[: end + 1], b[end + 1:]
            return ESCAPES.get(key, key)
        key, self.buf = b[0], b[1:]
        return key

    def read_line(self, prompt: str, row: int) -> str:
        """One line of text, typed with the terminal's own line editing (cooked mode)."""
        assert self.saved is not None
        self.write(f"\x1b[{row};1H\x1b[0m\x1b[K{prompt}\x1b[?25h")
        termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
        try:
            chunks = []
            while True:
                data = os.read(self.fd, 4096)
                if not data:
                    raise Stop("hangup", 128 + signal.SIGHUP)
                chunks.append(data)
                if data.endswith(b"\n"):
                    break
            return b"".join(chunks).decode("utf-8", "replace").strip()
        finally:
            with contextlib.suppress(termios.error, OSError):
                tty.setcbreak(self.fd, termios.TCSANOW)
                self.write("\x1b[?25l")
            self.buf = ""


class GuardedSession:
    """What the terminal prompts share: signals stop a session between store writes, never
    inside one (:meth:`protect`), a resize is noted, Ctrl-Z hands the terminal back.

    A subclass sets ``self.term`` (a :class:`Terminal`) and ``self.resized``, calls
    :meth:`init_guard` in its ``__init__`` and runs its session inside
    ``with self.signals():``, setting ``self._closing`` once it starts to shut down."""

    term: Terminal
    resized: bool

    def init_guard(self) -> None:
        self._critical = False
        self._closing = False
        self._pending_stop: Stop | None = None

    def _on_signal(self, signum: int, frame: object) -> None:
        names = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminated",
                 signal.SIGHUP: "hangup"}
        stop = Stop(names.get(signum, f"signal {signum}"), 128 + signum)
        if self._pending_stop is None:
            self._pending_stop = stop
        if not (self._critical or self._closing):
            raise stop

    @contextlib.contextmanager
    def _protect(self) -> Iterator[None]:
        """A store call that a signal must not cut in half."""
        self._critical = True
        try:
            yield
        finally:
            self._critical = False
        if self._pending_stop is not None and not self._closing:
            raise self._pending_stop

    def _on_winch(self, signum: int, frame: object) -> None:
        self.resized = True

    def _on_tstp(self, signum: int, frame: object) -> None:  # Ctrl-Z: hand the terminal back
        if self._critical or self._closing:
            return
        self.term.stop()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, self._on_tstp)  # resumed (SIGCONT)
        self.term.start()
        self.resized = True

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Install the handlers for the session; the old ones come back afterwards."""
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH,
                   signal.SIGTSTP)
        old = {s: signal.getsignal(s) for s in handled}
        for s in handled[:3]:
            signal.signal(s, self._on_signal)
        signal.signal(signal.SIGWINCH, self._on_winch)
        signal.signal(signal.SIGTSTP, self._on_tstp)
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
