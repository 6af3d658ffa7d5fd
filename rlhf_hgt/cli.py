"""The ``rlhf-hgt`` command.

Start-up stays light: heavy stacks (torch, transformers, TRL, PEFT, SB3) are imported
inside the commands that need them, so ``rlhf-hgt label`` and ``rlhf-hgt feedback ...``
start at once. Any error a user can fix prints one message and exits with code 2.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence


def _default_annotator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return os.environ.get("USER", "annotator")


def _add_feedback(sub: argparse._SubParsersAction) -> None:
    fb = sub.add_parser("feedback", help="import, export and summarise stored preferences")
    fsub = fb.add_subparsers(dest="feedback_cmd", required=True)

    imp = fsub.add_parser("import", help="import a JSONL file of labelled pairs "
                          '{"prompt","chosen","rejected"} or pending queries {"prompt","a","b"}')
    imp.add_argument("store", help="path of the store (created when missing)")
    imp.add_argument("file", help="JSONL file, one JSON object per line")
    imp.add_argument("--annotator", default=None,
                     help="annotator id for labelled lines that name none "
                          "(default: 'import:<file name>')")

    exp = fsub.add_parser("export", help="export labelled text pairs in TRL format")
    exp.add_argument("store", help="path of an existing store")
    exp.add_argument("file", help="JSONL file to write (replaced atomically)")
    exp.add_argument("--no-provenance", action="store_true",
                     help="write only prompt/chosen/rejected (no annotator, rationale)")

    st = fsub.add_parser("stats", help="counts, per-annotator numbers, agreement, gold accuracy")
    st.add_argument("store", help="path of an existing store")
    st.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _add_label(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("label", help="answer pending queries at the terminal")
    lab.add_argument("store", help="path of the store")
    lab.add_argument("--annotator", default=None,
                     help="who is labelling (default: your login name)")
    lab.add_argument("--per-query", type=int, default=None,
                     help="answers wanted per query from different annotators "
                          "(default: the store's setting, 1)")
    lab.add_argument("--limit", type=int, default=None,
                     help="stop after this many answers (default: until none is left)")
    lab.add_argument("--gif-dir", default=None,
                     help="where GIFs of trajectory segments are saved "
                          "(default: a folder beside the store)")
    lab.add_argument("--no-animation", action="store_true",
                     help="show segments as sparklines only, no frame animation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-hgt",
        description="Reinforcement learning from human feedback and human-guided training.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_feedback(sub)
    _add_label(sub)
    from rlhf_hgt import cli_train  # light: only argparse definitions

    cli_train.add_commands(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.cmd == "feedback":
        if args.feedback_cmd == "import":
            from rlhf_hgt.feedback.jsonl import import_jsonl

            summary = import_jsonl(args.store, args.file, default_annotator=args.annotator)
            print(summary.describe())
            return 0
        if args.feedback_cmd == "export":
            from rlhf_hgt.feedback.jsonl import export_jsonl

            n = export_jsonl(args.store, args.file, provenance=not args.no_provenance)
            print(n.describe())
            return 0
        if args.feedback_cmd == "stats":
            from rlhf_hgt.feedback.stats import compute_stats, print_stats

            stats = compute_stats(args.store)
            if args.json:
                import json

                print(json.dumps(stats, indent=2))
            else:
                print_stats(stats)
            return 0
    if args.cmd == "label":
        from rlhf_hgt.feedback.terminal import LabelOptions, run_labelling

        opts = LabelOptions(annotator=args.annotator or _default_annotator(),
                            per_query=args.per_query, limit=args.limit, gif_dir=args.gif_dir,
                            animate=not args.no_animation)
        return run_labelling(args.store, opts)
    from rlhf_hgt import cli_train

    return cli_train.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from rlhf_hgt.feedback.errors import exit_code

    return exit_code(run, args)


if __name__ == "__main__":
    sys.exit(main())
