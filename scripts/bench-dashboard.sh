#!/usr/bin/env bash
# The dashboard at fleet scale: fills a fresh database with a simulated fleet through the ingest's
# storage layer (phonehome-loadgen fill), starts a release ingest on it, and times every page and
# API call one request at a time (scripts/bench_pages.py), with PostgreSQL's plans for the list
# queries. Figures go in docs/benchmarks.md with the command that printed them.
#
# Usage: scripts/bench-dashboard.sh [APPLIANCES] [DAYS] [REQUESTS]   (default 100000 30 50)
# Environment: ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
#              KEEP=1 keeps the database (phonehome_bench_dashboard) afterwards,
#              REUSE=1 (with KEEP=1) times a database a previous KEEP=1 run left, without filling.
set -euo pipefail
cd "$(dirname "$0")/.."
appliances=${1:-100000}
days=${2:-30}
requests=${3:-50}
admin=${ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
db=phonehome_bench_dashboard
url="${admin%/*}/$db"

echo "==> building release binaries"
cargo build --quiet --release -p phonehome-ingest -p phonehome-loadgen
if [ "${REUSE:-0}" != 1 ]; then
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
fi
work=$(mktemp -d)
ingest_pid=""
cleanup() {
  [ -n "$ingest_pid" ] && kill "$ingest_pid" 2>/dev/null && wait "$ingest_pid" 2>/dev/null || true
  rm -rf "$work"
  if [ "${KEEP:-0}" != 1 ]; then
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db" || true
  fi
}
trap cleanup EXIT

if [ "${REUSE:-0}" != 1 ]; then
  echo "==> filling $appliances appliances x $days days"
  time target/release/phonehome-loadgen fill --database-url "$url" --appliances "$appliances" --days "$days"
  # What a database that has run for a while has: statistics and visibility maps.
  psql "$url" -qc "VACUUM ANALYZE"
fi
psql "$url" -Atc "SELECT 'database size: ' || pg_size_pretty(pg_database_size(current_database()))"

target/release/phonehome-ingest ca init --dir "$work/pki" >/dev/null
target/release/phonehome-ingest ca issue-server --dir "$work/pki" --name localhost >/dev/null
ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
read -r report_port ops_port <<<"$ports"
# fill judges the history against app 4.3.0; the ingest holds the fleet to the same minimum.
# Reads without a token (ops_reads_require_token = false): the pages are timed, not the auth.
printf '[alerts.app_outdated]\nminimum_version = "4.3.0"\n' >"$work/ingest.toml"
PHONEHOME_CONFIG="$work/ingest.toml" \
PHONEHOME_DATABASE_URL="$url" \
PHONEHOME_REPORT_LISTEN="127.0.0.1:$report_port" \
PHONEHOME_OPS_LISTEN="127.0.0.1:$ops_port" \
PHONEHOME_TLS_CA_CERT="$work/pki/ca.crt" \
PHONEHOME_TLS_SERVER_CERT="$work/pki/server.crt" \
PHONEHOME_TLS_SERVER_KEY="$work/pki/server.key" \
PHONEHOME_LOG=warn \
PHONEHOME_OPS_READS_REQUIRE_TOKEN=false \
  target/release/phonehome-ingest serve >"$work/ingest.log" 2>&1 &
ingest_pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$ops_port/healthz" >/dev/null && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$ops_port/healthz" >/dev/null || { cat "$work/ingest.log"; exit 1; }
# The ingest's first maintenance run computes the daily version counts the adoption charts read.
for _ in $(seq 300); do
  [ "$(psql "$url" -Atc "SELECT count(*) FROM maintenance_runs WHERE finished_at IS NOT NULL")" != 0 ] && break
  sleep 1
done

python3 scripts/bench_pages.py "http://127.0.0.1:$ops_port" "$url" --requests "$requests" --explain
