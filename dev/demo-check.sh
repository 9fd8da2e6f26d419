#!/usr/bin/env bash
# `make demo-check` (CI runs it after the tests): `make demo` twice, then the lake, read back with
# DuckDB from the venv (dev/python.sh), must hold the seed orders plus every order the demos
# inserted, nothing twice:
#   1. no change twice: no (order_id, lsn, change_index) in two rows;
#   2. one creation row per order (a snapshot read `r` or an insert `c`);
#   3. the current state of every order (its last version, deletes removed) equals the table,
#      column by column;
#   4. the orders: on a fresh stack exactly the seed orders of sql/orders.sql plus every id the
#      table's sequence handed out since (the demos' inserts, the deleted ones included); on a
#      used one, at least the lake's orders from before plus every id handed out meanwhile.
# Exit 1 with what differs. The pipeline keeps running, as after `make demo`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CONFIG=configs/orders_stream.yml
LAKE=$(sed -n 's/^  path: "\(.*\)"/\1/p' "$CONFIG" | head -n 1)
PG_PORT=${ORDERSTREAM_PG_PORT:-55432}
export PGPASSWORD=student123
PSQL=(psql -X -q -At -h 127.0.0.1 -p "$PG_PORT" -U student -d food_delivery_db -v ON_ERROR_STOP=1)
PY=$(dev/python.sh)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The sequence's last id; on a stack without the table, the highest seed id (where `init`
# leaves the sequence).
SEEDS=$(sed -n 's/^ *(\([0-9]*\), .*/\1/p' sql/orders.sql | tr '\n' ' ')
last_id() {
  "${PSQL[@]}" -c "SELECT pg_sequence_last_value(pg_get_serial_sequence('roll001_orders', 'order_id'))"
}
lake_ids() {
  "$PY" - "$LAKE" <<'PYEOF'
import glob, sys, duckdb
files = glob.glob(f"{sys.argv[1]}/*/*.parquet")
if files:
    for (i,) in duckdb.sql(f"SELECT DISTINCT order_id FROM read_parquet({files!r}) ORDER BY 1").fetchall():
        print(i)
PYEOF
}

if [ "$("${PSQL[@]}" -c "SELECT to_regclass('roll001_orders') IS NOT NULL")" = t ]; then
  before=$(last_id)
  fresh=0
else
  before=$(printf '%s\n' $SEEDS | sort -n | tail -n 1)
  fresh=1
fi
lake_ids >"$WORK/lake_before"
if [ -s "$WORK/lake_before" ]; then fresh=0; fi

for run in 1 2; do
  printf '\n==== make demo (%s of 2)\n' "$run"
  make --no-print-directory demo
done

after=$(last_id)
"${PSQL[@]}" -c "
  SELECT coalesce(json_agg(t ORDER BY order_id), '[]') FROM (
    SELECT order_id, customer_name, restaurant_name, item, amount::text AS amount, order_status,
           to_char(created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') AS created_at
      FROM roll001_orders) t" >"$WORK/table.json"

printf '\n==== the lake, checked against the table\n'
"$PY" - "$LAKE" "$WORK" "$fresh" "$before" "$after" "$SEEDS" <<'PYEOF'
import glob, json, sys, duckdb
lake, work, fresh, before, after, seeds = sys.argv[1:7]
fresh, before, after = fresh == "1", int(before), int(after)
seeds = {int(s) for s in seeds.split()}
failures = []

def fail(what, rows):
    failures.append(f"{what}: {len(rows)}, e.g. {rows[:5]}")

files = glob.glob(f"{lake}/*/*.parquet")
if not files:
    sys.exit(f"demo-check: FAILED: no Parquet file under {lake}")
duckdb.sql("SET TimeZone = 'UTC'")
src = f"read_parquet({files!r}, hive_partitioning = true, union_by_name = true)"

twice = duckdb.sql(f"""SELECT order_id, lsn, change_index, count(*) FROM {src}
                       GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL""").fetchall()
if twice:
    fail("changes in the lake twice (order_id, lsn, change_index, rows)", twice)
created = duckdb.sql(f"""SELECT order_id, count(*) FILTER (WHERE coalesce(op, 'c') IN ('r', 'c')) AS n
                         FROM {src} GROUP BY order_id HAVING n <> 1 ORDER BY ALL""").fetchall()
if created:
    fail("orders without exactly one creation row (order_id, creation rows)", created)

current = {r[0]: r for r in duckdb.sql(f"""
    SELECT order_id, customer_name, restaurant_name, item, CAST(amount AS VARCHAR), order_status,
           strftime(created_at, '%Y-%m-%dT%H:%M:%S.%f') FROM (
        SELECT *, row_number() OVER (PARTITION BY order_id
            ORDER BY lsn DESC NULLS LAST, change_index DESC NULLS LAST) AS version FROM {src})
    WHERE version = 1 AND coalesce(op, 'c') <> 'd'""").fetchall()}
keys = ["order_id", "customer_name", "restaurant_name", "item", "amount", "order_status", "created_at"]
table = {r["order_id"]: tuple(r[k] for k in keys) for r in json.load(open(f"{work}/table.json"))}
differ = [(i, table.get(i), current.get(i)) for i in sorted(table.keys() | current.keys())
          if table.get(i) != current.get(i)]
if differ:
    fail("orders whose current state in the lake differs from the table (id, table, lake)", differ)

ids = {i for (i,) in duckdb.sql(f"SELECT DISTINCT order_id FROM {src}").fetchall()}
inserted = set(range(before + 1, after + 1))
if fresh:
    want = seeds | inserted
    if ids - want:
        fail("orders in the lake that were never inserted", sorted(ids - want))
else:
    want = {int(line) for line in open(f"{work}/lake_before") if line.strip()} | inserted
if want - ids:
    fail("orders missing from the lake", sorted(want - ids))

rows = duckdb.sql(f"SELECT count(*) FROM {src}").fetchall()[0][0]
deleted = len(ids - current.keys())
print(f"lake: {len(ids)} orders, {rows} change rows; {len(current)} current = the table's {len(table)}, "
      f"{deleted} deleted; {len(inserted)} inserted by the demos (ids {before + 1}-{after})"
      + (f", {len(seeds)} seed orders" if fresh else ""))
if failures:
    print("demo-check: FAILED", *failures, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print("demo-check: the lake holds " + ("the seed orders plus " if fresh else "")
      + "every order the demos inserted, each once, and its current state equals the table")
PYEOF

printf '\n==== the Delta table, replayed from its log without a Delta library, checked against the Parquet lake\n'
S3_PORT=${ORDERSTREAM_S3_PORT:-9000}
AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
  "$PY" dev/delta_read.py replay s3://orderstream/food/ROLL001/orders_delta >"$WORK/delta.json"
"$PY" - "$LAKE" "$WORK" <<'PYEOF'
import glob, json, sys, duckdb
lake, work = sys.argv[1:3]
delta = json.load(open(f"{work}/delta.json"))
key = lambda r: (r["order_id"], r["op"], r["lsn"], r["change_index"])
# Truncate rows (`t`, one per partition, no order) are not changes of an order.
changes = sorted(key(r) for r in delta["rows"] if r["op"] != "t")
if len(changes) != len(set(changes)):
    sys.exit("demo-check: FAILED: a change is in the Delta table twice")
files = glob.glob(f"{lake}/*/*.parquet")
src = f"read_parquet({files!r}, hive_partitioning = true, union_by_name = true)"
parquet = sorted(tuple(r) for r in duckdb.sql(f"SELECT order_id, coalesce(op, 'c'), lsn, change_index FROM {src} WHERE coalesce(op, 'c') <> 't'").fetchall())
if changes != parquet:
    only_delta, only_parquet = set(changes) - set(parquet), set(parquet) - set(changes)
    sys.exit(f"demo-check: FAILED: the Delta table and the Parquet lake differ: only in Delta {sorted(only_delta)[:5]}, "
             f"only in Parquet {sorted(only_parquet)[:5]}")
print(f"delta: version {delta['version']}, {delta['files']} files, {len(changes)} change rows = the Parquet lake's, each once")
PYEOF
