#!/usr/bin/env bash
# Builds meshd's BPF objects into bpf/build/ (not committed): clang for the BPF target, with
# BTF (-g) so libbpf can load the BTF maps and the layout test can read the structs.
#
#   bash bpf/build.sh            # builds what is out of date; prints the objects' paths
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/build"
mkdir -p "$out"
command -v clang >/dev/null || { echo "bpf/build.sh: clang is missing (Debian: clang)" >&2; exit 1; }
[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "bpf/build.sh: libbpf headers are missing (Debian: libbpf-dev)" >&2; exit 1; }
arch_inc="/usr/include/$(uname -m)-linux-gnu"
for src in "$here"/*.bpf.c; do
  obj="$out/$(basename "${src%.c}").o"
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$here/meshd.h" -nt "$obj" ]; then
    clang -O2 -g -Wall -Werror -target bpf \
      -I"$here" -I"$arch_inc" -c "$src" -o "$obj.tmp"
    mv "$obj.tmp" "$obj"
  fi
  echo "$obj"
done
