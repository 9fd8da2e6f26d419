#!/usr/bin/env bash
# `make smoke` (CI runs it after the tests): every benchmark once, at a tiny size, so that the
# benchmarks keep compiling and running. A smoke run, not a measurement: its numbers mean
# nothing (docs/benchmarks.md for real runs). Needs the local stack (`make up`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ORDERSTREAM_PYTHON=$(dev/python.sh)
export ORDERSTREAM_PYTHON
eval "$(dev/stack.sh env | sed 's/^/export /')"

# The same sizes for everyone: a knob left in a developer's shell does not apply here.
unset ORDERSTREAM_BENCH_BROKER ORDERSTREAM_BENCH_TOPIC ORDERSTREAM_BENCH_SCENARIOS \
  ORDERSTREAM_BENCH_HEADERS ORDERSTREAM_BENCH_KAFKA_PROPERTIES
export ORDERSTREAM_BENCH_RUNS=1 ORDERSTREAM_BENCH_ROWS=2000 ORDERSTREAM_BENCH_MESSAGES=2000 \
  ORDERSTREAM_BENCH_PARTITIONS=3 ORDERSTREAM_BENCH_RATE=100 ORDERSTREAM_BENCH_SECONDS=2 \
  ORDERSTREAM_BENCH_CLIENTS=2 ORDERSTREAM_BENCH_INTERVALS=1 ORDERSTREAM_BENCH_COMMITS=300 \
  ORDERSTREAM_BENCH_ORDERS=20000

# `--bench '*'`: the six benches/*.rs only (not the library's unit tests in bench mode).
cargo bench --locked --bench '*'
