"""The ``rlhf-hgt`` command: one module per command group, flags built from the configs.

    rlhf-hgt feedback import|export|stats ...   (rlhf_hgt.cli.feedback)
    rlhf-hgt label STORE ...                    (rlhf_hgt.cli.label)
    rlhf-hgt control ENV_ID ...                 (rlhf_hgt.cli.control)
    rlhf-hgt lm reward|dpo|ppo|online ...       (rlhf_hgt.cli.lm)
    rlhf-hgt attention train|mark|compare ...   (rlhf_hgt.cli.attention)

Start-up stays light: only the module of the command asked for is imported, and it
imports its stack (torch, TRL, SB3) when it runs, so ``rlhf-hgt label`` and ``rlhf-hgt
feedback ...`` import no torch. The flags of a training command come from its config
dataclasses (:mod:`rlhf_hgt.cli.flags`), so ``--help`` shows the real defaults. Any error a
user can fix prints one message and exits with code 2. No library module imports this
package: it is wiring only, built on the same Python API a script uses.

``python -m rlhf_hgt.cli ...`` runs it too (e.g. under ``accelerate launch -m``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

#: command -> (module, one line of help)
GROUPS: dict[str, tuple[str, str]] = {
    "feedback": ("rlhf_hgt.cli.feedback", "import, export and summarise stored preferences"),
    "label": ("rlhf_hgt.cli.label", "answer pending queries at the terminal"),
    "control": ("rlhf_hgt.cli.control", "train a control policy from preferences over clips"),
    "lm": ("rlhf_hgt.cli.lm", "language models: reward model, DPO, PPO, the online loop"),
    "attention": ("rlhf_hgt.cli.attention", "human attention in training: train with "
                                            "guidance, mark images, compare runs"),
    "report": ("rlhf_hgt.cli.governance", "report.md and a self-contained report.html of a "
                                          "run: plots, annotators, oversight, model card"),
    "lineage": ("rlhf_hgt.cli.governance", "the answers and annotators behind a run and each "
                                           "checkpoint; --verify checks them"),
    "oversee": ("rlhf_hgt.cli.oversee", "pause, resume, stop, reject or roll back a run, "
                                        "from any terminal"),
}


def version() -> str:
    from rlhf_hgt import __version__

    return __version__


def command_word(argv: Sequence[str]) -> str | None:
    """The first word that is not an option: the command asked for."""
    return next((a for a in argv if not a.startswith("-")), None)


def add_subcommands(parser: argparse.ArgumentParser, dest: str,
                    commands: dict[str, tuple[str, str]], argv: Sequence[str], everything: bool,
                    fill: Callable[[argparse.ArgumentParser, str], None]) -> None:
    """Sub-commands of a group (``lm reward``, ``attention train``...): each is listed with
    its help, and ``fill(parser, name)`` adds the flags of the one ``argv`` names (of all,
    when ``everything``), so only that command's configs are imported."""
    sub = parser.add_subparsers(dest=dest, required=True, metavar="COMMAND")
    chosen = command_word(argv)
    for name, (text, description) in commands.items():
        p = sub.add_parser(name, help=text, description=description)
        if everything or name == chosen:
            fill(p, name)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (default: the command line): only the group that it names
    gets its flags, which keeps start-up light. Without any argv at all, every group's
    flags (:func:`full_parser`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return _parser(argv, everything=not argv)


def full_parser() -> argparse.ArgumentParser:
    """The parser with every command's flags (imports every config class)."""
    return _parser((), everything=True)


def _parser(argv: Sequence[str], everything: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-hgt",
        description="Reinforcement learning from human feedback and human-guided training.")
    parser.add_argument("--version", action="version", version=f"rlhf-hgt {version()}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    chosen = command_word(argv)
    for name, (module, text) in GROUPS.items():
        p = sub.add_parser(name, help=text, description=text)
        if everything or name == chosen:
            rest = list(argv)[list(argv).index(name) + 1:] if name == chosen else []
            importlib.import_module(module).add(p, rest, everything)
    return parser


def _command_parser(parser: argparse.ArgumentParser, argv: Sequence[str]
                    ) -> argparse.ArgumentParser:
    """The deepest sub-command parser that ``argv`` names (e.g. ``attention train``)."""
    tokens = list(argv)
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = next((t for t in tokens if subs and t in subs[0].choices), None)
        if chosen is None:
            return parser
        parser = subs[0].choices[chosen]
        tokens = tokens[tokens.index(chosen) + 1:]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rlhf-hgt`` with ``argv`` (default: the command line); returns the exit code."""
    from rlhf_hgt.feedback.errors import exit_code

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # say so under the command's own usage, not the top level's
        _command_parser(parser, argv).error(f"unrecognized arguments: {' '.join(unknown)}")
    group = importlib.import_module(GROUPS[args.cmd][0])
    return exit_code(group.run, args, interrupted=getattr(group, "INTERRUPTED", "interrupted"))


if __name__ == "__main__":
    sys.exit(main())
