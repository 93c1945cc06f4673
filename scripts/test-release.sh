#!/usr/bin/env bash
# Checks scripts/release.sh --dry-run: it prints a CHANGELOG section for the next version that
# lists the newest commit (merges left out), and leaves this checkout (HEAD, branches, tags, index, working tree) as it
# was. Pass --with-packages to let the dry run build the packages too (slower).
set -euo pipefail

case "${1:-}" in
  -h | --help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "" | --with-packages) ;;
  *) echo "test-release.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

state() {
  git rev-parse HEAD
  git for-each-ref --format='%(refname) %(objectname)'
  git status --porcelain --untracked-files=all
  git stash list
  sha256sum Cargo.toml Cargo.lock
  [ -f CHANGELOG.md ] && sha256sum CHANGELOG.md || echo "no CHANGELOG.md"
}

before="$(state)"
current="$(awk '/^\[workspace\.package\]/{w=1; next} /^\[/{w=0} w && /^version *=/{gsub(/.*= *"|".*/, ""); print; exit}' Cargo.toml)"
IFS=. read -r major minor _patch <<<"${current%%-*}"
next="$major.$((minor + 1)).0"
args=(--dry-run --no-packages)
[ "${1:-}" = --with-packages ] && args=(--dry-run)
output="$(scripts/release.sh "${args[@]}" "$next" 2>&1)" || { echo "$output" >&2; echo "test-release.sh: release.sh --dry-run failed" >&2; exit 1; }
after="$(state)"

failed=0
check() {
  if eval "$2"; then echo "ok: $1"; else echo "FAILED: $1"; failed=$((failed + 1)); fi
}
# The CHANGELOG leaves merge commits out (their branches' commits are listed): the newest
# commit it lists is HEAD's, or the newest one a merge at HEAD brought in.
subject="$(git log -1 --no-merges --format=%s)"
short="$(git log -1 --no-merges --format=%h)"
check "the dry run prints a section for $next" 'grep -q "^## $next - " <<<"$output"'
check "the section lists the newest commit" 'grep -qF -- "- $subject ($short)" <<<"$output"'
check "the dry run committed and tagged in its clone" 'grep -q "tagged v$next" <<<"$output"'
check "the checkout is unchanged" '[ "$before" = "$after" ]'
check "no tag v$next here" '! git rev-parse --verify -q "refs/tags/v$next" >/dev/null'
if [ "$before" != "$after" ]; then
  diff <(echo "$before") <(echo "$after") || true
fi
echo "$((4 + 1 - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
