//! The service every connection runs.
//!
//! Token reads (`GET /token`, `GET /token/{name}`) are the hottest path of every app that
//! uses the broker, so they are answered here directly: the router's guards are called as
//! plain functions, in the same order, with no boxed middleware futures, no copied
//! headers, no per-request timer and no allocation beyond the answer. Everything else
//! (and any token path this does not recognise at a glance) goes through `router`, whose
//! middleware stack handles the rarer and costlier cases.

use std::panic::AssertUnwindSafe;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tower::Service;
use tracing::error;

use super::error::ApiError;
use super::listen::Peer;
use super::{App, guard, router, token, watch};

/// The whole API: the fast path plus the router.
#[derive(Clone)]
pub struct Api {
    app: App,
    router: Router,
}

impl Api {
    pub fn new(app: App, beside: Option<Router<App>>) -> Api {
        Api {
            router: router(app.clone(), beside),
            app,
        }
    }

    /// Answers one request. `peer` is who is on the other end of the connection.
    pub async fn handle<B>(&self, request: Request<B>, peer: Option<&Peer>) -> Response
    where
        B: HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        if request.method() == Method::GET
            && let Some(fast) = fast_path(request.uri().path())
        {
            let answer = fast_answer(&self.app, fast, &request, peer);
            return match AssertUnwindSafe(answer).catch_unwind().await {
                Ok(response) => response,
                Err(_) => panicked(),
            };
        }
        let mut request = request.map(Body::new);
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer.clone());
        }
        // The router's error type is `Infallible`.
        match self.router.clone().call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// What the fast path answers (GET only).
enum Fast<'a> {
    /// `GET /token` (`None`) or `GET /token/{name}`.
    Read(Option<&'a str>),
    /// `GET /token/{name}/events`: a stream that lives as long as its client, so it is
    /// kept away from the router's request deadline too.
    Events(&'a str),
}

fn fast_path(path: &str) -> Option<Fast<'_>> {
    if let Some(name) = token_path(path) {
        return Some(Fast::Read(name));
    }
    let name = path.strip_prefix("/token/")?.strip_suffix("/events")?;
    plain_name(name).then_some(Fast::Events(name))
}

/// The guards of the token routes, in the router's order (host, then local-only), then
/// the answer itself.
async fn fast_answer<B>(
    app: &App,
    fast: Fast<'_>,
    request: &Request<B>,
    peer: Option<&Peer>,
) -> Response {
    let headers = request.headers();
    let guarded = guard::check_host(app, headers, request.uri(), peer)
        .and_then(|()| guard::check_local(app, headers));
    if let Err(refused) = guarded {
        return refused.into_response();
    }
    match fast {
        Fast::Read(name) => {
            token::read(app, name.map(Ok), peer, request.uri().query(), headers).await
        }
        Fast::Events(name) => watch::events(app, name, request, peer).await,
    }
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `Some(None)` for `/token`, `Some(Some(name))` for `/token/{name}` with a plain name;
/// `None` for anything the router should decide (other paths, `/token/refresh`, which
/// is POST-only, and names needing percent-decoding).
fn token_path(path: &str) -> Option<Option<&str>> {
    let rest = path.strip_prefix("/token")?;
    if rest.is_empty() {
        return Some(None);
    }
    let name = rest.strip_prefix('/')?;
    (name != "refresh" && plain_name(name)).then_some(Some(name))
}

fn panicked() -> Response {
    error!("a request handler panicked; answered 500");
    ApiError::Internal.into_response()
}

#[cfg(test)]
mod tests {
    use super::token_path;

    #[test]
    fn only_plain_token_reads_take_the_fast_path() {
        assert_eq!(token_path("/token"), Some(None));
        assert_eq!(token_path("/token/github"), Some(Some("github")));
        assert_eq!(token_path("/token/a.b-c_d"), Some(Some("a.b-c_d")));
        for router_decides in [
            "/token/",
            "/token/refresh",
            "/token/a/refresh",
            "/token/a%20b",
            "/tokens",
            "/tokenx/a",
            "/healthz",
        ] {
            assert_eq!(token_path(router_decides), None, "{router_decides}");
        }
    }

    #[test]
    fn event_streams_are_recognised_for_plain_names_only() {
        let events_path = |path| match super::fast_path(path) {
            Some(super::Fast::Events(name)) => Some(name),
            _ => None,
        };
        assert_eq!(events_path("/token/github/events"), Some("github"));
        for not_events in [
            "/token/events",
            "/token//events",
            "/token/a/b/events",
            "/token/a%20b/events",
            "/token/a/events/",
        ] {
            assert_eq!(events_path(not_events), None, "{not_events}");
        }
    }
}
