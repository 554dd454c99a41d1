#!/bin/sh
# /init of the VMs that tests/testenv/vm/run.sh boots (busybox sh): loads the modules the
# initramfs carries, mounts the host's root (read-only 9p) under a memory overlay, runs
# /out/cmd there and writes its output and exit status to /out, then powers off.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /modules/*.ko; do insmod "$m" || echo "init: insmod $m failed" >/dev/console; done
fail() { echo "init: $*" >/dev/console; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /host ||
  fail "cannot mount the host root"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /out || fail "cannot mount /out"
mount -t tmpfs -o size=75% ovl /ovl
mkdir -p /ovl/upper /ovl/work
mount -t overlay -o lowerdir=/host,upperdir=/ovl/upper,workdir=/ovl/work overlay /newroot ||
  fail "cannot mount the overlay"
r=/newroot
mount -t proc proc $r/proc
mount -t sysfs sys $r/sys
mount -t devtmpfs dev $r/dev
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup
mount -t bpf bpf $r/sys/fs/bpf
mount -t tmpfs tmp $r/tmp
mount -t tmpfs run $r/run
mkdir -p $r/run/netns $r/out
mount --move /out $r/out
ip link set lo up 2>/dev/null
# shellcheck disable=SC2016 # expanded by the guest's shell
chroot $r /bin/bash -c 'echo "kernel $(uname -r)"; ip link set lo up; . /out/cmd' >$r/out/log 2>&1
echo $? >$r/out/rc
sync
poweroff -f
