#!/usr/bin/env bash
# The one command that checks everything, on a fresh machine or a laptop:
# formatting, lints, unit and integration tests. It installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The unix-socket tests drive the broker with curl --unix-socket; the signing tests
# make their keys, and check signatures, with the openssl command line.
if ! command -v curl >/dev/null; then
  apt-get update -qq && apt-get install -y -qq curl >/dev/null
fi
if ! command -v openssl >/dev/null; then
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi
# The shared-store tests start their own redis-server on loopback and use redis-cli.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

# The emulation tests (tests/it/emulate_*.rs) drive the real SDKs and tools: the Python
# and Node libraries, pinned, under target/sdk/; git; and kubectl (Debian's
# kubernetes-client when the machine has none).
bash tests/sdk/install.sh
if ! command -v git >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git >/dev/null
fi
# The login test clicks the dev IdP's consent page in a real headless browser.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v kubectl >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The production build without the dev IdP must stay clean too.
cargo clippy --all-targets --locked --no-default-features -- -D warnings
cargo test --locked

# Dependency licenses and sources (deny.toml); installs cargo-deny on first use.
bash tests/supply-chain.sh

# Deployment files and the client examples, checked against the binary just tested.
TOKEN_BROKER_BIN="${CARGO_TARGET_DIR:-target}/debug/token-broker" bash tests/deploy/check.sh
