#!/usr/bin/env bash
# The common role's data volume tasks (roles/common/tasks/data_volume.yml) on
# this machine, with a loop device standing in for the Cinder volume:
#
#   tests/molecule/_data_volume/run.sh            ext4 (e2fsprogs is always there)
#   FSTYPE=xfs tests/molecule/_data_volume/run.sh needs mkfs.xfs (xfsprogs)
#   LOGS=DIR   keep the ansible-playbook logs in DIR
#
# Needs root, losetup, mount and the tools venv (tests/molecule/run.sh
# --setup). Everything lives in one temporary directory: a 1 GiB sparse image
# on a loop device (the volume, found through a fake by-id link), a 64 MiB
# swap image on another (a volume holding something else), the mount points,
# a tmpfs (another filesystem) and the fstab the role writes (never
# /etc/fstab). On exit, whatever happens: everything mounted under that
# directory is unmounted, the loop devices this script attached are
# detached (each only while it is still backed by its image here), the
# directory is removed.
#
# Steps: converge (formats, mounts), a file written onto the volume, converge
# again (must change nothing), unmount, converge again (mounts, does not
# format), verify.yml (mount, fstab line, the file, and the refusals: no
# device, a device of the wrong size, a swap signature, a mount point with
# files, a mount point with another filesystem; another fstype asked for
# leaves the filesystem alone). Prints "data volume: ok" at the end.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
VENV=$ROOT/tests/molecule/.venv
FSTYPE=${FSTYPE:-ext4}

die() { printf 'data volume: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (losetup, mount)"
for tool in losetup mount umount findmnt blkid lsblk mkswap "mkfs.$FSTYPE"; do
  command -v "$tool" >/dev/null || die "needs $tool"
done
[ -x "$VENV/bin/ansible-playbook" ] || die "needs the tools venv: tests/molecule/run.sh --setup"

work=$(mktemp -d /tmp/tongxin-data-volume.XXXXXX)
loops=()

cleanup() {
  set +e
  local m l
  if [ -n "${LOGS:-}" ]; then mkdir -p "$LOGS" && cp "$work"/*.log "$LOGS"/ 2>/dev/null; fi
  # deepest first; lazily if something still holds one
  findmnt --raw --noheadings --output TARGET | grep -F "$work/" | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  for l in "${loops[@]}"; do
    if losetup --noheadings --output BACK-FILE "$l" 2>/dev/null | grep -qF "$work/"; then
      losetup -d "$l"
    fi
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

volume_id=5b1e0c3a-7f42-4d19-9e6b-2c8a0f7d4e61
swap_id=c0ffee00-1d2e-4f3a-8b4c-5d6e7f8a9b0c
mkdir -p "$work/by-id" "$work/by-id-empty" "$work/mnt/full" "$work/mnt/tmpfs"
touch "$work/fstab" "$work/mnt/full/old-data"
truncate -s 1G "$work/volume.img"
truncate -s 64M "$work/swap.img"
mkswap -q "$work/swap.img" >/dev/null
loop=$(losetup --find --show "$work/volume.img")
loops+=("$loop")
swap_loop=$(losetup --find --show "$work/swap.img")
loops+=("$swap_loop")
ln -s "$loop" "$work/by-id/virtio-${volume_id:0:20}"
ln -s "$swap_loop" "$work/by-id/virtio-${swap_id:0:20}"
mount -t tmpfs -o size=1m tongxin-data-volume-test "$work/mnt/tmpfs"

export ANSIBLE_ROLES_PATH=$ROOT/roles ANSIBLE_NOCOLOR=1 ANSIBLE_LOCALHOST_WARNING=0 ANSIBLE_INVENTORY_UNPARSED_WARNING=0
extra=(-e "tx_work=$work" -e "tx_loop=$loop" -e "tx_fstype=$FSTYPE"
       -e "tx_volume_id=$volume_id" -e "tx_swap_volume_id=$swap_id"
       -e "ansible_python_interpreter=/usr/bin/python3")
play() {  # play PLAYBOOK LOG: run it, keep its output in LOG, show it on failure
  if ! "$VENV/bin/ansible-playbook" -i localhost, "${extra[@]}" "$HERE/$1" >"$work/$2" 2>&1; then
    cat "$work/$2"
    die "$1 failed ($2)"
  fi
}
recap() { grep -E '^localhost +:' "$work/$1"; }

play converge.yml first.log
recap first.log | grep -qE 'changed=[1-9]' || die "the first run changed nothing: $(recap first.log)"
echo "written before the re-runs" >"$work/mnt/data/written-before-rerun"

play converge.yml second.log
recap second.log | grep -qE 'changed=0 .*failed=0' || { cat "$work/second.log"; die "not idempotent: $(recap second.log)"; }

umount "$work/mnt/data"
play converge.yml third.log
findmnt --mountpoint "$work/mnt/data" >/dev/null || die "the third run did not mount the volume again"

play verify.yml verify.log
printf 'data volume (%s): first run %s\n' "$FSTYPE" "$(recap first.log | sed 's/  */ /g')"
printf 'data volume (%s): second run %s\n' "$FSTYPE" "$(recap second.log | sed 's/  */ /g')"
echo "data volume: ok"
