#!/usr/bin/env bash
# Builds the virtual appliance: Debian's kernel (linux-image-amd64) and an initramfs holding
# busybox-static, smartctl from Debian's smartmontools (with the shared libraries it needs), the
# collector's release binary and the kernel modules for NVMe, AHCI, e1000, ext4 and fw_cfg.
#
#   scripts/vm/build-image.sh [--out DIR] [--collector PATH]
#
# Writes DIR/vmlinuz and DIR/initrd.img (DIR defaults to target/vm). The .deb files are fetched
# with `apt-get download` into DIR/cache once and reused. The appliance's own settings (collector
# configuration, fleet CA, enrolment token) are not in the image: scripts/vm/boot.sh hands them
# over at each boot, so one image serves every test. Needs: apt-get, dpkg-deb, cpio, gzip,
# busybox-static, ldd (scripts/deps.sh installs them).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/target/vm"
collector="$repo/target/release/phonehome-collector"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --collector) collector="$2"; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 64 ;;
  esac
done

missing=()
for tool in apt-get dpkg-deb cpio gzip ldd; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-image.sh: missing ${missing[*]}; run scripts/deps.sh" >&2
  exit 69
fi
if [ ! -x "$collector" ]; then
  echo "build-image.sh: no collector at $collector; run: cargo build --release -p phonehome-collector" >&2
  exit 66
fi

mkdir -p "$out/cache"
out="$(cd "$out" && pwd)"
cache="$out/cache"

# The packages, fetched once. linux-image-amd64 is a metapackage: its dependency names the
# versioned kernel package.
fetch() { # package -> path of its .deb in the cache
  local pkg="$1" found
  found="$(find "$cache" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)"
  if [ -z "$found" ]; then
    (cd "$cache" && apt-get download "$pkg" >/dev/null 2>"$cache/apt-$pkg.log") || {
      echo "build-image.sh: apt-get download $pkg failed:" >&2
      cat "$cache/apt-$pkg.log" >&2
      exit 69
    }
    found="$(find "$cache" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)"
  fi
  echo "$found"
}
meta="$(fetch linux-image-amd64)"
kpkg="$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n 1)"
[ -n "$kpkg" ] || { echo "build-image.sh: cannot tell the kernel package from $meta" >&2; exit 65; }
kdeb="$(fetch "$kpkg")"
bbdeb="$(fetch busybox-static)"
smdeb="$(fetch smartmontools)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The kernel package is 70 MB of xz: unpack it once into the cache.
kernel="$cache/$(basename "$kdeb" .deb)"
if [ ! -d "$kernel" ]; then
  dpkg-deb -x "$kdeb" "$work/kernel"
  mv "$work/kernel" "$kernel"
fi
dpkg-deb -x "$bbdeb" "$work/busybox"
dpkg-deb -x "$smdeb" "$work/smart"
kver="$(ls "$kernel/lib/modules")"
moddir="$kernel/lib/modules/$kver"

root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,root,persist,data,lib64,usr/bin,usr/sbin}
mkdir -p "$root"/{lib/x86_64-linux-gnu,var/log,etc/phonehome}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# smartctl from the package, and the collector; their shared libraries from this (Debian) host,
# which carries the same libc the package was built against.
cp "$work/smart/usr/sbin/smartctl" "$root/usr/sbin/smartctl"
cp "$collector" "$root/usr/bin/phonehome-collector"
strip "$root/usr/bin/phonehome-collector" 2>/dev/null || true
for binary in "$root/usr/sbin/smartctl" "$root/usr/bin/phonehome-collector"; do
  ldd "$binary" | awk '/=>/ { print $3 } /^\t\/lib/ { print $1 }' | while read -r lib; do
    [ -n "$lib" ] && [ -f "$lib" ] || continue
    case "$lib" in
      /lib64/*) cp -L "$lib" "$root/lib64/" ;;
      *) cp -L "$lib" "$root/lib/x86_64-linux-gnu/" ;;
    esac
  done
done
ln -sf lib "$root/usr/lib"

# Kernel modules with their dependencies (read from each module's .modinfo), in load order.
declare -A path_of=()
while IFS= read -r ko; do
  name="$(basename "$ko" .ko)"
  path_of["${name//-/_}"]="$ko"
done < <(find "$moddir/kernel" -name '*.ko')
order=()
declare -A seen=()
add_module() {
  local name="${1//-/_}" ko dep
  [ -n "${seen[$name]:-}" ] && return 0
  seen[$name]=1
  ko="${path_of[$name]:-}"
  [ -n "$ko" ] || { echo "build-image.sh: kernel $kver has no module $1" >&2; exit 65; }
  for dep in $(tr '\0' '\n' <"$ko" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '); do
    add_module "$dep"
  done
  order+=("$ko")
}
for m in crc32c_generic qemu_fw_cfg nvme ahci sd_mod e1000 ext4; do
  add_module "$m"
done
mkdir -p "$root/lib/modules"
: >"$root/etc/modules.order"
for ko in "${order[@]}"; do
  cp "$ko" "$root/lib/modules/"
  echo "/lib/modules/$(basename "$ko")" >>"$root/etc/modules.order"
done

cp "$here/init" "$root/init"
chmod 0755 "$root/init"
echo "phonehome-vm" >"$root/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf 'PRETTY_NAME="phonehome virtual appliance (Debian %s kernel)"\nNAME="phonehome-vm"\nID=phonehome-vm\nVERSION_ID="1"\n' \
  "$kver" >"$root/etc/os-release"

cp "$kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet | gzip -1) >"$out/initrd.img.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
echo "build-image.sh: $out/vmlinuz ($kver), $out/initrd.img ($(du -h "$out/initrd.img" | cut -f1); ${#order[@]} modules)"
