#!/usr/bin/env bash
# Runs every test against the local stack (started by `make test` before this script), then the
# log-based capture tests (tests/logical.rs, the `logical::` module) once more with the stack's PostgreSQL 18 as the
# source: the replication protocol and its slots changed between 15 and 18.
#
#   dev/test.sh                 everything on PostgreSQL 15, then logical:: on 18
#   dev/test.sh <filter…>       the given tests (cargo nextest/test arguments) on 15 only
#   dev/test.sh --pg18 <filter…> the given tests on PostgreSQL 18 only
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ORDERSTREAM_PYTHON=$(dev/python.sh)
export ORDERSTREAM_PYTHON
eval "$(dev/stack.sh env | sed 's/^/export /')"

# One build profile (release) for tests, demo and benchmarks: built once, and the crash and
# volume tests run at real speed.
run_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --locked --no-fail-fast "$@"
  else
    cargo test --release --locked --no-fail-fast "$@"
  fi
}

# The second source: its port, and its programs for the tests' private clusters.
on_pg18() {
  echo "test: with PostgreSQL 18 as the source (127.0.0.1:$ORDERSTREAM_PG18_PORT): $*" >&2
  ORDERSTREAM_PG_PORT=$ORDERSTREAM_PG18_PORT ORDERSTREAM_PG_BIN=$ORDERSTREAM_PG18_BIN run_tests "$@"
}

if [ "${1:-}" = --pg18 ]; then
  shift
  on_pg18 "$@"
  exit
fi
if [ $# -gt 0 ]; then
  run_tests "$@"
  exit
fi
status=0
run_tests || status=$?
on_pg18 --test main logical:: || status=$?
exit "$status"
