"""A labelling worker for crash and concurrency tests: answers pending queries through the
store the way the terminal loop does (claim, answer, acknowledge) and prints one ACK line
per answer only after the store has committed it."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from rlhf_hgt.feedback.store import PreferenceStore


def main() -> None:
    path, annotator = sys.argv[1], sys.argv[2]
    per_query, delay = int(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(annotator)
    store = PreferenceStore(path, create=False)
    print("READY", flush=True)
    gate = sys.argv[5] if len(sys.argv) > 5 else None
    while gate and not Path(gate).exists():  # start together
        time.sleep(0.01)
    while True:
        qid = store.claim_next(annotator, per_query=per_query)
        if qid is None:
            break
        token = f"{annotator}:{qid}"
        answer = rng.choice(["left", "right", "tie", "skip"])
        aid = store.record_answer(qid, answer, annotator, shown_at=time.time(), token=token,
                                  per_query=per_query, interface="test/1")
        if aid is not None:
            print(f"ACK {aid} {qid} {answer}", flush=True)
        if delay:
            time.sleep(rng.random() * delay)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
