#!/usr/bin/env bash
# Puts Debian's Prometheus (the `prometheus` package of this machine's apt sources) under
# $MESHD_CACHE/prometheus-<version>/ without installing it: the package's postinst would add a
# user and a service, and the tests need only the binary. Done once per package version.
# Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail
cache=${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}

say() { printf '[testenv-build] %s\n' "$*" >&2; }
die() { printf '[testenv-build] error: %s\n' "$*" >&2; exit 1; }

command -v apt-get >/dev/null || die "apt-get is needed to fetch Debian's prometheus package"
version() { apt-cache policy prometheus 2>/dev/null | sed -nE 's/^\s*Candidate:\s*(\S+).*/\1/p'; }
v=$(version)
if [ -z "$v" ] || [ "$v" = "(none)" ]; then
  say "apt-get update (to find the prometheus package)"
  apt-get update -qq >/dev/null || die "apt-get update failed"
  v=$(version)
fi
if [ -z "$v" ] || [ "$v" = "(none)" ]; then die "no prometheus package in this machine's apt sources"; fi
out="$cache/prometheus-${v//[^A-Za-z0-9.+-]/_}"
bin="$out/usr/bin/prometheus"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

say "fetching Debian's prometheus $v into $out"
tmp=$(mktemp -d "$cache/prometheus.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get -o APT::Sandbox::User=root download -qq "prometheus=$v" >/dev/null) || die "apt-get download prometheus=$v failed"
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root" || die "cannot unpack prometheus $v"
rm -rf "$out" && mv "$tmp/root" "$out"
"$bin" --version >/dev/null 2>&1 || die "$bin does not run"
echo "$bin"
