#!/usr/bin/env bash
# Builds phonehome's packages: .deb and .rpm for phonehome-collector and phonehome-ingest, with a
# SHA256SUMS file beside them, reproducibly (see --help).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/package.sh [--out DIR] [--check | --check-reproducible | --check-reproducible-clean]
                          [--no-install]
       scripts/package.sh --print-build-env

Builds phonehome-collector and phonehome-ingest (cargo build --release, each on its own) and
packages each as a .deb (dpkg-deb) and an .rpm (rpmbuild) into DIR (default target/packages),
with SHA256SUMS beside them. Both formats are made from the same staged files: the binary, its
man page (help2man, from its --help), the example configuration as a configuration file kept on
upgrade, the systemd units (and the collector's cron file), and the maintainer scripts in
collector/packaging/{deb,rpm} and ingest/packaging/{deb,rpm} (control templates, rpm specs).
Installs the Debian packages it needs when missing (apt-get): dpkg-dev, rpm (rpmbuild), help2man,
lintian, rpmlint, systemd (systemd-analyze). No cargo plugins are needed.

The packages are reproducible: timestamps come from the commit (SOURCE_DATE_EPOCH, the time of
HEAD), the build's paths are remapped out of the binaries, archives are sorted, the rpm's build
host and build time are fixed. Building twice from the same commit gives byte-identical files.

  --out DIR               where the packages go (default target/packages)
  --check                 what CI runs: build, then dpkg-deb/rpm inspection, systemd-analyze
                          verify on the units as packaged, lintian on the .debs (no errors
                          allowed), rpmlint on the .rpms (scripts/rpmlint.toml), no build path
                          in the binaries, an install / reinstall / remove / purge round of the
                          .debs on this machine (skipped, saying so, when phonehome is installed
                          here or its directories exist) and an install / reinstall / erase
                          round of the .rpms in a scratch root, then --check-reproducible's
                          second build and comparison of all four packages, with only the
                          collector's crates compiled again (the ingest's binary is the first
                          build's, repackaged): the ingest's second compile costs 6 to 7 minutes
                          of CI's 45 on a loaded 2-core machine (docs/benchmarks.md)
  --check-reproducible    build, then build again from a copy of the source at another path, in
                          another time zone and with another umask (dependencies reused, the
                          workspace's crates recompiled) into a second directory, and compare
  --check-reproducible-clean
                          the same, but the second build compiles every crate again in an empty
                          target directory of its own (at another path): as long as a build
                          from nothing; also shows the dependencies compile reproducibly
  --no-install            do not install missing tools; fail naming them
  --print-build-env       print, as shell `export` lines, the environment the binaries are
                          compiled in (CARGO_TARGET_DIR, RUSTFLAGS, CFLAGS, SOURCE_DATE_EPOCH);
                          a build in that environment is the packages' build, so cargo rebuilds
                          nothing of it here (CI: eval "$(scripts/package.sh --print-build-env)",
                          and later env -u SOURCE_DATE_EPOCH scripts/package.sh --check)
  -h, --help              this text

Variables: SOURCE_DATE_EPOCH (the packages' timestamps; default: the commit time of HEAD; the
compilers always get a fixed one, see --print-build-env), PHONEHOME_PACKAGE_TARGET_DIR (cargo's
target directory, default target/package-build).
EOF
}

# SOURCE_DATE_EPOCH for compiling (2000-01-01): it only fixes __DATE__ and __TIME__ in the C
# dependencies, whose build scripts (cc) rebuild them whenever it changes, i.e. with every
# commit if it were the commit's time. The packages' timestamps are the commit's.
COMPILE_SOURCE_DATE_EPOCH=946684800
PACKAGES=(phonehome-collector phonehome-ingest)
# The packages whose binaries a build compiles (the quick reproducibility check's second build
# compiles only the collector's).
COMPILE=("${PACKAGES[@]}")
# Crates of the workspace the packaged binaries are built from (recompiled for the second build).
WORKSPACE_CRATES=(phonehome-collector phonehome-ingest phonehome-schema phonehome-pki phonehome-dashboard)
COLLECTOR_CRATES=(phonehome-collector phonehome-schema phonehome-pki)
# command:Debian package, for what this script runs.
TOOLS=(dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev rpmbuild:rpm rpm:rpm help2man:help2man lintian:lintian
  rpmlint:rpmlint systemd-analyze:systemd gzip:gzip sha256sum:coreutils)

out=""
mode=build
install_tools=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "package.sh: --out needs a directory" >&2; exit 2; }; out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --check) mode=check; shift ;;
    --check-reproducible) mode=reproducible; shift ;;
    --check-reproducible-clean) mode=reproducible-clean; shift ;;
    --no-install) install_tools=0; shift ;;
    --print-build-env) mode=print-env; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "package.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
repo="$(pwd -P)"
target="${PHONEHOME_PACKAGE_TARGET_DIR:-$repo/target/package-build}"
mkdir -p "$target"
target="$(cd "$target" && pwd -P)"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"

# Each line says how long the script has been running.
log() { echo "package.sh [$((SECONDS / 60))m$((SECONDS % 60))s]: $*" >&2; }
die() { echo "package.sh: error: $*" >&2; exit 1; }

# The environment the binaries are compiled in. The same for every build (and for CI's other
# cargo steps, through --print-build-env), so dependencies are compiled once.
build_env() {
  # Paths that would otherwise end up in the binaries: panic locations of dependencies, code
  # generated into OUT_DIR, C sources' __FILE__. The workspace's own sources are compiled by
  # relative paths.
  echo "CARGO_TARGET_DIR=$target"
  echo "RUSTFLAGS=--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target=/target"
  echo "CFLAGS=-ffile-prefix-map=$cargo_home=/cargo -ffile-prefix-map=$target=/target"
  echo "SOURCE_DATE_EPOCH=$COMPILE_SOURCE_DATE_EPOCH"
}

if [ "$mode" = print-env ]; then
  build_env | while IFS= read -r line; do printf 'export %s=%q\n' "${line%%=*}" "${line#*=}"; done
  exit 0
fi

out="${out:-$repo/target/packages}"
mkdir -p "$out"
out="$(cd "$out" && pwd -P)"

# --- tools ---------------------------------------------------------------------------------

ensure_tools() {
  local missing=() entry
  for entry in "${TOOLS[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  [ "$install_tools" = 1 ] || die "missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})"
  command -v apt-get >/dev/null ||
    die "missing: ${missing[*]} (Debian package names); this script installs them with apt-get (Debian/Ubuntu)"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run as root, or install: ${missing[*]}"
    sudo=sudo
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for entry in "${TOOLS[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || die "${entry%%:*} is still missing after installing ${entry#*:}"
  done
}

# --- build ---------------------------------------------------------------------------------

source_date_epoch() {
  if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    [ "$SOURCE_DATE_EPOCH" != "$COMPILE_SOURCE_DATE_EPOCH" ] ||
      die "SOURCE_DATE_EPOCH is the compilers' (from --print-build-env), not the packages': unset it (env -u SOURCE_DATE_EPOCH scripts/package.sh ...) to use the commit's time"
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
      # Each entry wrapped at 80 columns, as Debian changelogs are.
      inside && /^- / {
        sub(/^- /, ""); line = "  *"
        for (i = 1; i <= NF; i++) {
          if (length(line) + 1 + length($i) > 80 && line != "  *") { print line; line = "   " }
          line = line " " $i
        }
        print line
      }' "$src/CHANGELOG.md")"
  fi
  [ -n "$entries" ] || entries="  * Release $version."
  {
    echo "$package ($(package_version "$version")-1) unstable; urgency=medium"
    echo
    echo "$entries"
    echo
    echo " -- phonehome maintainers <phonehome@localhost.invalid>  $(LC_ALL=C date -u -R -d "@$epoch")"
  } | gzip -9n >"$dest"
}

# The version as both package formats write it: every "-" of a pre-release becomes "~", which sorts
# before the release (1.2.0~rc.1 < 1.2.0) in dpkg and rpm alike.
package_version() {
  echo "${1//-/\~}"
}

debian_copyright() {
  cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $1

Files: *
Copyright: 2026 The phonehome authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be found
 in /usr/share/common-licenses/Apache-2.0.
EOF
}

# Compiles the binaries from SRC, each package on its own: cargo unifies features across the
# packages of one build, and the collector must not get the ingest's (aws-lc among them;
# ARCHITECTURE.md, Invariants).
compile() {
  local src="$1" package line
  while IFS= read -r line; do export "${line%%=*}=${line#*=}"; done < <(build_env)
  for package in "${COMPILE[@]}"; do
    log "cargo build --release --locked -p $package (from $src)"
    (cd "$src" && cargo build --release --locked -p "$package")
  done
}

# Copies FILE to ROOT/PATH with MODE.
put() {
  local mode="$1" file="$2" dest="$3"
  [ -f "$file" ] || die "missing: $file"
  mkdir -p "$(dirname "$dest")"
  cp "$file" "$dest"
  chmod "$mode" "$dest"
}

# Stages PACKAGE's files for FORMAT (deb or rpm) under ROOT, from SRC and the generated files
# in GEN (binary, man page, units rewritten for /usr/bin, Debian changelog).
stage() {
  local package="$1" format="$2" root="$3" src="$4" gen="$5" units doc
  units="$root/usr/lib/systemd/system"
  # Debian 12's systemd and lintian look for packaged units in /lib.
  [ "$format" = deb ] && units="$root/lib/systemd/system"
  doc="$root/usr/share/doc/$package"
  put 0755 "$gen/$package" "$root/usr/bin/$package"
  put 0644 "$gen/$package.1.gz" "$root/usr/share/man/man1/$package.1.gz"
  case "$package" in
    phonehome-collector)
      put 0644 "$src/collector/packaging/collector.example.toml" "$root/etc/phonehome/collector.toml"
      put 0644 "$gen/phonehome-collector.cron" "$root/etc/cron.d/phonehome-collector"
      put 0644 "$gen/phonehome-collector.service" "$units/phonehome-collector.service"
      put 0644 "$gen/phonehome-collector.timer" "$units/phonehome-collector.timer"
      put 0644 "$src/collector/packaging/README.md" "$doc/README.md"
      ;;
    phonehome-ingest)
      # 0640 root:phonehome once the user exists: the rpm's %attr, the .deb's postinst.
      put 0644 "$src/ingest/ingest.example.toml" "$root/etc/phonehome/ingest.toml"
      put 0644 "$src/ingest/packaging/phonehome-ingest.service" "$units/phonehome-ingest.service"
      put 0644 "$src/ingest/packaging/phonehome-ingest.sysusers" "$root/usr/lib/sysusers.d/phonehome-ingest.conf"
      ;;
    *) die "stage: unknown package $package" ;;
  esac
  if [ "$format" = deb ]; then
    local dir="${package#phonehome-}"
    put 0644 "$gen/changelog.Debian.gz" "$doc/changelog.Debian.gz"
    debian_copyright "$package" >"$doc/copyright"
    chmod 0644 "$doc/copyright"
    put 0644 "$src/$dir/packaging/deb/lintian-overrides" "$root/usr/share/lintian/overrides/$package"
  fi
  find "$root" -type d -exec chmod 0755 {} +
}

# The .deb of PACKAGE from its staged ROOT (DEBIAN/ is added there) into DEST.
build_deb() {
  local package="$1" root="$2" src="$3" version="$4" dest="$5" epoch="$6" dir arch depends size script err
  dir="${package#phonehome-}"
  arch="$(dpkg --print-architecture)"
  # Shared-library dependencies, as dpkg-shlibdeps works them out (it wants a debian/control).
  err="$(mktemp)"
  local shlibs; shlibs="$(mktemp -d)"
  mkdir "$shlibs/debian"
  printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$package" "$package" >"$shlibs/debian/control"
  depends="$(cd "$shlibs" && dpkg-shlibdeps -O -e"$root/usr/bin/$package" 2>"$err" | sed -n 's/^shlibs:Depends=//p')" ||
    { cat "$err" >&2; die "dpkg-shlibdeps failed on $package"; }
  [ -n "$depends" ] || { cat "$err" >&2; die "dpkg-shlibdeps found no dependencies of $package"; }
  rm -rf "$shlibs" "$err"
  mkdir -p "$root/DEBIAN"
  # Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, and 1 per directory.
  size="$(cd "$root" && find . -path ./DEBIAN -prune -o ! -name . -printf '%y %s\n' |
    awk '{ t += ($1 == "f") ? int(($2 + 1023) / 1024) : 1 } END { print t }')"
  sed -e "s/@VERSION@/$(package_version "$version")-1/" -e "s/@ARCH@/$arch/" \
    -e "s/@DEPENDS@/$depends/" -e "s/@INSTALLED_SIZE@/$size/" \
    "$src/$dir/packaging/deb/control" >"$root/DEBIAN/control"
  ! grep -q '@[A-Z_]*@' "$root/DEBIAN/control" || die "$dir/packaging/deb/control: a placeholder is left"
  # Every file in /etc is a configuration file: dpkg keeps an administrator's changes.
  (cd "$root" && find etc -type f | LC_ALL=C sort | sed 's#^#/#') >"$root/DEBIAN/conffiles"
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum) >"$root/DEBIAN/md5sums"
  for script in postinst prerm postrm; do
    put 0755 "$src/$dir/packaging/deb/$script" "$root/DEBIAN/$script"
  done
  chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
  chmod 0755 "$root/DEBIAN"
  find "$root" -exec touch -h -d "@$epoch" {} +
  # dpkg-deb sorts the members and clamps times to SOURCE_DATE_EPOCH; one compressor thread,
  # as xz's output with several depends on how many.
  dpkg-deb --root-owner-group -Zxz --threads-max=1 --build "$root" \
    "$dest/${package}_$(package_version "$version")-1_$arch.deb" >/dev/null
}

# The .rpm of PACKAGE from its staged ROOT into DEST.
build_rpm() {
  local package="$1" root="$2" src="$3" version="$4" dest="$5" epoch="$6" top dir
  dir="${package#phonehome-}"
  top="$(mktemp -d)"
  find "$root" -exec touch -h -d "@$epoch" {} +
  # Reproducible: the build time is SOURCE_DATE_EPOCH and no file is newer; the build host is a
  # fixed name. The binaries go in as they are (no strip, no debuginfo, no build-id links:
  # the release profile strips them, and the .deb has the same bytes). xz on one thread, which
  # every rpm since 4.7 reads (zstd, rpm's default now, needs 4.14).
  rpmbuild -bb --quiet \
    --define "_topdir $top" \
    --define "_tmppath $top/tmp" \
    --define "_rpmdir $top/rpms" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "_buildhost phonehome-build" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    --define "source_date_epoch_from_changelog 0" \
    --define "_build_id_links none" \
    --define "debug_package %{nil}" \
    --define "__os_install_post %{nil}" \
    --define "__arch_install_post %{nil}" \
    --define "_binary_payload w6.xzdio" \
    --define "phonehome_version $(package_version "$version")" \
    --define "phonehome_root $root" \
    "$src/$dir/packaging/rpm/$package.spec" >&2 || die "rpmbuild failed for $package"
  mv "$top/rpms/"*.rpm "$dest/"
  rm -rf "$top"
}

# Builds the binaries from SRC and packages them into DEST.
build_packages() {
  local src="$1" dest="$2" tz="${3:-UTC}" epoch version gen package format
  epoch="$(source_date_epoch)"
  version="$(workspace_version "$src")"
  [ -n "$version" ] || die "no [workspace.package] version in $src/Cargo.toml"
  export TZ="$tz" LC_ALL=C.UTF-8
  compile "$src"
  export SOURCE_DATE_EPOCH="$epoch"
  log "packaging $version (SOURCE_DATE_EPOCH=$epoch, TZ=$TZ, umask $(umask)) into $dest"

  local work="$target/packaging"
  rm -rf "$work"
  for package in "${PACKAGES[@]}"; do
    gen="$work/gen/$package"
    mkdir -p "$gen"
    # A copy: the binary's own file in target/ stays as cargo left it.
    cp "$target/release/$package" "$gen/$package"
    debian_changelog "$src" "$package" "$version" "$epoch" "$gen/changelog.Debian.gz"
  done
  # The collector's units and cron file run /usr/local/bin/phonehome-collector (a hand-installed
  # binary); the package's is /usr/bin/phonehome-collector. The cron line comes commented out:
  # nothing runs before the appliance is configured.
  gen="$work/gen/phonehome-collector"
  local unit
  for unit in phonehome-collector.service phonehome-collector.timer phonehome-collector.cron; do
    sed 's#/usr/local/bin/phonehome-collector#/usr/bin/phonehome-collector#g' \
      "$src/collector/packaging/$unit" >"$gen/$unit"
  done
  grep -q '^ExecStart=/usr/bin/phonehome-collector ' "$gen/phonehome-collector.service" ||
    die "collector/packaging/phonehome-collector.service: no ExecStart=/usr/local/bin/phonehome-collector to rewrite"
  local cron="$gen/phonehome-collector.cron"
  grep -q ' root .*/usr/bin/phonehome-collector run ' "$cron" ||
    die "collector/packaging/phonehome-collector.cron: no job line running /usr/local/bin/phonehome-collector"
  {
    echo "# Installed by the phonehome-collector package with its job commented out: uncomment it on an"
    echo "# appliance without systemd once /etc/phonehome/collector.toml and the appliance's certificate"
    echo "# are in place (on one with systemd: systemctl enable --now phonehome-collector.timer)."
    sed -E 's/^([0-9*].* root .*phonehome-collector run .*)$/#\1/' "$cron"
  } >"$cron.new"
  mv "$cron.new" "$cron"
  man_page "$gen/phonehome-collector" phonehome-collector \
    "report this appliance's health to the phonehome ingest" \
    "$gen/phonehome-collector.1.gz"
  man_page "$work/gen/phonehome-ingest/phonehome-ingest" phonehome-ingest \
    "receive phonehome reports over mutual TLS, keep the fleet's history, serve the dashboard" \
    "$work/gen/phonehome-ingest/phonehome-ingest.1.gz"

  rm -f "$dest"/*.deb "$dest"/*.rpm "$dest/SHA256SUMS"
  for package in "${PACKAGES[@]}"; do
    for format in deb rpm; do
      stage "$package" "$format" "$work/$format/$package" "$src" "$work/gen/$package"
    done
    build_deb "$package" "$work/deb/$package" "$src" "$version" "$dest" "$epoch"
    build_rpm "$package" "$work/rpm/$package" "$src" "$version" "$dest" "$epoch"
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
  if [ "${1:-}" = clean ]; then
    # Everything compiled again, in a target directory of its own (at another path too).
    local target2
    target2="$(mktemp -d "${TMPDIR:-/tmp}/phonehome-repro-target.XXXXXX")"
    log "second build from $copy, every crate compiled again in $target2"
    (target="$target2" && umask 0002 && build_packages "$copy" "$second" Pacific/Kiritimati)
    rm -rf "$target2"
  else
    # The workspace's crates are compiled again (from the copy); the dependencies, compiled
    # from the same registry sources with the same flags, are reused. Quick: only the
    # collector's crates; the ingest's binary is the first build's, packaged again.
    local crates=("${WORKSPACE_CRATES[@]}") clean=() c
    [ "${1:-}" = quick ] && crates=("${COLLECTOR_CRATES[@]}")
    log "second build from $copy (compiled again: ${crates[*]})"
    for c in "${crates[@]}"; do clean+=(-p "$c"); done
    (cd "$copy" && CARGO_TARGET_DIR="$target" cargo clean --quiet --release "${clean[@]}")
    if [ "${1:-}" = quick ]; then
      (COMPILE=(phonehome-collector) && umask 0002 && build_packages "$copy" "$second" Pacific/Kiritimati)
    else
      (umask 0002 && build_packages "$copy" "$second" Pacific/Kiritimati)
    fi
  fi
  rm -rf "$copy"
  if diff -u "$out/SHA256SUMS" "$second/SHA256SUMS" >&2; then
    log "reproducible: both builds gave identical packages:"
    cat "$out/SHA256SUMS" >&2
    rm -rf "$second"
  else
    die "not reproducible: the packages in $out and $second differ (diffoscope shows how)"
  fi
}

# No path of this machine's build in the packaged binaries (what would make another machine's
# build differ): the checkout, cargo's home and its target directory.
check_paths() {
  local f root leaks=0 p
  root="$(mktemp -d)"
  for f in "$out"/*.deb; do dpkg-deb -x "$f" "$root"; done
  for f in "$root"/usr/bin/*; do
    for p in "$repo" "$cargo_home" "$target"; do
      if grep -qaF -- "$p" "$f"; then
        log "$(basename "$f") contains the path $p:"
        grep -aoF -- "$p" "$f" | head -n 3 >&2
        leaks=1
      fi
    done
  done
  rm -rf "$root"
  [ "$leaks" = 0 ] || die "build paths in the binaries (see above)"
  log "no build paths in the binaries ($repo, $cargo_home, $target)"
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

# rpm --root ROOT ARGS..., its output shown but for the warning that this machine has no group
# phonehome (the ingest's %pre makes it where the package is installed) and Debian's notice.
rpm_root() {
  local root="$1" output; shift
  echo "+ rpm --root $root $*" >&2
  output="$(rpm --root "$root" "$@" 2>&1)" || { echo "$output" >&2; die "rpm $* failed"; }
  # Debian's rpm also warns that it is not Debian's package manager.
  echo "$output" | grep -v -e 'group phonehome does not exist - using root' \
    -e 'RPM should not be used directly install RPM packages, use Alien instead' \
    -e 'However assuming you know what you are doing' >&2 || true
}

# Installs the .rpms into a scratch root (rpm --root, its own database; scriptlets not run, as
# this is not an rpm system), reinstalls them over a changed configuration and erases them:
# the configuration files are marked, keep an administrator's changes, and the ingest's is
# root:phonehome 0640 in the package.
check_rpm_round() {
  local root rpms=("$out"/*.rpm) f
  root="$(mktemp -d)"
  log "rpm round in $root: install, reinstall, erase"
  rpm --root "$root" --initdb
  rpm_root "$root" -i --nodeps --noscripts "${rpms[@]}"
  for f in /usr/bin/phonehome-collector /usr/bin/phonehome-ingest /etc/phonehome/collector.toml \
    /etc/phonehome/ingest.toml /usr/lib/systemd/system/phonehome-collector.timer \
    /usr/lib/systemd/system/phonehome-ingest.service /usr/share/man/man1/phonehome-ingest.1.gz \
    /usr/share/man/man1/phonehome-collector.1.gz; do
    [ -e "$root$f" ] || die "rpm -i did not install $f"
  done
  [ "$(rpm --root "$root" -qc phonehome-collector phonehome-ingest | LC_ALL=C sort | tr '\n' ' ')" = \
    "/etc/cron.d/phonehome-collector /etc/phonehome/collector.toml /etc/phonehome/ingest.toml " ] ||
    die "the rpms' configuration files are: $(rpm --root "$root" -qc phonehome-collector phonehome-ingest | tr '\n' ' ')"
  [ "$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEGROUPNAME} %{FILENAMES}\n]' "$out"/phonehome-ingest-*.rpm |
    grep ' /etc/phonehome/ingest.toml$')" = "-rw-r----- phonehome /etc/phonehome/ingest.toml" ] ||
    die "/etc/phonehome/ingest.toml in the rpm is not -rw-r----- group phonehome"
  echo "# changed by the administrator" >>"$root/etc/phonehome/collector.toml"
  rpm_root "$root" -U --replacepkgs --nodeps --noscripts "${rpms[@]}"
  grep -q "changed by the administrator" "$root/etc/phonehome/collector.toml" || die "rpm reinstall replaced collector.toml"
  mkdir -p "$root/var/spool/phonehome" && echo '{}' >"$root/var/spool/phonehome/waiting.json"
  rpm_root "$root" -e --nodeps --noscripts phonehome-collector phonehome-ingest
  [ ! -e "$root/usr/bin/phonehome-collector" ] || die "rpm -e left the binary"
  [ -f "$root/var/spool/phonehome/waiting.json" ] || die "rpm -e lost the spool"
  grep -q "changed by the administrator" "$root/etc/phonehome/collector.toml.rpmsave" ||
    die "rpm -e did not keep the changed configuration as collector.toml.rpmsave"
  rm -rf "$root"
  log "rpm round: configuration files marked and kept when changed, spool kept on erase"
}

# --- main ----------------------------------------------------------------------------------

ensure_tools
build_packages "$repo" "$out"
case "$mode" in
  build) ;;
  reproducible) check_reproducible ;;
  reproducible-clean) check_reproducible clean ;;
  check)
    check_inspect
    check_units
    check_lintian
    check_rpmlint
    check_paths
    check_lifecycle
    check_rpm_round
    check_reproducible quick
    ;;
esac
log "done: $(cd "$out" && echo *.deb *.rpm) and SHA256SUMS in $out"
