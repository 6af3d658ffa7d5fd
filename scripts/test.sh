#!/usr/bin/env bash
# Set up (a fresh machine needs nothing else) and run the test suite: ruff, then every test.
#   bash scripts/test.sh            everything (what CI runs)
#   bash scripts/test.sh --quick    leave out the tests marked slow (for development)
# Tests run in as many processes as there are cores, at most 4 (pytest-xdist; each test
# uses one torch thread); RLHF_HGT_TEST_WORKERS=1 runs them in this process.
# Other arguments go to pytest (e.g. -k store, -x).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh" "[dev]"
ensure_chromium  # Debian's chromium for tests/test_report.py (apt, only when missing)
ensure_postgresql  # Debian's PostgreSQL 15 for the team store's tests (apt, only when missing)
args=()
for a in "$@"; do
  if [[ "$a" == "--quick" ]]; then args+=(-m "not slow"); else args+=("$a"); fi
done
# (not nproc: it answers OMP_NUM_THREADS, which _setup.sh sets to 1)
cores=$("$PY" -c "import os; print(len(os.sched_getaffinity(0)))" 2>/dev/null || echo 2)
workers="${RLHF_HGT_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
if [[ "$workers" -gt 1 ]]; then args=(-n "$workers" "${args[@]+"${args[@]}"}"); fi
echo "[test] ruff"
"$PY" -m ruff check rlhf_hgt envs feedback scripts tests
echo "[test] pytest"
"$PY" -m pytest tests ${args[@]+"${args[@]}"}
