#!/usr/bin/env bash
# The local stack: a private PostgreSQL cluster and a tansu Kafka-API broker, both on loopback,
# with all state, logs and PID files under .stack/ (git-ignored).
#
#   dev/stack.sh up      install what is missing, start both, wait until both answer (no-op if up)
#   dev/stack.sh down    stop exactly the processes `up` started (by PID)
#   dev/stack.sh status  say what runs
#   dev/stack.sh env     print the settings as shell variables (for tests and scripts)
#
# Ports can be moved with ORDERSTREAM_PG_PORT and ORDERSTREAM_KAFKA_PORT; the configuration in
# configs/orders_stream.yml points at the defaults (docs/development.md, "Ports").
# PostgreSQL is the installed major version (the cluster's own when it exists, else the newest;
# ORDERSTREAM_PG_BIN names another bin folder), or the distribution's default when none is.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK="$ROOT/.stack"
PG_PORT=${ORDERSTREAM_PG_PORT:-55432}
KAFKA_PORT=${ORDERSTREAM_KAFKA_PORT:-9092}
S3_PORT=${ORDERSTREAM_S3_PORT:-9000}
TANSU_VERSION=0.6.0
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
  v=$(cat "$PG_DIR/data/PG_VERSION" 2>/dev/null || true)
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
      echo "  then \`make up\` builds tansu $TANSU_VERSION with cargo install (about 17 minutes, once per user)"
    fi
  } >&2
  exit 1
}

tansu_installed() { [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; }

ensure_tansu() {
  if tansu_installed; then return; fi
  mkdir -p "$STACK/logs"
  log "installing tansu $TANSU_VERSION with cargo (about 17 minutes, once per machine; log: .stack/logs/tansu-install.log)"
  if ! cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql \
      >"$STACK/logs/tansu-install.log" 2>&1; then
    tail -n 30 "$STACK/logs/tansu-install.log" >&2
    die "cargo install tansu failed (see .stack/logs/tansu-install.log)"
  fi
  log "tansu $TANSU_VERSION installed at $TANSU"
}

# ---------------------------------------------------------------------------------------------
# The build cache: `target` links to a folder outside the checkout, shared by every checkout of
# this user, so that a fresh clone (CI's, a second worktree) compiles only orderstream itself
# instead of its ~500 dependencies (deltalake's above all): minutes instead of tens of minutes
# on 2 cores. Cargo keys every artifact by hash and locks the folder while it builds, so
# checkouts never mix their builds. ORDERSTREAM_TARGET_CACHE moves it; an existing `target`
# (folder or link) is left alone.

link_target() {
  [ -e "$ROOT/target" ] || [ -L "$ROOT/target" ] && return 0
  local cache=${ORDERSTREAM_TARGET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orderstream/target}
  mkdir -p "$cache"
  ln -s "$cache" "$ROOT/target"
  log "build cache: target -> $cache"
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
# PostgreSQL: refuses to run as root, so as root the cluster belongs to an ordinary OS user.

PG_LINK="$STACK/pg"
PG_DIR="$PG_LINK"
# When .stack/pg links elsewhere (see pg_prepare_dir), every path handed to PostgreSQL must be
# the real one: the link itself may sit below a folder the cluster's user cannot enter.
if [ -L "$PG_LINK" ]; then PG_DIR=$(readlink -f "$PG_LINK"); fi

pg_user() {
  if ! as_root; then id -un; return; fi
  if id postgres >/dev/null 2>&1; then echo postgres; return; fi
  if ! id orderstream >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin orderstream
  fi
  echo orderstream
}

as_pg() { # run a command as the cluster's OS user
  # From / : the caller's working directory may be closed to that user.
  if as_root; then (cd / && runuser -u "$PGUSER" -- "$@"); else "$@"; fi
}

pg_prepare_dir() {
  mkdir -p "$STACK"
  if [ -L "$PG_LINK" ] || [ -d "$PG_LINK" ]; then return; fi
  mkdir -p "$PG_LINK"
  if as_root; then
    chown "$PGUSER" "$PG_LINK"
    # The OS user must reach the folder; a checkout under /root is closed to it. Then the
    # cluster lives under /var/lib/orderstream and .stack/pg links to it.
    if ! runuser -u "$PGUSER" -- test -w "$PG_LINK"; then
      rmdir "$PG_LINK"
      local key real
      key=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
      real="/var/lib/orderstream/pg-$key"
      mkdir -p "$real"
      chown "$PGUSER" "$real"
      ln -s "$real" "$PG_LINK"
      PG_DIR="$real"
      log "PostgreSQL data lives in $real (linked from .stack/pg): $ROOT is closed to user $PGUSER"
    fi
  fi
}

pg_up() {
  PGUSER=$(pg_user)
  pg_prepare_dir
  local data="$PG_DIR/data"
  if pid_alive postgres "$data" && pg_ready; then return; fi
  if pg_ready; then die "port $PG_PORT already answers, but not by our cluster: stop it or set ORDERSTREAM_PG_PORT"; fi
  if [ -f "$data/PG_VERSION" ]; then
    local have want
    have=$(pg_version)
    have=${have%%.*}
    want=$(cat "$data/PG_VERSION")
    [ "$have" = "$want" ] || die "the cluster in .stack/pg/data is PostgreSQL $want, but $PG_BIN is $have: \
install postgresql-$want (or set ORDERSTREAM_PG_BIN), or delete .stack/pg to start a new, empty cluster"
  else
    log "creating the PostgreSQL cluster in .stack/pg/data (OS user $PGUSER)"
    as_pg mkdir -p "$PG_DIR/run" "$PG_DIR/log"
    as_pg "$PG_BIN/initdb" -D "$data" --username=postgres --auth-local=trust --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C.UTF-8 >"$STACK/logs/initdb.log" 2>&1 \
      || { cat "$STACK/logs/initdb.log" >&2; die "initdb failed"; }
    as_pg tee -a "$data/postgresql.conf" >/dev/null <<EOF
# orderstream local stack
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR/run'
wal_level = logical
max_wal_senders = 64
max_replication_slots = 64
max_prepared_transactions = 20
timezone = 'UTC'
log_timezone = 'UTC'
max_connections = 200
EOF
  fi
  # Settings added since a cluster may have been created (a later line wins).
  if ! grep -q '^max_prepared_transactions' "$data/postgresql.conf"; then
    as_pg tee -a "$data/postgresql.conf" >/dev/null <<EOF
# orderstream local stack: log-based capture (one slot per test table) and two-phase commit
max_wal_senders = 64
max_replication_slots = 64
max_prepared_transactions = 20
EOF
  fi
  as_pg mkdir -p "$PG_DIR/run" "$PG_DIR/log"
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$PG_DIR/log/postgres.log" -o "-p $PG_PORT" -w -t 60 start >/dev/null \
    || { tail -n 20 "$PG_DIR/log/postgres.log" >&2; die "PostgreSQL did not start (log: .stack/pg/log/postgres.log)"; }
  head -n 1 "$data/postmaster.pid" >"$STACK/pids/postgres.pid"
  pg_bootstrap
}

pg_version() { "$PG_BIN/pg_ctl" --version | sed -n 's/^pg_ctl (PostgreSQL) \([0-9.]*\).*/\1/p'; }

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 5; }

pg_admin() { as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR/run" -p "$PG_PORT" -U postgres "$@"; }

pg_bootstrap() {
  # The seed's role and database. pg_read_all_stats lets change capture see other sessions'
  # open transactions; REPLICATION is for the log-based mode.
  pg_admin -d postgres >/dev/null <<'EOF'
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

pg_down() {
  # SIGINT is PostgreSQL's fast shutdown.
  stop_pid postgres "$PG_DIR/data" INT
}

# ---------------------------------------------------------------------------------------------
# The broker: tansu with durable SQLite storage (path relative to its working directory).

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
  log "starting tansu $TANSU_VERSION on 127.0.0.1:$KAFKA_PORT (storage .stack/kafka/tansu.db)"
  (
    cd "$KAFKA_DIR"
    exec setsid "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "sqlite://tansu.db" \
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

cmd=${1:-}
mkdir -p "$STACK/pids" "$STACK/logs"
PG_BIN=$(pg_bin_detect)
case "$cmd" in
  up)
    link_target
    ensure_packages
    ensure_tansu
    pg_up
    kafka_up
    s3_up
    log "up: PostgreSQL $(pg_version) on 127.0.0.1:$PG_PORT (food_delivery_db, student), Kafka 127.0.0.1:$KAFKA_PORT, S3 http://127.0.0.1:$S3_PORT"
    ;;
  down)
    # The demo's pipeline first, so it does not spend its last moments retrying.
    stop_pid pipeline "$ROOT/target/release/orderstream" TERM
    stop_pid pipeline-delta "$ROOT/target/release/orderstream" TERM
    s3_down
    kafka_down
    pg_down
    ;;
  status)
    if pid_alive postgres "$PG_DIR/data" && pg_ready; then echo "postgres: up on 127.0.0.1:$PG_PORT"; else echo "postgres: down"; fi
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
    ;;
  *)
    echo "usage: dev/stack.sh up|down|status|env" >&2
    exit 2
    ;;
esac
