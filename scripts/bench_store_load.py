"""Load on one store: N synthetic annotator processes answering as fast as they can while a
loop writes new queries, on PostgreSQL and on SQLite.

Each annotator claims the next pair (``claim_next``: the time it takes is the "next pair"
time a person would wait), answers it with a token of its own and, once the store returned
the answer's id (committed), writes it down as acknowledged. At the end every acknowledged
answer must be in the store exactly once, and no query may hold more answers than asked
(one): 0 lost, 0 duplicated.

    python scripts/bench_store_load.py --duration 60            # both back ends
    python scripts/bench_store_load.py --backend postgresql --url postgresql://u@h/db
    python scripts/bench_store_load.py --backend postgresql --restarts 3   # the fault

Without --url a throw-away PostgreSQL 15 server is started (tests/helpers/pg_server.py,
fsync on, as a real server runs) and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _pairs(start: int, n: int):
    from rlhf_hgt.feedback.records import TextPair

    return [TextPair(f"load prompt {i}", f"response a {i}", f"response b {i}")
            for i in range(start, start + n)]


def _wait(start: float) -> None:
    while time.time() < start:  # every process starts together, once all are up
        time.sleep(0.01)


def annotator(location: str, name: str, start: float, deadline: float, out: str) -> None:
    from rlhf_hgt.feedback.store import PreferenceStore

    rng = random.Random(name)
    waits, commits, acks, empty = [], [], [], 0
    with PreferenceStore(location, create=False) as store:
        _wait(start)
        while time.time() < deadline:
            t0 = time.perf_counter()
            qid = store.claim_next(name, per_query=1)
            t1 = time.perf_counter()
            if qid is None:
                empty += 1
                time.sleep(0.005)
                continue
            waits.append(t1 - t0)
            token = f"{name}:{qid}"
            aid = store.record_answer(qid, rng.choice(["left", "right", "tie"]), name,
                                      synthetic=True, shown_at=time.time(), token=token,
                                      per_query=1, interface="bench/1")
            commits.append(time.perf_counter() - t1)
            if aid is not None:
                acks.append([aid, qid, token, time.time()])
    Path(out).write_text(json.dumps({"waits": waits, "commits": commits, "acks": acks,
                                     "empty": empty}))


def writer(location: str, begin: float, deadline: float, rate: float, batch: int, start: int,
           out: str) -> None:
    from rlhf_hgt.feedback.store import PreferenceStore

    written = 0
    with PreferenceStore(location, create=False) as store:
        _wait(begin)
        t0 = time.time()
        while time.time() < deadline:
            store.add_text_queries(_pairs(start + written, batch))
            written += batch
            ahead = t0 + written / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
    Path(out).write_text(json.dumps({"written": written}))


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")


def run(location: str, label: str, args: argparse.Namespace, tmp: Path,
        server: object | None = None) -> dict:
    from rlhf_hgt.feedback.store import PreferenceStore

    with PreferenceStore(location) as store:
        store.add_text_queries(_pairs(0, args.initial))
    ctx = mp.get_context("spawn")
    start = time.time() + 8  # time for the processes to start
    deadline = start + args.duration
    outs = [tmp / f"{label}-ann{i}.json" for i in range(args.annotators)]
    procs = [ctx.Process(target=annotator, args=(location, f"ann{i}", start, deadline, str(o)))
             for i, o in enumerate(outs)]
    wout = tmp / f"{label}-writer.json"
    procs.append(ctx.Process(target=writer, args=(location, start, deadline, args.write_rate,
                                                  args.batch, args.initial, str(wout))))
    for p in procs:
        p.start()
    restarts = []  # the fault: the server restarted while people label (--restarts N)
    for k in range(1, (args.restarts if server is not None else 0) + 1):
        time.sleep(max(0.0, start + k * args.duration / (args.restarts + 1) - time.time()))
        t0 = time.time()
        server.restart()  # type: ignore[attr-defined]
        restarts.append(round(time.time() - t0, 2))
    for p in procs:
        p.join()
    waits, commits, acks, empty = [], [], [], 0
    crashed = sum(p.exitcode != 0 for p in procs)
    for o in outs:
        if not o.exists():
            continue
        r = json.loads(o.read_text())
        waits += r["waits"]
        commits += r["commits"]
        acks += r["acks"]
        empty += r["empty"]
    with PreferenceStore(location, create=False) as store:
        rows = store.conn.execute("SELECT id, query_id, token FROM answers").fetchall()
        queries = store.count_queries()
    stored = {t: (a, q) for a, q, t in rows}
    lost = sum(1 for a, q, t, _ in acks if stored.get(t) != (a, q))
    times = sorted(at for *_, at in acks)
    longest = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)
    per_query: dict[int, int] = {}
    for _, q, _ in rows:
        per_query[q] = per_query.get(q, 0) + 1
    duplicated = sum(n - 1 for n in per_query.values() if n > 1)
    return {
        "backend": label, "annotators": args.annotators, "seconds": args.duration,
        "answers": len(acks), "answers_per_second": round(len(acks) / args.duration, 1),
        "next_pair_ms": {"p50": round(pct(waits, 50), 2), "p95": round(pct(waits, 95), 2),
                         "p99": round(pct(waits, 99), 2)},
        "answer_commit_ms": {"p50": round(pct(commits, 50), 2),
                             "p95": round(pct(commits, 95), 2)},
        "queries_written_during": json.loads(wout.read_text())["written"],
        "queries_total": queries, "nothing_pending_polls": empty,
        "lost": lost, "duplicated": duplicated,
        "unacknowledged_in_store": len(rows) - len(acks),
        "server_restarts_s": restarts, "longest_pause_between_answers_s": round(longest, 2),
        "processes_failed": crashed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load per back end")
    ap.add_argument("--annotators", type=int, default=8, help="annotator processes")
    ap.add_argument("--backend", choices=["both", "postgresql", "sqlite"], default="both")
    ap.add_argument("--url", help="a PostgreSQL database to use (default: a throw-away server)")
    ap.add_argument("--initial", type=int, default=3000, help="queries written before the start")
    ap.add_argument("--write-rate", type=float, default=100.0,
                    help="new queries per second written during the run")
    ap.add_argument("--batch", type=int, default=10, help="queries per write")
    ap.add_argument("--restarts", type=int, default=0,
                    help="restart the throw-away PostgreSQL server this many times during "
                         "the run, evenly spaced (the fault: answers must go on, none lost)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_load_"))
    if args.backend in ("both", "postgresql"):
        server = None
        url = args.url
        if url is None:
            from helpers.pg_server import PgServer

            server = PgServer(fsync=True)
            url = server.new_database()
        try:
            results.append(run(url, "postgresql", args, tmp, server))
        finally:
            if server is not None:
                server.stop()
    if args.backend in ("both", "sqlite"):
        results.append(run(str(tmp / "load.db"), "sqlite", args, tmp))
    for r in results:
        print(json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["lost"] == 0 and r["duplicated"] == 0 and not r["processes_failed"]
                    for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
