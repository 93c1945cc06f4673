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

for i in $(seq "$runs"); do
  start=$(date +%s%N)
  PHONEHOME_COLLECTOR_FOOTPRINT=1 "$bin" collect --root "$root" \
    --smartctl collector/tests/smartctl-standin --compact >/dev/null 2>"$tmp/err"
  end=$(date +%s%N)
  line=$(grep footprint "$tmp/err")
  echo "$line wall_ms=$(( (end - start) / 1000000 ))" >>"$tmp/runs"
done

python3 - "$tmp/runs" "$runs" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=(\d+)", l)) for l in open(sys.argv[1])]
for key, label in [("cpu_ms", "collector CPU (ms, user+sys, own process)"),
                   ("peak_rss_kib", "collector peak RSS (KiB)"),
                   ("wall_ms", "wall time incl. 13 stand-in smartctl runs (ms)")]:
    v = sorted(int(r[key]) for r in rows)
    print(f"{label}: median {statistics.median(v):.0f}, max {v[-1]} over {sys.argv[2]} runs")
PY
