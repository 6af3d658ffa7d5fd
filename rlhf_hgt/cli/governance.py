"""Records and oversight of a run: ``rlhf-hgt report RUN_DIR [--open]`` (more to come:
``lineage``, ``oversee``).

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
    if args.open and not open_in_browser(report.html):
        print(f"no web browser found; open {report.html.resolve().as_uri()}")
    return 0


# ----------------------------------------------------------------------------- dispatch

#: command -> (add its arguments, run it)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "report": (_add_report, _run_report),
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
