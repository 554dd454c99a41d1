#!/usr/bin/env bash
# Builds CoreDNS (with the plugins main.go names) from the Go module proxy, at the version
# go.mod requires (or $MESHD_COREDNS_VERSION, e.g. 1.14.3: scripts/compat tries several), into
# $MESHD_CACHE/coredns-v<VERSION>-<hash of main.go and go.sum>/coredns, only when it is missing.
# Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}

say() { printf '[testenv-build] %s\n' "$*" >&2; }
die() { printf '[testenv-build] error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "Go is needed to build CoreDNS for the tests; install Go 1.24 or newer"
pinned=$(sed -nE 's/^(require)?\s*github\.com\/coredns\/coredns v([0-9.]+).*/\2/p' "$here/go.mod" | head -n 1)
[ -n "$pinned" ] || die "$here/go.mod does not require github.com/coredns/coredns"
version=${MESHD_COREDNS_VERSION:-$pinned}
version=${version#v}
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "bad CoreDNS version \"$version\" (want 1.MINOR.PATCH)"
key=$(cat "$here/main.go" "$here/go.sum" | sha256sum | cut -c1-12)
out="$cache/coredns-v$version-$key"
if [ -x "$out/coredns" ]; then echo "$out/coredns"; exit 0; fi

say "building CoreDNS v$version into $out"
started=$(date +%s)
mkdir -p "$out"
src=$here
if [ "$version" != "$pinned" ]; then
  # Another release: a copy of this module moved to it, its dependencies settled by go mod tidy.
  src=$out/src
  rm -rf "$src" && mkdir -p "$src" && cp "$here/main.go" "$here/go.mod" "$here/go.sum" "$src/"
  (cd "$src" && go get "github.com/coredns/coredns@v$version" && go mod tidy) >&2 ||
    die "cannot move the CoreDNS module to v$version"
fi
(cd "$src" && go build -trimpath -ldflags="-s -w" -o "$out/coredns.tmp" .) >&2 ||
  die "go build failed for CoreDNS v$version"
[ "$src" = "$here" ] || rm -rf "$src"
mv "$out/coredns.tmp" "$out/coredns"
say "built CoreDNS v$version in $(($(date +%s) - started)) s"
echo "$out/coredns"
