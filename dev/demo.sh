#!/usr/bin/env bash
# `make demo` (after `make up` and the release build): the pipeline on the local stack.
#   1. init: the table with its ten seed orders, the topics
#   2. `orderstream run` (producer + consumer) in the background, unless it already runs
#   3. a handful of new orders inserted with psql, as a user would
#   4. wait until every order of the table is in the lake, then a summary read back from the
#      Parquet files with DuckDB
# The pipeline keeps running afterwards; `make down` stops it with the stack.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN="$ROOT/target/release/orderstream"
CONFIG=configs/orders_stream.yml
PIDFILE=.stack/pids/pipeline.pid
LOG=.stack/logs/pipeline.log
PG_PORT=${ORDERSTREAM_PG_PORT:-55432}
export PGPASSWORD=student123
PSQL=(psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U student -d food_delivery_db -v ON_ERROR_STOP=1)
LAKE=$(sed -n 's/^  path: "\(.*\)"/\1/p' "$CONFIG" | head -n 1)

say() { printf '\n== %s\n' "$*"; }

running() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$BIN --config $CONFIG run"
}

say "orderstream init"
"$BIN" --config "$CONFIG" init

if running; then
  say "the pipeline already runs (pid $(cat "$PIDFILE"), log $LOG)"
else
  say "starting the pipeline: orderstream run (log $LOG)"
  mkdir -p .stack/pids .stack/logs
  setsid "$BIN" --config "$CONFIG" run >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
fi

say "inserting five new orders with psql"
"${PSQL[@]}" -c "
  INSERT INTO ROLL001_orders (customer_name, restaurant_name, item, amount, order_status) VALUES
    ('Ananya Rao',    'Burger Junction', 'Cheese Burger',    245.00, 'PLACED'),
    ('Marco Rossi',   'Pizza Palace',    'Pepperoni Pizza',  520.50, 'PLACED'),
    ('Fatima Zahra',  'Spice Route',     'Butter Chicken',   410.00, 'CONFIRMED'),
    ('Kenji Tanaka',  'Sushi World',     'Salmon Nigiri',    375.25, 'PLACED'),
    ('Olivia Brown',  'Pasta Point',     'Penne Arrabbiata', 299.99, 'PLACED')"

say "waiting until every order of the table is in the lake"
total=$("${PSQL[@]}" -Atc "SELECT count(*) FROM ROLL001_orders")
lake_rows() {
  "$BIN" --config "$CONFIG" status --json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("lake", {}).get("rows", 0))' 2>/dev/null || echo 0
}
for _ in $(seq 1 120); do
  rows=$(lake_rows)
  [ "$rows" -ge "$total" ] && break
  if ! running; then
    tail -n 20 "$LOG" >&2
    echo "demo: the pipeline stopped (log $LOG)" >&2
    exit 1
  fi
  sleep 0.5
done
rows=$(lake_rows)
if [ "$rows" -lt "$total" ]; then
  echo "demo: only $rows of $total orders reached the lake within 60 s (log $LOG)" >&2
  exit 1
fi
echo "all $total orders are in the lake"

say "orderstream status"
"$BIN" --config "$CONFIG" status

say "the lake, read back with DuckDB"
PY=$(dev/python.sh)
"$PY" - "$LAKE" <<'PYEOF'
import sys, duckdb
lake = sys.argv[1]
src = f"read_parquet('{lake}/**/*.parquet', hive_partitioning=true)"
print("rows per date partition:")
for date, n in duckdb.sql(f"SELECT date, count(*) FROM {src} GROUP BY date ORDER BY date").fetchall():
    print(f"  date={date}  {n} rows")
print("newest orders:")
rows = duckdb.sql(f"SELECT order_id, customer_name, restaurant_name, item, amount, order_status, created_at "
                  f"FROM {src} ORDER BY created_at DESC, order_id DESC LIMIT 5").fetchall()
for r in rows:
    print(f"  {r[0]:>6}  {r[1]:<14} {r[2]:<16} {r[3]:<18} {r[4]:>8}  {r[5]:<10} {r[6]}")
PYEOF

cat <<EOF

The pipeline keeps running (pid $(cat "$PIDFILE"), log $LOG).
  insert more:  PGPASSWORD=student123 psql -h 127.0.0.1 -p $PG_PORT -U student food_delivery_db -c "INSERT INTO ROLL001_orders (customer_name, amount) VALUES ('You', 99.50)"
  watch:        ./target/release/orderstream status
  stop:         make down
EOF
