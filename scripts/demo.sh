#!/usr/bin/env bash
# Brings phonehome up on this machine: PostgreSQL (a private cluster, or $DATABASE_URL), a
# throwaway CA, the ingest and one collector run; prints the dashboard URL; Ctrl-C stops it.
# Extra arguments go to `phonehome-ingest demo` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
echo "==> building phonehome (the first build takes a few minutes)"
cargo build --quiet -p phonehome-ingest -p phonehome-collector -p phonehome-loadgen
exec target/debug/phonehome-ingest demo "$@"
