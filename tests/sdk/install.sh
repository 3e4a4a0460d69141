#!/usr/bin/env bash
# Installs the client libraries the emulation tests drive, under target/sdk/ (nothing
# global): a Python virtualenv and a node_modules folder, pinned by requirements.txt and
# package-lock.json. Skips what is already installed from the same pins.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="${CARGO_TARGET_DIR:-$root/target}/sdk"
mkdir -p "$dest"

if ! command -v python3 >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if ! cmp -s "$here/requirements.txt" "$dest/venv/requirements.txt"; then
  rm -rf "$dest/venv"
  python3 -m venv "$dest/venv"
  "$dest/venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$dest/venv/requirements.txt"
fi

if ! command -v npm >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if ! cmp -s "$here/package-lock.json" "$dest/node/package-lock.json"; then
  rm -rf "$dest/node"
  mkdir -p "$dest/node"
  cp "$here/package.json" "$here/package-lock.json" "$dest/node/"
  (cd "$dest/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
