#!/usr/bin/env bash
# Runs every test against the local stack (started by `make test` before this script).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ORDERSTREAM_PYTHON=$(dev/python.sh)
export ORDERSTREAM_PYTHON
eval "$(dev/stack.sh env | sed 's/^/export /')"

# One build profile (release) for tests, demo and benchmarks: built once, and the crash and
# volume tests run at real speed.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --no-fail-fast "$@"
else
  cargo test --release --locked --no-fail-fast "$@"
fi
