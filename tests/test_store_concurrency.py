"""Many processes on one store: nothing lost, nothing answered twice; SIGKILL at random moments."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from rlhf_hgt.feedback.store import PreferenceStore, TextPair

WORKER = Path(__file__).parent / "helpers" / "store_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _make_store(path: Path, n: int) -> list[int]:
    with PreferenceStore(path) as store:
        return store.add_text_queries(
            [TextPair(f"prompt {i}", f"answer a {i}", f"answer b {i}") for i in range(n)])


def _spawn(path: Path, annotator: str, per_query: int = 1, delay: float = 0.0,
           gate: Path | None = None):
    args = [sys.executable, str(WORKER), str(path), annotator, str(per_query), str(delay)]
    if gate is not None:
        args.append(str(gate))
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=ENV)


@pytest.mark.parametrize("per_query", [1, 2])
def test_four_processes_lose_nothing_and_answer_once(tmp_path, per_query, store_at):
    path = store_at  # an SQLite file, or a PostgreSQL database
    ids = _make_store(path, 120)
    gate = tmp_path / "go"
    procs = [_spawn(path, f"worker{i}", per_query, 0.001, gate) for i in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == "READY"
    gate.touch()
    acks = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        acks += [line.split()[1:] for line in out.splitlines() if line.startswith("ACK")]
    with PreferenceStore(path) as store:
        answers = store.answers()
        assert store.integrity_check() == "ok"
    assert len(answers) == len(ids) * per_query == len(acks)
    per_q = Counter(a.query_id for a in answers)
    assert set(per_q.values()) == {per_query}
    # no annotator answered the same query twice
    assert len({(a.query_id, a.annotator) for a in answers}) == len(answers)
    # work was shared between the processes
    assert len({a.annotator for a in answers}) >= 2


@pytest.mark.slow
def test_sigkill_labelling_loses_no_acknowledged_answer(tmp_path, store_at):
    path = store_at
    _make_store(path, 400)
    rng = random.Random(0)
    acked: dict[int, tuple[int, str]] = {}
    for round_ in range(12):
        proc = _spawn(path, f"ann{round_ % 3}", 1, delay=0.002)
        assert proc.stdout.readline().strip() == "READY"
        lines: list[str] = []
        reader = threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True)
        reader.start()
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(timeout=10)
        for line in lines:
            if line.startswith("ACK"):
                _, aid, qid, ans = line.split()
                acked[int(aid)] = (int(qid), ans)
    assert acked, "the workers never got to answer"
    with PreferenceStore(path) as store:
        assert store.integrity_check() == "ok"
        got = {a.id: (a.query_id, a.answer) for a in store.answers()}
    for aid, want in acked.items():
        assert got.get(aid) == want
    # nothing duplicated: one active answer per query at most
    assert max(Counter(q for q, _ in got.values()).values()) == 1


def _count_file(store: PreferenceStore, k: int) -> int:
    return store.conn.execute(
        "SELECT COUNT(*) FROM answers a JOIN queries q ON q.id = a.query_id "
        "WHERE q.prompt LIKE ?", (f"f{k}-%",)).fetchone()[0]


@pytest.mark.slow
def test_sigkill_import_is_all_or_nothing(tmp_path, store_at, request):
    path = store_at
    team = isinstance(path, str)  # PostgreSQL: one round trip a statement, so fewer lines
    n, files = (1_000 if team else 10_000), []
    for k in range(8):
        data = tmp_path / f"pairs{k}.jsonl"
        with open(data, "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"prompt": f"f{k}-p{i}", "chosen": f"good {i} " * 20,
                                     "rejected": f"bad {i} " * 20}) + "\n")
        files.append(data)

    def cmd(data: Path) -> list[str]:
        return [sys.executable, "-m", "rlhf_hgt.cli", "feedback", "import", str(path), str(data)]

    # how long one whole import takes on this machine, so the kills land inside it
    scratch = [sys.executable, "-m", "rlhf_hgt.cli", "feedback", "import",
               request.getfixturevalue("pg_server").new_database() if team
               else str(tmp_path / "scratch.db"), str(files[0])]
    t0 = time.perf_counter()
    subprocess.run(scratch, env=ENV, capture_output=True, timeout=300, check=True)
    whole = time.perf_counter() - t0
    rng = random.Random(1)
    killed = 0
    for k, data in enumerate(files):
        proc = subprocess.Popen(cmd(data), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 0.9) * whole)
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait() == -signal.SIGKILL
        if isinstance(path, str) or path.exists():
            with PreferenceStore(path) as store:
                assert store.integrity_check() == "ok"
                for j in range(k + 1):
                    assert _count_file(store, j) in (0, n)
    assert killed >= 3, "the imports finished before they could be killed"
    # complete every import, then repeat one: nothing is duplicated
    for data in [*files, files[0]]:
        done = subprocess.run(cmd(data), env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    with PreferenceStore(path) as store:
        assert store.integrity_check() == "ok"
        assert len(store.answers()) == 8 * n and store.count_queries() == 8 * n
        assert all(_count_file(store, k) == n for k in range(8))


def test_a_second_handle_and_a_hash_in_one_process_keep_seeing_other_processes(tmp_path):
    """Opening a second handle on a store, hashing it for the manifest and asking what it is
    all happen in processes that hold the store open (a loop, its oversight, its records).
    With a plain open() of the file each of these dropped the process's SQLite locks: the
    next process to close the store removed its write-ahead log, and this process never saw
    another answer. Every look now goes through SQLite."""
    from rlhf_hgt.feedback.sqlite_files import is_sqlite, sqlite_sha256
    from rlhf_hgt.governance.manifest import data_sha256

    path = tmp_path / "s.db"
    ids = _make_store(path, 3)
    held = PreferenceStore(path)
    second = PreferenceStore(path)  # a second handle in the same process
    assert is_sqlite(path) and not is_sqlite(tmp_path / "none.db")
    before = data_sha256(path)
    assert before == sqlite_sha256(path) and len(before) == 64
    code = ("import sys; from rlhf_hgt.feedback.store import PreferenceStore as P\n"
            "with P(sys.argv[1]) as s: s.record_answer(int(sys.argv[2]), 'left', 'other')")
    for qid in ids:
        subprocess.run([sys.executable, "-c", code, str(path), str(qid)], env=ENV, check=True,
                       timeout=60)
        assert qid in {a.query_id for a in held.answers()}, "a committed answer is not seen"
        assert qid in {a.query_id for a in second.answers()}
        data_sha256(path)
    assert data_sha256(path) != before  # the hash covers the new answers (WAL included)
    second.close()
    held.close()
