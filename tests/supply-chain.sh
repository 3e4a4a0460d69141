#!/usr/bin/env bash
# Supply-chain policy of the dependency tree, as deny.toml sets it: licenses on the
# allow-list, crates.io as the only source, no wildcard requirements, no OpenSSL;
# duplicate versions are warnings. From anywhere in the repository:
#
#   bash tests/supply-chain.sh          (SHOW_GRAPH=1 to print why each duplicate is there)
#
# Installs cargo-deny $CARGO_DENY_VERSION with `cargo install --locked` when that
# version is missing: a build from source of about 4 minutes on 2 cores. Advisories are
# not checked (the advisory database lives on a git host these machines cannot reach):
# see deny.toml. Exits non-zero when the policy is broken.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2

installed="$(cargo deny --version 2>/dev/null || true)"
if [[ $installed != "cargo-deny $CARGO_DENY_VERSION" ]]; then
  echo "installing cargo-deny $CARGO_DENY_VERSION (found: ${installed:-none})"
  started=$SECONDS
  nice -n 10 cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
  echo "installed in $((SECONDS - started))s"
fi

graph=(--hide-inclusion-graph)
[[ -n ${SHOW_GRAPH:-} ]] && graph=()
# --locked: check Cargo.lock as committed, never update it.
cargo deny --locked check "${graph[@]}" bans licenses sources
