"""``rlhf-hgt feedback import|export|stats|copy``: move preferences in and out of a store.

A STORE is an SQLite path or a ``postgresql://user@host:port/db`` URL (a team store).
Light: imports the store package only (no torch; psycopg only for a URL)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

EXISTING = "path of an existing store, or a postgresql://user@host:port/db URL"


def add(parser: argparse.ArgumentParser, argv: Sequence[str] = (),
        everything: bool = False) -> None:
    fsub = parser.add_subparsers(dest="feedback_cmd", required=True, metavar="COMMAND")
    imp = fsub.add_parser(
        "import", help='import a JSONL file of labelled pairs {"prompt","chosen","rejected"} '
                       'or pending queries {"prompt","a","b"}',
        description="Import a JSONL file into a store, all lines or none. A labelled pair "
                    "may carry chosen_highlights / rejected_highlights: lists of [start, end) "
                    "character offsets of the words that decided, stored with its answer.")
    imp.add_argument("store", help="path of the store (created when missing), or a "
                                   "postgresql://user@host:port/db URL")
    imp.add_argument("file", help="JSONL file, one JSON object per line")
    imp.add_argument("--annotator", default=None,
                     help="annotator id for labelled lines that name none "
                          "(default: 'import:<file name>')")

    exp = fsub.add_parser("export", help="export labelled text pairs in TRL format",
                          description="Export the labelled text pairs of a store in TRL "
                                      "format, with provenance columns and word highlights "
                                      "(chosen_highlights / rejected_highlights).")
    exp.add_argument("store", help=EXISTING)
    exp.add_argument("file", help="JSONL file to write (replaced atomically)")
    exp.add_argument("--no-provenance", action="store_true",
                     help="write only prompt/chosen/rejected (no annotator, rationale, "
                          "highlights)")

    st = fsub.add_parser("stats", help="counts, per-annotator numbers, agreement, gold accuracy")
    st.add_argument("store", help=EXISTING)
    st.add_argument("--json", action="store_true", help="print JSON instead of tables")

    cp = fsub.add_parser(
        "copy", help="copy a whole store, SQLite <-> PostgreSQL",
        description="Copy a whole store (queries, answers, events, marks, live claims, "
                    "settings) from either back end to either, in one transaction on the "
                    "destination. Into an empty destination the ids are kept; a non-empty "
                    "one is refused unless --merge, which adds what it lacks (skipping rows "
                    "already there by their unique tokens).")
    cp.add_argument("src", help=EXISTING)
    cp.add_argument("dst", help="path or postgresql:// URL of the destination (created "
                                "when missing)")
    cp.add_argument("--merge", action="store_true",
                    help="add to a destination that already holds answers")


def run(args: argparse.Namespace) -> int:
    if args.feedback_cmd == "import":
        from rlhf_hgt.feedback.jsonl import import_jsonl

        print(import_jsonl(args.store, args.file, default_annotator=args.annotator).describe())
    elif args.feedback_cmd == "export":
        from rlhf_hgt.feedback.jsonl import export_jsonl

        print(export_jsonl(args.store, args.file, provenance=not args.no_provenance).describe())
    elif args.feedback_cmd == "copy":
        from rlhf_hgt.feedback.store_copy import copy_store

        print(copy_store(args.src, args.dst, merge=args.merge).describe())
    else:
        from rlhf_hgt.feedback.stats import compute_stats, print_stats

        stats = compute_stats(args.store)
        if args.json:
            print(json.dumps(stats, indent=2))
        else:
            print_stats(stats)
    return 0
