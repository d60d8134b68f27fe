#!/usr/bin/env bash
# One "machine" of the operations guide's test (tests/root_operations_guide.rs): run inside
# a node's network namespace and fresh mount, UTS and IPC namespaces, it makes this process
# tree look like a Debian host with the meshdrain package installed, without touching the
# real host: /etc, /usr and /var are overlays whose writes land in DIR; /run, /tmp, /root
# and /srv are private tmpfs; /var/lib/meshdrain is a plain directory in DIR (the data path
# runs on a real filesystem, not the overlay); /srv/fleet is SHARED, the operator's transfer
# point that every machine sees; /usr/bin/meshdrain is BIN and /usr/bin/systemctl the stub
# next to this script. Then it says "ready" on stdout and sleeps until killed; the test
# runs each guide block with nsenter into this process's namespaces.
#
# usage: machine.sh NAME DIR SHARED BIN UNIT
set -euo pipefail
name=$1 dir=$2 shared=$3 bin=$4 unit=$5
here=$(cd "$(dirname "$0")" && pwd)

hostname "$name"
mount --make-rprivate /
mkdir -p "$dir/state"
for d in etc usr var; do
  mkdir -p "$dir/$d.upper" "$dir/$d.work"
  mount -t overlay "guide-$d" -o "lowerdir=/$d,upperdir=$dir/$d.upper,workdir=$dir/$d.work" "/$d"
done
mkdir -p /var/lib/meshdrain
mount --bind "$dir/state" /var/lib/meshdrain
# The package's files: the binary, the unit (its ExecStart names /usr/bin/meshdrain).
touch /usr/bin/meshdrain
mount --bind "$bin" /usr/bin/meshdrain
install -m 0644 "$unit" /usr/lib/systemd/system/meshdrain.service
mount --bind "$here/systemctl" /usr/bin/systemctl
for d in run root srv; do mount -t tmpfs -o mode=0755 "guide-$d" "/$d"; done
chmod 0700 /root
mkdir -p /srv/fleet /run/lock
mount --bind "$shared" /srv/fleet
# Last: DIR and SHARED may live under the host's /tmp.
mount -t tmpfs -o mode=1777 guide-tmp /tmp
echo ready
exec sleep infinity
