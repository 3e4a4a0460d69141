//! One proxied request: admit it, take the credential's token, send it upstream with
//! the token, and after a 401 report the token, wait for the single refresh and send
//! it once more, if its body was kept. For a DPoP credential each attempt carries a
//! fresh proof, and a `use_dpop_nonce` challenge gets one more attempt with the same
//! token and the nonce; a challenge left after that is passed on (no refresh, no quiet
//! spell: the token was not refused).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::body::{self, Replay};
use super::client::Outgoing;
use super::headers;
use super::{Inner, QUIET};
use crate::broker::{Credential, Token, Want};
use crate::server::{ApiError, Peer, ProxyFailure, host_allowed, host_name};

/// Why a request got no upstream answer.
enum Failure {
    Unreachable(String),
    Timeout(Duration),
    BadRequest(String),
    /// No DPoP proof could be made (the key could not be loaded).
    Proof(String),
}

/// Whether this request already had its one retry for a DPoP nonce challenge.
#[derive(Default)]
struct NonceRetry(bool);

/// What is sent upstream on each attempt, but the token and the body.
struct Target {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Inner {
    /// Answers one request, counting its outcome.
    pub(super) async fn forward(&self, request: Request<Incoming>, peer: &Peer) -> Response {
        let started = Instant::now();
        let method = request.method().clone();
        let (outcome, response) = self.answer(request, peer).await;
        self.metrics.request(outcome);
        // No path or query: they can carry secrets of their own (signed URLs).
        debug!(proxy = %self.spec.name, %method, status = response.status().as_u16(), outcome, took_ms = started.elapsed().as_millis() as u64, "proxied");
        response
    }

    async fn answer(&self, request: Request<Incoming>, peer: &Peer) -> (&'static str, Response) {
        let credential = match self.admit(&request, peer) {
            Ok(credential) => credential,
            Err(refused) => return *refused,
        };
        let token = match credential.get(Want::Fresh(Duration::ZERO)).await {
            Ok(token) => token,
            Err(error) => {
                return (
                    "no_token",
                    ApiError::about(error, credential.name()).into_response(),
                );
            }
        };
        let (parts, incoming) = request.into_parts();
        let target = match self.target(parts.method, &parts.uri, parts.headers) {
            Ok(target) => target,
            Err(failure) => return self.failed(failure),
        };
        let prepared = match body::prepare(incoming).await {
            Ok(prepared) => prepared,
            Err(e) => {
                return self.failed(Failure::BadRequest(format!(
                    "cannot read the request body: {e}"
                )));
            }
        };
        let mut nonce_retry = NonceRetry::default();
        let first = self
            .attempt(&credential, &target, &token, prepared.body, prepared.sent)
            .await;
        let first = self
            .after_nonce(
                &credential,
                &target,
                &token,
                &prepared.replay,
                first,
                &mut nonce_retry,
            )
            .await;
        match first {
            Ok(first) if asks_for_nonce(&credential, &first) => {
                self.nonce_unmet(&nonce_retry, first)
            }
            Ok(first) if first.status() == StatusCode::UNAUTHORIZED => {
                let replay = (&prepared.replay, &mut nonce_retry);
                self.after_401(&credential, &target, &token, replay, first)
                    .await
            }
            Ok(response) => ("forwarded", relay(response)),
            Err(failure) => self.failed(failure),
        }
    }

    /// The credential, if this request may use it: not from a web page, for a known
    /// `Host`, and allowed by the credential's client rules.
    fn admit(
        &self,
        request: &Request<Incoming>,
        peer: &Peer,
    ) -> Result<Arc<Credential>, Box<(&'static str, Response)>> {
        let headers = request.headers();
        if request.method() == Method::CONNECT {
            return Err(Box::new(self.failed(Failure::BadRequest(
                "CONNECT is not supported: this proxy forwards requests to its one upstream".into(),
            ))));
        }
        if !host_allowed(&self.hosts, headers, request.uri(), Some(peer)) {
            return Err(Box::new(("refused", ApiError::BadHost.into_response())));
        }
        if from_web_page(headers, &self.hosts) {
            return Err(Box::new((
                "refused",
                self.error(ProxyFailure::BrowserRequest).into_response(),
            )));
        }
        let credential = self.broker.credential(&self.spec.credential).map_err(|e| {
            Box::new((
                "no_token",
                ApiError::about(e, &self.spec.credential).into_response(),
            ))
        })?;
        let unix = match peer {
            Peer::Unix { uid, gid } => Some((*uid, *gid)),
            Peer::Tcp(_) => None,
        };
        let key = headers.get("token-broker-key").map(|v| v.as_bytes());
        if !credential.allows(unix, key) {
            warn!(proxy = %self.spec.name, ?peer, key_sent = key.is_some(), "proxy client refused");
            return Err(Box::new((
                "refused",
                ApiError::Forbidden(credential.name().to_owned()).into_response(),
            )));
        }
        Ok(credential)
    }

    /// Where the request goes: the upstream's base plus the client's path and query.
    fn target(&self, method: Method, uri: &Uri, mut headers: HeaderMap) -> Result<Target, Failure> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{}{path}", self.base)
            .parse::<Uri>()
            .map_err(|e| Failure::BadRequest(format!("cannot build the upstream URL: {e}")))?;
        headers::upstream_request(&mut headers, &self.host);
        Ok(Target {
            method,
            uri,
            headers,
        })
    }

    /// One attempt with the token (and for a DPoP credential a fresh proof for this
    /// method and URL); a `DPoP-Nonce` in the answer is remembered for the origin.
    async fn attempt(
        &self,
        credential: &Credential,
        target: &Target,
        token: &Token,
        body: Outgoing,
        sent: watch::Receiver<bool>,
    ) -> Result<hyper::Response<Incoming>, Failure> {
        let mut request = Request::new(body);
        *request.method_mut() = target.method.clone();
        *request.uri_mut() = target.uri.clone();
        *request.headers_mut() = target.headers.clone();
        let Some(htu) = self
            .proof_headers(credential, target, token, &mut request)
            .await?
        else {
            return self.send(request, sent).await;
        };
        let response = self.send(request, sent).await?;
        if let Some(nonce) = response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
        {
            credential.remember_nonce(&htu, nonce);
        }
        Ok(response)
    }

    /// `Authorization` (and `DPoP`) for this attempt; the proof's `htu` if there is one.
    async fn proof_headers(
        &self,
        credential: &Credential,
        target: &Target,
        token: &Token,
        request: &mut Request<Outgoing>,
    ) -> Result<Option<String>, Failure> {
        let unsendable = || Failure::BadRequest("the token cannot be sent in a header".into());
        if !credential.uses_dpop() {
            let bearer = headers::bearer(token.secret()).ok_or_else(unsendable)?;
            request.headers_mut().insert(header::AUTHORIZATION, bearer);
            return Ok(None);
        }
        let htu = crate::dpop::normalize_htu(&target.uri.to_string())
            .map_err(|e| Failure::BadRequest(format!("cannot make a DPoP proof: {e}")))?;
        let proof = credential
            .dpop_proof(target.method.as_str(), &htu, token.secret(), None)
            .await
            .map_err(|e| Failure::Proof(e.to_string()))?;
        let proof = HeaderValue::from_str(&proof).map_err(|_| unsendable())?;
        let dpop = headers::authorization("DPoP", token.secret()).ok_or_else(unsendable)?;
        request.headers_mut().insert(header::AUTHORIZATION, dpop);
        request.headers_mut().insert("dpop", proof);
        Ok(Some(htu))
    }

    /// For a DPoP credential: the one retry a resource server's `use_dpop_nonce`
    /// challenge asks for (same token, the nonce it just sent), if the body was kept.
    async fn after_nonce(
        &self,
        credential: &Credential,
        target: &Target,
        token: &Token,
        replay: &Replay,
        answer: Result<hyper::Response<Incoming>, Failure>,
        retried: &mut NonceRetry,
    ) -> Result<hyper::Response<Incoming>, Failure> {
        let challenged = answer
            .as_ref()
            .is_ok_and(|r| headers::nonce_challenge(r.status(), r.headers()));
        if !challenged || retried.0 || !credential.uses_dpop() {
            return answer;
        }
        let Some(again) = replay.again() else {
            self.metrics.retry("body_not_kept");
            return answer;
        };
        retried.0 = true;
        self.metrics.retry("dpop_nonce");
        drop(answer);
        let (_, sent) = watch::channel(true);
        self.attempt(credential, target, token, again, sent).await
    }

    /// Sends one request. The response deadline starts once the body has been sent: a
    /// large upload may take as long as it takes.
    async fn send(
        &self,
        request: Request<Outgoing>,
        mut sent: watch::Receiver<bool>,
    ) -> Result<hyper::Response<Incoming>, Failure> {
        let response = self.client.request(request);
        tokio::pin!(response);
        let early = tokio::select! {
            answered = &mut response => Some(answered),
            _ = sent.wait_for(|done| *done) => None,
        };
        let answered = match early {
            Some(answered) => answered,
            None => tokio::time::timeout(self.spec.response_timeout, response)
                .await
                .map_err(|_| Failure::Timeout(self.spec.response_timeout))?,
        };
        answered.map_err(|e| Failure::Unreachable(chain(&e)))
    }

    /// After an upstream 401: report the token, and send once more with its successor
    /// if the body can be sent again.
    async fn after_401(
        &self,
        credential: &Arc<Credential>,
        target: &Target,
        token: &Token,
        (replay, nonce_retry): (&Replay, &mut NonceRetry),
        first: hyper::Response<Incoming>,
    ) -> (&'static str, Response) {
        if now_ms() < self.quiet_until.load(Ordering::Relaxed) {
            self.metrics.retry("quiet");
            return ("unauthorized", relay(first));
        }
        let rejected = Want::Rejected(token.secret().to_owned());
        let Some(again) = replay.again() else {
            // No retry, but the next request should find a new token.
            self.metrics.retry("body_not_kept");
            let credential = credential.clone();
            tokio::spawn(async move { credential.get(rejected).await });
            return ("unauthorized", relay(first));
        };
        let fresh = match credential.get(rejected).await {
            Ok(fresh) => fresh,
            Err(error) => {
                self.metrics.retry("no_token");
                warn!(proxy = %self.spec.name, error = %error, "the upstream refused the token and no new one could be had; passing the 401 on");
                return ("unauthorized", relay(first));
            }
        };
        drop(first);
        let (_, sent) = watch::channel(true);
        let second = self.attempt(credential, target, &fresh, again, sent).await;
        let second = self
            .after_nonce(credential, target, &fresh, replay, second, nonce_retry)
            .await;
        self.retried(credential, nonce_retry, second)
    }

    /// A `use_dpop_nonce` 401 the nonce retry did not settle (the body was not kept, or
    /// the retry was challenged again): passed on as it is. The token was not refused,
    /// so it is neither reported nor a reason for a quiet spell.
    fn nonce_unmet(
        &self,
        nonce_retry: &NonceRetry,
        response: hyper::Response<Incoming>,
    ) -> (&'static str, Response) {
        if nonce_retry.0 {
            self.metrics.retry("dpop_nonce_again");
            debug!(proxy = %self.spec.name, "the upstream challenged the nonce retry too; passing its 401 on");
        }
        ("unauthorized", relay(response))
    }

    /// What the one retry with a token fresh from the refresh got.
    fn retried(
        &self,
        credential: &Credential,
        nonce_retry: &NonceRetry,
        second: Result<hyper::Response<Incoming>, Failure>,
    ) -> (&'static str, Response) {
        match second {
            Ok(second) if asks_for_nonce(credential, &second) => {
                self.nonce_unmet(nonce_retry, second)
            }
            Ok(second) if second.status() == StatusCode::UNAUTHORIZED => {
                self.metrics.retry("rejected");
                let until = now_ms() + QUIET.as_millis() as u64;
                // Logged once per quiet spell, not once per request in it.
                if self.quiet_until.swap(until, Ordering::Relaxed) < now_ms() {
                    warn!(proxy = %self.spec.name, quiet_s = QUIET.as_secs(), "the upstream refused a freshly refreshed token too (wrong audience or scope?); passing 401s on without refreshing for a while");
                }
                ("unauthorized", relay(second))
            }
            Ok(second) => {
                self.metrics.retry("ok");
                ("forwarded", relay(second))
            }
            Err(failure) => {
                self.metrics.retry("upstream_error");
                self.failed(failure)
            }
        }
    }

    /// The proxy's own answer to a failure, and the outcome it is counted as (its code).
    fn failed(&self, failure: Failure) -> (&'static str, Response) {
        let failure = match failure {
            Failure::Unreachable(reason) => {
                warn!(proxy = %self.spec.name, upstream = %self.spec.upstream, error = %reason, "upstream unreachable");
                ProxyFailure::Unreachable {
                    upstream: self.spec.upstream.to_string(),
                    reason,
                }
            }
            Failure::Timeout(after) => ProxyFailure::Timeout(after),
            Failure::Proof(reason) => ProxyFailure::Proof(reason),
            Failure::BadRequest(message) => ProxyFailure::BadRequest(message),
        };
        let error = self.error(failure);
        (error.code(), error.into_response())
    }

    /// An answer of the proxy itself, in the API's error shape plus the proxy's name.
    fn error(&self, failure: ProxyFailure) -> ApiError {
        ApiError::Proxy {
            proxy: self.spec.name.clone(),
            failure,
        }
    }
}

/// A DPoP credential's answer that asks for a nonce: a 401 about the proof, not a
/// refusal of the token, so a refresh cannot help.
fn asks_for_nonce(credential: &Credential, response: &hyper::Response<Incoming>) -> bool {
    credential.uses_dpop() && headers::asks_for_nonce(response.status(), response.headers())
}

/// The upstream's answer as the client gets it: hop-by-hop headers dropped, the body
/// streamed.
fn relay(response: hyper::Response<Incoming>) -> Response {
    let (mut parts, body) = response.into_parts();
    headers::drop_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

/// A browser acting for a web page: `Sec-Fetch-Site` says the page is elsewhere, or
/// `Origin` names a host that is not this proxy's.
fn from_web_page(headers: &HeaderMap, hosts: &std::collections::HashSet<String>) -> bool {
    let cross = headers
        .get("sec-fetch-site")
        .is_some_and(|v| !matches!(v.as_bytes(), b"none" | b"same-origin"));
    let foreign_origin = headers.get(header::ORIGIN).is_some_and(|origin| {
        let host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .and_then(|(_, rest)| host_name(rest));
        host.is_none_or(|h| !hosts.contains(h.as_ref()))
    });
    cross || foreign_origin
}

/// An error and its sources, `: `-separated (hyper's own message is terse).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn web_pages_are_told_apart_from_apps() {
        let hosts: std::collections::HashSet<String> =
            ["127.0.0.1".to_owned(), "localhost".to_owned()].into();
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (k, v) in pairs {
                headers.insert(*k, HeaderValue::from_static(v));
            }
            from_web_page(&headers, &hosts)
        };
        assert!(!with(&[]));
        assert!(!with(&[("sec-fetch-site", "none")]));
        assert!(!with(&[("origin", "http://localhost:9000")]));
        assert!(with(&[("sec-fetch-site", "cross-site")]));
        assert!(with(&[("sec-fetch-site", "same-site")]));
        assert!(with(&[("origin", "https://evil.example")]));
        assert!(with(&[("origin", "null")]));
    }
}
