#!/usr/bin/env bash
# Fetches Debian's kernels for the real-kernel eBPF tier (run in QEMU by tests/testenv/vm/run.sh)
# and extracts each one's uncompressed vmlinux, which QEMU boots through its PVH entry.
#
#   tests/testenv/vm/kernels.sh [SERIES...]     SERIES: 5.10 6.1 6.12 6.18 (default: all four)
#
# Prints one line per kernel: SERIES=DIR, where DIR holds `vmlinux`, `release` (uname -r) and
# `lib/modules/<release>` (the package's modules, for veth and friends). Uses a private apt
# configuration under $MESHD_CACHE/kernels/apt, so the machine's own sources stay untouched.
# Kernels older than 5.10 (4.19, 5.4) are not in any suite this fetches from.
set -euo pipefail
cache=${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}/kernels
say() { printf '[kernels] %s\n' "$*" >&2; }
die() { printf '[kernels] error: %s\n' "$*" >&2; exit 1; }

# The generic flavour: the cloud one lacks 9p, which the VMs mount the host's root with.
declare -A PACKAGE=(
  [5.10]=linux-image-5.10.0-46-amd64-unsigned
  [6.1]=linux-image-6.1.0-57-amd64-unsigned
  [6.12]=linux-image-6.12.117+deb13-amd64-unsigned
  [6.18]=linux-image-6.18.15+deb13-amd64
)
series=("$@")
[ ${#series[@]} -gt 0 ] || series=(5.10 6.1 6.12 6.18)
for s in "${series[@]}"; do
  [ -n "${PACKAGE[$s]:-}" ] || die "no Debian kernel known for \"$s\" (known: ${!PACKAGE[*]}; older than 5.10 is not downloadable)"
done

apt_dir=$cache/apt
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
  -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null"
  -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1"
)
updated=0
apt_update() {
  [ "$updated" -eq 1 ] && return 0
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  local key=/usr/share/keyrings/debian-archive-keyring.gpg
  cat >"$apt_dir/sources.list" <<LIST
deb [signed-by=$key] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=$key] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=$key] http://deb.debian.org/debian trixie main
deb [signed-by=$key] http://deb.debian.org/debian trixie-backports main
LIST
  say "apt-get update (private lists in $apt_dir)"
  apt-get "${apt_opts[@]}" update -qq >&2 || die "apt-get update of the kernel suites failed"
  updated=1
}

# extract_vmlinux IMAGE OUT: the ELF inside a bzImage (Debian compresses it with xz or zstd).
extract_vmlinux() {
  local img=$1 out=$2 off magic tool
  for magic in 'fd377a585a00:xz -dc' '28b52ffd:zstd -dc' '1f8b0800:gzip -dc'; do
    tool=${magic#*:}
    magic=${magic%%:*}
    # Every offset where this compressor's magic starts; the first that decompresses to ELF wins.
    for off in $(od -A d -v -t x1 "$img" | sed -E 's/^[0-9]+ //' | tr -d ' \n' |
      grep -ob "$magic" | cut -d: -f1); do
      [ $((off % 2)) -eq 0 ] || continue
      tail -c +$((off / 2 + 1)) "$img" | $tool >"$out.tmp" 2>/dev/null || true
      if [ "$(head -c 4 "$out.tmp" | od -A n -t x1 | tr -d ' ')" = "7f454c46" ]; then
        mv "$out.tmp" "$out"
        return 0
      fi
    done
  done
  rm -f "$out.tmp"
  return 1
}

for s in "${series[@]}"; do
  dir=$cache/$s
  if [ ! -f "$dir/vmlinux" ]; then
    apt_update
    pkg=${PACKAGE[$s]}
    say "fetching $pkg"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/deb"
    (cd "$dir.tmp/deb" && apt-get "${apt_opts[@]}" download -qq "$pkg" >&2) || die "cannot download $pkg"
    # linux-image-6.18…-amd64 is a meta package in some suites; follow it to the real image.
    deb=$(find "$dir.tmp/deb" -name '*.deb' -print -quit)
    dpkg-deb -x "$deb" "$dir.tmp/root"
    img=$(find "$dir.tmp/root/boot" -name 'vmlinuz-*' -print -quit 2>/dev/null || true)
    [ -n "$img" ] || die "$pkg holds no /boot/vmlinuz-*"
    release=${img##*/vmlinuz-}
    extract_vmlinux "$img" "$dir.tmp/vmlinux" || die "cannot find an ELF vmlinux inside $img"
    mkdir -p "$dir.tmp/lib"
    mv "$dir.tmp/root/lib/modules" "$dir.tmp/lib/modules" 2>/dev/null ||
      mv "$dir.tmp/root/usr/lib/modules" "$dir.tmp/lib/modules"
    echo "$release" >"$dir.tmp/release"
    echo "$pkg" >"$dir.tmp/package"
    rm -rf "$dir.tmp/root" "$dir.tmp/deb"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    say "kernel $release ready in $dir"
  fi
  echo "$s=$dir"
done
