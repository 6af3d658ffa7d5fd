#!/usr/bin/env bash
# Set up (a fresh machine needs nothing else) and run the test suite: ruff, then every test.
#   bash scripts/test.sh            everything (what CI runs)
#   bash scripts/test.sh --quick    leave out the tests marked slow (for development)
# Other arguments go to pytest (e.g. -k store, -x).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh" "[dev]"
args=()
for a in "$@"; do
  if [[ "$a" == "--quick" ]]; then args+=(-m "not slow"); else args+=("$a"); fi
done
echo "[test] ruff"
"$PY" -m ruff check rlhf_hgt envs feedback scripts tests
echo "[test] pytest"
"$PY" -m pytest tests ${args[@]+"${args[@]}"}
