#!/usr/bin/env bash
# Builds phonehome's packages: .deb and .rpm for phonehome-collector and phonehome-ingest, with a
# SHA256SUMS file beside them, reproducibly (see --help).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/package.sh [--out DIR] [--check | --check-reproducible] [--no-install]

Builds phonehome-collector and phonehome-ingest (cargo build --release) and packages each as a
.deb (cargo-deb) and an .rpm (cargo-generate-rpm) into DIR (default target/packages), with
SHA256SUMS beside them. Installs what it needs when missing: the Debian packages lintian,
rpmlint, rpm, help2man and dpkg-dev (apt-get), and cargo-deb and cargo-generate-rpm at pinned
versions (cargo install --locked, kept in ~/.cargo/bin).

The packages are reproducible: timestamps come from the commit (SOURCE_DATE_EPOCH, the time of
HEAD), the build's paths are remapped out of the binaries, archives are sorted. Building twice
from the same commit gives byte-identical files.

  --out DIR               where the packages go (default target/packages)
  --check                 what CI runs: build, then --check-reproducible's second build and
                          comparison, lintian on the .debs (no errors allowed), rpmlint on the
                          .rpms, dpkg-deb/rpm inspection, systemd-analyze verify on the units as
                          packaged, and an install / reinstall / remove / purge round on this
                          machine (skipped when phonehome is already installed or its
                          directories exist)
  --check-reproducible    build, then build again from a copy of the source at another path
                          (dependencies reused, the workspace's crates rebuilt) into a second
                          directory, and compare the two SHA256SUMS
  --no-install            do not install tools; fail if one is missing
  -h, --help              this text

Build-time variables: SOURCE_DATE_EPOCH (default: the commit time of HEAD),
PHONEHOME_PACKAGE_TARGET_DIR (cargo target directory, default target/package-build).
EOF
}

CARGO_DEB_VERSION=3.8.0
# SOURCE_DATE_EPOCH for compiling (2000-01-01; see build_packages).
COMPILE_SOURCE_DATE_EPOCH=946684800
CARGO_GENERATE_RPM_VERSION=0.21.1
APT_TOOLS=(lintian rpmlint rpm help2man dpkg-dev)
PACKAGES=(phonehome-collector phonehome-ingest)
# Crates of the workspace the packaged binaries are built from (rebuilt for the second build).
WORKSPACE_CRATES=(phonehome-collector phonehome-ingest phonehome-schema phonehome-pki phonehome-dashboard)

out=""
mode=build
install_tools=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "package.sh: --out needs a directory" >&2; exit 2; }; out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --check) mode=check; shift ;;
    --check-reproducible) mode=reproducible; shift ;;
    --no-install) install_tools=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "package.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
repo="$(pwd -P)"
out="${out:-$repo/target/packages}"
mkdir -p "$out"
out="$(cd "$out" && pwd -P)"
target="${PHONEHOME_PACKAGE_TARGET_DIR:-$repo/target/package-build}"
mkdir -p "$target"
target="$(cd "$target" && pwd -P)"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"

log() { echo "package.sh: $*" >&2; }
die() { echo "package.sh: error: $*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------

ensure_apt_tools() {
  local missing=() pkg
  for pkg in "${APT_TOOLS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$install_tools" = 1 ] || die "missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})"
  command -v apt-get >/dev/null || die "missing: ${missing[*]}; this script installs them with apt-get (Debian/Ubuntu)"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run as root or install: ${missing[*]}"
    sudo=sudo
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# cargo SUBCOMMAND's version, or nothing when it is not installed.
cargo_tool_version() {
  cargo "$1" --version 2>/dev/null | awk '{print $NF}' | sed 's/^v//' || true
}

ensure_cargo_tool() {
  local crate="$1" subcommand="$2" version="$3" have
  have="$(cargo_tool_version "$subcommand")"
  [ "$have" = "$version" ] && return 0
  [ "$install_tools" = 1 ] || die "$crate $version is needed (have: ${have:-none}): cargo install --locked $crate@$version"
  log "installing $crate $version (have: ${have:-none})"
  cargo install --quiet --locked "$crate@$version"
  have="$(cargo_tool_version "$subcommand")"
  [ "$have" = "$version" ] || die "$crate: installed, but \`cargo $subcommand --version\` says ${have:-nothing}"
}

ensure_tools() {
  ensure_apt_tools
  ensure_cargo_tool cargo-deb deb "$CARGO_DEB_VERSION"
  ensure_cargo_tool cargo-generate-rpm generate-rpm "$CARGO_GENERATE_RPM_VERSION"
}

# --- build ---------------------------------------------------------------------------------

source_date_epoch() {
  if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    echo "$SOURCE_DATE_EPOCH"
  elif git -C "$repo" rev-parse --verify -q HEAD >/dev/null; then
    git -C "$repo" log -1 --format=%ct HEAD
  else
    die "not a git checkout: set SOURCE_DATE_EPOCH"
  fi
}

workspace_version() {
  # The [workspace.package] version in the root Cargo.toml.
  awk '/^\[workspace\.package\]/{w=1; next} /^\[/{w=0} w && /^version *=/{gsub(/.*= *"|".*/, ""); print; exit}' "$1/Cargo.toml"
}

# Escapes text for a roff .nf block: backslashes, and lines starting with . or '.
roff_escape() {
  sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"
}

# A man page from the binary's own --help (help2man), with every subcommand's --help appended.
man_page() {
  local binary="$1" name="$2" summary="$3" dest="$4" include sub
  include="$(mktemp)"
  {
    echo "[SUBCOMMANDS]"
    for sub in $("$binary" --help | awk '/^Commands:/{c=1; next} c && /^$/{exit} c{print $1}'); do
      [ "$sub" = help ] && continue
      echo ".SS $name $sub"
      echo ".nf"
      "$binary" "$sub" --help | roff_escape
      echo ".fi"
    done
    echo "[SEE ALSO]"
    echo "The README.md and ARCHITECTURE.md of the phonehome sources."
  } >"$include"
  help2man --no-info --no-discard-stderr --name="$summary" --section=1 \
    --include="$include" --output="$dest.tmp" "$binary"
  rm -f "$include"
  gzip -9n <"$dest.tmp" >"$dest"
  rm -f "$dest.tmp"
}

# The Debian changelog: this version, with CHANGELOG.md's section for it when there is one.
debian_changelog() {
  local src="$1" package="$2" version="$3" epoch="$4" dest="$5" entries=""
  if [ -f "$src/CHANGELOG.md" ]; then
    entries="$(awk -v v="$version" '
      /^## / { if (inside) exit; inside = ($2 == v || $2 == "[" v "]" || index($0, "## " v " ") == 1) ; next }
      inside && /^- / { sub(/^- /, ""); print "  * " $0 }' "$src/CHANGELOG.md")"
  fi
  [ -n "$entries" ] || entries="  * Release $version."
  {
    echo "$package ($version-1) unstable; urgency=medium"
    echo
    echo "$entries"
    echo
    echo " -- phonehome maintainers <phonehome@localhost.invalid>  $(LC_ALL=C date -u -R -d "@$epoch")"
  } >"$dest"
}

# Builds the binaries from SRC and packages them into DEST.
build_packages() {
  local src="$1" dest="$2" epoch version stage tz="${3:-UTC}"
  epoch="$(source_date_epoch)"
  version="$(workspace_version "$src")"
  [ -n "$version" ] || die "no [workspace.package] version in $src/Cargo.toml"
  export TZ="$tz" LC_ALL=C.UTF-8
  export CARGO_TARGET_DIR="$target"
  # Paths that would otherwise end up in the binaries (panic locations of dependencies, code
  # generated into OUT_DIR, C sources' __FILE__): the same flags for every build, so the
  # dependencies are built once. The workspace's own sources are compiled by relative paths.
  export RUSTFLAGS="--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target=/target"
  export CFLAGS="-ffile-prefix-map=$cargo_home=/cargo -ffile-prefix-map=$target=/target"
  log "building $version from $src (SOURCE_DATE_EPOCH=$epoch)"
  # One build each: cargo unifies features across the packages of one build, and the collector
  # must not get the ingest's (aws-lc among them; ARCHITECTURE.md, Invariants).
  local package
  for package in "${PACKAGES[@]}"; do
    # The C dependencies' build scripts (cc) rebuild whenever SOURCE_DATE_EPOCH changes, which
    # the commit time does with every commit: the compilers get a fixed one (it only fixes
    # __DATE__ and __TIME__), the packages' timestamps the commit's.
    (cd "$src" && SOURCE_DATE_EPOCH="$COMPILE_SOURCE_DATE_EPOCH" cargo build --release --locked -p "$package")
  done
  export SOURCE_DATE_EPOCH="$epoch"

  stage="$target/release/packaging"
  rm -rf "$stage"
  mkdir -p "$stage/phonehome-collector" "$stage/phonehome-ingest"
  # The collector's units and cron file run /usr/local/bin/phonehome-collector (a hand-installed
  # binary); the package's is /usr/bin/phonehome-collector. The cron line comes commented out:
  # nothing runs before the appliance is configured.
  local unit
  for unit in phonehome-collector.service phonehome-collector.timer phonehome-collector.cron; do
    sed 's#/usr/local/bin/phonehome-collector#/usr/bin/phonehome-collector#g' \
      "$src/collector/packaging/$unit" >"$stage/phonehome-collector/$unit"
  done
  grep -q '^ExecStart=/usr/bin/phonehome-collector ' "$stage/phonehome-collector/phonehome-collector.service" ||
    die "collector/packaging/phonehome-collector.service: no ExecStart=/usr/local/bin/phonehome-collector to rewrite"
  local cron="$stage/phonehome-collector/phonehome-collector.cron"
  grep -q ' root .*/usr/bin/phonehome-collector run ' "$cron" ||
    die "collector/packaging/phonehome-collector.cron: no job line running /usr/local/bin/phonehome-collector"
  {
    echo "# Installed by the phonehome-collector package with its job commented out: uncomment it on an"
    echo "# appliance without systemd once /etc/phonehome/collector.toml and the appliance's certificate"
    echo "# are in place (on one with systemd: systemctl enable --now phonehome-collector.timer)."
    sed -E 's/^([0-9*].* root .*phonehome-collector run .*)$/#\1/' "$cron"
  } >"$cron.new"
  mv "$cron.new" "$cron"

  man_page "$target/release/phonehome-collector" phonehome-collector \
    "report this appliance's health to the phonehome ingest" \
    "$stage/phonehome-collector/phonehome-collector.1.gz"
  man_page "$target/release/phonehome-ingest" phonehome-ingest \
    "receive phonehome reports over mutual TLS, keep the fleet's history, serve the dashboard" \
    "$stage/phonehome-ingest/phonehome-ingest.1.gz"
  for package in "${PACKAGES[@]}"; do
    debian_changelog "$src" "$package" "$version" "$epoch" "$stage/$package/changelog"
    gzip -9n <"$stage/$package/changelog" >"$stage/$package/changelog.Debian.gz"
  done

  # cargo-generate-rpm keeps a file's modification time when it is older than
  # SOURCE_DATE_EPOCH (and clamps newer ones): every file the rpms take gets the commit's time.
  # The binaries are copied first (touching cargo's own outputs could make it rebuild).
  for package in "${PACKAGES[@]}"; do
    cp "$target/release/$package" "$stage/$package/$package"
  done
  find "$stage" -type f -exec touch -h -d "@$epoch" {} +
  (cd "$src" && touch -h -d "@$epoch" collector/packaging/collector.example.toml collector/packaging/README.md \
    ingest/ingest.example.toml ingest/packaging/phonehome-ingest.service ingest/packaging/phonehome-ingest.sysusers)

  rm -f "$dest"/*.deb "$dest"/*.rpm "$dest/SHA256SUMS"
  for package in "${PACKAGES[@]}"; do
    (cd "$src" && cargo deb --quiet --no-build --no-strip -p "$package" --output "$dest/")
    (cd "$src" && cargo generate-rpm -p "${package#phonehome-}" --target-dir "$target" --output "$dest/")
  done
  (cd "$dest" && sha256sum -- *.deb *.rpm >SHA256SUMS)
  log "packages in $dest:"
  (cd "$dest" && ls -l -- *.deb *.rpm SHA256SUMS) >&2
}

# --- checks --------------------------------------------------------------------------------

check_reproducible() {
  local copy second
  copy="$(mktemp -d "${TMPDIR:-/tmp}/phonehome-repro.XXXXXX")"
  second="$out-second-build"
  rm -rf "$second"
  mkdir -p "$second"
  # The source as tracked (and changed, not yet committed) at a different path.
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | tar -xf - -C "$copy"
  log "second build from $copy"
  local clean=() c; for c in "${WORKSPACE_CRATES[@]}"; do clean+=(-p "$c"); done
  (cd "$copy" && CARGO_TARGET_DIR="$target" cargo clean --quiet --release "${clean[@]}")
  build_packages "$copy" "$second" Pacific/Kiritimati
  rm -rf "$copy"
  if diff -u "$out/SHA256SUMS" "$second/SHA256SUMS"; then
    log "reproducible: both builds gave identical packages:"
    cat "$out/SHA256SUMS" >&2
    rm -rf "$second"
  else
    die "not reproducible: the packages in $out and $second differ (diffoscope shows how)"
  fi
}

check_lintian() {
  log "lintian"
  local report
  report="$(mktemp)"
  # As root lintian says so on stderr; the tags go to stdout.
  if ! lintian --fail-on error --display-info --no-tag-display-limit "$out"/*.deb >"$report" 2>"$report.err"; then
    cat "$report" "$report.err" >&2
    rm -f "$report" "$report.err"
    die "lintian found errors"
  fi
  cat "$report" >&2
  log "lintian: $(grep -c '^E:' "$report" || true) errors, $(grep -c '^W:' "$report" || true) warnings, $(grep -c '^I:' "$report" || true) notes"
  rm -f "$report" "$report.err"
}

check_rpmlint() {
  log "rpmlint"
  rpmlint -c "$repo/scripts/rpmlint.toml" "$out"/*.rpm >&2 || die "rpmlint found errors"
}

check_inspect() {
  local f
  for f in "$out"/*.deb; do
    log "dpkg-deb --info --contents $(basename "$f")"
    dpkg-deb --info "$f" >&2
    dpkg-deb --contents "$f" >&2
  done
  for f in "$out"/*.rpm; do
    log "rpm -qip $(basename "$f")"
    rpm -qip "$f" >&2
    rpm -qlvp "$f" >&2
    echo "config files:" >&2
    rpm -qcp "$f" >&2
    rpm -qp --scripts "$f" >&2
  done
}

check_units() {
  local root dir unit units=()
  root="$(mktemp -d)"
  dir="$(mktemp -d)"
  for f in "$out"/*.deb; do dpkg-deb -x "$f" "$root"; done
  # The units as packaged, with ExecStart pointing at the packaged binaries where they were
  # unpacked (systemd-analyze checks that the program exists).
  for unit in "$root"/lib/systemd/system/*; do
    sed "s#/usr/bin/phonehome-#$root/usr/bin/phonehome-#g" "$unit" >"$dir/$(basename "$unit")"
    units+=("$dir/$(basename "$unit")")
  done
  log "systemd-analyze verify ${units[*]##*/}"
  local err
  # --man=no: Documentation= names the man pages, which are not installed on this machine.
  err="$(systemd-analyze verify --man=no "${units[@]}" 2>&1)" || { echo "$err" >&2; die "systemd-analyze verify failed"; }
  if echo "$err" | grep -q phonehome; then
    echo "$err" >&2
    die "systemd-analyze verify complains about the units"
  fi
  log "systemd-analyze verify: no complaints"
  log "systemd-analyze security --offline=yes phonehome-ingest.service"
  systemd-analyze security --offline=yes "$dir/phonehome-ingest.service" 2>&1 | tail -n 1 >&2 || true
  echo >&2
  rm -rf "$root" "$dir"
}

run() { echo "+ $*" >&2; "$@"; }

# Installs the .debs on this machine, checks what the issue asks of upgrades and removal, and
# purges them again. Left alone where phonehome is installed or has been used.
check_lifecycle() {
  local p
  for p in "${PACKAGES[@]}"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -qv "not-installed"; then
      log "lifecycle round skipped: $p is installed on this machine"
      return 0
    fi
  done
  if [ -e /etc/phonehome ] || [ -e /var/spool/phonehome ] || [ -e /var/lib/phonehome-ingest ]; then
    log "lifecycle round skipped: /etc/phonehome, /var/spool/phonehome or /var/lib/phonehome-ingest exists"
    return 0
  fi
  local had_user=0
  getent passwd phonehome >/dev/null && had_user=1
  local debs=("$out"/*.deb)
  log "lifecycle: install, reinstall (upgrade path), remove, purge"
  run dpkg -i "${debs[@]}" >&2
  [ -x /usr/bin/phonehome-collector ] && [ -x /usr/bin/phonehome-ingest ] || die "binaries not installed"
  getent passwd phonehome >/dev/null || die "the ingest's user phonehome was not made"
  [ "$(stat -c '%G %a' /etc/phonehome/ingest.toml)" = "phonehome 640" ] ||
    die "/etc/phonehome/ingest.toml is $(stat -c '%U:%G %a' /etc/phonehome/ingest.toml), not root:phonehome 640"
  grep -q '^#.*phonehome-collector run' /etc/cron.d/phonehome-collector || die "the cron job is active on installation"
  if [ -d /run/systemd/system ]; then
    systemctl is-enabled --quiet phonehome-collector.timer && die "the timer was enabled on installation"
    systemctl is-active --quiet phonehome-ingest.service && die "the ingest was started on installation"
  fi
  /usr/bin/phonehome-collector --version >&2
  /usr/bin/phonehome-ingest --version >&2
  man -l /usr/share/man/man1/phonehome-collector.1.gz >/dev/null 2>&1 || true
  # What an administrator and the appliance leave: a changed configuration, a waiting report.
  echo "# changed by the administrator" >>/etc/phonehome/collector.toml
  echo "# changed by the administrator" >>/etc/phonehome/ingest.toml
  mkdir -p /var/spool/phonehome && echo '{}' >/var/spool/phonehome/waiting.json
  run dpkg -i "${debs[@]}" >&2
  grep -q "changed by the administrator" /etc/phonehome/collector.toml || die "reinstall replaced collector.toml"
  grep -q "changed by the administrator" /etc/phonehome/ingest.toml || die "reinstall replaced ingest.toml"
  [ -f /var/spool/phonehome/waiting.json ] || die "reinstall lost the spool"
  run dpkg -r "${PACKAGES[@]}" >&2
  [ -f /var/spool/phonehome/waiting.json ] || die "removal lost the spool"
  [ -f /etc/phonehome/collector.toml ] || die "removal lost the configuration"
  [ ! -e /usr/bin/phonehome-collector ] || die "removal left the binary"
  run dpkg -P "${PACKAGES[@]}" >&2
  [ ! -e /var/spool/phonehome ] || die "purge left /var/spool/phonehome"
  [ ! -e /etc/phonehome/collector.toml ] && [ ! -e /etc/phonehome/ingest.toml ] || die "purge left the configuration"
  rmdir /etc/phonehome 2>/dev/null || true
  if [ "$had_user" = 0 ] && getent passwd phonehome >/dev/null; then
    # A package leaves its system user behind on purge (Debian policy); this machine is only
    # a build machine, so the round takes it away again.
    userdel phonehome >/dev/null 2>&1 || true
    getent group phonehome >/dev/null && groupdel phonehome >/dev/null 2>&1 || true
  fi
  log "lifecycle: configuration and spool kept on reinstall and removal, gone on purge; nothing started"
}

# --- main ----------------------------------------------------------------------------------

ensure_tools
build_packages "$repo" "$out"
case "$mode" in
  build) ;;
  reproducible) check_reproducible ;;
  check)
    check_inspect
    check_units
    check_lintian
    check_rpmlint
    check_lifecycle
    check_reproducible
    ;;
esac
log "done: $(cd "$out" && echo *.deb *.rpm) and SHA256SUMS in $out"
