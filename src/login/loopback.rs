//! The authorization code flow's redirect (RFC 8252 7.3): a listener on 127.0.0.1 that
//! waits for the browser to come back with `code` and `state`, and the small page the
//! browser is answered with. The page for a code is sent only once the login has
//! ended, so it can say whether it worked.
//!
//! An answer whose `state` is not this login's ends the login without redeeming
//! anything: it is a forged or stale redirect.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{LoginError, pkce};

/// How long the listener may take to finish sending the last page before it is closed.
const DRAIN: Duration = Duration::from_secs(2);

/// A bound loopback listener and the redirect URI that names it.
pub struct Loopback {
    listener: tokio::net::TcpListener,
    path: String,
    pub redirect_uri: String,
}

/// What came to the redirect path, and where its page goes.
type Arrival = (HashMap<String, String>, oneshot::Sender<Page>);

/// The browser is still waiting for this page; `finish` sends it and closes the listener.
pub struct Reply {
    page: oneshot::Sender<Page>,
    stop: CancellationToken,
    server: JoinHandle<()>,
}

/// A page for the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    status: StatusCode,
    title: &'static str,
    message: String,
}

impl Loopback {
    /// Listens on `127.0.0.1:port` (a random port when `None`).
    pub async fn bind(port: Option<u16>, path: &str) -> Result<Loopback, LoginError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
            .await
            .map_err(|e| {
                LoginError::Usage(format!(
                    "cannot listen on 127.0.0.1:{} for the redirect: {e}",
                    port.unwrap_or(0)
                ))
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| LoginError::Usage(format!("the redirect listener has no address: {e}")))?
            .port();
        Ok(Loopback {
            listener,
            path: path.to_owned(),
            redirect_uri: format!("http://127.0.0.1:{port}{path}"),
        })
    }

    /// Serves until an answer that ends the wait comes, or `timeout` passes.
    pub async fn wait(
        self,
        state: &str,
        timeout: Duration,
    ) -> Result<(SecretString, Reply), LoginError> {
        let redirect_uri = self.redirect_uri.clone();
        let (mut received, stop, server) = self.serve();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let (params, page) = tokio::select! {
                _ = &mut deadline => {
                    close(stop, server).await;
                    return Err(LoginError::TimedOut(format!(
                        "no answer came to {redirect_uri} within {}; run the command again",
                        super::human(timeout)
                    )));
                }
                arrival = received.recv() => match arrival {
                    Some(arrival) => arrival,
                    None => return Err(LoginError::Idp("the redirect listener stopped".into())),
                },
            };
            match judge(&params, state) {
                Verdict::Code(code) => return Ok((code, Reply { page, stop, server })),
                Verdict::Ignore(answer) => {
                    let _ = page.send(answer);
                }
                Verdict::End(error) => {
                    let _ = page.send(Page::failed(&error));
                    close(stop, server).await;
                    return Err(error);
                }
            }
        }
    }
}

impl Loopback {
    /// Starts serving; what comes to the redirect path comes out of the receiver.
    fn serve(self) -> (mpsc::Receiver<Arrival>, CancellationToken, JoinHandle<()>) {
        let (arrivals, received) = mpsc::channel::<Arrival>(4);
        let stop = CancellationToken::new();
        let router = axum::Router::new()
            .fallback(callback)
            .with_state((self.path, arrivals));
        let shutdown = stop.clone().cancelled_owned();
        let listener = self.listener;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        (received, stop, server)
    }
}

impl Reply {
    /// Answers the browser with how the login ended, then closes the listener.
    pub async fn finish(self, outcome: Result<String, &LoginError>) {
        let page = match outcome {
            Ok(message) => Page {
                status: StatusCode::OK,
                title: "Logged in",
                message,
            },
            Err(error) => Page::failed(error),
        };
        let _ = self.page.send(page);
        close(self.stop, self.server).await;
    }
}

/// Stops accepting and gives the last page a moment to be sent.
async fn close(stop: CancellationToken, server: JoinHandle<()>) {
    stop.cancel();
    let abort = server.abort_handle();
    if tokio::time::timeout(DRAIN, server).await.is_err() {
        abort.abort();
    }
}

/// What an answer on the redirect path means for the login.
#[derive(Debug)]
pub enum Verdict {
    /// A code with this login's `state`: redeem it.
    Code(SecretString),
    /// Not an authorization answer (no `code`, no `error`): say so and keep waiting.
    Ignore(Page),
    /// The login ends here.
    End(LoginError),
}

/// Judges the redirect's parameters against the `state` this login sent.
pub fn judge(params: &HashMap<String, String>, state: &str) -> Verdict {
    let (code, error) = (params.get("code"), params.get("error"));
    if code.is_none() && error.is_none() {
        return Verdict::Ignore(Page {
            status: StatusCode::BAD_REQUEST,
            title: "Not a login answer",
            message: "This address waits for the identity provider's answer to a login.".into(),
        });
    }
    if !params
        .get("state")
        .is_some_and(|got| pkce::same(state, got))
    {
        return Verdict::End(LoginError::WrongState);
    }
    match (error.map(String::as_str), code) {
        (Some("access_denied"), _) => Verdict::End(LoginError::Denied),
        (Some(error), _) => {
            let description = params
                .get("error_description")
                .map(|d| format!(": {}", clip(d)))
                .unwrap_or_default();
            Verdict::End(LoginError::Idp(format!(
                "the identity provider answered {}{description}",
                clip(error)
            )))
        }
        (None, code) => Verdict::Code(SecretString::from(code.cloned().unwrap_or_default())),
    }
}

/// What came from the network goes into messages only shortened.
fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

async fn callback(
    State((path, arrivals)): State<(String, mpsc::Sender<Arrival>)>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    if uri.path() != path {
        return Page {
            status: StatusCode::NOT_FOUND,
            title: "Not found",
            message: "Nothing here.".into(),
        }
        .into_response();
    }
    let params = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let (tx, rx) = oneshot::channel();
    if arrivals.send((params, tx)).await.is_err() {
        return Page::gone().into_response();
    }
    rx.await.unwrap_or_else(|_| Page::gone()).into_response()
}

impl Page {
    fn failed(error: &LoginError) -> Page {
        Page {
            status: StatusCode::BAD_REQUEST,
            title: "Login failed",
            message: format!("{error}. The terminal says more."),
        }
    }

    fn gone() -> Page {
        Page {
            status: StatusCode::GONE,
            title: "Login over",
            message: "This login has already ended; see the terminal.".into(),
        }
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let body = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>token-broker: {title}</title></head>\n\
             <body style=\"font-family: sans-serif; margin: 3em\"><h1>{title}</h1>\n<p>{message}</p>\n\
             <p>You can close this tab.</p></body></html>\n",
            title = escape(self.title),
            message = escape(&self.message),
        );
        (
            self.status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'",
                ),
                (header::CONNECTION, "close"),
            ],
            body,
        )
            .into_response()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_code_with_this_login_s_state_is_redeemed() {
        match judge(&params(&[("code", "c1"), ("state", "s1")]), "s1") {
            Verdict::Code(code) => assert_eq!(code.expose_secret(), "c1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wrong_or_missing_state_ends_the_login_even_for_an_error() {
        for pairs in [
            &[("code", "c1"), ("state", "s2")][..],
            &[("code", "c1")],
            &[("code", "c1"), ("state", "")],
            &[("error", "access_denied"), ("state", "other")],
        ] {
            let verdict = judge(&params(pairs), "s1");
            assert!(
                matches!(verdict, Verdict::End(LoginError::WrongState)),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn denial_and_other_errors_end_with_their_own_error() {
        let denied = judge(&params(&[("error", "access_denied"), ("state", "s")]), "s");
        assert!(matches!(denied, Verdict::End(LoginError::Denied)));
        let pairs = [
            ("error", "invalid_scope"),
            ("error_description", "no <b>"),
            ("state", "s"),
        ];
        match judge(&params(&pairs), "s") {
            Verdict::End(LoginError::Idp(m)) => {
                assert_eq!(m, "the identity provider answered invalid_scope: no <b>")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(&params(&[("state", "s")]), "s"),
            Verdict::Ignore(_)
        ));
    }

    #[test]
    fn pages_escape_what_they_show() {
        let page = Page::failed(&LoginError::Idp("<script>x</script>".into()));
        let response = page.into_response();
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(response.headers()["x-frame-options"], "DENY");
        assert_eq!(
            escape("<a href=\"x\">'&'"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;"
        );
    }
}
