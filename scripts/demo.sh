#!/usr/bin/env bash
# Set up (a fresh machine needs nothing else) and run the main job on its embedded defaults:
# a CartPole policy trained only from a synthetic teacher's preferences, beside PPO on the
# true reward. Extra arguments go to scripts/demo.py (e.g. --env Pendulum-v1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh" ""
"$PY" scripts/demo.py "$@"
