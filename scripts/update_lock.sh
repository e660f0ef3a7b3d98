#!/usr/bin/env bash
# Re-resolve the dependency lock (requirements.lock): install the newest versions requirements.txt allows into a
# fresh venv, run the default test suite there, and only if it passes write that venv's versions as the new lock.
#
#   scripts/update_lock.sh                 # venv in .venv-lock (removed first), then requirements.lock
#   VENV=/tmp/lockenv PYTHON=python3.11 scripts/update_lock.sh
#
# Review `git diff requirements.lock`, then commit it with the suite's result in the message (docs/INSTALL.md).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
VENV="${VENV:-.venv-lock}"
rm -rf "$VENV"
RECSYS_EMB_LOCK=none VENV="$VENV" bash scripts/install.sh
# the new venv is marked as opted out of the lock; the suite's lock test is skipped there, everything else runs
"$VENV/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider
"$VENV/bin/python" -c 'from recsys_emb import lockfile; print(lockfile.freeze(), end="")' >requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "[update_lock] requirements.lock rewritten from $VENV (suite passed); review: git diff requirements.lock"
