#!/usr/bin/env python3
"""Lake upkeep benchmarks: reading the current state from the current-state table against the
change table, and the throughput of `orderstream compact`. Run with the venv's python:

  .stack/venv/bin/python dev/bench_lake.py                  # both, full size
  .stack/venv/bin/python dev/bench_lake.py --orders 100000 --changes 300000 --files 50   # smaller

(a) Query. A change table of ORDERS orders and CHANGES changes: ORDERS inserts (ids 1..ORDERS,
    `created_at` spread over 10 days, so 10 `date` partitions), then CHANGES - ORDERS updates
    (98%) and deletes (2%) of orders picked at random (an order deleted gets no later change),
    `lsn` increasing by change, `change_index` 0; written with Python deltalake's
    write_deltalake, partitioned by `date`, zstd, in the consumer's schema. The current table of
    the same changes (each order's last change, deletes dropped, partitioned by `order_bucket` =
    order_id // 10000) is written by orderstream's own code (`CurrentTable::fill`, through
    `cargo bench --bench current` with ORDERSTREAM_BENCH_FILL_FROM/INTO), or with
    `--current-writer python` by write_deltalake from the same rows. Then, with DuckDB's delta
    extension (one connection, one untimed read of each first, then RUNS of each in turn):
      current:  SELECT order_status, count(*) FROM delta_scan(current) GROUP BY order_status
      window:   the same count over the query of docs/lake.md "The current state of every
                order" (row_number() over order_id by lsn, change_index; version = 1, op <> 'd',
                after the last truncate) on delta_scan(change)
    Both must give the same counts. Prints every run, the medians and their ratio.

(b) Compaction. A change table whose one date partition holds FILES files of ROWS_PER_FILE rows
    (FILES appends with write_deltalake, same schema, zstd), copied afresh for every run, twice:
    on one copy `target/release/orderstream --config <yml> compact` runs (the yml is
    configs/orders_stream.yml with datalake.format delta and datalake.path the copy; compact
    talks to neither PostgreSQL nor Kafka), timed from the spawn to its exit; on the other copy
    pyarrow reads the same files (pq.read_table each, concat) and writes them as one zstd
    Parquet file, timed around the read and the write. MB/s = bytes of the small files /
    seconds. COMPACT_RUNS runs; after each, DuckDB counts the compacted table's rows, which must
    be FILES * ROWS_PER_FILE. The binary is built (`cargo build --release`) when missing.

Options: --only a|b, --orders (1000000), --changes (3000000), --runs (5), --files (500),
--rows-per-file (2000), --compact-runs (3), --current-writer rust|python (rust), --keep (leave
the work directory, printed, in place).
"""

import argparse
import datetime
import decimal
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "dev"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

START_US = 1_737_158_400_000_000  # 2025-01-18T00:00:00Z
DAY_US = 86_400_000_000
DAYS = 10
BUCKET = 10_000
CUSTOMERS = ["John Doe", "Jane Smith", "Amit Kumar", "Sara Lee", "Li Wei", "Maria Garcia", "Omar Haddad",
             "Zoë Müller"]
RESTAURANTS = ["Burger Junction", "Pizza Palace", "Sushi Central", "Curry House", "Taco Town"]
ITEMS = ["Veg Burger", "Margherita", "California Roll", "Butter Chicken", "Tacos", "Fries"]
STATUSES = ["PLACED", "PREPARING", "DELIVERED", "CANCELLED"]

TS = pa.timestamp("us", tz="UTC")
AMOUNT = pa.decimal128(10, 2)
# The consumer's change table (src/order.rs arrow_schema, src/sink/delta.rs table_schema).
CHANGE_SCHEMA = pa.schema([
    pa.field("order_id", pa.int64()), pa.field("customer_name", pa.string()),
    pa.field("restaurant_name", pa.string()), pa.field("item", pa.string()), pa.field("amount", AMOUNT),
    pa.field("order_status", pa.string()), pa.field("created_at", TS), pa.field("op", pa.string(), nullable=False),
    pa.field("lsn", pa.int64()), pa.field("change_index", pa.int32()), pa.field("committed_at", TS),
    pa.field("date", pa.string(), nullable=False),
])
# The current table (src/sink/current.rs file_schema and the bucket).
CURRENT_COLUMNS = ["order_id", "customer_name", "restaurant_name", "item", "amount", "order_status", "created_at",
                   "lsn", "committed_at"]
CURRENT_SCHEMA = pa.schema([CHANGE_SCHEMA.field(c) for c in CURRENT_COLUMNS]
                           + [pa.field("order_bucket", pa.int64(), nullable=False)])

WINDOW_QUERY = """
WITH lake AS (
    SELECT * FROM delta_scan('{change}')
),
last_truncate AS (
    SELECT lsn, change_index FROM lake WHERE op = 't'
    ORDER BY lsn DESC, change_index DESC LIMIT 1
),
versions AS (
    SELECT *, row_number() OVER (
        PARTITION BY order_id ORDER BY lsn DESC NULLS LAST, change_index DESC NULLS LAST
    ) AS version
    FROM lake WHERE coalesce(op, 'c') <> 't'
),
current AS (
    SELECT order_id, customer_name, restaurant_name, item, amount, order_status, created_at
    FROM versions LEFT JOIN last_truncate AS t ON true
    WHERE version = 1 AND coalesce(op, 'c') <> 'd'
      AND (t.lsn IS NULL OR versions.lsn > t.lsn
           OR (versions.lsn = t.lsn AND versions.change_index > t.change_index))
)
SELECT order_status, count(*) FROM current GROUP BY order_status ORDER BY order_status
"""
CURRENT_QUERY = "SELECT order_status, count(*) FROM delta_scan('{current}') GROUP BY order_status ORDER BY order_status"


def writer_properties():
    from deltalake import WriterProperties
    # As the consumer's files (src/sink/delta.rs writer_properties): zstd level 3.
    return WriterProperties(compression="ZSTD", compression_level=3)


def dir_bytes(path, suffix=".parquet"):
    total = 0
    for d, _, files in os.walk(path):
        if "_delta_log" in d:
            continue
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files if f.endswith(suffix))
    return total


def live_files(path):
    from deltalake import DeltaTable
    return DeltaTable(path).file_uris()


def columns(ids, ops, statuses, lsns, committed, created):
    """The change table's columns for these rows (all lists of the same length)."""
    n = len(ids)
    names = lambda values, pick: pa.array(values).take(pa.array(pick, pa.int32()))  # noqa: E731
    amounts = pa.array([decimal.Decimal(5000 + k) / 100 for k in range(95_000)], AMOUNT)
    day0 = datetime.datetime.fromtimestamp(START_US / 1e6, datetime.timezone.utc)
    dates = [(day0 + datetime.timedelta(days=d)).strftime("%Y-%m-%d") for d in range(DAYS + 1)]
    return pa.Table.from_arrays([
        pa.array(ids, pa.int64()),
        names(CUSTOMERS, [i % 8 for i in ids]),
        names(RESTAURANTS, [i % 5 for i in ids]),
        names(ITEMS, [i % 6 for i in ids]),
        amounts.take(pa.array([(i * 137) % 95_000 for i in ids], pa.int32())),
        names(STATUSES, statuses),
        pa.array(created, TS),
        names(["c", "u", "d"], ops),
        pa.array(lsns, pa.int64()),
        pa.array([0] * n, pa.int32()),
        pa.array(committed, TS),
        names(dates, [(c - START_US) // DAY_US for c in created]),
    ], schema=CHANGE_SCHEMA)


def generate(orders, changes, seed=7):
    """The change rows, in commit order: inserts, then updates and deletes of random orders."""
    rng = random.Random(seed)
    span = DAYS * DAY_US - 1
    created_of = lambda i: START_US + (i - 1) * span // max(orders, 1)  # noqa: E731
    ids, ops, statuses = list(range(1, orders + 1)), [0] * orders, [0] * orders
    deleted = set()
    picks = []
    while len(picks) < changes - orders:
        i = rng.randint(1, orders)
        if i in deleted:
            continue
        if rng.random() < 0.02:
            deleted.add(i)
            picks.append((i, 2, 3))
        else:
            picks.append((i, 1, rng.randint(1, 3)))
    for i, op, status in picks:
        ids.append(i)
        ops.append(op)
        statuses.append(status)
    n = len(ids)
    lsns = [0x1_6B37_4800 + k * 0x100 for k in range(n)]
    created = [created_of(i) for i in ids]
    # Inserts commit when created; later changes as the stream goes on, never before the order.
    step = span // max(n - orders, 1)
    committed = created[:orders] + [max(created[orders + k], START_US + k * step) for k in range(n - orders)]
    return columns(ids, ops, statuses, lsns, committed, created), len(deleted)


def current_rows(change):
    """Each order's last change (the rows are in commit order), deletes dropped, by order_id."""
    ids = change.column("order_id").to_pylist()
    last = {}
    for k, i in enumerate(ids):
        last[i] = k
    ops = change.column("op").to_pylist()
    keep = sorted((i, k) for i, k in last.items() if ops[k] != "d")
    t = change.take(pa.array([k for _, k in keep], pa.int64())).select(CURRENT_COLUMNS)
    buckets = pa.array([i // BUCKET for i, _ in keep], pa.int64())
    return t.append_column(pa.field("order_bucket", pa.int64(), nullable=False), buckets).cast(CURRENT_SCHEMA)


def write_current_rust(change_path, current_path):
    env = dict(os.environ, ORDERSTREAM_BENCH_FILL_FROM=change_path, ORDERSTREAM_BENCH_FILL_INTO=current_path)
    out = subprocess.run(["cargo", "bench", "--bench", "current"], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        sys.exit(f"cargo bench --bench current (fill) failed:\n{out.stderr[-3000:]}")
    print("  " + out.stdout.strip().splitlines()[-1], flush=True)


def duckdb_con():
    from delta_read import duckdb_connect
    return duckdb_connect("/")


def query(args, work):
    from deltalake import write_deltalake
    change_path = os.path.join(work, "change")
    current_path = os.path.join(work, "current")
    t0 = time.perf_counter()
    rows, deleted = generate(args.orders, args.changes)
    print(f"(a) generated {rows.num_rows} changes of {args.orders} orders ({deleted} deleted) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    write_deltalake(change_path, rows, partition_by=["date"], writer_properties=writer_properties())
    print(f"(a) change table written in {time.perf_counter() - t0:.1f} s: {len(live_files(change_path))} files, "
          f"{dir_bytes(change_path) / 1e6:.1f} MB", flush=True)
    t0 = time.perf_counter()
    if args.current_writer == "rust":
        del rows
        write_current_rust(change_path, current_path)
        how = "orderstream's CurrentTable::fill"
    else:
        state = current_rows(rows)
        del rows
        write_deltalake(current_path, state, partition_by=["order_bucket"], writer_properties=writer_properties())
        how = "Python deltalake write_deltalake"
    print(f"(a) current table written by {how} in {time.perf_counter() - t0:.1f} s: "
          f"{len(live_files(current_path))} files, {dir_bytes(current_path) / 1e6:.1f} MB", flush=True)

    con = duckdb_con()
    queries = {"current": CURRENT_QUERY.format(current=current_path),
               "window": WINDOW_QUERY.format(change=change_path)}
    results = {k: con.execute(q).fetchall() for k, q in queries.items()}
    print(f"(a) counts: current table {results['current']}; change table {results['window']}", flush=True)
    if results["current"] != results["window"]:
        sys.exit("(a) the two queries disagree")
    times = {k: [] for k in queries}
    for run in range(1, args.runs + 1):
        for k, q in queries.items():
            t0 = time.perf_counter()
            con.execute(q).fetchall()
            times[k].append(time.perf_counter() - t0)
            print(f"(a) run {run}: {k} {times[k][-1]:.4f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"(a) median of {args.runs}: current table {med['current']:.4f} s, change table window query "
          f"{med['window']:.4f} s, ratio {med['window'] / med['current']:.1f}x", flush=True)


def small_files_table(args, path):
    from deltalake import DeltaTable, write_deltalake
    orders = args.files * args.rows_per_file
    ids = list(range(1, orders + 1))
    # One date partition: created_at within 2025-01-18, 1/100 s apart (orders wrap within it).
    created = [START_US + ((i - 1) * 10_000) % DAY_US for i in ids]
    lsns = [0x1_6B37_4800 + k * 0x100 for k in range(orders)]
    rows = columns(ids, [0] * orders, [0] * orders, lsns, created, created)
    props = writer_properties()
    write_deltalake(path, rows.slice(0, args.rows_per_file), partition_by=["date"], writer_properties=props)
    dt = DeltaTable(path)
    for f in range(1, args.files):
        write_deltalake(dt, rows.slice(f * args.rows_per_file, args.rows_per_file), mode="append",
                        writer_properties=props)
    return orders


def config_for(path, yml):
    with open(os.path.join(ROOT, "configs", "orders_stream.yml")) as f:
        text = f.read()
    old_path = 'path: "datalake/food/ROLL001/output/orders"'
    old_format = 'format: "parquet"'
    if old_path not in text or old_format not in text:
        sys.exit("configs/orders_stream.yml no longer has the datalake lines this bench replaces")
    text = text.replace(old_path, f'path: "{path}"').replace(old_format, 'format: "delta"')
    with open(yml, "w") as f:
        f.write(text)


def compaction(args, work):
    binary = os.path.join(ROOT, "target", "release", "orderstream")
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    template = os.path.join(work, "small")
    t0 = time.perf_counter()
    rows = small_files_table(args, template)
    files = live_files(template)
    small_bytes = dir_bytes(template)
    print(f"(b) {len(files)} files of {args.rows_per_file} rows ({rows} rows, {small_bytes / 1e6:.2f} MB) written "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    con = duckdb_con()
    ours, plain = [], []
    for run in range(1, args.compact_runs + 1):
        a, b = os.path.join(work, f"run{run}_compact"), os.path.join(work, f"run{run}_pyarrow")
        shutil.copytree(template, a)
        shutil.copytree(template, b)
        yml = os.path.join(work, f"run{run}.yml")
        config_for(a, yml)
        t0 = time.perf_counter()
        out = subprocess.run([binary, "--config", yml, "compact"], cwd=ROOT, capture_output=True, text=True)
        took = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"(b) orderstream compact failed:\n{out.stderr[-3000:]}")
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "(nothing printed)"
        after = live_files(a)
        count = con.execute(f"SELECT count(*) FROM delta_scan('{a}')").fetchone()[0]
        if count != rows:
            sys.exit(f"(b) the compacted table holds {count} rows, not {rows}")
        ours.append(took)
        print(f"(b) run {run}: orderstream compact {took:.3f} s, {small_bytes / 1e6 / took:.1f} MB/s; "
              f"{len(after)} live files after, DuckDB count {count}; it printed: {line}", flush=True)

        names = sorted(os.path.join(d, f) for d, _, fs in os.walk(b) if "_delta_log" not in d
                       for f in fs if f.endswith(".parquet"))
        if len(names) != len(files):
            sys.exit(f"(b) {len(names)} Parquet files in the copy, the table has {len(files)}")
        t0 = time.perf_counter()
        table = pa.concat_tables([pq.read_table(n) for n in names])
        pq.write_table(table, os.path.join(b, "compacted.parquet"), compression="zstd", compression_level=3)
        took = time.perf_counter() - t0
        plain.append(took)
        print(f"(b) run {run}: pyarrow read + write {took:.3f} s, {small_bytes / 1e6 / took:.1f} MB/s "
              f"({table.num_rows} rows, {os.path.getsize(os.path.join(b, 'compacted.parquet')) / 1e6:.2f} MB "
              f"written)", flush=True)
        shutil.rmtree(a)
        shutil.rmtree(b)
    mo, mp = statistics.median(ours), statistics.median(plain)
    print(f"(b) median of {args.compact_runs}: orderstream compact {mo:.3f} s = {small_bytes / 1e6 / mo:.1f} MB/s; "
          f"pyarrow read + write {mp:.3f} s = {small_bytes / 1e6 / mp:.1f} MB/s; ratio {mp / mo:.2f}x", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["a", "b"])
    p.add_argument("--orders", type=int, default=1_000_000)
    p.add_argument("--changes", type=int, default=3_000_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--files", type=int, default=500)
    p.add_argument("--rows-per-file", type=int, default=2000)
    p.add_argument("--compact-runs", type=int, default=3)
    p.add_argument("--current-writer", choices=["rust", "python"], default="rust")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    if args.changes < args.orders:
        sys.exit("--changes must be at least --orders (every order is inserted once)")
    work = tempfile.mkdtemp(prefix="orderstream_bench_lake_")
    print(f"work directory {work}", flush=True)
    try:
        if args.only in (None, "a"):
            query(args, work)
        if args.only in (None, "b"):
            compaction(args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
    # Python deltalake can abort in the interpreter's teardown after its work is done
    # (delta-io/delta-rs#2184); leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
