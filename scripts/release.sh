#!/usr/bin/env bash
# Makes a release: bumps the workspace version, writes its CHANGELOG.md section from the commits
# since the last tag, commits and tags it, and builds the packages with their checksums.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/release.sh [--dry-run] [--no-packages] VERSION

Makes release VERSION (x.y.z, or x.y.z-pre) of phonehome from HEAD:
  1. sets [workspace.package] version in Cargo.toml to VERSION (and Cargo.lock with it);
  2. adds a "## VERSION - DATE" section at the top of CHANGELOG.md listing the commits since
     the last tag (every commit when there is none), newest first, merges left out;
  3. commits that as "Release VERSION" and tags it vVERSION (annotated);
  4. builds the packages and SHA256SUMS with scripts/package.sh into target/packages.
Nothing is pushed. The working tree must be clean.

  --dry-run       do all of it in a throwaway clone and print the CHANGELOG section and the
                  diff; this checkout, its branches and tags are left exactly as they were
                  (packages of a dry run are built in the clone and deleted with it)
  --no-packages   skip step 4
  -h, --help      this text
EOF
}

dry_run=0
packages=1
version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --no-packages) packages=0; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "release.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
    *)
      [ -z "$version" ] || { echo "release.sh: one VERSION only (see --help)" >&2; exit 2; }
      version="$1"; shift ;;
  esac
done
[ -n "$version" ] || { usage >&2; exit 2; }

log() { echo "release.sh: $*" >&2; }
die() { echo "release.sh: error: $*" >&2; exit 1; }

[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] ||
  die "VERSION must look like 1.2.3 or 1.2.3-rc.1, not '$version'"

cd "$(dirname "$0")/.."
repo="$(pwd -P)"
git rev-parse --verify -q HEAD >/dev/null || die "$repo is not a git checkout with a commit"

current="$(awk '/^\[workspace\.package\]/{w=1; next} /^\[/{w=0} w && /^version *=/{gsub(/.*= *"|".*/, ""); print; exit}' Cargo.toml)"
[ -n "$current" ] || die "no version in [workspace.package] of Cargo.toml"
[ "$current" != "$version" ] || die "the version is already $version"
! git rev-parse --verify -q "refs/tags/v$version" >/dev/null || die "tag v$version exists already"

work="$repo"
if [ "$dry_run" = 1 ]; then
  work="$(mktemp -d "${TMPDIR:-/tmp}/phonehome-release.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  # A clone of HEAD with the tags: every step below happens there.
  git clone --quiet --shared --no-checkout "$repo" "$work/repo"
  work="$work/repo"
  git -C "$work" checkout --quiet --detach "$(git -C "$repo" rev-parse HEAD)"
  git -C "$work" fetch --quiet --tags "$repo"
  log "dry run in $work"
else
  [ -z "$(git status --porcelain)" ] || die "the working tree has changes; commit or stash them first"
fi
cd "$work"

# 1. The version.
sed -i -E "/^\[workspace\.package\]/,/^\[/ s/^version *= *\"[^\"]*\"/version = \"$version\"/" Cargo.toml
grep -q "^version = \"$version\"" Cargo.toml || die "could not set the version in Cargo.toml"
# Cargo.lock carries the workspace crates' versions: let cargo write them, without the network.
cargo update --quiet --offline --workspace

# 2. The changelog section.
last_tag="$(git describe --tags --abbrev=0 2>/dev/null || true)"
if [ -n "$last_tag" ]; then
  range="$last_tag..HEAD"
  since="since $last_tag"
else
  range="HEAD"
  since="since the first commit"
fi
entries="$(git log --no-merges --format='- %s (%h)' "$range")"
[ -n "$entries" ] || entries="- No changes."
section="$(printf '## %s - %s\n\nChanges %s:\n\n%s\n' "$version" "$(date -u +%Y-%m-%d)" "$since" "$entries")"
{
  echo "# Changelog"
  echo
  echo "$section"
  if [ -f CHANGELOG.md ]; then
    echo
    # The sections already there, without their title.
    sed '1{/^# Changelog$/d}' CHANGELOG.md | sed '/./,$!d'
  fi
} >CHANGELOG.md.new
mv CHANGELOG.md.new CHANGELOG.md
echo "$section"

# 3. Commit and tag.
git add Cargo.toml Cargo.lock CHANGELOG.md
# The releaser's git identity; a stand-in only where git has none (a CI machine, a dry run).
identity=()
git config user.name >/dev/null || identity+=(-c "user.name=${GIT_AUTHOR_NAME:-phonehome release}")
git config user.email >/dev/null || identity+=(-c "user.email=${GIT_AUTHOR_EMAIL:-release@phonehome.invalid}")
git "${identity[@]}" commit --quiet -m "Release $version"
git "${identity[@]}" tag -a "v$version" -m "phonehome $version"
if [ "$dry_run" = 1 ]; then
  git --no-pager show --stat --format='%H %s' HEAD >&2
fi
log "committed $(git rev-parse --short HEAD) \"Release $version\", tagged v$version"

# 4. Packages from the release commit (their timestamps are its commit time).
if [ "$packages" = 1 ]; then
  # A dry run builds in the clone but shares the checkout's cargo target directory, so the
  # dependencies are not built again.
  PHONEHOME_PACKAGE_TARGET_DIR="${PHONEHOME_PACKAGE_TARGET_DIR:-$repo/target/package-build}" \
    scripts/package.sh --out "$work/target/packages"
  log "packages and SHA256SUMS in $work/target/packages"
fi

if [ "$dry_run" = 1 ]; then
  log "dry run: nothing changed in $repo"
else
  log "release $version made; push with: git push && git push origin v$version"
fi
