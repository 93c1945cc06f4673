#!/usr/bin/env bash
# Footprint benchmark of the collector (issue 3's targets: peak RSS <= 8 MiB, CPU <= 100 ms apart
# from smartctl, stripped release binary <= 6 MiB). Runs `collect` RUNS times (default 20) against
# a recorded machine with 12 disks: collector/benches/machine-12-disks, answered by the smartctl
# stand-in. The CPU and RSS figures are the collector process's own (/proc/self at exit), so the
# stand-in's Python start-up is not counted, as the target says.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}

cargo build --quiet --release -p phonehome-collector
bin=target/release/phonehome-collector
size=$(stat -c %s "$bin")
echo "binary: $bin, $size bytes ($(awk -v s="$size" 'BEGIN{printf "%.2f", s/1048576}') MiB, stripped by the release profile)"

export SMARTCTL_STANDIN_DIR=$PWD/collector/benches/machine-12-disks
root=collector/tests/fixtures/sysfs/node_exporter
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

devices=$("$bin" collect --root "$root" --smartctl collector/tests/smartctl-standin --compact \
  | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["smart"]["devices"]))')
echo "devices in the report: $devices"
[ "$devices" -eq 12 ] || { echo "expected 12 devices" >&2; exit 1; }

# `collect`: gather and print, no network.
for i in $(seq "$runs"); do
  start=$(date +%s%N)
  PHONEHOME_COLLECTOR_FOOTPRINT=1 "$bin" collect --root "$root" \
    --smartctl collector/tests/smartctl-standin --compact >/dev/null 2>"$tmp/err"
  end=$(date +%s%N)
  echo "$(grep footprint "$tmp/err") wall_ms=$(( (end - start) / 1000000 ))" >>"$tmp/collect"
done

# `run`, what appliances execute: gather, spool (fsync), mutual-TLS handshake, gzip, POST, unspool.
# The peer is a small Python mTLS server answering 202, with the collector's test PKI.
pki=$PWD/collector/tests/fixtures/pki
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$port" "$pki" <<'PY' &
import http.server, ssl, sys
port, pki = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"status":"stored"}'
        self.send_response(202); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(f"{pki}/server.crt", f"{pki}/server.key")
ctx.load_verify_locations(f"{pki}/ca.crt"); ctx.verify_mode = ssl.CERT_REQUIRED
srv = http.server.HTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
PY
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$tmp"' EXIT
cat >"$tmp/collector.toml" <<TOML
server = "https://127.0.0.1:$port"
ca_cert = "$pki/ca.crt"
client_cert = "$pki/appliance-SPOOL-TEST-1.crt"
client_key = "$pki/appliance-SPOOL-TEST-1.key"
serial = "SPOOL-TEST-1"
[spool]
dir = "$tmp/spool"
retry_budget_seconds = 0
TOML
sleep 0.5
for i in $(seq "$runs"); do
  start=$(date +%s%N)
  PHONEHOME_COLLECTOR_FOOTPRINT=1 "$bin" run --config "$tmp/collector.toml" --root "$root" \
    --smartctl collector/tests/smartctl-standin 2>"$tmp/err" \
    || { echo "run failed:"; cat "$tmp/err"; exit 1; } >&2
  end=$(date +%s%N)
  echo "$(grep footprint "$tmp/err") wall_ms=$(( (end - start) / 1000000 ))" >>"$tmp/run"
done

python3 - "$tmp" "$runs" "$size" <<'PY'
import re, statistics, sys
tmp, runs, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
worst = {}
for cmd in ("collect", "run"):
    rows = [dict(re.findall(r"(\w+)=(\d+)", l)) for l in open(f"{tmp}/{cmd}")]
    for key, label in [("cpu_ms", "CPU, own process (ms)"), ("peak_rss_kib", "peak RSS (KiB)"),
                       ("wall_ms", "wall time incl. 13 stand-in smartctl runs (ms)")]:
        v = sorted(int(r[key]) for r in rows)
        worst[(cmd, key)] = v[-1]
        print(f"{cmd:8} {label}: median {statistics.median(v):.0f}, max {v[-1]} over {runs} runs")
failed = []
if size > 6 * 1024 * 1024: failed.append(f"binary {size} bytes > 6 MiB")
for cmd in ("collect", "run"):
    if worst[(cmd, "peak_rss_kib")] > 8 * 1024: failed.append(f"{cmd} peak RSS > 8 MiB")
    if worst[(cmd, "cpu_ms")] > 100: failed.append(f"{cmd} CPU > 100 ms")
print("targets: " + ("MISSED: " + "; ".join(failed) if failed else "all met (RSS <= 8 MiB, CPU <= 100 ms, binary <= 6 MiB)"))
sys.exit(1 if failed else 0)
PY
