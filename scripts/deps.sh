#!/usr/bin/env bash
# Installs the distribution packages phonehome's demo and tests need, if they are missing:
# PostgreSQL server binaries (for a private cluster when no server is running) and curl.
# Debian/Ubuntu only; elsewhere it says what to install and carries on.
set -euo pipefail

need=()
have_pg_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}
have_pg_server || need+=(postgresql)
command -v curl >/dev/null || need+=(curl)
command -v runuser >/dev/null || need+=(util-linux)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v smartctl >/dev/null || [ -x /usr/sbin/smartctl ] || need+=(smartmontools)
command -v python3 >/dev/null || need+=(python3)

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
