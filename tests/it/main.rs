//! Integration tests: the real binary, the real dev IdP, real sockets and files.

#![allow(clippy::unwrap_used)]

mod harness;
// Key pairs by openssl, shared with the unit tests; these use only part of it.
mod redis_server;
// The real SDKs and tools of the emulation tests.
mod sdk;
#[path = "../../src/test_keys.rs"]
#[allow(dead_code)]
mod test_keys;
mod upstream;

mod admin_login;
mod api;
mod chaos;
mod client_auth;
mod client_keys;
mod commands;
mod decisions;
mod descriptors;
mod dpop;
mod dpop_idp;
mod dpop_keys;
mod dpop_proxy;
mod dpop_unbound;
mod emulate_azure;
mod emulate_gce;
mod emulate_tools;
mod exec;
mod failures;
mod fleet;
mod fleet_failures;
mod fleet_lease;
mod fleet_records;
mod fleet_recovery;
mod fleet_store;
mod fleet_writes;
mod grants;
mod hostile;
mod in_process;
mod lifetimes;
mod login_cli;
mod login_flows;
mod login_setups;
mod offline_login;
mod operations;
mod ops_port;
mod persistence;
mod process;
mod proxy;
mod proxy_bodies;
mod refusals;
mod sealed_state;
mod security;
mod single_flight;
mod sinks;
mod stampede;
mod tls;
mod usage;
mod watch;
mod wire;
