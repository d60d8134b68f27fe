# Helpers sourced by the guest scenarios (run by bash in the VM's chroot of the host root).
set -euo pipefail

step() { printf '== %s (t=%ss)\n' "$*" "$SECONDS"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# Prints elapsed milliseconds since the Unix epoch (for rates).
now_ms() { date +%s%3N; }

# Loads dm-clone: device-mapper from Debian's modules, dm-clone.ko built by the harness.
load_dm_clone() {
  modprobe dm-mod
  modprobe dm-bufio
  modprobe dm-persistent-data
  grep -qw clone /proc/misc /proc/modules 2>/dev/null || insmod "$MESHDRAIN_DM_CLONE_KO"
  dmsetup targets | grep -q '^clone' || fail "dm-clone target not registered after insmod"
}

# Fails if any device-mapper device is left.
assert_no_dm() {
  local left
  left=$(dmsetup ls 2>/dev/null | grep -v '^No devices found' || true)
  [ -z "$left" ] || fail "dm devices left after teardown: $left"
}

# Sectors of a block device.
sectors() { blockdev --getsz "$1"; }

# Runs "$@" every 0.2 s until it succeeds or $1 seconds pass (wall clock: under TCG an
# iteration count says little about time); returns 1 on timeout.
wait_for() {
  local limit=$1 t0=$SECONDS
  shift
  until "$@"; do
    [ $((SECONDS - t0)) -lt "$limit" ] || return 1
    sleep 0.2
  done
}
