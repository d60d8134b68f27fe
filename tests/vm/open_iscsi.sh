#!/bin/bash
# Scenario vm_open_iscsi: the kernel initiator (open-iscsi: iscsid, iscsiadm, iscsi_tcp)
# discovers and logs in to an iSCSI target on 127.0.0.1:3260, reads the whole LUN through
# /dev/sdX (bytes equal to the source), writes are refused, logout is clean.
# Target: VM_ISCSI_TARGET=ours (`meshdrain export serve`), tgt (tgtd, read-only LUN), or
# auto (default: ours when the binary has `export serve`, else tgt, said in the log).
# Env: VM_LUN_MIB (default 64), MESHDRAIN_BIN.
. "$(dirname "$0")/lib.sh"
MIB=${VM_LUN_MIB:-64}
IQN=iqn.2026-11.invalid.meshdrain:vm-lun
PORTAL=127.0.0.1:3260
target=${VM_ISCSI_TARGET:-auto}
if [ "$target" = auto ]; then
  if "${MESHDRAIN_BIN:-meshdrain}" export serve --help >/dev/null 2>&1; then target=ours; else
    target=tgt
    echo "NOTE: meshdrain export serve not built yet: proving the plumbing against tgtd"
  fi
fi
echo "target: $target"

pids=()
cleanup() {
  rc=$?
  [ $rc -eq 0 ] || [ ! -s /tmp/export.log ] || { echo "--- meshdrain export serve log tail:"; tail -n 20 /tmp/export.log; }
  iscsiadm -m node --logoutall=all >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

ip link set lo up
modprobe sd_mod
modprobe iscsi_tcp
modprobe crc32c_generic  # iscsi_tcp needs crc32c at login; crc32c_intel is refused under TCG
# iscsiadm/iscsid need a writable /etc/iscsi and /run/lock.
mkdir -p /run/lock/iscsi /tmp/etc-iscsi
cp -a /etc/iscsi/. /tmp/etc-iscsi/
echo "InitiatorName=iqn.2026-11.invalid.meshdrain:vm-initiator" > /tmp/etc-iscsi/initiatorname.iscsi
mount --bind /tmp/etc-iscsi /etc/iscsi

step "source ${MIB} MiB"
SRC=/tmp/lun.img
dd if=/dev/urandom of=$SRC bs=1M count="$MIB" status=none
SUM=$(sha256sum <$SRC | cut -d' ' -f1)

step "start target ($target)"
case $target in
  ours)
    NO_COLOR=1 "$MESHDRAIN_BIN" export serve --listen $PORTAL --iqn $IQN $SRC >/tmp/export.log 2>&1 &
    pids+=($!)
    ;;
  tgt)
    mkdir -p /run/tgtd /var/run/tgtd 2>/dev/null || true
    tgtd -f >/tmp/tgtd.log 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do tgtadm --lld iscsi --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
    tgtadm --lld iscsi --op new --mode target --tid 1 -T $IQN
    tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b $SRC
    tgtadm --lld iscsi --op update --mode logicalunit --tid 1 --lun 1 --params readonly=1
    tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL
    ;;
  *) fail "VM_ISCSI_TARGET=$target: want ours, tgt or auto" ;;
esac
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/3260) 2>/dev/null && break; sleep 0.1; done

step "iscsid, discovery, login"
setsid iscsid -f >/tmp/iscsid.log 2>&1 &
pids+=($!)
sleep 0.5
iscsiadm -m discovery -t sendtargets -p $PORTAL | tee /tmp/disc
grep -q "$IQN" /tmp/disc || fail "discovery did not list $IQN"
iscsiadm -m node -T $IQN -p $PORTAL --login
dev=
for _ in $(seq 100); do
  for b in /sys/class/iscsi_session/session*/device/target*/*/block/*; do
    [ -e "$b" ] && dev=/dev/$(basename "$b")
  done
  [ -n "$dev" ] && [ -b "$dev" ] && break
  sleep 0.1
done
[ -n "$dev" ] && [ -b "$dev" ] || fail "no /dev/sdX after login"
echo "LUN is $dev: $(($(sectors "$dev") / 2048)) MiB, ro=$(blockdev --getro "$dev")"
[ "$(sectors "$dev")" = $((MIB * 2048)) ] || fail "LUN size $(sectors "$dev") sectors, want $((MIB * 2048))"

step "read the whole LUN"
t0=$(now_ms)
GOT=$(dd if="$dev" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1)
t1=$(now_ms)
echo "READ ${MIB}MiB $((t1 - t0))ms $(awk -v m="$MIB" -v t=$((t1 - t0 > 0 ? t1 - t0 : 1)) 'BEGIN { printf "%.1f", m * 1000 / t }') MiB/s"
[ "$GOT" = "$SUM" ] || fail "LUN bytes differ from the source"

step "writes are refused"
blockdev --setrw "$dev" 2>/dev/null || true
if dd if=/dev/zero of="$dev" bs=4k count=1 oflag=direct,sync conv=notrunc status=none 2>/tmp/wr; then
  fail "a write to the read-only LUN succeeded"
fi
echo "write refused by the kernel (LUN reported write-protected): $(head -c 200 /tmp/wr)"
# The target itself must refuse too: a raw WRITE(10) of LBA 0 through the SCSI generic
# node bypasses the block layer's read-only flag.
modprobe sg
sgdev=/dev/$(ls "/sys/block/${dev#/dev/}/device/scsi_generic/")
[ -c "$sgdev" ] || fail "no SCSI generic node for $dev"
if sg_raw -s 512 -i /dev/zero "$sgdev" 2a 00 00 00 00 00 00 00 01 00 >/tmp/sgw 2>&1; then
  fail "the target accepted a raw WRITE(10): $(cat /tmp/sgw)"
fi
grep -qi 'data protect\|write protect' /tmp/sgw || fail "raw WRITE(10) failed without DATA PROTECT: $(cat /tmp/sgw)"
echo "raw WRITE(10) refused by the target: $(grep -i protect /tmp/sgw | head -2 | tr '\n' ' ')"
[ "$(sha256sum <$SRC | cut -d' ' -f1)" = "$SUM" ] || fail "the source changed"

step "logout"
iscsiadm -m node -T $IQN -p $PORTAL --logout
for _ in $(seq 50); do [ -b "$dev" ] || break; sleep 0.1; done
[ ! -b "$dev" ] || fail "$dev still present after logout"
if iscsiadm -m session >/dev/null 2>&1; then fail "sessions left after logout: $(iscsiadm -m session)"; fi
step "ok"
