#!/usr/bin/env bash
# Prints the path of a Python that has what the tests and the demo use: the lake readers (DuckDB,
# pyarrow and Spark: readers other than our own writer) and the Prometheus text parser, creating
# .stack/venv on first use. Spark needs a Java runtime, installed too when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.stack/venv"
REQUIREMENTS="duckdb==2.0.1 pyarrow==26.0.1 pyspark==4.3.0 prometheus-client==0.26.0"
STAMP="$VENV/.requirements"

if ! command -v java >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || { echo "python: Spark needs Java; install openjdk-17-jre-headless" >&2; exit 1; }
  echo "python: installing a Java runtime for Spark" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
fi
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$REQUIREMENTS" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || { echo "python: python3-venv is missing; install it with apt-get" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
echo "python: installing $REQUIREMENTS into .stack/venv" >&2
rm -rf "$VENV"
python3 -m venv "$VENV" >&2
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet --disable-pip-version-check $REQUIREMENTS >&2
echo "$REQUIREMENTS" >"$STAMP"
echo "$VENV/bin/python"
