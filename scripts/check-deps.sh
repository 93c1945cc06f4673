#!/usr/bin/env bash
# Enforces the architecture's absences (see ARCHITECTURE.md, "Invariants"): the collector never
# links a database driver, a web server, an async runtime, the dashboard or aws-lc; the schema
# crate stays serde-only; the dashboard never talks to PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
# Prints the paths by which DEPENDENCY enters PACKAGE's normal/build graph; empty when absent.
paths() { # paths PACKAGE DEPENDENCY
  local out rc=0
  out=$(cargo tree -e normal,build --all-features --target all -p "$1" -i "$2" 2>&1) || rc=$?
  if [ $rc -ne 0 ]; then
    # Absent from the graph is the only failure that means "not linked"; anything else is an error.
    if grep -q "did not match any packages" <<<"$out"; then return 0; fi
    echo "cargo tree failed for $1 -i $2:" >&2; echo "$out" >&2; exit 2
  fi
  printf '%s' "$out"
}
forbid() { # forbid PACKAGE DEPENDENCY
  local out
  out=$(paths "$1" "$2")
  if [ -n "$out" ]; then
    echo "FORBIDDEN: $1 depends on $2:" >&2
    echo "$out" >&2
    fail=1
  else
    echo "ok: $1 does not depend on $2"
  fi
}

# The check must be able to see a dependency that is there, or its "ok" lines mean nothing.
if [ -z "$(paths phonehome-ingest tokio-postgres)" ]; then
  echo "check-deps is broken: it cannot see that phonehome-ingest depends on tokio-postgres" >&2
  exit 2
fi

for dep in tokio-postgres postgres deadpool-postgres axum hyper tokio phonehome-dashboard phonehome-ingest aws-lc-sys; do
  forbid phonehome-collector "$dep"
done
for dep in tokio-postgres tokio axum hyper rustls ureq; do
  forbid phonehome-schema "$dep"
done
for dep in tokio-postgres deadpool-postgres; do
  forbid phonehome-dashboard "$dep"
done
# The rule engine decides; it never does IO (ARCHITECTURE.md, "The rule engine does no IO").
# Its tests (`mod tests`, and `fixtures.rs`, compiled only for them) may prepare reports with
# storage's code; the code before them may not import it.
for f in ingest/src/engine/*.rs; do
  [ "$(basename "$f")" = fixtures.rs ] && continue
  hits=$(awk '/^mod tests \{/{exit} {print FILENAME":"FNR": "$0}' "$f" |
    grep -E 'crate::storage|tokio|deadpool|postgres|std::(fs|net|process)' || true)
  if [ -n "$hits" ]; then
    echo "FORBIDDEN: the rule engine does IO or imports storage:" >&2
    echo "$hits" >&2
    fail=1
  fi
done
[ $fail -eq 0 ] && echo "ok: ingest/src/engine imports neither storage nor IO"
exit $fail
