# shellcheck shell=bash
# Shared setup for the scripts in this folder: installs what meshd needs on a fresh
# Debian machine (root) and is safe to run again. Source it; do not run it.

# shellcheck disable=SC2034 # used by the scripts that source this file
MESHD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DENO_VERSION=2.9.6
MESHD_CACHE=${MESHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}

log() { printf '[meshd-setup] %s\n' "$*" >&2; }
die() { printf '[meshd-setup] error: %s\n' "$*" >&2; exit 1; }

apt_updated=0
# ensure_apt PKG...: installs the Debian packages that are not installed yet.
ensure_apt() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}; run as root or install them first"
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# ensure_deno: puts the pinned Deno on PATH, installing it from the npm package `deno`
# into $MESHD_CACHE/deno-$DENO_VERSION (outside the repo) when it is not there yet.
ensure_deno() {
  local dir="$MESHD_CACHE/deno-$DENO_VERSION" bin
  bin="$dir/bin/deno"
  if [ ! -x "$bin" ]; then
    command -v npm >/dev/null || ensure_apt npm
    log "installing deno@$DENO_VERSION from npm into $dir"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    npm install --prefix "$dir.tmp" --no-save --no-audit --no-fund --loglevel=error "deno@$DENO_VERSION" >&2 \
      || die "npm install deno@$DENO_VERSION failed"
    # The npm package ships the native binary in a per-platform package; use it directly
    # rather than the node launcher, so meshd does not depend on node at run time.
    local native
    native=$(find "$dir.tmp/node_modules/@deno" -mindepth 2 -maxdepth 2 -type f -name deno 2>/dev/null | head -n 1)
    [ -n "$native" ] || die "deno@$DENO_VERSION from npm has no native binary for $(uname -m)"
    mkdir -p "$dir.tmp/bin" && ln -sf "$native" "$dir.tmp/bin/deno"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    # the symlink was made under the temporary name
    ln -sf "${native/#$dir.tmp/$dir}" "$dir/bin/deno"
  fi
  "$bin" --version >/dev/null 2>&1 || die "$bin does not run"
  export PATH="$dir/bin:$PATH"
  export DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1
}

GO_MIN=1.24
GO_FALLBACK=go1.26.8
# ensure_go: puts a Go toolchain of at least $GO_MIN on PATH, for building the test cluster.
# Uses the machine's go when it is new enough; otherwise installs $GO_FALLBACK into
# $MESHD_CACHE from the Go module proxy's toolchain module (what GOTOOLCHAIN downloads).
ensure_go() {
  local have
  if command -v go >/dev/null; then
    have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
    if [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$GO_MIN" "$have" | sort -V | head -n 1)" = "$GO_MIN" ]; then
      return 0
    fi
    log "go $have is older than $GO_MIN"
  fi
  local dir="$MESHD_CACHE/$GO_FALLBACK" arch
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) die "no Go toolchain for $(uname -m)" ;;
  esac
  if [ ! -x "$dir/bin/go" ]; then
    ensure_apt curl unzip ca-certificates
    local proxy=${GOPROXY:-https://proxy.golang.org}
    proxy=${proxy%%,*}
    log "installing $GO_FALLBACK from the Go module proxy into $dir"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    curl -fsSL "$proxy/golang.org/toolchain/@v/v0.0.1-$GO_FALLBACK.linux-$arch.zip" -o "$dir.tmp/go.zip" \
      || die "cannot download $GO_FALLBACK from $proxy"
    unzip -q "$dir.tmp/go.zip" -d "$dir.tmp/x" || die "cannot unpack $GO_FALLBACK"
    mv "$dir.tmp/x/golang.org/toolchain@v0.0.1-$GO_FALLBACK.linux-$arch" "$dir" && rm -rf "$dir.tmp"
    chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/* 2>/dev/null || true
  fi
  export PATH="$dir/bin:$PATH"
}
