#!/usr/bin/env bash
# Install OpenCode (npm package opencode-ai, which ships its native binary) into the
# git-ignored test cache, for the runtime's integration tests. Idempotent: does nothing
# when a working binary of the wanted version is already there.
#
#   scripts/install-opencode.sh            # version from $OPENCODE_VERSION, else the latest
#   OPENCODE_VERSION=1.18.33 scripts/install-opencode.sh
#
# The tests find the binary at .test-cache/opencode/node_modules/.bin/opencode or on PATH.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${OPENCODE_PREFIX:-$root/.test-cache/opencode}"
bin="$prefix/node_modules/.bin/opencode"
want="${OPENCODE_VERSION:-}"

if [ -x "$bin" ]; then
    have="$("$bin" --version 2>/dev/null || true)"
    if [ -n "$have" ] && { [ -z "$want" ] || [ "$have" = "$want" ]; }; then
        echo "opencode $have already installed at $bin"
        exit 0
    fi
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "npm is not installed: cannot install OpenCode (the runtime tests will skip)" >&2
    exit 1
fi

mkdir -p "$prefix"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "opencode-ai${want:+@$want}"

# npm may skip the package's postinstall (which links the platform binary into bin/);
# the platform package ships the same binary, so link it ourselves when needed.
if ! "$bin" --version >/dev/null 2>&1; then
    arch="$(uname -m)"
    case "$arch" in x86_64) arch=x64 ;; aarch64) arch=arm64 ;; esac
    for pkg in "opencode-linux-$arch" "opencode-linux-$arch-baseline" "opencode-linux-$arch-musl"; do
        candidate="$prefix/node_modules/$pkg/bin/opencode"
        if [ -x "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
            ln -sf "$candidate" "$bin"
            break
        fi
    done
fi

echo "opencode $("$bin" --version) installed at $bin"
