#!/usr/bin/env bash
# Builds what a real test node runs, from the Go module proxy, once per version:
#   kubelet and kube-scheduler   from the same k8s.io/kubernetes module as the control plane
#                                (tests/testenv/kube/build.sh), into kube-v<VERSION>/node-bin
#   containerd, ctr and          github.com/containerd/containerd/v2, into containerd-v<V>/bin
#   containerd-shim-runc-v2
#   runc                         github.com/opencontainers/runc (cgo, libseccomp), runc-v<V>/bin
#   CNI plugins bridge,          github.com/containernetworking/plugins, cni-plugins-v<V>/bin
#   host-local, loopback, portmap
#
#   tests/testenv/nodes/build.sh          prints one line per component: NAME=BIN_DIR
#
# Each component is built in its own upstream module (its go.mod and go.sum, as released), so
# the binaries are the releases' own dependency sets. Everything goes under $MESHD_CACHE
# (outside the repo) and is built only when a binary is missing. Progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}
CONTAINERD_VERSION=${MESHD_CONTAINERD_VERSION:-2.4.2}
RUNC_VERSION=${MESHD_RUNC_VERSION:-1.5.3}
CNI_VERSION=${MESHD_CNI_VERSION:-1.10.0}

say() { printf '[nodes-build] %s\n' "$*" >&2; }
die() { printf '[nodes-build] error: %s\n' "$*" >&2; exit 1; }
command -v go >/dev/null || die "Go is needed to build the test nodes; install Go 1.24 or newer"

# module_source MODULE VERSION DEST: a writable copy of that release's source, from the proxy.
module_source() {
  local dir
  dir=$(go mod download -json "$1@v$2" | sed -nE 's/^\s*"Dir": "(.*)",?$/\1/p')
  [ -d "$dir" ] || die "cannot download $1@v$2 from the Go module proxy"
  rm -rf "$3" && cp -r "$dir" "$3" && chmod -R u+w "$3"
}

# build_component NAME VERSION MODULE OUT_DIR BUILD_FUNCTION BINARIES...
build_component() {
  local name=$1 version=$2 module=$3 out=$4 fn=$5
  shift 5
  local b missing=0
  for b in "$@"; do [ -x "$out/bin/$b" ] || missing=1; done
  if [ "$missing" -eq 1 ]; then
    say "building $name v$version ($*) into $out/bin"
    local started
    started=$(date +%s)
    mkdir -p "$out"
    module_source "$module" "$version" "$out/src"
    rm -rf "$out/bin.tmp" && mkdir -p "$out/bin.tmp"
    (cd "$out/src" && "$fn" "$version" "$out/bin.tmp" >&2) || die "go build failed for $name v$version"
    rm -rf "${out:?}/bin" && mv "$out/bin.tmp" "$out/bin" && rm -rf "$out/src"
    echo "v$version" >"$out/VERSION"
    say "built $name v$version in $(($(date +%s) - started)) s"
  fi
  echo "$name=$out/bin"
}

build_runc() {
  # The seccomp filter needs cgo and libseccomp (Debian: libseccomp-dev).
  CGO_ENABLED=1 go build -trimpath -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-s -w -X main.version=$1" -o "$2/runc" .
}
build_containerd() {
  local pkg=github.com/containerd/containerd/v2/version
  CGO_ENABLED=0 go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X $pkg.Version=v$1 -X $pkg.Package=github.com/containerd/containerd/v2" \
    -o "$2/" ./cmd/containerd ./cmd/ctr ./cmd/containerd-shim-runc-v2
}
build_cni() {
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$2/" \
    ./plugins/main/bridge ./plugins/ipam/host-local ./plugins/main/loopback ./plugins/meta/portmap
}

build_component runc "$RUNC_VERSION" github.com/opencontainers/runc \
  "$cache/runc-v$RUNC_VERSION" build_runc runc
build_component cni-plugins "$CNI_VERSION" github.com/containernetworking/plugins \
  "$cache/cni-plugins-v$CNI_VERSION" build_cni bridge host-local loopback portmap
build_component containerd "$CONTAINERD_VERSION" github.com/containerd/containerd/v2 \
  "$cache/containerd-v$CONTAINERD_VERSION" build_containerd containerd ctr containerd-shim-runc-v2

# kubelet and kube-scheduler: in the control plane's module, at the same Kubernetes version.
kube_bin=$(bash "$here/../kube/build.sh" "$@") || die "building the control plane failed"
kube_dir=$(dirname "$kube_bin")
version=$(sed 's/^v//' "$kube_dir/VERSION")
if [ ! -x "$kube_dir/node-bin/kubelet" ] || [ ! -x "$kube_dir/node-bin/kube-scheduler" ]; then
  say "building kubelet and kube-scheduler v$version into $kube_dir/node-bin"
  started=$(date +%s)
  [ -f "$kube_dir/src/go.mod" ] || die "$kube_dir/src is gone; remove $kube_dir and build again"
  minor=${version#1.}
  minor=${minor%%.*}
  vpkg=k8s.io/component-base/version
  ldflags="-s -w -X $vpkg.gitVersion=v$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
  ldflags+=" -X $vpkg.gitTreeState=clean"
  rm -rf "$kube_dir/node-bin.tmp" && mkdir -p "$kube_dir/node-bin.tmp"
  # -mod=mod: the control plane's go.sum may lack a few of the kubelet's own modules.
  (cd "$kube_dir/src" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags="$ldflags" \
    -o "$kube_dir/node-bin.tmp/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler >&2) \
    || die "go build failed for kubelet/kube-scheduler v$version"
  rm -rf "$kube_dir/node-bin" && mv "$kube_dir/node-bin.tmp" "$kube_dir/node-bin"
  say "built kubelet and kube-scheduler v$version in $(($(date +%s) - started)) s"
fi
echo "kube=$kube_bin"
echo "kube-node=$kube_dir/node-bin"
