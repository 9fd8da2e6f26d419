#!/usr/bin/env bash
# `make demo` (after `make up` and the release build): the pipeline on the local stack.
#   1. init: the table with its ten seed orders, the topics
#   2. `orderstream run` (producer + consumer) in the background, unless it already runs
#   3. a handful of new orders inserted with psql, one order's status updated, one deleted, as
#      a user would
#   4. wait until the lake's current state of every order equals the table, then show the change
#      rows and the current-state query's answer, read back from the Parquet files with DuckDB
# The pipeline keeps running afterwards; `make down` stops it with the stack.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN="$ROOT/target/release/orderstream"
CONFIG=configs/orders_stream.yml
PIDFILE=.stack/pids/pipeline.pid
LOG=.stack/logs/pipeline.log
PG_PORT=${ORDERSTREAM_PG_PORT:-55432}
# A stack moved to other ports (docs/development.md, "Ports") moves the configuration's addresses with it,
# unless they are overridden already.
if [ -n "${ORDERSTREAM_PG_PORT:-}" ]; then
  export ORDERSTREAM__POSTGRES__JDBC_URL=${ORDERSTREAM__POSTGRES__JDBC_URL:-jdbc:postgresql://127.0.0.1:$PG_PORT/food_delivery_db}
fi
if [ -n "${ORDERSTREAM_KAFKA_PORT:-}" ]; then
  export ORDERSTREAM__KAFKA__BROKERS=${ORDERSTREAM__KAFKA__BROKERS:-127.0.0.1:$ORDERSTREAM_KAFKA_PORT}
fi
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

PY=$(dev/python.sh)
table_state() {
  "${PSQL[@]}" -Atc "SELECT order_id || '|' || coalesce(order_status, '') FROM ROLL001_orders ORDER BY order_id" | md5sum
}
# The current state of every order in the lake: its last version by (lsn, change_index),
# deletes removed (the query of docs/lake.md).
lake_state() {
  "$PY" - "$LAKE" 2>/dev/null <<'PYEOF' | md5sum
import sys, duckdb
src = f"read_parquet('{sys.argv[1]}/*/*.parquet', hive_partitioning = true, union_by_name = true)"
try:
    rows = duckdb.sql(f"""
        SELECT order_id, order_status FROM (
            SELECT *, row_number() OVER (PARTITION BY order_id
                ORDER BY lsn DESC NULLS LAST, change_index DESC NULLS LAST) AS version FROM {src})
        WHERE version = 1 AND coalesce(op, 'c') <> 'd' ORDER BY order_id""").fetchall()
except duckdb.Error:
    rows = []
for order_id, status in rows:
    print(f"{order_id}|{status or ''}")
PYEOF
}
# Waits until the lake's current state equals the table (60 s at most).
wait_lake_equals_table() {
  local want
  want=$(table_state)
  for _ in $(seq 1 60); do
    [ "$(lake_state)" = "$want" ] && return 0
    if ! running; then
      tail -n 20 "$LOG" >&2
      echo "demo: the pipeline stopped (log $LOG)" >&2
      exit 1
    fi
    sleep 1
  done
  echo "demo: the lake's current state did not match the table within 60 s (log $LOG)" >&2
  exit 1
}

say "waiting until the table's orders are in the lake (the initial snapshot, on a first run)"
wait_lake_equals_table

say "inserting five new orders with psql"
"${PSQL[@]}" -c "
  INSERT INTO ROLL001_orders (customer_name, restaurant_name, item, amount, order_status) VALUES
    ('Ananya Rao',    'Burger Junction', 'Cheese Burger',    245.00, 'PLACED'),
    ('Marco Rossi',   'Pizza Palace',    'Pepperoni Pizza',  520.50, 'PLACED'),
    ('Fatima Zahra',  'Spice Route',     'Butter Chicken',   410.00, 'CONFIRMED'),
    ('Kenji Tanaka',  'Sushi World',     'Salmon Nigiri',    375.25, 'PLACED'),
    ('Olivia Brown',  'Pasta Point',     'Penne Arrabbiata', 299.99, 'PLACED')"

say "updating the newest order's status and deleting the one before it"
newest=$("${PSQL[@]}" -Atc "SELECT max(order_id) FROM ROLL001_orders")
"${PSQL[@]}" -c "UPDATE ROLL001_orders SET order_status = 'DELIVERED' WHERE order_id = $newest"
"${PSQL[@]}" -c "DELETE FROM ROLL001_orders WHERE order_id = $((newest - 1))"

say "waiting until the lake's current state equals the table"
wait_lake_equals_table
total=$("${PSQL[@]}" -Atc "SELECT count(*) FROM ROLL001_orders")
echo "the lake's current state equals the table: $total orders"

say "orderstream status"
"$BIN" --config "$CONFIG" status

say "the lake, read back with DuckDB"
"$PY" - "$LAKE" "$newest" <<'PYEOF'
import sys, duckdb
lake, newest = sys.argv[1], int(sys.argv[2])
src = f"read_parquet('{lake}/*/*.parquet', hive_partitioning = true, union_by_name = true)"
print("rows per date partition:")
for date, n in duckdb.sql(f"SELECT date, count(*) FROM {src} GROUP BY date ORDER BY date").fetchall():
    print(f"  date={date}  {n} rows")
print(f"every change of orders {newest - 1} and {newest} (op: r snapshot read, c insert, u update, d delete):")
rows = duckdb.sql(f"SELECT order_id, op, lsn, change_index, committed_at, customer_name, order_status "
                  f"FROM {src} WHERE order_id IN ({newest - 1}, {newest}) "
                  f"ORDER BY order_id, lsn NULLS FIRST, change_index NULLS FIRST").fetchall()
for r in rows:
    print(f"  {r[0]:>6}  {r[1] or 'c'}  lsn={r[2]}  #{r[3]}  {r[4]}  {r[5]:<14} {r[6]}")
print("the current state of the newest orders (the query of docs/lake.md):")
rows = duckdb.sql(f"""
    SELECT order_id, customer_name, restaurant_name, item, amount, order_status, created_at FROM (
        SELECT *, row_number() OVER (PARTITION BY order_id
            ORDER BY lsn DESC NULLS LAST, change_index DESC NULLS LAST) AS version FROM {src})
    WHERE version = 1 AND coalesce(op, 'c') <> 'd' ORDER BY order_id DESC LIMIT 5""").fetchall()
for r in rows:
    print(f"  {r[0]:>6}  {r[1]:<14} {r[2] or '':<16} {r[3] or '':<18} {r[4]:>8}  {r[5]:<10} {r[6]}")
PYEOF

cat <<EOF

The pipeline keeps running (pid $(cat "$PIDFILE"), log $LOG).
  insert more:  PGPASSWORD=student123 psql -h 127.0.0.1 -p $PG_PORT -U student food_delivery_db -c "INSERT INTO ROLL001_orders (customer_name, amount) VALUES ('You', 99.50)"
  update one:   PGPASSWORD=student123 psql -h 127.0.0.1 -p $PG_PORT -U student food_delivery_db -c "UPDATE ROLL001_orders SET order_status = 'DELIVERED' WHERE order_id = 101"
  watch:        ./target/release/orderstream status
  stop:         make down
EOF
