"""Argument definitions and dispatch of the training commands (control, lm, attention, report).

Kept apart from cli.py so that the light commands stay short; the stacks themselves are
imported only inside ``run``.
"""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the training sub-commands to the top-level parser."""


def run(args: argparse.Namespace) -> int:
    raise SystemExit(f"rlhf-hgt: unknown command {args.cmd!r}")
