#!/usr/bin/env bash
# Installs the distribution packages phonehome's demo and tests need, if they are missing:
# PostgreSQL server binaries (for a private cluster when no server is running, and the read
# replica test's primary and standby), PgBouncer (the transaction-pooling test), curl, and
# Prometheus' tools (promtool and a Prometheus server for the rules tests, Alertmanager for the
# alert delivery test), headless Chromium with its WebDriver for the browser tests, and QEMU with
# what the virtual appliance image is built from.
# Debian/Ubuntu only; elsewhere it says what to install and carries on.
set -euo pipefail

need=()
have_pg_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}
have_pg_server || need+=(postgresql)
command -v curl >/dev/null || need+=(curl)
# tests/tests/pgbouncer.rs runs Debian's PgBouncer (in /usr/sbin, off an ordinary user's PATH).
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v runuser >/dev/null || need+=(util-linux)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v smartctl >/dev/null || [ -x /usr/sbin/smartctl ] || need+=(smartmontools)
command -v python3 >/dev/null || need+=(python3)
# Debian's packages put prometheus, promtool and prometheus-alertmanager in /usr/bin.
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || need+=(prometheus-alertmanager)
# The browser tests run these exact paths (Debian's; a snap or Google build elsewhere is not the
# pair they were written against), so check the paths, not PATH.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# The virtual appliance test (scripts/vm, tests/tests/appliance_vm.rs): QEMU in software
# emulation, socat for its forward to the ingest, the image's busybox and cpio, ext4 disk images
# made and read without mounting (mkfs.ext4, debugfs), dpkg-deb to unpack the kernel and
# smartmontools packages apt-get downloads.
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v socat >/dev/null || need+=(socat)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v debugfs >/dev/null || [ -x /sbin/debugfs ] || need+=(e2fsprogs)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v strip >/dev/null || need+=(binutils)
# The collector's footprint measurements (docs/benchmarks.md) use GNU time.
[ -x /usr/bin/time ] || need+=(time)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "phonehome: please install: ${need[*]}" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null && sudo="sudo" || { echo "phonehome: run as root or install: ${need[*]}" >&2; exit 1; }
fi
echo "phonehome: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

# The Prometheus and PgBouncer packages start their services (Prometheus on :9090, Alertmanager
# on :9093, PgBouncer on :6432) where the init system lets them. The tests run their own on free
# ports and need none of these;
# stop and disable the ones this script just installed, so a CI machine does not keep a
# Prometheus scraping and writing to disk in the background. An operator's own, installed
# before, is left alone.
stop_service() {
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now "$1" >/dev/null 2>&1 || true
  elif [ -x "/etc/init.d/$1" ]; then
    $sudo "/etc/init.d/$1" stop >/dev/null 2>&1 || true
    $sudo update-rc.d "$1" disable >/dev/null 2>&1 || true
  fi
}
for pkg in "${need[@]}"; do
  case "$pkg" in
    prometheus | prometheus-alertmanager | pgbouncer) stop_service "$pkg" ;;
  esac
done
