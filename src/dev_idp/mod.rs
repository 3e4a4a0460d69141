//! The dev IdP: a strict, in-memory OAuth2 token server for development and tests,
//! never for production.
//!
//! It plays the real IdP in the integration tests, so it is deliberately unforgiving:
//! refresh tokens rotate on every use, replaying a used one revokes its whole family,
//! and counters at `/stats` show how many token requests a client made and how many
//! overlapped. Admin endpoints inject faults (error statuses, broken bodies, hangs)
//! and revoke credentials, so tests can model a bad day at the IdP.
//!
//! It also plays the user's side of a login: the authorization-code flow with PKCE
//! (`/authorize`, a consent page) and the device flow (`/device_authorization`, a
//! verification page at `/device`), or approves both at once with `--auto-approve`.
//!
//! Layout: `state` holds the rules and is pure, with the refresh token lineage rules
//! in `families`, token exchange and jwt-bearer in `exchange`, authorization codes in
//! `codes` and device codes in `device`; `authorize` checks authorization requests
//! and redirect URIs; `clients` authenticates callers (secrets, `private_key_jwt`,
//! public clients) and `jwt` verifies signed assertions; `protocol` parses RFC 6749
//! requests; `tokens` mints token strings; `faults` describes and renders injected
//! faults; `proofs` keeps the DPoP proofs seen and the server nonces, and the state's
//! `dpop_state` checks a request's proof under the lock; `http`, `admin`, `pages` and
//! `resource` (`/api/whoami`) are the axum handlers; `options` is the command line.
//! This file ties them together and runs the server.

mod admin;
mod authorize;
mod clients;
mod families;
mod faults;
mod http;
mod jwt;
mod options;
mod pages;
mod proofs;
mod protocol;
mod resource;
mod state;
mod stats;
mod tls;
mod tokens;

pub use jwt::PublicKey;
pub use options::{DEFAULT_LISTEN, DevIdpArgs, DevIdpOptions};
pub use stats::Stats;

use anyhow::Context as _;
use state::State;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long in-flight requests (possibly hanging on an injected fault) may run on after
/// a shutdown signal before the process stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running dev IdP's shared state; cloning is cheap and every clone sees the same IdP.
#[derive(Clone)]
pub struct DevIdp {
    shared: Arc<Shared>,
}

struct Shared {
    /// One lock for everything: the IdP is small and every operation is a few map
    /// look-ups, so finer locking would buy nothing and make the rules harder to read.
    state: Mutex<State>,
    /// The first family's refresh token, kept to print at start-up and for tests.
    initial_refresh_token: String,
}

impl DevIdp {
    /// Builds an IdP with one family, whose refresh token is the chosen initial one or
    /// a random one.
    pub fn new(options: DevIdpOptions) -> DevIdp {
        let mut state = State::new(options.config(), options.latency);
        state.set_dpop_policy(options.dpop_policy());
        let initial_refresh_token = state.mint_family(None, options.initial_refresh_token);
        DevIdp {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                initial_refresh_token,
            }),
        }
    }

    /// The HTTP routes, ready to serve or to drive with `oneshot` in tests.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// The refresh token of the family minted at start-up.
    pub fn initial_refresh_token(&self) -> String {
        self.shared.initial_refresh_token.clone()
    }

    /// The counters served at `/stats`.
    pub fn stats(&self) -> Stats {
        self.with_state(|state| state.stats())
    }

    /// Runs `f` under the state lock.
    ///
    /// The lock is a std mutex reached only through this synchronous closure, so it can
    /// never be held across an `.await`: a guard held while sleeping would serialize
    /// every token request behind the sleeper (hiding the very overlap the counters
    /// must measure) and would make the handler futures non-`Send`. A poisoned lock is
    /// recovered rather than propagated: the critical sections do not panic, and an IdP
    /// that keeps answering is more use to a test than one failing every request.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self
            .shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

/// Serves the IdP on `listener` until `shutdown` completes, then drains in-flight
/// requests. The listener's address becomes the discovery fallback host.
pub async fn serve(
    listener: tokio::net::TcpListener,
    idp: DevIdp,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        idp.with_state(|state| state.set_listen_addr(addr.to_string()));
    }
    axum::serve(listener, idp.router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// The `token-broker dev-idp` command: binds, announces itself on stdout with the
/// initial refresh token, and serves until ctrl-c or SIGTERM.
pub async fn run(args: DevIdpArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key, args.tls_client_ca.as_deref())?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let idp = DevIdp::new(args.options);
    // stdout, not the log: the token is meant for the person who started the IdP.
    println!("dev-idp listening on {scheme}://{addr} (development only, never production)");
    println!("initial refresh token: {}", idp.initial_refresh_token());

    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let stopped = async move {
        // An error means the sender is gone, which also means "stop".
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let server = async move {
        match tls {
            Some(acceptor) => tls::serve_tls(listener, idp, acceptor, stopped).await,
            None => serve(listener, idp, stopped).await,
        }
    };
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.context("dev-idp server failed"),
        () = shutdown_signal() => {}
    }
    tracing::info!("dev-idp shutting down");
    stop.send_replace(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result.context("dev-idp server failed"),
        Err(_) => {
            tracing::warn!("dev-idp stopped with requests still in flight");
            Ok(())
        }
    }
}

/// Completes on ctrl-c, or on SIGTERM where there is such a thing. A signal that cannot
/// be listened for simply never fires, leaving the other one.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod admin_tests;
#[cfg(test)]
mod dpop_tests;
#[cfg(test)]
mod http_tests;

#[cfg(test)]
mod serve_tests;
