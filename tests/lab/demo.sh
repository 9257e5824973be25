#!/usr/bin/env bash
# qmpctl's main job, end to end, on a disposable lab VM that this script boots:
# a tiny real Linux with qemu-guest-agent inside (see tests/lab/README.md).
# It installs what is missing, shows each qmpctl command before running it,
# and shuts the guest down at the end. Run as root on Debian 12:
#     bash tests/lab/demo.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

# QMPCTL_DEMO_SKIP_SETUP=1 skips the installation (the test suite runs the demo on a set-up machine).
if [ "${QMPCTL_DEMO_SKIP_SETUP:-}" != 1 ]; then
  echo "== installing what is missing (Debian packages, .venv) ..."
  bash tests/setup-host
fi
python=$PWD/.venv/bin/python
export PATH="$PWD/.venv/bin:$PATH"

work=$(mktemp -d /tmp/qmpctl-demo.XXXXXX)
cleanup() {
  "$python" tests/lab/guest.py down "$work" --purge >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building the lab guest (cached after the first time) ..."
eval "$("$python" tests/lab/build.py)"   # KERNEL=... INITRD=...: the guest boots from these
echo "== booting it under QEMU (TCG) and waiting for its guest agent ..."
eval "$("$python" tests/lab/guest.py up "$work")"
qmp=$QMPCTL_QMP agent=$QMPCTL_AGENT
unset QMPCTL_QMP QMPCTL_AGENT   # the commands below name their targets

quote() {  # print an argument so it can be pasted back into a shell
  if [[ $1 =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() {
  local line="$" arg
  for arg in "$@"; do line+=" $(quote "$arg")"; done
  printf '\n\033[1m%s\033[0m\n' "$line"
  "$@"
}

show qmpctl status -s "$qmp" --pretty
show qmpctl stop -s "$qmp"
show qmpctl status -s "$qmp" --return-value
show qmpctl cont -s "$qmp"
show qmpctl block -s "$qmp" --pretty

qemu-img create -q -f qcow2 "$work/extra.qcow2" 32M
show qmpctl hotplug-disk -s "$qmp" "$work/extra.qcow2" --id extra0
sleep 1
show qmpctl agent exec -a "$agent" -- sh -c 'ls /dev | grep vd'
show qmpctl unplug-disk -s "$qmp" extra0

show qmpctl agent exec -a "$agent" -- sh -c 'echo "written by the guest" | dd of=/dev/vda conv=fsync 2>/dev/null'
show qmpctl backup -s "$qmp" "$LAB_DATA_DISK_ID" "$work/backup.qcow2" --speed 16M --progress bar
show qemu-img compare -U "$LAB_DATA_DISK" "$work/backup.qcow2"

show qmpctl monitor-command -s "$qmp" --hmp 'info block'
show qmpctl monitor-command -s "$qmp" '{"execute": "query-status"}'
show qmpctl agent ping -a "$agent"
show qmpctl agent interfaces -a "$agent" --pretty
show qmpctl agent exec -a "$agent" -- uname -a
echo
echo "== the nightly backup: every disk of the VM into its chain, the guest's filesystems frozen as the jobs start"
nightly=$work/nightly
show qmpctl backup -s "$qmp" --into "$nightly" --freeze -a "$agent" --progress none --pretty
show qmpctl agent exec -a "$agent" -- sh -c 'echo "written between two nights" > /mnt/data/today'
show qmpctl backup -s "$qmp" --into "$nightly" --freeze -a "$agent" --progress none --pretty
show qmpctl backup-verify "$nightly"
# The drill: the last backup restored and booted in a throwaway QEMU (the restored disks are
# /dev/vda and /dev/vdb there, in the order of their names), which must read today's file back.
show qmpctl restore "$nightly" "$work/drill/" --progress none --boot-check \
  --qemu-arg=-kernel --qemu-arg="$KERNEL" --qemu-arg=-initrd --qemu-arg="$INITRD" --qemu-arg=-m --qemu-arg=256 \
  --qemu-arg=-append --qemu-arg='console=ttyS0 quiet panic=-1 lab.datafs=/dev/vdb' \
  --check-command 'cat /mnt/data/today' --pretty

show qmpctl agent command -a "$agent" guest-shutdown

for _ in $(seq 50); do
  [ -e "/proc/$LAB_PID" ] || break
  sleep 0.1
done
if [ -e "/proc/$LAB_PID" ]; then
  echo "the guest did not power off" >&2
  exit 1
fi
echo
echo "== done: the guest powered itself off."
