#!/usr/bin/env bash
# What PgBouncer costs the report path (docs/benchmarks.md, issue 17): the real ingest (release
# build) fed by `phonehome-loadgen --target`, in turns, straight on PostgreSQL ("direct"), through
# PgBouncer in pool_mode = session ("session": the hop alone) and through PgBouncer in
# pool_mode = transaction with db_transaction_pooler = true ("transaction"). Fresh database per
# run. Needs a PostgreSQL where databases may be created ($PHONEHOME_BENCH_ADMIN_URL, default the
# local server as postgres) and Debian's pgbouncer (scripts/deps.sh installs it).
#
#   scripts/bench-pgbouncer.sh [ROUNDS] [extra loadgen arguments]
#   scripts/bench-pgbouncer.sh 2 --appliances 200 --reports 10000 --keep-alive   (the default)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
shift || true
load=("$@")
[ ${#load[@]} -gt 0 ] || load=(--appliances 200 --reports 10000 --keep-alive)
admin=${PHONEHOME_BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server=${admin%/*}
pgbouncer=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
[ -x "$pgbouncer" ] || { echo "pgbouncer is not installed: run scripts/deps.sh" >&2; exit 1; }
command -v psql >/dev/null || { echo "psql is not installed: run scripts/deps.sh" >&2; exit 1; }

cargo build --release --quiet -p phonehome-ingest -p phonehome-loadgen --bins
bin=target/release
dir=$(mktemp -d /tmp/phonehome-bench-pgbouncer.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

"$bin/phonehome-ingest" ca init --dir "$dir/pki" >/dev/null
"$bin/phonehome-ingest" ca issue-server --dir "$dir/pki" --name 127.0.0.1 >/dev/null

# One PgBouncer per mode, each in front of its own database; as root it runs as postgres.
host_port=${server#*@}
host=${host_port%:*}
port=${host_port##*:}
user=${server#*://}
user=${user%@*}
declare -A bouncer_port
for mode in session transaction; do
  bouncer_port[$mode]=$(free_port)
  mkdir -p "$dir/$mode"
  cat >"$dir/$mode/pgbouncer.ini" <<INI
[databases]
phonehome = host=$host port=$port dbname=bench_$mode user=$user
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${bouncer_port[$mode]}
unix_socket_dir =
auth_type = trust
auth_file = $dir/$mode/userlist.txt
pool_mode = $mode
default_pool_size = 8
max_client_conn = 200
logfile = $dir/$mode/pgbouncer.log
pidfile = $dir/$mode/pgbouncer.pid
INI
  echo "\"$user\" \"\"" >"$dir/$mode/userlist.txt"
  as_user=()
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$dir/$mode"
    as_user=(-u postgres)
  fi
  "$pgbouncer" "${as_user[@]}" "$dir/$mode/pgbouncer.ini" 2>/dev/null &
  pids+=($!)
done
sleep 1

run() { # run MODE
  local mode=$1 db=bench_$1 url pooler=false
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" 2>/dev/null
  case $mode in
    direct) url="$server/$db" ;;
    session) url="postgres://$user@127.0.0.1:${bouncer_port[session]}/phonehome" ;;
    transaction)
      url="postgres://$user@127.0.0.1:${bouncer_port[transaction]}/phonehome"
      pooler=true
      ;;
  esac
  local reports ops
  reports=$(free_port)
  ops=$(free_port)
  PHONEHOME_DATABASE_URL=$url PHONEHOME_DB_TRANSACTION_POOLER=$pooler \
    PHONEHOME_REPORT_LISTEN=127.0.0.1:$reports PHONEHOME_OPS_LISTEN=127.0.0.1:$ops \
    PHONEHOME_TLS_CA_CERT=$dir/pki/ca.crt PHONEHOME_TLS_SERVER_CERT=$dir/pki/server.crt \
    PHONEHOME_TLS_SERVER_KEY=$dir/pki/server.key PHONEHOME_PKI_CA_DIR=$dir/pki PHONEHOME_LOG=warn \
    "$bin/phonehome-ingest" serve 2>"$dir/ingest-$mode.log" &
  local ingest=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ops/healthz" >/dev/null && break
    sleep 0.1
  done
  psql -q "$server/$db" -c CHECKPOINT
  sleep 2
  printf '== %-11s ' "$mode"
  "$bin/phonehome-loadgen" --target "https://127.0.0.1:$reports" --ca-dir "$dir/pki" \
    --database-url "$server/$db" --no-ceiling "${load[@]}" 2>/dev/null | grep -E "^ingest:" || echo "(no result)"
  kill "$ingest"
  wait "$ingest" 2>/dev/null || true
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null
}

echo "loadgen ${load[*]}; $rounds rounds"
for _ in $(seq "$rounds"); do
  for mode in direct session transaction; do
    run "$mode"
  done
done
