#!/usr/bin/env bash
# Soak: a release ingest takes reports at a steady rate for a long time while its resident
# memory and open file descriptors are sampled; both must stay flat (issue 13). A benchmark, not
# part of CI: the default run is an hour.
#
# Usage: scripts/soak.sh [SECONDS] [RATE] [APPLIANCES]   (default 3600 100 2000)
# Environment: ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
#              SAMPLE_SECS (default 30). Prints a table of samples and the growth from the first
#              sample after warm-up (a tenth of the run) to the last.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-3600}
rate=${2:-100}
appliances=${3:-2000}
sample=${SAMPLE_SECS:-30}
admin=${ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
db=phonehome_soak
url="${admin%/*}/$db"

echo "==> building release binaries"
cargo build --quiet --release -p phonehome-ingest -p phonehome-loadgen
psql "$admin" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
work=$(mktemp -d)
ingest_pid=""
cleanup() {
  [ -n "$ingest_pid" ] && kill "$ingest_pid" 2>/dev/null && wait "$ingest_pid" 2>/dev/null || true
  rm -rf "$work"
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db" || true
}
trap cleanup EXIT

target/release/phonehome-ingest ca init --dir "$work/pki" >/dev/null
target/release/phonehome-ingest ca issue-server --dir "$work/pki" --name 127.0.0.1 >/dev/null
ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
read -r report_port ops_port <<<"$ports"
PHONEHOME_DATABASE_URL="$url" \
PHONEHOME_REPORT_LISTEN="127.0.0.1:$report_port" \
PHONEHOME_OPS_LISTEN="127.0.0.1:$ops_port" \
PHONEHOME_TLS_CA_CERT="$work/pki/ca.crt" \
PHONEHOME_TLS_SERVER_CERT="$work/pki/server.crt" \
PHONEHOME_TLS_SERVER_KEY="$work/pki/server.key" \
PHONEHOME_LOG=warn \
  target/release/phonehome-ingest serve >"$work/ingest.log" 2>&1 &
ingest_pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$ops_port/healthz" >/dev/null && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$ops_port/healthz" >/dev/null || { cat "$work/ingest.log"; exit 1; }

reports=$((seconds * rate))
echo "==> $reports reports from $appliances appliances at $rate/s for $seconds s (fresh handshake each)"
target/release/phonehome-loadgen --database-url "$url" --target "https://127.0.0.1:$report_port" \
  --ca-dir "$work/pki" --appliances "$appliances" --reports "$reports" --rate "$rate" \
  --duration-secs "$seconds" --gzip --no-ceiling >"$work/loadgen.out" 2>"$work/loadgen.err" &
load_pid=$!

printf '%8s %10s %6s %10s\n' "t (s)" "RSS (KiB)" "fds" "reports"
samples="$work/samples"
start=$(date +%s)
while kill -0 "$load_pid" 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$ingest_pid/status")
  fds=$(ls "/proc/$ingest_pid/fd" | wc -l)
  stored=$(psql "$url" -Atc "SELECT count(*) FROM reports")
  printf '%8s %10s %6s %10s\n' "$now" "$rss" "$fds" "$stored" | tee -a "$samples"
  sleep "$sample"
done
wait "$load_pid" || { echo "load generator failed:"; cat "$work/loadgen.err"; exit 1; }
tail -n 20 "$work/loadgen.out"
python3 - "$samples" "$seconds" <<'PY'
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
warm = [r for r in rows if r[0] >= int(sys.argv[2]) // 10] or rows
first, last = warm[0], warm[-1]
print(f"after warm-up (t={first[0]} s to t={last[0]} s): RSS {first[1]} -> {last[1]} KiB "
      f"({(last[1] - first[1]) * 100 / max(first[1], 1):+.1f} %), open fds {first[2]} -> {last[2]}")
PY
