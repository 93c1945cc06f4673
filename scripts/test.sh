#!/usr/bin/env bash
# Runs phonehome's whole test suite. Installs what the tests need first (PostgreSQL binaries,
# curl). Tests use $PHONEHOME_TEST_DATABASE_URL, else PostgreSQL at 127.0.0.1:5432, else a private
# throwaway cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
exec cargo test --workspace "$@"
