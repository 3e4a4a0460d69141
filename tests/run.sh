#!/usr/bin/env bash
# The one command that checks everything, on a fresh machine or a laptop:
# formatting, lints, unit and integration tests. It installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
