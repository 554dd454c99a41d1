#!/usr/bin/env bash
# Builds Helm v3 (helm.sh/helm/v3/cmd/helm) from the Go module proxy, for the chart tests
# (helm lint, helm template), into $MESHD_CACHE/helm-v<VERSION>/helm, only when it is missing.
#
#   tests/testenv/helm/build.sh [VERSION]     default: $MESHD_HELM_VERSION, then the pinned one
#
# Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail
cache=${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}
pinned=3.22.0

say() { printf '[testenv-build] %s\n' "$*" >&2; }
die() { printf '[testenv-build] error: %s\n' "$*" >&2; exit 1; }

version=${1:-${MESHD_HELM_VERSION:-$pinned}}
version=${version#v}
[[ "$version" =~ ^3\.[0-9]+\.[0-9]+$ ]] || die "bad Helm version \"$version\" (want 3.MINOR.PATCH)"
out="$cache/helm-v$version"
if [ -x "$out/helm" ]; then echo "$out/helm"; exit 0; fi

command -v go >/dev/null || die "Go is needed to build Helm for the tests; install Go 1.24 or newer"
say "building Helm v$version into $out; this takes a few minutes the first time"
started=$(date +%s)
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
# Stamp the version, as Helm's Makefile does, so `helm version` reports it.
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$version"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
GOBIN="$out.tmp" CGO_ENABLED=0 go install -trimpath -ldflags="$ldflags" \
  "helm.sh/helm/v3/cmd/helm@v$version" >&2 || die "go install failed for Helm v$version"
rm -rf "$out" && mv "$out.tmp" "$out"
say "built Helm v$version in $(($(date +%s) - started)) s"
echo "$out/helm"
