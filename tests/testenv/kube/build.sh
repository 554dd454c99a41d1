#!/usr/bin/env bash
# Builds the test cluster's control plane from the Go module proxy: kube-apiserver,
# kube-controller-manager, kube-proxy, kubectl (to apply the manifests as users do) and etcd,
# for one Kubernetes version.
#
#   tests/testenv/kube/build.sh [VERSION]     e.g. 1.37.2, or 1.36 for that minor's newest patch
#
# VERSION defaults to $MESHD_KUBE_VERSION, then to the version this module's go.mod pins.
# Binaries go to $MESHD_CACHE/kube-v<VERSION>/bin (outside the repo) and are built only when
# one is missing. Prints that bin directory on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}
binaries=(etcd kube-apiserver kube-controller-manager kube-proxy kubectl)

say() { printf '[testenv-build] %s\n' "$*" >&2; }
die() { printf '[testenv-build] error: %s\n' "$*" >&2; exit 1; }

# point_module_at VERSION: rewrites go.mod in the current folder for that Kubernetes release:
# k8s.io/kubernetes itself, and each staging module it replaces with a local folder, at the
# matching v0.MINOR.PATCH tag; go mod tidy then settles everything else, etcd included.
point_module_at() {
  local v=$1 gomod r
  gomod=$(go mod download -json "k8s.io/kubernetes@v$v" | sed -nE 's/^\s*"GoMod": "(.*)",?$/\1/p')
  [ -f "$gomod" ] || die "cannot download k8s.io/kubernetes@v$v from the Go module proxy"
  sed -nE '/^(module|go|tool) |^tool \(/,/^\)/p; /^(module|go) /p' go.mod | awk '!seen[$0]++' >go.mod.new
  mv go.mod.new go.mod
  rm -f go.sum
  while read -r r; do
    go mod edit "-replace=$r=$r@v0.${v#1.}"
  done < <(sed -nE 's/^\s*(k8s\.io\/[a-z0-9-]+) => \.\/staging\/.*/\1/p' "$gomod")
  go mod edit "-require=k8s.io/kubernetes@v$v"
  go mod tidy >&2 || die "go mod tidy failed for Kubernetes v$v"
}

if [ "${1:-}" = "--pin" ]; then
  # Maintainers: tests/testenv/kube/build.sh --pin VERSION makes VERSION this module's default.
  [ -n "${2:-}" ] || die "usage: build.sh --pin 1.MINOR.PATCH"
  cd "$here" && point_module_at "${2#v}" && say "go.mod now pins Kubernetes ${2#v}" && exit 0
fi

command -v go >/dev/null || die "Go is needed to build the test cluster; install Go 1.24 or newer"
pinned=$(sed -nE 's/^\s*k8s\.io\/kubernetes v([0-9.]+).*/\1/p' "$here/go.mod" | head -n 1)
[ -n "$pinned" ] || die "$here/go.mod does not require k8s.io/kubernetes"
version=${1:-${MESHD_KUBE_VERSION:-$pinned}}
version=${version#v}
if [[ "$version" =~ ^1\.[0-9]+$ ]]; then
  # A minor alone: its newest patch release on the module proxy.
  minor=$version
  version=$(cd "$here" && go list -m -versions k8s.io/kubernetes | tr ' ' '\n' \
    | grep -E "^v${minor//./\\.}\.[0-9]+$" | sort -V | tail -n 1 | sed 's/^v//') || true
  [ -n "$version" ] || die "the Go module proxy has no release of Kubernetes $minor"
fi
[[ "$version" =~ ^1\.[0-9]+\.[0-9]+$ ]] || die "bad Kubernetes version \"$version\" (want 1.MINOR or 1.MINOR.PATCH)"

out="$cache/kube-v$version"
missing=0
for b in "${binaries[@]}"; do [ -x "$out/bin/$b" ] || missing=1; done
if [ "$missing" -eq 0 ]; then echo "$out/bin"; exit 0; fi

say "building Kubernetes v$version (${binaries[*]}) into $out/bin; this takes several minutes the first time"
started=$(date +%s)
src="$out/src"
rm -rf "$src" && mkdir -p "$src"
cp -r "$here/go.mod" "$here/go.sum" "$here/etcd" "$src/"
cd "$src"
if [ "$version" != "$pinned" ]; then
  say "switching the module from v$pinned to v$version"
  point_module_at "$version"
fi
mkdir -p "$out/bin.tmp"
# Stamp the release, as Kubernetes' own build does, so /version and discovery report it.
minor=${version#1.}
minor=${minor%%.*}
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=v$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
ldflags+=" -X $vpkg.gitTreeState=clean"
go build -trimpath -ldflags="$ldflags" -o "$out/bin.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl \
  ./etcd >&2 || die "go build failed for Kubernetes v$version"
rm -rf "${out:?}/bin" && mv "$out/bin.tmp" "$out/bin"
echo "v$version" >"$out/VERSION"
say "built Kubernetes v$version in $(($(date +%s) - started)) s"
echo "$out/bin"
