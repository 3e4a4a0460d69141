//! The device authorization grant (RFC 8628): show the user where to go and which code
//! to enter, then poll the token endpoint by its rules until the user answers or the
//! code expires. The rules are a pure loop over a `poll` function, so they are tested
//! with paused time and no IdP.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{CredentialSpec, EndpointUrl};
use crate::idp::{DeviceAuthorization, IdpClient, IdpError, Inputs, LoginRequest, LoginTokens};

use super::LoginError;

/// RFC 8628 3.5: what `slow_down` adds to the interval, for this and every later poll.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The least time between polls, whatever the IdP says (an `interval` of 0 would spin).
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between polls while the IdP cannot be reached (doubling up to it).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What one poll of the token endpoint answered.
#[derive(Debug)]
pub enum Poll<T> {
    Tokens(T),
    /// `authorization_pending`: the user has not answered yet.
    Pending,
    /// `slow_down`: poll less often.
    SlowDown,
    /// `access_denied`.
    Denied,
    /// `expired_token`.
    Expired,
    /// The IdP could not be reached or failed; worth asking again.
    Unavailable(String),
    /// Any other refusal (`invalid_grant`, `invalid_client`, ...): the end.
    Refused(String),
}

impl<T> Poll<T> {
    /// Sorts a token request's outcome by RFC 8628 3.5.
    pub fn from_result(result: Result<T, IdpError>) -> Poll<T> {
        match result {
            Ok(tokens) => Poll::Tokens(tokens),
            Err(IdpError::Rejected { code, description }) => match code.as_str() {
                "authorization_pending" => Poll::Pending,
                "slow_down" => Poll::SlowDown,
                "access_denied" => Poll::Denied,
                "expired_token" => Poll::Expired,
                _ => Poll::Refused(match description {
                    Some(d) => format!("{code}: {d}"),
                    None => code,
                }),
            },
            // A lost answer may have carried the tokens; the next poll gets them again
            // or `invalid_grant`, which ends the login with that error.
            Err(e @ (IdpError::Unavailable { .. } | IdpError::LostAnswer { .. })) => {
                Poll::Unavailable(e.to_string())
            }
        }
    }
}

/// Polls every `interval` (plus 5 s after each `slow_down`, doubling while the IdP
/// cannot be reached) until tokens come, the user denies, or `expires_in` passes.
pub async fn poll_until<T, F, Fut>(
    interval: Duration,
    expires_in: Duration,
    mut poll: F,
) -> Result<T, LoginError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Poll<T>>,
{
    let deadline = Instant::now() + expires_in;
    let mut interval = interval.max(MIN_INTERVAL);
    let mut backoff = None::<Duration>;
    loop {
        tokio::time::sleep(backoff.unwrap_or(interval)).await;
        if Instant::now() >= deadline {
            return Err(expired());
        }
        match poll().await {
            Poll::Tokens(tokens) => return Ok(tokens),
            Poll::Pending => backoff = None,
            Poll::SlowDown => {
                interval += SLOW_DOWN_STEP;
                backoff = None;
            }
            Poll::Denied => return Err(LoginError::Denied),
            Poll::Expired => return Err(expired()),
            Poll::Unavailable(why) => {
                let next = backoff.map_or(interval * 2, |b| b * 2).min(MAX_BACKOFF);
                eprintln!(
                    "token-broker: the IdP did not answer ({why}); asking again in {}s",
                    next.as_secs()
                );
                backoff = Some(next.max(interval));
            }
            Poll::Refused(why) => return Err(LoginError::Idp(why)),
        }
    }
}

fn expired() -> LoginError {
    LoginError::TimedOut(
        "the device code expired before the login was approved; run the command again".to_owned(),
    )
}

/// Runs the device flow: asks for a code, shows it, polls until it ends.
pub async fn login(
    idp: &IdpClient,
    spec: &CredentialSpec,
    inputs: &Inputs,
    endpoint: &EndpointUrl,
    token_url: &EndpointUrl,
    scope: Option<&str>,
) -> Result<LoginTokens, LoginError> {
    let grant = idp
        .device_authorization(spec, inputs, endpoint, token_url, scope)
        .await
        .map_err(|e| LoginError::Idp(format!("the device authorization request failed: {e}")))?;
    println!("{}", instructions(&grant));
    let device_code = &grant.device_code;
    let request = LoginRequest::DeviceCode { device_code };
    poll_until(grant.interval, grant.expires_in, || async {
        Poll::from_result(idp.login_token(spec, inputs, token_url, &request).await)
    })
    .await
}

/// What the user is told: where to go, the code, and the link that carries it.
pub fn instructions(grant: &DeviceAuthorization) -> String {
    let mut text = format!(
        "To log in, open {} on any device and enter the code:\n\n    {}\n",
        grant.verification_uri, grant.user_code
    );
    if let Some(complete) = &grant.verification_uri_complete {
        text.push_str(&format!(
            "\nOr open this link, which carries the code:\n\n    {complete}\n"
        ));
        if let Some(qr) = super::qr::render(complete) {
            text.push('\n');
            text.push_str(&qr);
        }
    }
    text.push_str(&format!(
        "\nWaiting for the approval (the code expires in {})...",
        super::human(grant.expires_in)
    ));
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Runs `poll_until` against scripted answers; returns the outcome and the seconds
    /// (since the start) at which each poll came.
    async fn run(
        interval: u64,
        expires_in: u64,
        answers: Vec<Poll<&'static str>>,
    ) -> (Result<&'static str, LoginError>, Vec<u64>) {
        let start = Instant::now();
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let times = Arc::new(Mutex::new(Vec::new()));
        let outcome = poll_until(
            Duration::from_secs(interval),
            Duration::from_secs(expires_in),
            || {
                let (answers, times) = (answers.clone(), times.clone());
                async move {
                    times.lock().unwrap().push(start.elapsed().as_secs());
                    answers.lock().unwrap().next().unwrap_or(Poll::Pending)
                }
            },
        )
        .await;
        let times = times.lock().unwrap().clone();
        (outcome, times)
    }

    #[tokio::test(start_paused = true)]
    async fn pending_polls_keep_the_interval_and_tokens_end_the_wait() {
        let (outcome, times) = run(
            5,
            600,
            vec![Poll::Pending, Poll::Pending, Poll::Tokens("t")],
        )
        .await;
        assert_eq!(outcome.unwrap(), "t");
        assert_eq!(times, [5, 10, 15]);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_down_adds_five_seconds_to_every_later_poll() {
        let answers = vec![
            Poll::SlowDown,
            Poll::Pending,
            Poll::SlowDown,
            Poll::Tokens("t"),
        ];
        let (outcome, times) = run(2, 600, answers).await;
        assert_eq!(outcome.unwrap(), "t");
        assert_eq!(times, [2, 9, 16, 28]);
    }

    #[tokio::test(start_paused = true)]
    async fn denial_and_expiry_end_with_their_own_errors() {
        let (denied, _) = run(1, 600, vec![Poll::Pending, Poll::Denied]).await;
        assert!(matches!(denied, Err(LoginError::Denied)));
        let (expired, _) = run(1, 600, vec![Poll::Expired]).await;
        assert!(matches!(expired, Err(LoginError::TimedOut(_))));
        let (refused, _) = run(1, 600, vec![Poll::Refused("invalid_client".into())]).await;
        assert!(matches!(refused, Err(LoginError::Idp(m)) if m == "invalid_client"));
        for e in [denied.unwrap_err(), expired.unwrap_err()] {
            assert_ne!(e.exit_code(), LoginError::Idp(String::new()).exit_code());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_code_s_lifetime_bounds_the_wait_without_another_poll() {
        let (outcome, times) = run(5, 12, Vec::new()).await;
        assert!(matches!(outcome, Err(LoginError::TimedOut(_))));
        assert_eq!(times, [5, 10], "no poll at 15 s, past the 12 s lifetime");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_idp_is_asked_again_less_and_less_often() {
        let down = || Poll::Unavailable("connection refused".into());
        let (outcome, times) = run(5, 600, vec![down(), down(), Poll::Tokens("t")]).await;
        assert_eq!(outcome.unwrap(), "t");
        assert_eq!(times, [5, 15, 35]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_still_waits_a_second() {
        let (_, times) = run(0, 600, vec![Poll::Pending, Poll::Tokens("t")]).await;
        assert_eq!(times, [1, 2]);
    }

    #[test]
    fn idp_answers_are_sorted_by_rfc_8628() {
        let rejected = |code: &str| -> Poll<()> {
            Poll::from_result(Err(IdpError::Rejected {
                code: code.to_owned(),
                description: None,
            }))
        };
        assert!(matches!(rejected("authorization_pending"), Poll::Pending));
        assert!(matches!(rejected("slow_down"), Poll::SlowDown));
        assert!(matches!(rejected("access_denied"), Poll::Denied));
        assert!(matches!(rejected("expired_token"), Poll::Expired));
        assert!(matches!(rejected("invalid_grant"), Poll::Refused(_)));
        let down: Poll<()> = Poll::from_result(Err(IdpError::LostAnswer {
            reason: "reset".into(),
        }));
        assert!(matches!(down, Poll::Unavailable(_)));
    }
}
