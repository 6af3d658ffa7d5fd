"""``rlhf-hgt report RUN_DIR``: one page a reader grasps in a minute, for every kind of run.

Writes ``RUN_DIR/report.md`` (its plots as PNG files in ``RUN_DIR/report_files/``) and a
self-contained ``RUN_DIR/report.html`` (plots as data URIs, inline CSS, no script, nothing
fetched). In order: the run at a glance and its known limits; the plots (the learning curve
against the true or held-out measure, reward-model accuracy against the number of labels,
labels per annotator, response times, the saliency pictures of an attention run); the
numbers in tables; who guided the model (annotators, teachers, agreement, gold); the
oversight acts; the lineage summary; the record (manifest: command, revision, versions,
hashes, config); and the model card.

Torch-free: reads JSON and the store, draws with matplotlib.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.files import write_bytes_atomic
from rlhf_hgt.governance import sections as S
from rlhf_hgt.governance.card import (
    card_blocks,
    folder_role,
    front_matter,
    known_limits,
    model_folders,
    yaml_front_matter,
)
from rlhf_hgt.governance.doc import (
    Block,
    Box,
    Bullets,
    Code,
    Figure,
    Figures,
    Heading,
    Para,
    Table,
    fmt,
    to_html,
    to_markdown,
)
from rlhf_hgt.governance.run_info import RunInfo, load_run

IMAGE_DIR = "report_files"
MAX_ROWS = 25
LINEAGE_MODULE = "rlhf_hgt.governance.lineage"

#: per-round columns worth a table, in order (those a run has are shown)
ROUND_COLUMNS = ("round", "epoch", "step", "labels", "answers_added", "timesteps", "true_return",
                 "reward_holdout_accuracy", "reward_holdout_pref_accuracy",
                 "reward_train_accuracy", "reward_model_accuracy", "implicit_reward_accuracy",
                 "test_accuracy", "train_loss", "sample_score_mean", "eval_score_mean", "score",
                 "reward", "kl_k1", "kl_coef", "seconds")

NAV = (("glance", "At a glance"), ("plots", "Plots"), ("numbers", "Numbers"),
       ("guidance", "Human guidance"), ("oversight", "Oversight"), ("lineage", "Lineage"),
       ("record", "Record"), ("card", "Model card"))


@dataclass
class Report:
    markdown: Path
    html: Path
    figures: int
    #: why the run's store could not be read (the report then lacks its labels and lineage)
    store_problem: str | None = None


# ----------------------------------------------------------------------------- parts


def glance_rows(info: RunInfo) -> list[list[Any]]:
    man = info.manifest
    rows: list[list[Any]] = [["what", f"{S.WHAT.get(info.kind, info.kind)}: {S.subject(info)}"],
                             ["run folder", f"`{info.path}`"]]
    source = _source(info)
    if source:
        rows.append(["trained from", source])
    rows.append(["guided by", _by_whom(info)])
    for label, value in S.headline_rows(info)[:3]:
        rows.append([label, fmt(value)])  # as text: left-aligned like the other rows
    git = man.get("git") or {}
    if man:
        rev = str(git.get("revision") or "not recorded")[:12]
        rows.append(["when, which code", f"{man.get('written_at', '–')}, revision `{rev}`"
                     + (" + uncommitted changes" if git.get("dirty") else "")])
    acts = [str((e.get("data") or {}).get("act")) for e in info.oversight]
    rows.append(["oversight acts", ", ".join(acts) if acts else "none"])
    return rows


def _source(info: RunInfo) -> str | None:
    cfg = info.config
    parts = []
    if info.kind == "control":
        parts.append(f"clips of `{cfg.get('env_id') or info.metrics.get('env_id')}`")
    if info.kind == "attention" and cfg.get("data"):
        parts.append(f"images `{cfg['data']}`")
    if info.data_file is not None:
        parts.append(f"pairs in `{info.data_file}`")
    if info.store is not None:
        parts.append(f"answers in the store `{info.store}`")
    if info.kind == "lm ppo" and (cfg.get("reward") or info.metrics.get("reward")):
        parts.append(f"reward `{cfg.get('reward') or info.metrics.get('reward')}`")
    return "; ".join(parts) or None


def _by_whom(info: RunInfo) -> str:
    ann = info.annotators
    people = [f"`{n}` ({a['answers']})" for n, a in ann.items() if not a["synthetic"]]
    teachers = [f"`{n}` ({a['answers']})" for n, a in ann.items() if a["synthetic"]]
    markers = [f"`{n}` ({v['marks']} marks)" for n, v in
               (info.marks.get("by_annotator") or {}).items()]
    parts = []
    if people:
        parts.append(f"{len(people)} person(s): {', '.join(people)}")
    if teachers:
        parts.append(f"{len(teachers)} synthetic teacher(s): {', '.join(teachers)}")
    if markers:
        parts.append(f"attention marks by {', '.join(markers)}")
    if not parts and S.attention_source(info):
        parts.append(str(S.attention_source(info)))
    if not parts and info.file_annotators:
        parts.append("annotators named in the data file: " + ", ".join(
            f"`{n}` ({c})" for n, c in sorted(info.file_annotators.items())))
    return "; ".join(parts) or "not recorded"


def saliency_figure(info: RunInfo) -> Figure | None:
    path = info.path / "saliency.png"
    if not path.is_file():
        return None
    return Figure("saliency", path.read_bytes(),
                  "Saliency: where the trained model looks on test images (saliency.png)")


def round_table(info: RunInfo) -> Table | None:
    rows = info.history
    if info.kind == "attention":
        rows = [r for r in info.metrics.get("curve") or [] if isinstance(r, dict)]
    if not rows:
        return None
    cols = [c for c in ROUND_COLUMNS if any(c in r for r in rows)]
    if not cols:
        return None
    step = max(1, -(-len(rows) // MAX_ROWS))
    picked = rows[::step]
    if picked[-1] is not rows[-1]:
        picked.append(rows[-1])
    caption = None if step == 1 else f"every {step}th of {len(rows)} rows, and the last"
    return Table(cols, [[r.get(c) for c in cols] for r in picked], caption=caption)


def timing_table(info: RunInfo) -> Table | None:
    if not info.durations:
        return None
    import numpy as np

    rows = []
    for name, d in info.durations.items():
        a = np.asarray(d, dtype=float)
        synthetic = (info.annotators.get(name) or {}).get("synthetic")
        rows.append([f"`{name}`", "simulated" if synthetic else "person", len(a),
                     float(np.median(a)), float(np.quantile(a, 0.1)),
                     float(np.quantile(a, 0.9))])
    return Table(["annotator", "times", "answers timed", "median s", "10th pct s",
                  "90th pct s"], rows, caption="response time: answered_at - shown_at")


def lineage_blocks(run_dir: Path) -> list[Block]:
    """``rlhf_hgt.governance.lineage.summary(run_dir)`` when that module exists."""
    try:
        module = importlib.import_module(LINEAGE_MODULE)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == LINEAGE_MODULE:
            return [Para("Lineage: not recorded (this rlhf_hgt has no lineage module).")]
        return [Para(f"Lineage could not be loaded: {exc}")]
    summary = getattr(module, "summary", None)
    if summary is None:
        return [Para("Lineage: not recorded (the lineage module has no summary()).")]
    try:
        value = summary(run_dir)
    except Exception as exc:  # the report still tells everything else
        return [Para(f"Lineage could not be read: {exc}")]
    blocks = value_blocks(value)
    blocks.append(Para(f"Every answer and checkpoint: `rlhf-hgt lineage {run_dir}`; check "
                       f"them against the store and the files: `rlhf-hgt lineage {run_dir} "
                       f"--verify`."))
    return blocks


def value_blocks(value: Any) -> list[Block]:
    """Any JSON-like value as blocks: text, a key/value table, a table of records."""
    if value is None:
        return [Para("Lineage: nothing recorded.")]
    if isinstance(value, str):
        return [Code(value)] if "\n" in value.strip() else [Para(value)]
    if isinstance(value, list):
        records = [v for v in value if isinstance(v, dict)]
        if records and len(records) == len(value):
            cols = list(dict.fromkeys(k for r in records for k in r))[:10]
            return [Table(cols, [[_short(r.get(c)) for c in cols] for r in records[:MAX_ROWS]],
                          caption=None if len(records) <= MAX_ROWS
                          else f"first {MAX_ROWS} of {len(records)}")]
        return [Para(_short(value))]
    if isinstance(value, dict):
        rows, tables = [], []
        for key, v in value.items():
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                tables += [Heading(str(key), 4), *value_blocks(v)]
            elif isinstance(v, dict) and all(not isinstance(x, dict | list) for x in v.values()):
                rows += [[f"{key}.{k}", x] for k, x in v.items()]
            else:
                rows.append([key, _short(v)])
        return ([Table(["what", "value"], rows)] if rows else []) + tables
    return [Para(fmt(value))]


def _short(value: Any, limit: int = 160) -> Any:
    if isinstance(value, dict | list):
        import json

        text = json.dumps(value, default=str)
        return text if len(text) <= limit else text[:limit] + f"… ({len(value)} items)"
    return value


def card_box(info: RunInfo) -> list[Block]:
    folders = model_folders(info.path)
    folder = folders[0] if folders else info.path
    role = folder_role(folder, info.kind)
    written = [f"`{f / 'README.md'}`" for f in folders if (f / "README.md").is_file()]
    where = (f"Cards on disk: {', '.join(written)}." if written else
             "No card on disk yet: the card below is built from the run's record now.")
    return [Para(where),
            Box([Code(yaml_front_matter(front_matter(info, folder)), summary="front matter"),
                 *card_blocks(info, role, folder, level=3)], title=f"model card · {role}")]


def report_blocks(info: RunInfo) -> tuple[list[Block], list[Figure]]:
    from rlhf_hgt.governance.report_plots import all_figures

    figures = all_figures(info)
    saliency = saliency_figure(info)
    if saliency is not None:
        figures.append(saliency)
    limits = known_limits(info)
    blocks: list[Block] = [
        Heading("At a glance", 2, "glance"), Table(["", ""], glance_rows(info)),
        Para("**Known limits**"),
        Bullets(limits) if limits else Para("None found in the run's record."),
        Heading("Plots", 2, "plots"),
        Figures(figures) if figures else Para("Nothing to plot in this run's record."),
        Heading("Numbers", 2, "numbers"),
    ]
    headline = S.headline_rows(info)
    if headline:
        blocks.append(Table(["metric", "value"], headline, caption="headline"))
    rounds = round_table(info)
    if rounds is not None:
        blocks.append(rounds)
    scalars = S.scalar_rows(info.metrics)
    if scalars:
        import json

        blocks.append(Code(json.dumps(dict(scalars), indent=2, default=str),
                           summary=f"every number in metrics.json ({len(scalars)})"))
    blocks.append(Heading("Human guidance", 2, "guidance"))
    blocks += S.guidance_blocks(info)
    timing = timing_table(info)
    if timing is not None:
        blocks.append(timing)
    blocks += [Heading("Oversight", 2, "oversight"), *S.oversight_blocks(info),
               Heading("Lineage", 2, "lineage"), *lineage_blocks(info.path),
               Heading("Record", 2, "record"), *S.training_blocks(info, detail=True),
               Heading("Model card", 2, "card"), *card_box(info)]
    return blocks, figures


# ----------------------------------------------------------------------------- writing


def write_report(run_dir: str | Path) -> Report:
    """Write RUN_DIR/report.md (+ report_files/*.png) and RUN_DIR/report.html."""
    from rlhf_hgt import __version__

    info = load_run(run_dir)
    blocks, figures = report_blocks(info)
    title = f"Run report: {S.subject(info)}"
    footer = (f"Written by rlhf_hgt {__version__} on "
              f"{S.when(time.time())} with `rlhf-hgt report {info.path}`.")
    for fig in figures:
        write_bytes_atomic(info.path / IMAGE_DIR / f"{fig.name}.png", fig.png)
    md = f"# {title}\n\n" + to_markdown(blocks, IMAGE_DIR) + f"\n---\n\n{footer}\n"
    md_path = write_bytes_atomic(info.path / "report.md", md.encode("utf-8"))
    page = to_html(title, blocks, nav=NAV, footer=footer)
    html_path = write_bytes_atomic(info.path / "report.html", page.encode("utf-8"))
    note = info.store_note or ""
    problem = note if note.startswith("the store could not be read") else None
    return Report(md_path, html_path, len(figures), problem)


def open_in_browser(path: Path) -> bool:
    import webbrowser

    return webbrowser.open(path.resolve().as_uri())
