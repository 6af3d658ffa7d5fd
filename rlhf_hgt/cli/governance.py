"""Records and oversight of a run: ``rlhf-hgt report RUN_DIR [--open]`` and ``rlhf-hgt
lineage RUN_DIR [--checkpoint FILE] [--json] [--verify]``.

Each of these is a top-level command (``rlhf-hgt report``, not ``rlhf-hgt governance
report``), so each has its own entry in :data:`rlhf_hgt.cli.GROUPS` pointing at this one
module. :func:`add` learns which command it fills from the parser it is given (argparse
names a sub-parser ``rlhf-hgt NAME``), and :func:`run` dispatches on ``args.cmd``. To add a
command: write ``_add_NAME(parser)`` and ``_run_NAME(args)``, list them in
:data:`COMMANDS`, and add ``"NAME": ("rlhf_hgt.cli.governance", "help")`` to GROUPS.

Light: no torch, transformers or SB3 (the report draws with matplotlib).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rlhf_hgt.feedback.errors import UserInputError

INTERRUPTED = "interrupted; nothing half written (files are replaced atomically)"


# ----------------------------------------------------------------------------- report


def _add_report(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write RUN_DIR/report.md and a self-contained RUN_DIR/report.html "
                          "(plots embedded, opens offline): what was trained, from what, by "
                          "whom; learning curve; reward-model accuracy against labels; "
                          "annotators, response times, agreement, gold; oversight acts; "
                          "lineage; the model card. Works for control, lm and attention runs.")
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a run folder (it holds metrics.json, written when a run ends)")
    parser.add_argument("--open", action="store_true",
                        help="open report.html in the web browser afterwards")


def _run_report(args: argparse.Namespace) -> int:
    from rlhf_hgt.governance.report import open_in_browser, write_report

    try:
        report = write_report(args.run_dir)
    except OSError as exc:
        raise UserInputError(f"{args.run_dir}: cannot write the report ({exc})") from None
    print(f"wrote {report.markdown} and {report.html} ({report.figures} plots)")
    if report.store_problem:  # said in the report too, but a person should not miss it
        print(f"rlhf-hgt: warning: {report.store_problem}; the report leaves out the run's "
              "labels and lineage", file=sys.stderr)
    if args.open and not open_in_browser(report.html):
        print(f"no web browser found; open {report.html.resolve().as_uri()}")
    return 0


# ----------------------------------------------------------------------------- lineage


def _add_lineage(parser: argparse.ArgumentParser) -> None:
    parser.description = ("The answers that trained a run (or one of its checkpoints): each "
                          "answer's id, annotator, answer, times, rationale, reasons and the "
                          "query's source models; counts per annotator and per kind of "
                          "teacher; the checkpoints in order with the answers each saw and "
                          "its sha256; oversight acts. --verify checks the record against the "
                          "files and the store (exit 0 when all holds, 1 naming what differs).")
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a run folder (it holds lineage.jsonl, written at each checkpoint)")
    parser.add_argument("--checkpoint", metavar="FILE", default=None,
                        help="only the answers the checkpoint holding FILE saw (a file or "
                             "folder of the run, its sha256, or a checkpoint name)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (answers, annotators, checkpoints, ...)")
    parser.add_argument("--verify", action="store_true",
                        help="check each checkpoint file's sha256 and the hash chain over the "
                             "store's answers and events; exit 1 listing what differs")


def _run_lineage(args: argparse.Namespace) -> int:
    import json

    from rlhf_hgt.governance.lineage import verify
    from rlhf_hgt.governance.lineage_view import read_lineage, render

    if args.verify:
        from pathlib import Path

        if not Path(args.run_dir).is_dir():
            read_lineage(args.run_dir)  # raises the message for a bad RUN_DIR
        problems, notes = verify(args.run_dir)
        if args.json:
            print(json.dumps({"ok": not problems, "problems": problems, "notes": notes},
                             indent=2))
        else:
            for line in problems:
                print(f"DIFFERS: {line}")
            for line in notes:
                print(f"note: {line}")
            print(f"{args.run_dir}: " + (f"{len(problems)} difference(s) from the record"
                                         if problems else "the record holds"))
        return 1 if problems else 0
    obj = read_lineage(args.run_dir, args.checkpoint)
    if args.json:
        print(json.dumps(obj, indent=2, default=str))
        return 0
    from rich.console import Console

    render(obj, Console(soft_wrap=True))
    return 0


# ----------------------------------------------------------------------------- dispatch

#: command -> (add its arguments, run it)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "report": (_add_report, _run_report),
    "lineage": (_add_lineage, _run_lineage),
}


def command_of(parser: argparse.ArgumentParser) -> str:
    """The command a sub-parser was made for: the last word of its prog."""
    name = parser.prog.split()[-1]
    if name not in COMMANDS:
        raise KeyError(f"rlhf_hgt.cli.governance has no command {name!r}: add it to COMMANDS")
    return name


def add(parser: argparse.ArgumentParser, argv: Sequence[str] = (),
        everything: bool = False) -> None:
    COMMANDS[command_of(parser)][0](parser)


def run(args: argparse.Namespace) -> int:
    return COMMANDS[args.cmd][1](args)
