#!/usr/bin/env bash
# Set up (a fresh machine needs nothing else) and run the test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh" "[dev]"
echo "[test] ruff"
"$PY" -m ruff check rlhf_hgt envs feedback scripts tests
echo "[test] pytest"
"$PY" -m pytest tests "$@"
