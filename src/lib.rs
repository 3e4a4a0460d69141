//! token-broker: a local daemon that owns OAuth2 credentials, refreshes each exactly once
//! per rotation, and serves the current access token on localhost.
//!
//! # Layout
//! - `cli`: the command line; `main` only maps its outcome to an exit code.
//! - `config`: raw config (as written) and validated config (as used), layered from a
//!   TOML file and `TOKEN_BROKER__...` variables.
//! - `secret`: secret sources (`"..."`, `{ file }`, `{ env }`), redaction, and the
//!   client keys that follow their files (`KeyRing`).
//! - `idp`: one token request to an identity provider (every grant and client
//!   authentication method, signed assertions), with every failure classified.
//! - `exec`: the `exec` source, a local command that prints a token.
//! - `token`: a published token version, its response bytes encoded once.
//! - `broker`: per-credential state, the single flight, proactive timers.
//! - `store`: durable, crash-safe persistence of rotated refresh tokens: files for one
//!   broker, or Redis shared by a fleet.
//! - `server`: the HTTP API (routes, guards, listeners, error mapping), long polls and
//!   event streams.
//! - `sink`: file sinks, the token written to a file on every new version.
//! - `proxy`: header-injecting proxies that forward requests with the token added.
//! - `emulate`: the token protocols SDKs and tools already speak (GCE metadata server,
//!   git credential helper), answered through the same gate as `/token`.
//! - `metrics`: Prometheus metrics.
//! - `daemon`: `run` wiring (store, broker, server, signals, drain).
//! - `preflight`: `check-config`'s checks of the machine that will run the broker
//!   (secret files and variables, keys, CA files, sink directories, `state.dir`).
//! - `dev` and `dev_idp`: the try-it-now mode and the strict development IdP.
//! - `login`: `token-broker login`, a person's login (PKCE on a loopback redirect, or
//!   the device flow) whose new refresh token goes to the broker or its store.
//! - `client`: `get` (the kubectl credential plugin's answer included) and `status`,
//!   clients of a running broker over http(s) or a unix socket, and the hand-over of a
//!   login (`post_login`); `helpers`: the git credential helper, on top of `client`.
//! - `limits`: what the daemon sets on its own process at start (no core dumps, file
//!   descriptors).
//! - `dpop`: DPoP (RFC 9449) proofs: the key that signs them and the check of one.
//! - `signal`, `duration`, `error`: small shared pieces.
//!
//! # Floors
//! Top to bottom: `cli`, `client`, `helpers`, `login`, `dev`; `daemon`, `preflight`; `server`,
//! `emulate`, `proxy`, `sink`; `broker`; `idp`, `exec`, `store`, `dev_idp`; `config`,
//! `token`; and the leaves, which use no other module (`secret`, `duration`, `error`,
//! `metrics`, `signal`, `limits`, `dpop`). A module uses modules of its own floor and below,
//! and no import circle joins two of them: `floors_tests.rs` checks both, and names the
//! one exception left (the broker writing to its `sink`s).

pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
#[cfg(feature = "dev-idp")]
pub mod dev;
#[cfg(feature = "dev-idp")]
pub mod dev_idp;
pub mod dpop;
pub mod duration;
pub mod emulate;
pub mod error;
pub mod exec;
pub mod helpers;
pub mod idp;
pub mod limits;
pub mod login;
pub mod metrics;
pub mod preflight;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod signal;
pub mod sink;
pub mod store;
pub mod token;

#[cfg(test)]
mod test_keys;

#[cfg(test)]
mod floors_tests;
