//! Learning of a new token without polling: conditional reads (`If-None-Match`, 304),
//! long polls (`?wait=DUR` with `If-None-Match`) and the Server-Sent Events stream
//! `GET /token/{name}/events`.
//!
//! Both kinds of watcher wait on the credential's `next_version` (no task, no timer
//! while nobody watches), hold one of `server.max_watchers` places while they wait,
//! and end at shutdown or when a reload replaces their credential. They are answered
//! outside the router, so its request deadline does not cut them: a long poll is
//! bounded by `MAX_WAIT` (plus the `request_timeout` of the reads around it), a stream
//! by its client and the broker's life.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::time::Instant;

use super::App;
use super::error::ApiError;
use super::listen::Peer;
use super::token::{Format, Query, answer, insert_etag, parse_format, resolve};
use crate::broker::{Credential, Outcome, Token, Want};

/// Longest a long poll waits for a new version (`?wait=` above it is cut to it): below
/// the default timeouts of common HTTP clients, so a poll ends before its client gives up.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How often an idle event stream sends a comment, so proxies and clients keep it open
/// and a vanished client is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The watchers open now, capped by `server.max_watchers`; the gauge is the count.
pub struct Watchers {
    max: usize,
    gauge: Gauge,
}

impl Watchers {
    /// No watchers yet; at most `max` at once, counted in `gauge`.
    pub fn new(max: usize, gauge: Gauge) -> Arc<Watchers> {
        Arc::new(Watchers { max, gauge })
    }

    /// A place, or `None` when all are taken.
    fn take(self: &Arc<Self>) -> Option<WatchSlot> {
        let before = self.gauge.inc();
        let slot = WatchSlot(self.clone());
        (usize::try_from(before).unwrap_or(0) < self.max).then_some(slot)
    }
}

/// One watcher's place; released on drop, however the watch ends.
struct WatchSlot(Arc<Watchers>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.gauge.dec();
    }
}

/// A read with `If-None-Match`: the token if it is another version, else 304, at once
/// or (with `wait`) as soon as a new version is published.
pub(super) async fn conditional(
    app: &App,
    credential: Arc<Credential>,
    outcome: Outcome,
    tags: &HeaderValue,
    query: &Query,
) -> Response {
    let tags = tags.as_bytes();
    let token = match outcome {
        Ok(token) if token.matches(tags) => token,
        other => return answer(&credential, other, query.format),
    };
    if query.wait.is_zero() {
        return not_modified(&credential, &token);
    }
    let Some(_slot) = app.watchers.take() else {
        credential.count_failed("too_many_watchers");
        return ApiError::TooManyWatchers.into_response();
    };
    // An expiring version is news too: the read below then refreshes, or says why not.
    let wait = query.wait.min(MAX_WAIT).min(token.ttl(SystemTime::now()));
    credential
        .next_version(token.version(), Instant::now() + wait)
        .await;
    // A reload that replaced the credential stopped this one: answer from its successor.
    let credential = match credential.stopped() {
        true => app
            .broker
            .credential(credential.name())
            .unwrap_or(credential),
        false => credential,
    };
    match credential.get(Want::Fresh(query.min_ttl)).await {
        Ok(token) if token.matches(tags) => not_modified(&credential, &token),
        other => answer(&credential, other, query.format),
    }
}

fn not_modified(credential: &Credential, token: &Token) -> Response {
    credential.count_served();
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    insert_etag(headers, token);
    response
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    format: Option<String>,
}

/// `GET /token/{name}/events`, after the token guards: the current token as the first
/// event (unless `Last-Event-ID` names it), then one event per new version.
pub(super) async fn events<B>(
    app: &App,
    name: &str,
    request: &Request<B>,
    peer: Option<&Peer>,
) -> Response {
    let headers = request.headers();
    let credential = match resolve(app, Some(Ok(name)), peer, headers) {
        Ok(credential) => credential,
        Err(error) => return error.into_response(),
    };
    let format = match events_format(request.uri().query(), headers) {
        Ok(format) => format,
        Err(error) => return error.into_response(),
    };
    // Opening the stream answers like a read: a token, or the reason there is none.
    let first = match credential.get(Want::Fresh(Duration::ZERO)).await {
        Ok(token) => token,
        Err(error) => return answer(&credential, Err(error), format),
    };
    let Some(slot) = app.watchers.take() else {
        credential.count_failed("too_many_watchers");
        return ApiError::TooManyWatchers.into_response();
    };
    credential.count_served();
    let seen = headers
        .get("last-event-id")
        .is_some_and(|id| first.matches(&quoted(id.as_bytes())));
    let stream = Stream {
        credential,
        format,
        pending: (!seen).then_some(first.clone()),
        last: first.version(),
        _slot: slot,
    };
    stream.into_response()
}

fn events_format(query: Option<&str>, headers: &HeaderMap) -> Result<Format, ApiError> {
    let parsed: EventsQuery = match query.filter(|q| !q.is_empty()) {
        None => EventsQuery::default(),
        Some(query) => serde_urlencoded::from_str(query).map_err(|e| {
            ApiError::bad_request(format!("bad query string: {e}; known parameter: format"))
        })?,
    };
    // `Accept: text/event-stream` is how streams are asked for: only `format` chooses.
    let format = parsed.format.as_deref().unwrap_or("json");
    parse_format(Some(format), headers)
}

/// An event id is the entity tag without its quotes.
fn quoted(id: &[u8]) -> Vec<u8> {
    let mut tag = Vec::with_capacity(id.len() + 2);
    tag.push(b'"');
    tag.extend_from_slice(id.trim_ascii());
    tag.push(b'"');
    tag
}

/// An open event stream.
struct Stream {
    credential: Arc<Credential>,
    format: Format,
    /// A version to send next.
    pending: Option<Arc<Token>>,
    /// The id of the last version sent (or skipped as already known).
    last: u64,
    _slot: WatchSlot,
}

impl Stream {
    /// The `text/event-stream` answer that sends this stream's frames.
    fn into_response(self) -> Response {
        let body = stream::unfold(self, |mut s| async move {
            let frame = s.next().await?;
            Some((Ok::<_, std::convert::Infallible>(frame), s))
        });
        let mut response = Response::new(Body::from_stream(body));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Reverse proxies that buffer responses would hold events back.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }

    /// The next frame: an event, or a keep-alive comment; `None` ends the stream.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(token) = self.pending.take() {
            self.last = token.version();
            return Some(event(&token, self.format));
        }
        let until = Instant::now() + KEEP_ALIVE;
        match self.credential.next_version(self.last, until).await {
            Some(token) => {
                self.last = token.version();
                Some(event(&token, self.format))
            }
            // Stopped, or its token withdrawn: the stream ends, and the client's next
            // read says why.
            None if self.credential.stopped() || self.credential.current().is_none() => None,
            None => Some(Bytes::from_static(b": keep-alive\n\n")),
        }
    }
}

/// `event: token`, the version's id, and the token as `GET /token` gives it.
fn event(token: &Token, format: Format) -> Bytes {
    let data = match format {
        Format::Json => token.json_body(SystemTime::now()),
        Format::Raw => token.raw(),
    };
    let etag = token.etag();
    let id = &etag[1..etag.len() - 1];
    let mut out = Vec::with_capacity(data.len() + 48);
    out.extend_from_slice(b"event: token\nid: ");
    out.extend_from_slice(id);
    out.push(b'\n');
    // One `data:` line per line: a line break would otherwise end the field.
    for line in data.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_carries_the_version_and_the_token_on_one_data_line() {
        let now = SystemTime::now();
        let token = Token::new(
            "tok",
            "Bearer".into(),
            None,
            now,
            now + Duration::from_secs(60),
            now,
        );
        let text = String::from_utf8(event(&token, Format::Raw).to_vec()).unwrap_or_default();
        let etag = String::from_utf8(token.etag().to_vec()).unwrap_or_default();
        assert_eq!(
            text,
            format!(
                "event: token\nid: {}\ndata: tok\n\n",
                etag.trim_matches('"')
            )
        );
        assert!(token.matches(&quoted(etag.trim_matches('"').as_bytes())));
        let json = String::from_utf8(event(&token, Format::Json).to_vec()).unwrap_or_default();
        assert_eq!(json.lines().filter(|l| l.starts_with("data: {")).count(), 1);
    }
}
