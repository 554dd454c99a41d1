#!/usr/bin/env bash
# Runs one command inside a QEMU VM (software emulation: KVM does not work on this machine)
# booting one of Debian's kernels from tests/testenv/vm/kernels.sh.
#
#   tests/testenv/vm/run.sh SERIES [--mem MIB] [--smp CPUS] [--timeout SECONDS] [--save DIR] \
#     -- COMMAND...
#
# Files the command writes to /out in the guest are copied to DIR (--save).
#
# The guest sees this machine's root read-only over virtio-9p, under an overlay whose writes
# stay in guest memory, so the command finds Deno, the repo, libbpf and bpftool where they are
# here and changes nothing; Deno's caches are the exception: their SQLite databases are copied
# (consistently, by SQLite's backup) before the boot and the guest's DENO_DIR uses the copies,
# because the host's own Deno processes keep writing them (see below). It runs as root in the
# repo's folder with proc, sysfs, cgroup2 (/sys/fs/cgroup), bpffs (/sys/fs/bpf) and a fresh
# /tmp and /run; veth is loaded. The VM has no network device at all. Its output goes to stdout; the exit status is the command's (124
# when the timeout killed the VM, 125 when the guest did not report one).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
say() { printf '[vm] %s\n' "$*" >&2; }
die() { printf '[vm] error: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: run.sh SERIES [--mem MIB] [--timeout SECONDS] -- COMMAND..."
series=$1
shift
mem=1024
smp=2
save=
timeout=1200
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case $1 in
    --mem) mem=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --save) save=$2; shift 2 ;;
    *) die "unknown option \"$1\"" ;;
  esac
done
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || die "no command given after --"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (Debian: qemu-system-x86)"
command -v sqlite3 >/dev/null || die "sqlite3 is missing (Debian: sqlite3); it copies Deno's caches"

kdir=$(bash "$here/kernels.sh" "$series" | sed -n "s/^$series=//p")
[ -f "$kdir/vmlinux" ] || die "no kernel for $series"
release=$(cat "$kdir/release")
moddir=$kdir/lib/modules/$release

# The modules the guest needs before it can see anything (9p over virtio) and after (overlay,
# veth), in load order; dependencies come from each module's own "depends" field.
order=()
module_bytes() {
  case $1 in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *) cat "$1" ;;
  esac
}
add_module() {
  local name=$1 f dep
  for f in "${order[@]}"; do
    f=${f##*/}
    [ "${f%.ko*}" = "$name" ] && return 0
  done
  f=$(find "$moddir/kernel" -name "$name.ko*" -print -quit)
  [ -n "$f" ] || return 0 # built in
  for dep in $(module_bytes "$f" | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '); do
    add_module "$dep"
  done
  order+=("$f")
}
for m in virtio_pci 9pnet_virtio 9p overlay veth; do add_module "$m"; done

initrd=$kdir/initramfs.cpio
init_src=$here/init.sh
stamp=$( (cat "$init_src"; printf '%s\n' "${order[@]}") | sha256sum | cut -c1-16)
if [ ! -f "$initrd" ] || [ "$(cat "$kdir/initramfs.stamp" 2>/dev/null)" != "$stamp" ]; then
  say "building the initramfs for $release"
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,proc,sys,dev,host,ovl,newroot,out,modules}
  cp /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  cp "$init_src" "$root/init" && chmod +x "$root/init"
  i=0
  for f in "${order[@]}"; do
    i=$((i + 1))
    dst=$root/modules/$(printf '%02d' "$i")-$(basename "${f%.ko*}").ko
    module_bytes "$f" >"$dst"
  done
  (cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null) >"$initrd.tmp"
  rm -rf "$root"
  mv "$initrd.tmp" "$initrd"
  echo "$stamp" >"$kdir/initramfs.stamp"
fi

out=$(mktemp -d -t meshd-vm.XXXXXX)
qemu_pid=
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  if [ -n "$save" ]; then
    mkdir -p "$save" && find "$out" -maxdepth 1 -type f ! -name cmd -exec cp {} "$save/" \;
  fi
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then kill -KILL "$qemu_pid" 2>/dev/null || true; fi
  rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
# Deno's caches for the guest. The host's DENO_DIR holds SQLite databases in WAL mode, the V8
# code cache among them, that the host's Deno processes write all the time; read live through
# 9p (cached loosely) and copied up into the overlay at the guest's first write, the guest can
# get a database torn mid-write. V8 trusts a code cache blob that passes its header checks and
# aborts on one it cannot read: the first Deno process of fresh 5.10 guests died so
# ("out_of_range was thrown in -fno-exceptions mode with message \"vector\"", "Check failed:
# current == end_slot_index", a CHECK of V8's deserializer), later ones in the same guest did
# not. SQLite's backup gives the guest a consistent copy; the rest of DENO_DIR (npm packages,
# remote modules) is written once and only read.
deno_dir=${DENO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deno}
mkdir -p "$out/deno-dir"
for db in "$deno_dir"/*; do
  if [ ! -f "$db" ] || [ "$(head -c 15 "$db")" != "SQLite format 3" ]; then continue; fi
  sqlite3 "$db" ".timeout 10000" ".backup '$out/deno-dir/${db##*/}'" ||
    die "cannot copy Deno's cache $db"
done
{
  printf 'cd %q\n' "$PWD"
  printf 'export PATH=%q HOME=%q\n' "$PATH" "$HOME"
  # The guest's DENO_DIR: the copied databases, and links to the rest of the host's (not to
  # the databases' live -wal and -shm files).
  printf 'export DENO_DIR=/tmp/deno-dir\n'
  # shellcheck disable=SC2016 # expanded by the guest's shell
  printf 'mkdir -p "$DENO_DIR" && cp /out/deno-dir/* "$DENO_DIR"/\n'
  # shellcheck disable=SC2016
  printf 'for f in %q/*; do case $f in *-wal | *-shm | *-journal) continue ;; esac
    [ -e "$DENO_DIR/${f##*/}" ] || ln -s "$f" "$DENO_DIR/"; done\n' "$deno_dir"
  # Emulated CPUs are several times slower: the tests' waits stretch by this factor.
  printf 'export MESHD_TEST_TIME_SCALE=%q NO_COLOR=1\n' "${MESHD_TEST_TIME_SCALE:-10}"
  printf '%q ' "$@"
  printf '\n'
} >"$out/cmd"

say "booting $release (${mem} MiB, TCG) for: $*"
started=$(date +%s)
# no_timer_check: on a starved host the emulated timer can miss the kernel's IO-APIC check at
# boot ("IO-APIC + timer doesn't work!"), which is a property of the emulation, not the kernel.
# tsc=reliable clocksource=tsc: with two emulated CPUs every kernel here judges the TSCs
# "unsynchronized" (the check is fooled by the emulation's pace; TCG derives each CPU's TSC
# from the one host clock) and falls back to the HPET, whose every read is an emulated device
# access outside the vDSO. Deno reads the clock all the time: on 5.10 a `deno eval` took
# 34-41 s with the TSC against 35-66 s with the HPET, and `meshd --version` 67-82 s against
# 104-149 s (two boots each, on a loaded host).
qemu-system-x86_64 -accel tcg -cpu max -smp "$smp" -m "$mem" -nodefaults -nic none -display none \
  -no-reboot -serial "file:$out/console" \
  -kernel "$kdir/vmlinux" -initrd "$initrd" \
  -append "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=3 no_timer_check tsc=reliable clocksource=tsc" \
  -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
  -fsdev local,id=out,path="$out",security_model=none \
  -device virtio-9p-pci,fsdev=out,mount_tag=out &
qemu_pid=$!
# The guest powers off when the command ends; the timeout bounds a hung guest.
deadline=$((started + timeout))
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    say "timeout after ${timeout} s; stopping the VM"
    kill -KILL "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    cat "$out/log" 2>/dev/null || true
    tail -n 20 "$out/console" >&2 || true
    exit 124
  fi
  sleep 1
done
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
cat "$out/log" 2>/dev/null || true
if [ ! -f "$out/rc" ]; then
  say "the guest reported no exit status; its console:"
  tail -n 40 "$out/console" >&2 || true
  exit 125
fi
say "VM done in $(($(date +%s) - started)) s"
exit "$(cat "$out/rc")"
