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
//! - `broker`: per-credential state, the single flight, proactive timers.
//! - `store`: durable, crash-safe persistence of rotated refresh tokens: files for one
//!   broker, or Redis shared by a fleet.
//! - `server`: the HTTP API (routes, guards, listeners, error mapping), long polls and
//!   event streams.
//! - `sink`: file sinks, the token written to a file on every new version.
//! - `proxy`: header-injecting proxies that forward requests with the token added.
//! - `metrics`: Prometheus metrics.
//! - `daemon`: `run` wiring (store, broker, server, signals, drain).
//! - `dev` and `dev_idp`: the try-it-now mode and the strict development IdP.
//! - `client`: `get` and `status`, clients of a running broker.
//! - `signal`, `duration`, `error`: small shared pieces.

pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod dev_idp;
pub mod duration;
pub mod error;
pub mod exec;
pub mod idp;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod signal;
pub mod sink;
pub mod store;

#[cfg(test)]
mod test_keys;
