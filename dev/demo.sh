#!/usr/bin/env bash
# `make demo` (after `make up` and the release build): the pipeline on the local stack.
#   1. init: the table with its ten seed orders, the topics
#   2. `orderstream run` (producer + consumer) in the background, unless it already runs
#   3. a handful of new orders inserted with psql, one order's status updated, one deleted, as
#      a user would
#   4. wait until the lake's current state of every order equals the table, then show the change
#      rows and the current-state query's answer, read back from the Parquet files with DuckDB
#   5. the same topic written to a Delta table on the stack's S3 server by a second consumer in
#      its own group, with a current-state table beside it (datalake.current_path), both read back
#      with DuckDB's delta extension
# The pipeline keeps running afterwards; `make down` stops it with the stack.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN="$ROOT/target/release/orderstream"
CONFIG=configs/orders_stream.yml
PIDFILE=.stack/pids/pipeline.pid
DELTA_PIDFILE=.stack/pids/pipeline-delta.pid
DELTA_LOG=.stack/logs/pipeline-delta.log
S3_PORT=${ORDERSTREAM_S3_PORT:-9000}
# The Delta consumer: the same configuration, the lake a Delta table on the stack's S3 server
# (keys test/test), its own group and scratch folder.
DELTA_URI=s3://orderstream/food/ROLL001/orders_delta
# ... with a current-state table beside it: one row per order as it is now.
CURRENT_URI=s3://orderstream/food/ROLL001/orders_current
DELTA_ENV=(
  ORDERSTREAM__DATALAKE__FORMAT=delta
  ORDERSTREAM__DATALAKE__PATH=$DELTA_URI
  ORDERSTREAM__DATALAKE__CURRENT_PATH=$CURRENT_URI
  ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
  ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__AWS_ALLOW_HTTP=true
  ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__AWS_S3_ADDRESSING_STYLE=path
  ORDERSTREAM__KAFKA__GROUP_ID=orderstream_delta_ROLL001_food_orders_raw
  ORDERSTREAM__STREAMING__CHECKPOINT_LOCATION=datalake/food/ROLL001/checkpoints/orders_delta
  ORDERSTREAM__METRICS__PORT=0
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
  AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
)
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

running() { # [pidfile] [command]
  local file=${1:-$PIDFILE} what=${2:-run} pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$BIN --config $CONFIG $what"
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

say "the same topic into a Delta table: a second consumer (group orderstream_delta_…) writing $DELTA_URI"
"$PY" - "$S3_PORT" <<'PYEOF'
import sys, boto3, botocore
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
try:
    s3.create_bucket(Bucket="orderstream")
except botocore.exceptions.ClientError as e:
    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        raise
PYEOF
if running "$DELTA_PIDFILE" consume; then
  echo "the Delta consumer already runs (pid $(cat "$DELTA_PIDFILE"), log $DELTA_LOG)"
else
  env "${DELTA_ENV[@]}" setsid "$BIN" --config "$CONFIG" consume >>"$DELTA_LOG" 2>&1 </dev/null &
  echo $! >"$DELTA_PIDFILE"
fi
delta_state() {
  env "${DELTA_ENV[@]}" "$PY" dev/delta_read.py duckdb "$DELTA_URI" current 2>/dev/null \
    | "$PY" -c 'import json, sys
for r in json.load(sys.stdin)["rows"]: print(str(r["order_id"]) + "|" + (r["order_status"] or ""))' \
    | md5sum
}
want=$(table_state)
for i in $(seq 1 60); do
  [ "$(delta_state)" = "$want" ] && break
  if ! running "$DELTA_PIDFILE" consume; then
    tail -n 20 "$DELTA_LOG" >&2
    echo "demo: the Delta consumer stopped (log $DELTA_LOG)" >&2
    exit 1
  fi
  if [ "$i" = 60 ]; then
    echo "demo: the Delta table's current state did not match the table within 60 s (log $DELTA_LOG)" >&2
    exit 1
  fi
  sleep 1
done
echo "the Delta table's current state equals the table: $total orders"
current_state() {
  env "${DELTA_ENV[@]}" "$PY" dev/delta_read.py state-duckdb "$CURRENT_URI" 2>/dev/null \
    | "$PY" -c 'import json, sys
for r in json.load(sys.stdin)["rows"]: print(str(r["order_id"]) + "|" + (r["order_status"] or ""))' \
    | md5sum
}
for i in $(seq 1 60); do
  [ "$(current_state)" = "$want" ] && break
  if [ "$i" = 60 ]; then
    echo "demo: the current-state table $CURRENT_URI did not match the table within 60 s (log $DELTA_LOG)" >&2
    exit 1
  fi
  sleep 1
done
echo "the current-state table $CURRENT_URI, read by DuckDB, equals the table: $total orders"

say "the Delta tables, read back with DuckDB's delta extension (delta_scan)"
env "${DELTA_ENV[@]}" "$PY" - "$DELTA_URI" "$CURRENT_URI" <<'PYEOF'
import os, duckdb
from duckdb_extensions import import_extension
import sys
uri = sys.argv[1]
con = duckdb.connect()
import_extension("delta", con=con)
import_extension("httpfs", con=con)
con.execute("LOAD delta; LOAD httpfs")
con.execute("CREATE SECRET s3 (TYPE s3, KEY_ID 'test', SECRET 'test', REGION 'us-east-1', "
            f"ENDPOINT '127.0.0.1:{os.environ['AWS_ENDPOINT_URL'].rsplit(':', 1)[1]}', URL_STYLE 'path', USE_SSL false)")
src = f"delta_scan('{uri}')"
print("rows per date partition:")
for date, n in con.sql(f"SELECT date, count(*) FROM {src} GROUP BY date ORDER BY date").fetchall():
    print(f"  date={date}  {n} rows")
print("orders by status now (each order's last change, deletes dropped):")
rows = con.sql(f"""
    SELECT order_status, count(*) FROM (
        SELECT *, row_number() OVER (PARTITION BY order_id
            ORDER BY lsn DESC NULLS LAST, change_index DESC NULLS LAST) AS version FROM {src})
    WHERE version = 1 AND op <> 'd' GROUP BY order_status ORDER BY order_status""").fetchall()
for status, n in rows:
    print(f"  {status or '':<10} {n}")
print("the same from the current-state table, without a window:")
rows = con.sql(f"SELECT order_status, count(*) FROM delta_scan('{sys.argv[2]}') GROUP BY 1 ORDER BY 1").fetchall()
for status, n in rows:
    print(f"  {status or '':<10} {n}")
PYEOF

cat <<EOF

The pipeline keeps running (pid $(cat "$PIDFILE"), log $LOG).
The Delta consumer keeps running (pid $(cat "$DELTA_PIDFILE"), log $DELTA_LOG).
  insert more:  PGPASSWORD=student123 psql -h 127.0.0.1 -p $PG_PORT -U student food_delivery_db -c "INSERT INTO ROLL001_orders (customer_name, amount) VALUES ('You', 99.50)"
  update one:   PGPASSWORD=student123 psql -h 127.0.0.1 -p $PG_PORT -U student food_delivery_db -c "UPDATE ROLL001_orders SET order_status = 'DELIVERED' WHERE order_id = 101"
  watch:        ./target/release/orderstream status
  stop:         make down
EOF
