"""A small document model shared by the run report and the model card: one content, two
renderings, Markdown and one self-contained HTML page.

Blocks are plain dataclasses (a heading, a paragraph, bullets, a table, figures, a code
block). Inline text may use ```code``` and ``**bold**``; everything else is escaped. The HTML
page carries its CSS inline and its images as ``data:`` URIs, loads no script, font or
stylesheet from anywhere, and asks for no favicon: it opens offline, from a file, as is.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Heading:
    text: str
    level: int = 2
    anchor: str | None = None


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: Sequence[str]
    rows: list[Sequence[Any]]
    caption: str | None = None


@dataclass
class Figure:
    name: str  # file stem under the report's image folder (Markdown); alt text fallback
    png: bytes
    caption: str


@dataclass
class Figures:
    items: list[Figure] = field(default_factory=list)


@dataclass
class Code:
    text: str
    summary: str | None = None  # HTML: a collapsed <details> with this summary
    lang: str = ""


@dataclass
class Box:
    """A framed part of the page (the embedded model card); Markdown: a quoted section."""
    blocks: list[Any]
    title: str


Block = Heading | Para | Bullets | Table | Figures | Code | Box


# ----------------------------------------------------------------------------- values


def fmt(value: Any, digits: int = 4) -> str:
    """A value as table text: floats to ``digits`` significant digits, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{digits}g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


# ----------------------------------------------------------------------------- Markdown


def _md_cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block], image_dir: str = "report_files") -> str:
    """Markdown; a figure is an image link ``image_dir/NAME.png`` (the caller writes it)."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Table):
            lines = []
            if b.caption:
                lines += [f"*{b.caption}*", ""]
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join("---" for _ in b.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Figures):
            out.append("\n\n".join(f"![{f.caption}]({image_dir}/{f.name}.png)  \n*{f.caption}*"
                                   for f in b.items))
        elif isinstance(b, Code):
            fence = "````" if "```" in b.text else "```"
            text = f"{fence}{b.lang}\n{b.text.rstrip()}\n{fence}"
            summary = html.escape(b.summary or "", quote=False)
            out.append(f"<details><summary>{summary}</summary>\n\n{text}\n\n</details>"
                       if b.summary else text)
        elif isinstance(b, Box):
            inner = to_markdown(b.blocks, image_dir)
            out.append(f"> **{b.title}**\n>\n" + "\n".join(
                ("> " + line).rstrip() for line in inner.splitlines()))
    return "\n\n".join(out) + "\n"


# ----------------------------------------------------------------------------- HTML


_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline_html(text: str) -> str:
    escaped = html.escape(text, quote=False)
    escaped = _INLINE_CODE.sub(r"<code>\1</code>", escaped)
    return _BOLD.sub(r"<strong>\1</strong>", escaped)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def blocks_html(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            level = min(max(b.level, 1), 6)
            anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
            out.append(f"<h{level}{anchor}>{inline_html(b.text)}</h{level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{inline_html(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            cap = f"<caption>{inline_html(b.caption)}</caption>" if b.caption else ""
            head = "".join(f"<th>{inline_html(str(h))}</th>" for h in b.header)
            head = f"<thead><tr>{head}</tr></thead>" if any(str(h) for h in b.header) else ""
            # a column of numbers only (blanks aside) is right-aligned
            numeric = [all(_is_number(r[i]) or r[i] is None for r in b.rows if i < len(r))
                       for i in range(max((len(r) for r in b.rows), default=0))]
            body = "".join(
                "<tr>" + "".join(
                    f"<td class=\"num\">{html.escape(fmt(c))}</td>" if numeric[i]
                    else f"<td>{inline_html(fmt(c))}</td>" for i, c in enumerate(row)) + "</tr>"
                for row in b.rows)
            out.append(f"<div class=\"scroll\"><table>{cap}{head}"
                       f"<tbody>{body}</tbody></table></div>")
        elif isinstance(b, Figures):
            figs = "".join(
                f"<figure><img src=\"{data_uri(f.png)}\" alt=\"{html.escape(f.caption)}\">"
                f"<figcaption>{inline_html(f.caption)}</figcaption></figure>" for f in b.items)
            out.append(f"<div class=\"figures\">{figs}</div>")
        elif isinstance(b, Code):
            pre = f"<pre>{html.escape(b.text)}</pre>"
            out.append(f"<details><summary>{inline_html(b.summary)}</summary>{pre}</details>"
                       if b.summary else pre)
        elif isinstance(b, Box):
            out.append(f"<section class=\"box\"><div class=\"boxtitle\">{inline_html(b.title)}"
                       f"</div>{blocks_html(b.blocks)}</section>")
    return "\n".join(out)


CSS = """
:root { --fg: #1d2330; --muted: #5b6474; --line: #d9dee7; --bg: #ffffff; --soft: #f4f6fa;
        --accent: #2f5aa8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.3em; margin: 1.8em 0 0.5em; padding-bottom: 0.2em;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 1.08em; margin: 1.3em 0 0.4em; }
p, ul { margin: 0.4em 0 0.8em; }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       background: var(--soft); padding: 0.05em 0.3em; border-radius: 3px; }
pre { font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
      background: var(--soft); padding: 12px; overflow: auto; border-radius: 6px;
      max-height: 480px; }
nav { color: var(--muted); font-size: 0.92em; margin-bottom: 1em; }
nav a { color: var(--accent); text-decoration: none; margin-right: 0.9em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.93em; }
caption { text-align: left; color: var(--muted); padding: 0 0 4px; font-style: italic; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 12px 4px 0; text-align: left;
         vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(430px, 1fr));
           gap: 18px; margin: 0.5em 0 1em; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 10px;
         background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 6px; }
details { margin: 0.4em 0 1em; }
summary { cursor: pointer; color: var(--accent); }
.box { border: 1px solid var(--line); border-radius: 8px; padding: 4px 20px 12px;
       background: #fbfcfe; }
.boxtitle { color: var(--muted); font-size: 0.85em; text-transform: uppercase;
            letter-spacing: 0.05em; margin-top: 10px; }
footer { color: var(--muted); font-size: 0.85em; margin-top: 3em; }
"""


def to_html(title: str, blocks: Sequence[Block], nav: Sequence[tuple[str, str]] = (),
            footer: str = "") -> str:
    """One self-contained page: inline CSS, images as data URIs, no script, nothing fetched."""
    links = "".join(f"<a href=\"#{html.escape(a)}\">{html.escape(t)}</a>" for a, t in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        # nothing to fetch: no favicon request, no outside resource allowed at all
        "<link rel=\"icon\" href=\"data:,\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{inline_html(title)}</h1>\n"
        + (f"<nav>{links}</nav>\n" if links else "")
        + blocks_html(blocks)
        + (f"\n<footer>{inline_html(footer)}</footer>" if footer else "")
        + "\n</main>\n</body>\n</html>\n")
