"""Reads an orderstream Delta table with a reader other than orderstream's writer.

    python dev/delta_read.py duckdb|replay|deltalake|polars URI [current]
    python dev/delta_read.py watch URI SECONDS
    python dev/delta_read.py state-duckdb|state-polars URI

URI is a local path, file:// or s3://bucket/prefix; for S3 the endpoint and keys come from
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION.

  duckdb     DuckDB's delta extension (delta_scan; built on delta-kernel-rs)
  replay     no Delta library at all: the _delta_log is replayed here (add and remove actions,
             the last checkpoint's Parquet), and the listed files are read with pyarrow
  deltalake  Python deltalake (delta-rs itself: convenient, not independent)
  polars     Polars' read_delta (the table's file list from delta-rs, the files read by Polars)

Prints JSON: {"schema": [[name, type], ...], "rows": [...], "version": N, "files": N,
"txn": {app_id: version}} with rows ordered by (order_id, created_at, lsn, change_index).
With `current`, rows are the current state instead: each order's last change, deletes dropped.

`state-duckdb` and `state-polars` read a current-state table (datalake.current_path) with DuckDB's
delta extension or Polars: {"rows": [...], "files": N} ordered by order_id, each row the seven
order columns, lsn and committed_at (timestamps as above, amount as text).

`watch` reads the table again and again for SECONDS while it is written and compacted, in turn
with DuckDB and with the log replay, and checks each read: no row twice, and every row an earlier
read saw still there. Prints JSON: {"reads": N, "rows": N (of the last read), "versions": [first,
last], "problems": [the first ten]}.
"""

import datetime
import json
import os
import sys

COLS = ["order_id", "customer_name", "restaurant_name", "item", "amount", "order_status", "created_at",
        "op", "lsn", "change_index", "committed_at", "date"]


def utc(ts):
    return None if ts is None else ts.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def s3_parts(uri):
    rest = uri.split("://", 1)[1]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def local_path(uri):
    return uri[len("file://"):] if uri.startswith("file://") else uri


def filesystem(uri):
    """A pyarrow filesystem and the table's root inside it."""
    import pyarrow.fs as pafs
    if uri.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        scheme = "http" if endpoint.startswith("http://") else "https"
        fs = pafs.S3FileSystem(
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            region=os.environ.get("AWS_REGION", "us-east-1"),
            endpoint_override=endpoint.split("://", 1)[-1] or None,
            scheme=scheme,
            force_virtual_addressing=False,
        )
        bucket, prefix = s3_parts(uri)
        return fs, f"{bucket}/{prefix}" if prefix else bucket
    return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))


def replay(uri):
    """The table's state from its log alone: the last checkpoint, then every later commit."""
    import pyarrow.parquet as pq
    fs, root = filesystem(uri)
    log = f"{root}/_delta_log"
    names = sorted(i.base_name for i in fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector(log)))
    start = -1
    files, txn = {}, {}
    if "_last_checkpoint" in names:
        with fs.open_input_stream(f"{log}/_last_checkpoint") as f:
            start = json.loads(f.read())["version"]
        parts = [n for n in names if n.startswith(f"{start:020d}.checkpoint") and n.endswith(".parquet")]
        for part in parts:
            t = pq.read_table(f"{log}/{part}", filesystem=fs).to_pylist()
            for a in t:
                if a.get("add"):
                    add = dict(a["add"])
                    # A checkpoint stores partitionValues as a Parquet map: (key, value) pairs.
                    if isinstance(add.get("partitionValues"), list):
                        add["partitionValues"] = dict(add["partitionValues"])
                    files[add["path"]] = add
                if a.get("txn"):
                    txn[a["txn"]["appId"]] = a["txn"]["version"]
    version = start
    for n in names:
        if not (n.endswith(".json") and n[:20].isdigit()) or int(n[:20]) <= start:
            continue
        version = max(version, int(n[:20]))
        with fs.open_input_stream(f"{log}/{n}") as f:
            for line in f.read().decode().splitlines():
                if not line.strip():
                    continue
                a = json.loads(line)
                if "add" in a:
                    files[a["add"]["path"]] = a["add"]
                elif "remove" in a:
                    files.pop(a["remove"]["path"], None)
                elif "txn" in a:
                    txn[a["txn"]["appId"]] = a["txn"]["version"]
    rows, schema = [], []
    from urllib.parse import unquote
    for path, add in sorted(files.items()):
        t = pq.read_table(f"{root}/{unquote(path)}", filesystem=fs)
        schema = [[f.name, str(f.type)] for f in t.schema] + [["date", "string"]]
        for r in t.to_pylist():
            r["date"] = add["partitionValues"]["date"]
            rows.append(r)
    for r in rows:
        r["created_at"] = utc(r["created_at"])
        r["committed_at"] = utc(r["committed_at"])
        r["amount"] = str(r["amount"])
    return {"schema": schema, "rows": rows, "version": version, "files": len(files), "txn": txn}


def table_uri(uri):
    """What a Delta reader opens: a URI as given, a plain path made absolute."""
    return uri if "://" in uri else os.path.abspath(uri)


def duckdb_connect(uri):
    """A DuckDB connection with the delta extension, and S3 settings for an s3:// URI."""
    import duckdb
    from duckdb_extensions import import_extension
    con = duckdb.connect()
    # On a slow read DuckDB would print its progress bar onto the JSON.
    con.execute("SET enable_progress_bar = false")
    import_extension("delta", con=con)
    con.execute("LOAD delta")
    con.execute("SET TimeZone='UTC'")
    if uri.startswith(("s3://", "s3a://")):
        import_extension("httpfs", con=con)
        con.execute("LOAD httpfs")
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        con.execute(
            "CREATE SECRET s3 (TYPE s3, KEY_ID ?, SECRET ?, REGION ?, ENDPOINT ?, URL_STYLE 'path', USE_SSL ?)",
            [os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
             os.environ.get("AWS_REGION", "us-east-1"), endpoint.split("://", 1)[-1],
             not endpoint.startswith("http://")],
        )
    return con


def duckdb_read(uri):
    con = duckdb_connect(uri)
    src = f"delta_scan('{table_uri(uri)}')"
    schema = [[r[0], r[1]] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
    q = f"""SELECT order_id, customer_name, restaurant_name, item, CAST(amount AS VARCHAR), order_status,
            strftime(created_at, '%Y-%m-%dT%H:%M:%S.%fZ'), op, lsn, change_index,
            strftime(committed_at, '%Y-%m-%dT%H:%M:%S.%fZ'), CAST(date AS VARCHAR) FROM {src}"""
    rows = [dict(zip(COLS, r)) for r in con.execute(q).fetchall()]
    return {"schema": schema, "rows": rows}


def object_store_options(uri):
    """The storage options of delta-rs (and so of Polars) for the stack's S3 server."""
    opts = {}
    if uri.startswith(("s3://", "s3a://")):
        for k in ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]:
            if os.environ.get(k):
                opts[k] = os.environ[k]
        opts["AWS_ALLOW_HTTP"] = "true"
        opts["AWS_S3_ADDRESSING_STYLE"] = "path"
    return opts


def as_json_values(rows):
    for r in rows:
        r["created_at"] = utc(r["created_at"])
        r["committed_at"] = utc(r["committed_at"])
        r["amount"] = str(r["amount"])
    return rows


def deltalake_read(uri):
    from deltalake import DeltaTable
    dt = DeltaTable(table_uri(uri), storage_options=object_store_options(uri))
    t = dt.to_pyarrow_table()
    rows = as_json_values(t.to_pylist())
    return {"schema": [[f.name, str(f.type)] for f in t.schema], "rows": rows, "version": dt.version()}


def polars_read(uri):
    import polars as pl
    df = pl.read_delta(table_uri(uri), storage_options=object_store_options(uri))
    rows = as_json_values(df.to_dicts())
    return {"schema": [[name, str(dtype)] for name, dtype in df.schema.items()], "rows": rows}


def current(rows):
    """Each order's last change (by commit position; snapshot reads before changes), deletes
    and truncated orders dropped: what the orders table holds now."""
    def pos(r):
        return (r["lsn"] if r["lsn"] is not None else -1, r["change_index"] if r["change_index"] is not None else -1)
    last = {}
    for r in rows:
        if r["op"] == "t":
            continue
        k = r["order_id"]
        if k not in last or pos(r) >= pos(last[k]):
            last[k] = r
    truncs = [pos(r) for r in rows if r["op"] == "t"]
    cut = max(truncs) if truncs else None
    return [r for r in last.values() if r["op"] != "d" and (cut is None or pos(r) > cut)]


STATE_COLS = ["order_id", "customer_name", "restaurant_name", "item", "amount", "order_status", "created_at",
              "lsn", "committed_at"]


def state_read(how, uri):
    if how == "state-duckdb":
        con = duckdb_connect(uri)
        q = f"""SELECT order_id, customer_name, restaurant_name, item, CAST(amount AS VARCHAR), order_status,
                strftime(created_at, '%Y-%m-%dT%H:%M:%S.%fZ'), lsn, strftime(committed_at, '%Y-%m-%dT%H:%M:%S.%fZ'),
                filename FROM delta_scan('{table_uri(uri)}', filename=true) ORDER BY order_id"""
        got = con.execute(q).fetchall()
        rows = [dict(zip(STATE_COLS, r[:9])) for r in got]
        return {"rows": rows, "files": len({r[9] for r in got})}
    import polars as pl
    df = pl.read_delta(table_uri(uri), storage_options=object_store_options(uri)).sort("order_id")
    rows = [{k: r[k] for k in STATE_COLS} for r in df.to_dicts()]
    for r in rows:
        r["created_at"] = utc(r["created_at"])
        r["committed_at"] = utc(r["committed_at"])
        r["amount"] = None if r["amount"] is None else str(r["amount"])
    return {"rows": rows}


def watch(uri, seconds):
    import time
    deadline = time.monotonic() + seconds
    seen, problems, reads, versions = set(), [], 0, []
    while time.monotonic() < deadline:
        how = "duckdb" if reads % 2 == 0 else "replay"
        try:
            got = duckdb_read(uri) if how == "duckdb" else replay(uri)
        except Exception as e:  # a table not yet created, or a file vacuumed under the read
            problems.append(f"read {reads} ({how}) failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            reads += 1
            continue
        if "version" in got:
            versions.append(got["version"])
        keys = [(r["order_id"], r["created_at"], r["op"], r["lsn"], r["change_index"]) for r in got["rows"]]
        now = set(keys)
        if len(now) != len(keys):
            problems.append(f"read {reads} ({how}): {len(keys) - len(now)} rows twice")
        lost = seen - now
        if lost:
            problems.append(f"read {reads} ({how}): {len(lost)} rows an earlier read saw are missing, e.g. {sorted(lost)[0]}")
        seen |= now
        reads += 1
    print(json.dumps({"reads": reads, "rows": len(seen), "versions": versions[:1] + versions[-1:],
                      "problems": problems[:10]}))


def main():
    if sys.argv[1] == "watch":
        watch(sys.argv[2], float(sys.argv[3]))
        return
    if sys.argv[1].startswith("state-"):
        print(json.dumps(state_read(sys.argv[1], sys.argv[2])))
        return
    how, uri = sys.argv[1], sys.argv[2]
    out = {"duckdb": duckdb_read, "replay": replay, "deltalake": deltalake_read, "polars": polars_read}[how](uri)
    if len(sys.argv) > 3 and sys.argv[3] == "current":
        out["rows"] = current(out["rows"])

    def nulls_first(v):
        return (v is not None, v or 0)
    out["rows"].sort(key=lambda r: (r["order_id"], r["created_at"], nulls_first(r["lsn"]),
                                    nulls_first(r["change_index"])))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
    # delta-rs and Polars can abort in the interpreter's teardown while their runtime threads
    # still run ("terminate called without an active exception", delta-io/delta-rs#2184,
    # pola-rs/polars#24169), after the answer is complete. Leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
