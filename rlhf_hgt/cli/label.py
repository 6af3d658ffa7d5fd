"""``rlhf-hgt label STORE``: answer pending queries at the terminal.

Light: imports the store and the terminal prompt only (no torch). The flags come from
:class:`rlhf_hgt.feedback.terminal.LabelOptions`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rlhf_hgt.cli.flags import Section, add_section, add_switch, build
from rlhf_hgt.feedback.terminal import LabelOptions

SECTION = Section(LabelOptions, title="labelling")


def add(parser: argparse.ArgumentParser, argv: Sequence[str] = (),
        everything: bool = False) -> None:
    parser.add_argument("store", help="path of the store")
    add_section(parser, SECTION)
    add_switch(parser, "--no-animation", SECTION, "animate", False,
               "the same as --no-animate (its old name)")


def run(args: argparse.Namespace) -> int:
    from rlhf_hgt.feedback.terminal import run_labelling

    return run_labelling(args.store, build(args, [SECTION]))
