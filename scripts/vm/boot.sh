#!/usr/bin/env bash
# Boots the phonehome virtual appliance once under QEMU (software emulation, TCG) and waits until
# it powers itself off after one collector run.
#
#   scripts/vm/boot.sh --state DIR --ingest 127.0.0.1:PORT [options]
#
#   --state DIR        the appliance: its disks (nvme.img, sata.img, created with ext4 on first
#                      use and kept across boots: the spool, key and certificate live on the
#                      SATA disk), console.log, and the settings handed to it: collector.toml,
#                      ca.crt, and token (a one-time enrolment token, used when the appliance
#                      has no certificate yet). A missing collector.toml is written pointing at
#                      the forwarded ingest address.
#   --ingest ADDR      where the guest's https://10.0.2.100:8443 is forwarded: a port on this
#                      machine's loopback (nothing else is reachable: user-mode networking with
#                      restrict=on, one socat per connection).
#   --image DIR        vmlinuz and initrd.img from scripts/vm/build-image.sh (target/vm).
#   --serial SN        SMBIOS system serial (type 1), default PHVM-0001; --uuid U its UUID.
#   --console          the console on this terminal, and a shell in the appliance after its run
#                      ('exit' powers it off): for a person watching. Ctrl-A X quits QEMU.
#   --capture          also store raw smartctl answers on the NVMe disk (/capture).
#   --timeout SECS     give up (kill QEMU, exit 124) after this long; default 600.
#
# Exits with the collector's exit code in the appliance (read from the console), 124 on timeout,
# 70 when the appliance never reported one. Needs qemu-system-x86_64, socat, mkfs.ext4
# (scripts/deps.sh installs them). Never uses KVM, tap or bridges.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
image="$repo/target/vm"
state=""
ingest=""
serial="PHVM-0001"
uuid="5f1c7a52-3d0e-4a6b-9c8e-2b7d41e0a915"
console=0
capture=0
timeout=600
while [ $# -gt 0 ]; do
  case "$1" in
    --state) state="$2"; shift 2 ;;
    --ingest) ingest="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --serial) serial="$2"; shift 2 ;;
    --uuid) uuid="$2"; shift 2 ;;
    --console) console=1; shift ;;
    --capture) capture=1; shift ;;
    --timeout) timeout="$2"; shift 2 ;;
    -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "boot.sh: unknown argument $1" >&2; exit 64 ;;
  esac
done
[ -n "$state" ] && [ -n "$ingest" ] || { echo "boot.sh: --state and --ingest are required (--help)" >&2; exit 64; }
missing=()
for tool in qemu-system-x86_64 socat mkfs.ext4 truncate; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "boot.sh: missing ${missing[*]}; run scripts/deps.sh" >&2
  exit 69
fi
for f in vmlinuz initrd.img; do
  [ -f "$image/$f" ] || { echo "boot.sh: no $image/$f; run scripts/vm/build-image.sh" >&2; exit 66; }
done
case "$ingest" in
  127.* | localhost:*) ;;
  *) echo "boot.sh: --ingest must be on this machine's loopback, not $ingest" >&2; exit 64 ;;
esac

mkdir -p "$state"
state="$(cd "$state" && pwd)"
for disk in nvme sata; do
  if [ ! -f "$state/$disk.img" ]; then
    truncate -s 256M "$state/$disk.img.tmp"
    mkfs.ext4 -q -F -L "$disk-data" "$state/$disk.img.tmp"
    mv "$state/$disk.img.tmp" "$state/$disk.img"
  fi
done
# A second, small namespace on the NVMe controller, as multi-namespace drives have.
[ -f "$state/nvme-ns2.img" ] || truncate -s 64M "$state/nvme-ns2.img"
if [ ! -f "$state/collector.toml" ]; then
  cat >"$state/collector.toml" <<'EOF'
# The ingest as the appliance sees it: QEMU forwards 10.0.2.100:8443 to the host's loopback.
server = "https://10.0.2.100:8443"
ca_cert = "ca.crt"
client_cert = "appliance.crt"
client_key = "appliance.key"
timeout_seconds = 30

[spool]
dir = "spool"
retry_budget_seconds = 5
EOF
fi
fwcfg=(-fw_cfg "name=opt/phonehome/collector.toml,file=$state/collector.toml")
[ -f "$state/ca.crt" ] && fwcfg+=(-fw_cfg "name=opt/phonehome/ca.crt,file=$state/ca.crt")
[ -f "$state/token" ] && fwcfg+=(-fw_cfg "name=opt/phonehome/token,file=$state/token")

cmdline="console=ttyS0 panic=1 quiet loglevel=3 phonehome.console=$console phonehome.capture=$capture"
qemu=(qemu-system-x86_64
  -machine q35,accel=tcg -cpu max -smp 1 -m 512
  -no-reboot -rtc base=utc,clock=host
  -kernel "$image/vmlinuz" -initrd "$image/initrd.img" -append "$cmdline"
  -smbios "type=1,manufacturer=Phonehome Test,product=Virtual Appliance VA-1,version=1,serial=$serial,uuid=$uuid,sku=VA-1-TEST,family=VA"
  -smbios "type=2,manufacturer=Phonehome Test,product=VA-1 Board,serial=BOARD-$serial"
  -smbios "type=3,manufacturer=Phonehome Test,serial=CHASSIS-$serial"
  -drive "if=none,id=nvm1,file=$state/nvme.img,format=raw"
  -drive "if=none,id=nvm2,file=$state/nvme-ns2.img,format=raw"
  -device "nvme,id=nvme0,serial=NVME-$serial"
  -device "nvme-ns,drive=nvm1,bus=nvme0,nsid=1"
  -device "nvme-ns,drive=nvm2,bus=nvme0,nsid=2"
  -drive "if=none,id=sata0,file=$state/sata.img,format=raw"
  -device "ide-hd,drive=sata0,bus=ide.0,serial=SATA-$serial,model=PHVM SATA DISK"
  -netdev "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:8443-cmd:socat - TCP:$ingest"
  -device "e1000,netdev=net0,mac=52:54:00:12:34:56"
  "${fwcfg[@]}")

log="$state/console.log"
SECONDS=0
if [ "$console" = 1 ]; then
  "${qemu[@]}" -nographic 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
else
  set +e
  timeout --kill-after=10 "$timeout" "${qemu[@]}" -display none -monitor none -serial "file:$log" \
    </dev/null >"$state/qemu.log" 2>&1
  status=$?
  set -e
fi
elapsed=$SECONDS
echo "boot.sh: QEMU ran ${elapsed} s (exit $status); console in $log" >&2
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  echo "boot.sh: the appliance did not power off within $timeout s" >&2
  exit 124
fi
code="$(sed -n 's/^phonehome-vm: run exit=\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
if [ -z "$code" ]; then
  echo "boot.sh: the appliance reported no collector exit code; console:" >&2
  tail -n 40 "$log" >&2
  exit 70
fi
exit "$code"
