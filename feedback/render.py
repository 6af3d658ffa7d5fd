"""Drawing for the terminal labelling prompt: pure functions from a query to screen lines.

Everything here turns data into strings (with ANSI colour codes) and knows no keys, no
store and no terminal mode; ``terminal.py`` owns the loop. The expensive work (scaling
frames, building half-block strings, writing GIFs) happens once per query, when its
view is built, so that showing a pair or playing a frame is only a write.

What a person must never see: the hidden ``true_rewards`` of a segment (and the gold
answer of a text pair). Only the arrays named in ``SHOWN_KEYS`` are ever drawn.
"""

from __future__ import annotations

import io
import math
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.color import ColorSystem
from rich.console import Console, RenderableType
from rich.text import Text

from .files import write_atomic

SPARK_CHARS = "▁▂▃▄▅▆▇█"
UPPER_HALF = "▀"
RESET = "\x1b[0m"
GAP = " │ "  # between the left and the right column
# per-step arrays that may be shown, and their labels; everything else (true_rewards!) is hidden
SHOWN_KEYS: dict[str, str] = {"obs": "obs", "observations": "obs", "actions": "action",
                              "acts": "action"}
MAX_FEATURES = 16  # sparklines per array and side; the rest is summarised in one line
MAX_UPSCALE = 4  # small frames are enlarged by at most this integer factor
DEFAULT_FPS = 10.0
HEAD_ROWS = 3  # title, counts, rule
CHROME_ROWS = 6  # HEAD_ROWS + rule, keys, notice
REASON_KEYS = {"text": ("h highlight words", "h words"),  # long, short (reasons_prompt.py)
               "segment": ("m mark features", "m marks")}
KEYS_LINE = ("1 left · 2 right · t tie · s skip · u undo · r rationale · {why}p replay · "
             "j/k PgUp/PgDn scroll · q quit · ? help")
KEYS_SHORT = "1/2 left/right t tie s skip u undo r rationale {why}q quit ? help"
HELP = """Which of the two is better? Answer with one key; it is saved at once.

  1        the left one is better           2        the right one is better
  t        a tie: both equally good or bad  s        skip: you cannot tell
  u        undo your last answer of this session and show that pair again
  r        add a rationale (one line of text) to the answer you give next
  m        segments: type the observation features that decided (numbers of the obs[i]
           rows, e.g. 0,1,4-5; Enter alone: none); saved with the answer you give next
  h        text: highlight the words that decided, saved with the answer you give next:
           ←/→ word, ↑/↓ line, Tab other side, space word on/off, v start/end a span,
           u/Backspace undo, c clear, Enter keep, Esc cancel
  p        replay the animation of two trajectory segments
  j / k    scroll down / up one line (also arrow keys)
  PgDn / PgUp, space / b   scroll a page;  g / G  top / bottom
  Ctrl-L   redraw the screen
  q        quit; run the same command again to go on where you stopped
  ?        this help

Segments with stored frames also play as GIFs; their paths are shown under each side.

Press any key to go back."""


# ----------------------------------------------------------------------------- sparklines


def resample(values: np.ndarray, width: int) -> np.ndarray:
    """Shrink a 1-D series to ``width`` points by averaging equal bins (no-op if it fits)."""
    v = np.asarray(values, dtype=float).ravel()
    if width <= 0:
        return v[:0]
    if v.size <= width:
        return v
    edges = np.linspace(0, v.size, width + 1).astype(int)
    return np.add.reduceat(v, edges[:-1]) / np.diff(edges)


def sparkline(values: Sequence[float] | np.ndarray, width: int | None = None,
              lo: float | None = None, hi: float | None = None) -> str:
    """One character per step from ``▁▂▃▄▅▆▇█`` (lowest to highest).

    ``lo``/``hi`` fix the scale (so that two series can be compared); by default the
    series' own finite range. A flat series draws as ``▄``; NaN or inf as a space. Longer
    series than ``width`` are averaged down to ``width`` characters."""
    v = np.asarray(values, dtype=float).ravel()
    if width is not None:
        v = resample(v, width)
    if v.size == 0:
        return ""
    finite = np.isfinite(v)
    if not finite.any():
        return " " * v.size
    lo = float(v[finite].min()) if lo is None else float(lo)
    hi = float(v[finite].max()) if hi is None else float(hi)
    n = len(SPARK_CHARS)
    if not hi > lo:
        idx = np.full(v.size, n // 2 - 1)
    else:
        with np.errstate(invalid="ignore"):
            idx = np.floor((np.where(finite, v, lo) - lo) / (hi - lo) * n)
        idx = np.clip(idx, 0, n - 1).astype(int)
    pairs = zip(idx.tolist(), finite.tolist(), strict=True)
    return "".join(SPARK_CHARS[i] if ok else " " for i, ok in pairs)


# ----------------------------------------------------------------------------- frames


def rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Images with the channels last, (..., C) with C = 1, 3 or 4, as (..., 3) uint8: grey
    repeated, alpha dropped, floats (and booleans) in [0, 1] scaled to 255, other values
    clipped to [0, 255], NaN as 0. The one conversion for stored and rendered frames."""
    arr = np.asarray(arr)
    if arr.ndim < 1 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image needs 1, 3 or 4 channels on its last axis, got shape "
                         f"{arr.shape}")
    arr = np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr[..., :3]
    if arr.dtype != np.uint8:
        unit = arr.dtype.kind in "fb"  # may be in [0, 1]; integers are pixel values
        arr = arr.astype(float)
        finite = arr[np.isfinite(arr)]
        if unit and finite.size and finite.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def to_rgb_frames(frames: Any) -> np.ndarray | None:
    """Frames as (T, H, W, 3) uint8 (:func:`rgb_uint8`), or None when there are none or
    they are not images. Accepts grayscale (T, H, W) or (T, H, W, 1) and RGBA."""
    if frames is None:
        return None
    arr = np.asarray(frames)
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        return None
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        return None
    return rgb_uint8(arr)


def fit_frames(frames: np.ndarray, max_cols: int, max_rows: int,
               max_upscale: int = MAX_UPSCALE) -> np.ndarray:
    """Scale (T, H, W, 3) frames to fit ``max_cols`` cells wide and ``max_rows`` cells high
    (one cell = one pixel wide, two pixels high). Small frames grow by a whole factor."""
    _, h, w, _ = frames.shape
    scale = min(max(1, max_cols) / w, 2 * max(1, max_rows) / h)
    if scale >= 1.0:
        k = max(1, min(int(scale), max_upscale))
        return frames if k == 1 else frames.repeat(k, axis=1).repeat(k, axis=2)
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    box = Image.Resampling.BOX
    return np.stack([np.asarray(Image.fromarray(f).resize(size, box)) for f in frames])


def _rgb(c: int) -> str:
    return f"{c >> 16};{(c >> 8) & 255};{c & 255}"


def halfblock_lines(frame: np.ndarray) -> list[str]:
    """Draw one (H, W, 3) uint8 image as ceil(H/2) lines of ``▀``: the foreground colour is
    the upper pixel, the background the lower one (24-bit colour codes). A colour code is
    written only where it changes; each line ends with a reset. An odd last row keeps the
    terminal's own background below."""
    f = np.asarray(frame)
    if f.ndim != 3 or f.shape[2] < 3:
        raise ValueError(f"a frame must be (H, W, 3), got shape {f.shape}")
    f = f[..., :3].astype(np.uint32)
    packed = (f[..., 0] << 16) | (f[..., 1] << 8) | f[..., 2]
    height, width = packed.shape
    lines = []
    for y in range(0, height, 2):
        upper = packed[y].tolist()
        lower = packed[y + 1].tolist() if y + 1 < height else [-1] * width
        out: list[str] = []
        fg = bg = None
        run = 0
        for u, low in zip(upper, lower, strict=True):
            codes = []
            if u != fg:
                codes.append("38;2;" + _rgb(u))
                fg = u
            if low != bg:
                codes.append("49" if low < 0 else "48;2;" + _rgb(low))
                bg = low
            if codes:
                if run:
                    out.append(UPPER_HALF * run)
                    run = 0
                out.append("\x1b[" + ";".join(codes) + "m")
            run += 1
        out.append(UPPER_HALF * run + RESET)
        lines.append("".join(out))
    return lines


def save_gif(frames: np.ndarray, path: Path, fps: float = DEFAULT_FPS,
             min_side: int = 128, max_side: int = 320) -> Path:
    """Write (T, H, W, 3) uint8 frames as a looping GIF: small frames enlarged to at least
    ``min_side`` pixels, large ones shrunk to at most ``max_side`` (GIF encoding is the slow
    part). Written to a temporary name and renamed: never half a file."""
    path = Path(path)
    h, w = frames.shape[1:3]
    k = max(1, min(8, math.ceil(min_side / max(1, min(h, w)))))
    if k > 1:
        frames = frames.repeat(k, axis=1).repeat(k, axis=2)
    images = [Image.fromarray(f) for f in frames]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        images = [im.resize(size, Image.Resampling.BOX) for im in images]
    return write_atomic(path, lambda fh: images[0].save(
        fh, format="GIF", save_all=True, append_images=images[1:],
        duration=max(20, int(round(1000 / fps))), loop=0))


class GifWriter:
    """Writes GIFs on a background thread, each path once; a person opens a GIF seconds
    after its path is shown, so the next pair never waits for GIF encoding."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlhf-hgt-gif")
        self._lock = threading.Lock()
        self._paths: set[Path] = set()
        self._pending: list[tuple[Future, Path]] = []
        self._closed = False

    def submit(self, view: View) -> None:
        """Take over a view's GIF jobs (safe from any thread)."""
        jobs, view.gif_jobs = view.gif_jobs, []
        with self._lock:
            for frames, path, fps in jobs:
                if path not in self._paths and not self._closed:
                    self._paths.add(path)
                    self._pending.append((self._pool.submit(save_gif, frames, path, fps), path))

    def failures(self) -> list[str]:
        """Messages for GIFs that could not be written since the last call."""
        with self._lock:
            done = [(f, p) for f, p in self._pending if f.done()]
            self._pending = [(f, p) for f, p in self._pending if not f.done()]
        return [f"GIF not saved: {p}: {f.exception()}" for f, p in done
                if f.exception() is not None]

    def close(self) -> None:
        """Finish the GIFs whose paths were shown; accept no more."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)


# ----------------------------------------------------------------------------- views


@dataclass
class Animation:
    """The frame area of a segment view: body lines ``first_line ..`` + ``rows``."""

    first_line: int
    rows: int
    colw: int
    panels: list[list[list[str]] | None]  # per side: frames -> half-block row strings
    widths: list[int]  # per side: cells wide
    delay: float
    n_frames: int
    placeholder: list[str] = field(default_factory=list)  # per side, when it has no frames

    def line(self, t: int, i: int) -> str:
        """Body line ``i`` of the frame area at frame ``t`` (last frame held when shorter)."""
        cells = []
        for side, frames in enumerate(self.panels):
            if frames is None:
                text = self.placeholder[side] if i == 0 else ""
                cells.append(text[: self.colw].ljust(self.colw))
                continue
            rows = frames[min(t, len(frames) - 1)]
            pad = self.colw - self.widths[side]
            left = pad // 2
            row = rows[i] if i < len(rows) else " " * self.widths[side]
            cells.append(" " * left + row + " " * (pad - left))
        return cells[0] + GAP + cells[1]


@dataclass
class View:
    """One query laid out for a terminal of ``width`` x ``height`` cells."""

    query_id: int
    kind: str
    summary: str
    width: int
    height: int
    lines: list[str]
    animation: Animation | None = None
    gif_paths: list[str] = field(default_factory=list)
    # GIFs still to write, (frames, path, fps): slow, so the caller writes them in the background
    gif_jobs: list[tuple[np.ndarray, Path, float]] = field(default_factory=list)
    query: Any = None  # the Query, to lay it out again after a resize


def sanitize(text: str | None) -> str:
    """Text safe to print: tabs as spaces, other control characters (escape codes that
    could take over the terminal) shown as a visible ``\\xNN``."""
    if not text:
        return ""
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    return "".join(ch if ch == "\n" or unicodedata.category(ch) != "Cc" else f"\\x{ord(ch):02x}"
                   for ch in text)


def make_console(width: int) -> Console:
    """A console that renders to strings (for building views; any thread)."""
    return Console(file=io.StringIO(), width=max(10, width), force_terminal=True,
                   color_system="truecolor", highlight=False, markup=False, emoji=False,
                   legacy_windows=False)


def render_lines(console: Console, renderable: RenderableType, width: int,
                 color: bool = True) -> list[str]:
    """A rich renderable as lines of exactly ``width`` cells (ANSI-coloured unless
    ``color`` is false)."""
    options = console.options.update(width=max(1, width))
    out = []
    system = ColorSystem.TRUECOLOR if color else None
    for line in console.render_lines(renderable, options, pad=True):
        parts = []
        for seg in line:
            if seg.control:
                continue
            if seg.style is not None and system is not None:
                parts.append(seg.style.render(seg.text, color_system=system))
            else:
                parts.append(seg.text)
        out.append("".join(parts))
    return out


def columns(left: list[str], right: list[str], colw: int) -> list[str]:
    """Zip two columns of ``colw``-wide lines into full lines with a divider."""
    blank = " " * colw
    n = max(len(left), len(right))
    return [(left[i] if i < len(left) else blank) + GAP + (right[i] if i < len(right) else blank)
            for i in range(n)]


def column_width(width: int) -> int:
    return max(8, (width - len(GAP)) // 2)


def _heading(console: Console, titles: Sequence[Text], width: int, color: bool) -> list[str]:
    colw = column_width(width)
    lines = columns(render_lines(console, titles[0], colw, color),
                    render_lines(console, titles[1], colw, color), colw)
    lines.append("─" * colw + "─┼─" + "─" * colw)
    return lines


def _side_title(n: int, side: str, extra: str) -> Text:
    style = "bold cyan" if side == "left" else "bold magenta"
    title = Text(f"{n} · {side}", style=style)
    if extra:
        title.append(f"  {extra}", style="dim")
    return title


def text_header(query: Any, width: int, color: bool = True,
                notes: Sequence[str] = ("", "")) -> list[str]:
    """The top of a text pair's view: the prompt, then the two sides' titles (with
    ``notes`` after each) and a rule."""
    console = make_console(width)
    lines: list[str] = []
    prompt = sanitize(query.prompt)
    if prompt:
        lines += render_lines(console, Text("Prompt", style="bold"), width, color)
        lines += render_lines(console, Text(prompt, overflow="fold"), width, color)
        lines.append("")
    words = [len(sanitize(t).split()) for t in (query.left, query.right)]
    titles = [_side_title(i + 1, s, f"{n} word{'' if n == 1 else 's'}{note}")
              for i, (s, n, note) in enumerate(zip(("left", "right"), words, notes, strict=True))]
    return lines + _heading(console, titles, width, color)


def build_text_view(query: Any, width: int, height: int, color: bool = True) -> View:
    """A prompt and two responses, side by side and wrapped (never the gold answer)."""
    console = make_console(width)
    colw = column_width(width)
    lines = text_header(query, width, color)
    sides = [sanitize(query.left), sanitize(query.right)]
    lines += columns(render_lines(console, Text(sides[0], overflow="fold"), colw, color),
                     render_lines(console, Text(sides[1], overflow="fold"), colw, color), colw)
    return View(query.id, "text", "text", width, height, lines, query=query)


def step_features(arrays: Mapping[str, Any]) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """The per-step series of a segment that may be shown (observation features and the
    action), as (label, values), and notes about what is not drawn. Never the rewards."""
    feats: list[tuple[str, np.ndarray]] = []
    notes: list[str] = []
    seen: set[str] = set()
    for key, name in SHOWN_KEYS.items():
        if key not in arrays or name in seen:
            continue
        seen.add(name)
        a = np.asarray(arrays[key])
        if a.dtype.kind not in "biuf" or a.ndim == 0:
            notes.append(f"{name}: not numeric, not drawn")
        elif a.ndim == 1:
            feats.append((name, a.astype(float)))
        elif a.ndim == 2:
            d = a.shape[1]
            for j in range(min(d, MAX_FEATURES)):
                feats.append((f"{name}[{j}]", a[:, j].astype(float)))
            if d > MAX_FEATURES:
                notes.append(f"{d - MAX_FEATURES} more {name} features not drawn")
        else:
            shape = "x".join(str(s) for s in a.shape[1:])
            notes.append(f"{name}: {shape} per step (an image), not drawn")
    return feats, notes


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _spark_column(feats: list[tuple[str, np.ndarray]], scales: dict[str, tuple[float, float]],
                  notes: list[str], head: list[str], colw: int) -> Text:
    text = Text(overflow="fold")
    for line in head:
        text.append(line + "\n", style="dim")
    labelw = max((len(label) for label in scales), default=0)
    ranges = {label: f" {_fmt(lo)}..{_fmt(hi)}" for label, (lo, hi) in scales.items()}
    rangew = max((len(r) for r in ranges.values()), default=0)
    spark_w = colw - labelw - 1 - rangew  # one width for all: steps line up across rows
    show_ranges = spark_w >= 8
    if not show_ranges:
        spark_w = max(1, colw - labelw - 1)
    for label, values in feats:
        lo, hi = scales[label]
        style = "yellow" if label.startswith("action") else "green"
        text.append(label.ljust(labelw) + " ")
        text.append(sparkline(values, spark_w, lo, hi), style=style)
        text.append((ranges[label] if show_ranges else "") + "\n", style="dim")
    for note in notes:
        text.append(note + "\n", style="dim italic")
    text.rstrip()
    return text


def _fps(meta: Mapping[str, Any]) -> float:
    try:
        fps = float(meta.get("fps", DEFAULT_FPS))
    except (TypeError, ValueError):
        fps = DEFAULT_FPS
    return min(30.0, max(1.0, fps)) if math.isfinite(fps) else DEFAULT_FPS


def _steps(arrays: Mapping[str, Any]) -> int:
    for key in ("actions", "acts", "obs", "observations", "frames"):
        if key in arrays and np.ndim(arrays[key]) > 0:
            return int(np.shape(arrays[key])[0])
    return 0


def gif_path(gif_dir: Path, query: Any, side: str) -> Path:
    return Path(gif_dir) / f"query{query.id}-{query.uid[:8]}-{side}.gif"


def build_segment_view(query: Any, width: int, height: int, animate: bool = True,
                       gif_dir: Path | None = None, color: bool = True,
                       chrome_rows: int = 6) -> View:
    """Two trajectory segments side by side: half-block frame animation (when frames are
    stored and ``animate``), the GIF paths, and per-step sparklines of observations and
    actions. ``chrome_rows`` is what the screen needs around the body (header, keys)."""
    console = make_console(width)
    colw = column_width(width)
    sides = (query.left, query.right)
    names = ("left", "right")
    frames = [to_rgb_frames(s.get("frames")) for s in sides]
    fps = _fps(query.meta or {})

    heads: list[list[str]] = [[], []]
    gifs: list[str] = []
    jobs: list[tuple[np.ndarray, Path, float]] = []
    gif_notes: list[str] = []  # full width, so that a path is never folded
    for i, f in enumerate(frames):
        if f is None:
            heads[i].append("no frames stored: sparklines only")
            continue
        if gif_dir is None:
            continue
        path = gif_path(gif_dir, query, names[i]).absolute()
        if not (path.exists() and path.stat().st_size > 0):
            jobs.append((f, path, fps))
        gif_notes.append(f"{names[i]} gif: {path}")
        gifs.append(str(path))

    env = f" · {sanitize(query.env_id)}" if query.env_id else ""
    titles = [_side_title(i + 1, names[i], f"{_steps(s)} steps") for i, s in enumerate(sides)]
    lines = _heading(console, titles, width, color)

    animation = None
    if animate and any(f is not None for f in frames):
        max_rows = max(4, int((height - chrome_rows - len(lines)) * 0.6))
        panels: list[list[list[str]] | None] = []
        widths = []
        for f in frames:
            if f is None:
                panels.append(None)
                widths.append(0)
                continue
            fitted = fit_frames(f, colw, max_rows)
            panels.append([halfblock_lines(fr) for fr in fitted])
            widths.append(fitted.shape[2])
        rows = max(len(p[0]) for p in panels if p is not None)
        n_frames = max(len(p) for p in panels if p is not None)
        animation = Animation(len(lines), rows, colw, panels, widths, 1.0 / fps, n_frames,
                              placeholder=["(no frames)", "(no frames)"])
        lines += [animation.line(0, i) for i in range(rows)]
        lines.append(" " * colw + GAP + " " * colw)

    feats = [step_features(s) for s in sides]
    scales: dict[str, tuple[float, float]] = {}
    for fs, _ in feats:
        for label, values in fs:
            finite = values[np.isfinite(values)]
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                old = scales.get(label)
                scales[label] = (min(lo, old[0]), max(hi, old[1])) if old else (lo, hi)
            else:
                scales.setdefault(label, (0.0, 0.0))
    texts = [_spark_column(feats[i][0], scales, feats[i][1], heads[i], colw) for i in range(2)]
    lines += columns(render_lines(console, texts[0], colw, color),
                     render_lines(console, texts[1], colw, color), colw)
    if gif_notes:
        lines.append("")
        lines += render_lines(console, Text("\n".join(gif_notes), style="dim", overflow="fold"),
                              width, color)
    return View(query.id, "segment", f"segment{env}", width, height, lines, animation, gifs,
                jobs, query=query)


def build_view(query: Any, width: int, height: int, animate: bool = True,
               gif_dir: Path | None = None, color: bool = True) -> View:
    if query.kind == "text":
        return build_text_view(query, width, height, color)
    return build_segment_view(query, width, height, animate, gif_dir, color)


def error_view(query_id: int, width: int, height: int, message: str) -> View:
    """What to show when a query cannot be drawn (the person can still skip it)."""
    lines = [f"query {query_id} cannot be shown: {sanitize(message)}"[:width],
             "press s to skip it"]
    return View(query_id, "error", "error", width, height, [ln.ljust(width) for ln in lines])


def keys_line(kind: str, cols: int) -> str:  # the prompt's keys for a kind, as fits cols
    long, short = REASON_KEYS.get(kind, ("", ""))
    keys = KEYS_LINE.format(why=f"{long} · " if long else "")
    return keys if len(keys) <= cols else KEYS_SHORT.format(why=f"{short} " if short else "")


def compose_screen(view: View, cols: int, rows: int, title: str, stats: str, last: str,
                   offset: int, help: bool = False, frame: int | None = None,
                   color: bool = True, keys: str | None = None) -> tuple[list[str], int]:
    """The whole screen as ``rows`` lines: title and counts, a window of the body from line
    ``offset`` (clamped; returned too), a scroll rule, the keys (``keys``, else those of the
    labelling prompt) and a notice line. The frame area of a segment view shows animation
    frame ``frame`` (when given)."""
    body_h = max(1, rows - CHROME_ROWS)
    where = f"query {view.query_id} · {view.summary}"
    room = max(0, cols - len(where) - 1)
    head = [_style("1", (title[:room].ljust(room) + " " + where)[-cols:], color),
            stats[:cols], "─" * cols]
    body = [line[:cols] for line in HELP.splitlines()] if help else view.lines
    offset = 0 if help else max(0, min(offset, len(body) - body_h))
    window = body[offset:offset + body_h]
    anim = None if help or frame is None else view.animation
    if anim is not None:
        window = [anim.line(frame, i - anim.first_line)
                  if 0 <= i - anim.first_line < anim.rows else line
                  for i, line in enumerate(window, offset)]
    if len(body) > body_h:
        info = (f" lines {offset + 1}–{offset + len(window)} of {len(body)} · "
                "j/k PgUp/PgDn to scroll ")
        rule = ("──" + info + "─" * max(0, cols - len(info) - 2))[:cols]
    else:
        rule = "─" * cols
    keys = keys_line(view.kind, cols) if keys is None else keys
    foot = [rule, keys[:cols], _style("2", last[:cols], color) if last else ""]
    return head + window + [""] * (body_h - len(window)) + foot, offset


def _style(sgr: str, text: str, color: bool) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m" if color else text
