#!/usr/bin/env bash
# Run a pytest selection N times in a row and print one line per run; exits non-zero at the first red run.
# The way flakiness claims are checked (issue 25: 30 consecutive green runs of tests/distributed):
#
#   scripts/repeat_tests.sh 30 tests/distributed
#   scripts/repeat_tests.sh 20 "tests/distributed/test_parity.py::test_sharded_equals_unsharded_two_ranks[ec]"
#
# Each run's full output is kept in ${LOGS:-/tmp/repeat_tests}/run_<i>.log.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
n="${1:?usage: scripts/repeat_tests.sh N [pytest args...]}"
shift
logs="${LOGS:-/tmp/repeat_tests}"
mkdir -p "$logs"
py="${VENV:-.venv}/bin/python"
for i in $(seq 1 "$n"); do
  start=$(date +%s)
  "$py" -m pytest -q -p no:cacheprovider "$@" >"$logs/run_$i.log" 2>&1
  rc=$?
  echo "run $i/$n rc=$rc $(( $(date +%s) - start ))s $(tail -n 1 "$logs/run_$i.log")"
  [ "$rc" -eq 0 ] || { echo "red run $i: see $logs/run_$i.log" >&2; exit 1; }
done
echo "$n consecutive green runs"
