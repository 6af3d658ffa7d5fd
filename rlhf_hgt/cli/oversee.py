"""``rlhf-hgt oversee RUN_DIR ACT --reason TEXT [--by NAME] [--to ROUND]``: a person's hand
on a run, from any terminal, while it runs or after.

The act is written to the run's store (:mod:`rlhf_hgt.governance.oversight`); a running loop
obeys it at its next safe point, and lineage, the report and the model card show it.
Light: no torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rlhf_hgt.governance.oversight import ACTS

WHAT = {
    "pause": "hold training at the next safe point (labelling can go on)",
    "resume": "continue a paused run",
    "stop": "end the run cleanly: final checkpoint, metrics, card, exit code 0",
    "reject": "mark the latest checkpoint rejected: never the result nor resumed from; a "
              "running loop goes back to the last checkpoint before it",
    "rollback": "continue from an earlier round's checkpoint (--to ROUND)",
}


def add(parser: argparse.ArgumentParser, argv: Sequence[str] = (),
        everything: bool = False) -> None:
    parser.description = ("Pause, resume, stop, reject or roll back a run, from any terminal; "
                          "the act is kept in the run's record (who, when, why). "
                          + "; ".join(f"{k}: {v}" for k, v in WHAT.items()))
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder (its --out)")
    parser.add_argument("act", choices=ACTS, metavar="ACT", help=" | ".join(ACTS))
    parser.add_argument("--reason", required=True, help="why (kept in the record; required)")
    parser.add_argument("--by", default=None,
                        help="who acts (default: your login name)")
    parser.add_argument("--to", default=None, metavar="ROUND",
                        help="rollback: the round to continue from (a number, or a kept "
                             "folder RUN_DIR/rounds/round-NNN)")


def run(args: argparse.Namespace) -> int:
    from rlhf_hgt.feedback.annotators import default_annotator
    from rlhf_hgt.governance.oversight import record_act

    data = record_act(args.run_dir, args.act, args.reason, args.by or default_annotator(),
                      args.to)
    target = f" to {data['to']}" if "to" in data else (
        f" ({data['checkpoint']})" if "checkpoint" in data else "")
    cards = "; the checkpoint's cards now say it is rejected" if args.act == "reject" else ""
    print(f"{args.act}{target} recorded for {args.run_dir} by {data['by']}: {data['reason']}; "
          f"a running loop obeys it at its next safe point (on a finished run it is kept in "
          f"the record{cards})")
    return 0
