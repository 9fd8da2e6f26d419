#!/usr/bin/env bash
# Prints the path of a Python that has what the tests and the demo use: the lake readers (DuckDB
# with its delta extension, pyarrow and Spark: readers other than our own writer), the S3 server
# (ministack) and the Prometheus text parser, creating
# .stack/venv on first use. Spark 4 needs Java 17 or newer (tested: 17; Debian 13's default is
# 21, which Spark 4 supports too): as root the distribution's default Java runtime is installed
# when `java` is missing.
#
#   dev/python.sh            the venv's python (installing what is missing first)
#   dev/python.sh --missing  the Debian packages it would need, one per line (for dev/stack.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.stack/venv"
# DuckDB is pinned to the last release whose delta and httpfs extensions ship as wheels (no
# extension download at run time); ministack is the tests' and the demo's S3 server; boto3
# drives its put-if-absent race probe; deltalake (Python delta-rs) and Polars are readers users
# pick; DuckDB 1.5 needs pytz to hand timestamps with a time zone to Python.
REQUIREMENTS="duckdb==1.5.5 duckdb-extensions==1.5.5 duckdb-extension-delta==1.5.5 duckdb-extension-httpfs==1.5.5 \
pyarrow==26.0.1 pyspark==4.3.0 prometheus-client==0.26.0 deltalake==1.6.6 polars==1.44.2 ministack==1.5.33 boto3==1.43.106 pytz==2026.6"
STAMP="$VENV/.requirements"
JAVA_MIN=17

java_major() { # `openjdk version "17.0.15" 2025-04-15` → 17 (`"1.8.0_402"` → 1)
  java -version 2>&1 | sed -n 's/^[^"]*version "\([0-9]*\).*/\1/p' | head -n 1
}

missing() {
  # Debian's python3 lacks ensurepip (which `python3 -m venv` needs) until python3-venv is in.
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || echo python3-venv
  command -v java >/dev/null 2>&1 || echo default-jre-headless
}

if [ "${1:-}" = "--missing" ]; then
  missing
  exit 0
fi

mapfile -t need < <(missing)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "python: missing Debian packages; as root: apt-get update && apt-get install -y --no-install-recommends ${need[*]}" >&2
    exit 1
  fi
  echo "python: installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
java=$(java_major)
if [ -z "$java" ] || [ "$java" -lt "$JAVA_MIN" ]; then
  echo "python: Spark 4 needs Java $JAVA_MIN or newer, and \`java\` is: $(java -version 2>&1 | head -n 1)." \
    "Install openjdk-17-jre-headless (or newer) and select it with update-alternatives --config java" >&2
  exit 1
fi

if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$REQUIREMENTS" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
echo "python: installing $REQUIREMENTS into .stack/venv" >&2
rm -rf "$VENV"
python3 -m venv "$VENV" >&2
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet --disable-pip-version-check $REQUIREMENTS >&2
echo "$REQUIREMENTS" >"$STAMP"
echo "$VENV/bin/python"
