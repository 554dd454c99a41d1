#!/usr/bin/env bash
# Builds the images the real-node tier runs, without a registry, as docker-archive tars that
# `ctr -n k8s.io images import` takes:
#
#   meshd:<version from deno.json>   Debian bookworm minbase (debootstrap) with libbpf1, Deno
#                                    from npm, meshd's source and a module cache filled here,
#                                    so nothing is fetched at run time; /usr/local/bin/meshd
#                                    runs `deno run --cached-only` with the permissions and
#                                    unstable features `deno task compile` gives the binary.
#   meshd-test/busybox:1             busybox-static alone: the test applications (httpd with a
#                                    whoami CGI, wget, nc, sh).
#   meshd-test/pause:1               the same layer; its entrypoint sleeps (the pod sandbox).
#   meshd-test/coredns:1             the rootfs with CoreDNS (tests/testenv/coredns/build.sh).
#   meshd-test/client:1              the rootfs with busybox (wget that resolves names with
#                                    glibc, as an application pod does) and loadgen
#                                    (tests/testenv/loadgen: the backends and the load loop).
#
# The Dockerfile (the compiled binary on bookworm-slim) stays the users' image; see README.
#
#   tests/testenv/image/build.sh       prints one line per image: REF=ARCHIVE
#
# The rootfs is cached per suite and package list, the archives per content (source, Deno
# version, rootfs), all under $MESHD_CACHE. Needs root, debootstrap and busybox-static.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cache=${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}
suite=bookworm
packages=libbpf1
mirror=${MESHD_DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { printf '[image-build] %s\n' "$*" >&2; }
die() { printf '[image-build] error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "building the test images needs root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
if [ ! -x /bin/busybox ] || ! /bin/busybox --list | grep -x httpd >/dev/null; then
  die "/bin/busybox with httpd is missing (apt-get install busybox-static)"
fi
deno=$(command -v deno) || die "deno is not on PATH (scripts/_lib.sh ensure_deno puts it there)"
deno=$(readlink -f "$deno")
deno_version=$("$deno" --version | sed -nE 's/^deno ([0-9.]+).*/\1/p')
meshd_version=$(sed -nE 's/^\s*"version": "([^"]+)".*/\1/p' "$root/deno.json" | head -n 1)

# tar_layer DIR OUT: a reproducible layer tar of DIR's content.
tar_layer() {
  tar -C "$1" --sort=name --mtime=@0 --numeric-owner --xattrs -cf "$2" .
}

# write_archive OUT REF CONFIG_JSON LAYER_TAR...: a docker-archive (docker save's format).
write_archive() {
  local out=$1 ref=$2 config=$3
  shift 3
  local tmp diff_ids="" layers="" l sum
  tmp=$(mktemp -d "$cache/images/.tmp.XXXXXX")
  for l in "$@"; do
    sum=$(sha256sum "$l" | cut -d' ' -f1)
    ln "$l" "$tmp/$sum.tar" 2>/dev/null || cp "$l" "$tmp/$sum.tar"
    diff_ids+="${diff_ids:+,}\"sha256:$sum\""
    layers+="${layers:+,}\"$sum.tar\""
  done
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$config" "$diff_ids" >"$tmp/config.json"
  sum=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
  mv "$tmp/config.json" "$tmp/$sum.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":[%s]}]' "$sum" "$ref" "$layers" \
    >"$tmp/manifest.json"
  tar -C "$tmp" --sort=name --mtime=@0 --owner=0 --group=0 -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

mkdir -p "$cache/images"

# --- the Debian rootfs (one layer), once per suite and package list
rootfs_dir="$cache/rootfs-$suite-minbase-$(echo "$packages" | sha256sum | cut -c1-8)"
if [ ! -f "$rootfs_dir/layer.tar" ]; then
  say "debootstrap --variant=minbase $suite with $packages into $rootfs_dir"
  started=$(date +%s)
  rm -rf "$rootfs_dir" && mkdir -p "$rootfs_dir"
  # debootstrap mounts proc and sys in the target while it works; unmount them whatever happens.
  release_mounts() {
    awk -v d="$rootfs_dir/rootfs" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts |
      sort -r | while read -r m; do umount -l "$m" || true; done
  }
  trap release_mounts EXIT
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs_dir/rootfs" "$mirror" \
    >"$rootfs_dir/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $rootfs_dir/debootstrap.log"
  release_mounts
  trap - EXIT
  # What an image needs no more: package caches and lists, docs, man pages, locales.
  rm -rf "$rootfs_dir"/rootfs/var/cache/apt/* "$rootfs_dir"/rootfs/var/lib/apt/lists/* \
    "$rootfs_dir"/rootfs/usr/share/doc/* "$rootfs_dir"/rootfs/usr/share/man/* \
    "$rootfs_dir"/rootfs/usr/share/locale/* "$rootfs_dir"/rootfs/var/log/*
  tar_layer "$rootfs_dir/rootfs" "$rootfs_dir/layer.tar.tmp"
  mv "$rootfs_dir/layer.tar.tmp" "$rootfs_dir/layer.tar"
  rm -rf "$rootfs_dir/rootfs"
  say "built the $suite rootfs in $(($(date +%s) - started)) s"
fi

# --- meshd: Deno (one layer), then the source and its module cache (one layer)
bash "$root/bpf/build.sh" >/dev/null || die "bpf/build.sh failed"
app_files() {
  (cd "$root" && git ls-files -co --exclude-standard main.ts deno.json deno.lock src ffi |
    grep -v '_test\.ts$' && echo bpf/build/meshd_sock.bpf.o) | sort
}
key=$( (
  cd "$root"
  app_files | while read -r f; do sha256sum "$f"; done
  echo "deno $deno_version rootfs $rootfs_dir"
  sha256sum "$here/build.sh"
) | sha256sum | cut -c1-12)
meshd_tar="$cache/images/meshd-$meshd_version-$key.tar"
if [ ! -f "$meshd_tar" ]; then
  say "building meshd:$meshd_version ($key)"
  started=$(date +%s)
  work=$(mktemp -d "$cache/images/.work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/deno/usr/local/bin" "$work/app/opt/meshd" "$work/app/usr/local/bin"
  cp "$deno" "$work/deno/usr/local/bin/deno"
  (cd "$root" && app_files | while read -r f; do
    mkdir -p "$work/app/opt/meshd/$(dirname "$f")" && cp "$f" "$work/app/opt/meshd/$f"
  done)
  # The module cache, filled from the npm registry here: the pod fetches nothing.
  (cd "$work/app/opt/meshd" && DENO_DIR="$work/app/opt/meshd/deno-dir" DENO_NO_UPDATE_CHECK=1 \
    "$deno" cache --quiet main.ts src/provider/parse_worker.ts >&2) ||
    die "deno cache failed for meshd's modules"
  # Same permissions and unstable features as `deno task compile` (deno.json lists the latter).
  cat >"$work/app/usr/local/bin/meshd" <<'EOF'
#!/bin/sh
# meshd from source: the compiled binary's equivalent in the test image (see the README).
export DENO_DIR=/opt/meshd/deno-dir DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1
exec /usr/local/bin/deno run --quiet --cached-only --v8-flags=--no-memory-pool-share-memory-on-teardown,--expose-gc,--enable-experimental-regexp-engine --allow-all --unstable-net --unstable-worker-options \
  --config /opt/meshd/deno.json /opt/meshd/main.ts "$@"
EOF
  chmod 755 "$work/app/usr/local/bin/meshd"
  tar_layer "$work/deno" "$work/deno.tar"
  tar_layer "$work/app" "$work/app.tar"
  write_archive "$meshd_tar" "meshd:$meshd_version" \
    '{"Entrypoint":["/usr/local/bin/meshd"],"Cmd":["run","--provider=kube"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","MALLOC_ARENA_MAX=1"]}' \
    "$rootfs_dir/layer.tar" "$work/deno.tar" "$work/app.tar"
  {
    echo "layer sizes (bytes): rootfs $(stat -c %s "$rootfs_dir/layer.tar")" \
      "deno $(stat -c %s "$work/deno.tar") app $(stat -c %s "$work/app.tar")"
    echo "module cache: $(du -sb "$work/app/opt/meshd/deno-dir" | cut -f1) bytes;" \
      "source: $(du -sb --exclude=deno-dir "$work/app/opt/meshd" | cut -f1) bytes"
  } >"$meshd_tar.sizes"
  rm -rf "$work"
  trap - EXIT
  say "built meshd:$meshd_version in $(($(date +%s) - started)) s: $(tr '\n' ' ' <"$meshd_tar.sizes")"
fi

# --- busybox: the test applications and the pause image
bb_key=$( (sha256sum /bin/busybox "$here/build.sh") | sha256sum | cut -c1-12)
bb_tar="$cache/images/busybox-$bb_key.tar"
pause_tar="$cache/images/pause-$bb_key.tar"
if [ ! -f "$bb_tar" ] || [ ! -f "$pause_tar" ]; then
  work=$(mktemp -d "$cache/images/.work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/fs/bin" "$work/fs/tmp" "$work/fs/www/cgi-bin" "$work/fs/etc"
  chmod 1777 "$work/fs/tmp"
  cp /bin/busybox "$work/fs/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$work/fs/bin/$a"
  done
  echo "root:x:0:0:root:/:/bin/sh" >"$work/fs/etc/passwd"
  # whoami: who answered (pod, node) and who asked (the peer address the backend saw).
  cat >"$work/fs/www/cgi-bin/whoami" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "pod=$(hostname) node=${NODE_NAME:-} remote=${REMOTE_ADDR:-} host=${HTTP_HOST:-}"
EOF
  chmod 755 "$work/fs/www/cgi-bin/whoami"
  tar_layer "$work/fs" "$work/fs.tar"
  write_archive "$bb_tar" "meshd-test/busybox:1" \
    '{"Entrypoint":["/bin/sh"],"Env":["PATH=/bin"]}' "$work/fs.tar"
  write_archive "$pause_tar" "meshd-test/pause:1" \
    '{"Entrypoint":["/bin/busybox","sleep","2147483647"],"Env":["PATH=/bin"]}' "$work/fs.tar"
  rm -rf "$work"
  trap - EXIT
fi

# --- on the Debian rootfs (glibc and its resolver): CoreDNS, and a client with busybox's wget
coredns=$(bash "$root/tests/testenv/coredns/build.sh") || die "building CoreDNS failed"
command -v go >/dev/null || die "go is not on PATH (scripts/_lib.sh ensure_go puts it there)"
loadgen_src="$root/tests/testenv/loadgen"
extra_key=$( (sha256sum "$coredns" /bin/busybox "$here/build.sh" "$loadgen_src"/* &&
  echo "$rootfs_dir $(go env GOVERSION)") | sha256sum | cut -c1-12)
coredns_tar="$cache/images/coredns-$extra_key.tar"
client_tar="$cache/images/client-$extra_key.tar"
if [ ! -f "$coredns_tar" ] || [ ! -f "$client_tar" ]; then
  work=$(mktemp -d "$cache/images/.work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/coredns/usr/local/bin" "$work/client/usr/local/bin"
  cp "$coredns" "$work/coredns/usr/local/bin/coredns"
  cp /bin/busybox "$work/client/usr/local/bin/busybox"
  (cd "$loadgen_src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
    -o "$work/client/usr/local/bin/loadgen" .) || die "building loadgen failed"
  tar_layer "$work/coredns" "$work/coredns.tar"
  tar_layer "$work/client" "$work/client.tar"
  write_archive "$coredns_tar" "meshd-test/coredns:1" \
    '{"Entrypoint":["/usr/local/bin/coredns"],"Cmd":["-conf","/etc/coredns/Corefile"]}' \
    "$rootfs_dir/layer.tar" "$work/coredns.tar"
  write_archive "$client_tar" "meshd-test/client:1" \
    '{"Entrypoint":["/bin/sleep"],"Cmd":["infinity"],"Env":["PATH=/usr/local/bin:/usr/bin:/bin"]}' \
    "$rootfs_dir/layer.tar" "$work/client.tar"
  rm -rf "$work"
  trap - EXIT
fi

# Older archives (an earlier source or build) are not needed again; those of other checkouts
# sharing this cache are kept while they may be in use (prune.sh).
bash "$here/prune.sh" "$cache/images" "$meshd_tar" "$coredns_tar" "$client_tar" "$bb_tar" "$pause_tar"

echo "meshd:$meshd_version=$meshd_tar"
echo "meshd-test/coredns:1=$coredns_tar"
echo "meshd-test/client:1=$client_tar"
echo "meshd-test/busybox:1=$bb_tar"
echo "meshd-test/pause:1=$pause_tar"
