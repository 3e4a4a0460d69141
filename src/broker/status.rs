//! What an operator sees of a credential: its state, times, counts and last error.
//! Built from the same fields the single flight uses, never from a token.

use std::time::SystemTime;

use serde::Serialize;

use super::credential::{Credential, Inner};
use super::state::state_name;
use crate::error::Remedy;
use crate::token::rfc3339;

/// Every state a credential can be in, for the one-hot metric.
pub const STATES: &[&str] = &[
    "starting",
    "valid",
    "refreshing",
    "stale",
    "expired",
    "reauth_required",
    "login_required",
];

/// One row of `/v1/credentials`.
#[derive(Debug, Serialize)]
pub struct CredentialStatus {
    pub name: String,
    pub grant: &'static str,
    /// starting | valid | refreshing | stale (valid token, refresh failing) | expired |
    /// reauth_required | login_required
    pub state: &'static str,
    /// Whether `/readyz` waits for this credential.
    pub required: bool,
    /// Whether a valid token can be served right now.
    pub ready: bool,
    pub expires_at: Option<String>,
    pub expires_in: Option<u64>,
    pub last_refresh_at: Option<String>,
    pub next_refresh_at: Option<String>,
    pub refreshes: Counts,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Serialize)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    /// Requests that joined a refresh in flight instead of starting one.
    pub joined: u64,
}

#[derive(Debug, Serialize)]
pub struct LastError {
    pub message: String,
    pub at: String,
}

/// The state metric reads every credential's state when it is scraped.
impl crate::metrics::StateSource for super::Broker {
    fn for_each_state(&self, each: &mut dyn FnMut(&str, &'static str)) {
        let set = self.set.load();
        for credential in set.names.iter().filter_map(|n| set.map.get(n)) {
            each(credential.name(), credential.state());
        }
    }
}

/// What `/readyz` needs of a credential: no timestamps, and a reason only when the
/// credential cannot serve or is in trouble.
pub struct Readiness {
    pub state: &'static str,
    /// A valid token can be served now.
    pub ready: bool,
    /// Why it is not ready, or in trouble while still serving.
    pub reason: Option<String>,
}

impl Credential {
    /// Readiness, cheaply: `/readyz` is polled, and with thousands of credentials a full
    /// status of each per poll would cost megabytes and milliseconds.
    pub fn readiness(&self) -> Readiness {
        let now = SystemTime::now();
        let token = self.current();
        let valid = token.as_ref().is_some_and(|t| t.is_valid(now));
        let inner = self.lock();
        let state = state_name(&self.snapshot(&inner, token.as_deref()), now);
        let troubled = !valid || matches!(state, "stale" | "reauth_required" | "login_required");
        let reason = troubled.then(|| {
            if state == "login_required" {
                return self.login_required().to_string();
            }
            last_error(&inner, self.remedy(), SystemTime::now())
                .map_or_else(|| "no token yet".to_owned(), |e| e.message)
        });
        Readiness {
            state,
            ready: valid,
            reason,
        }
    }

    /// Just the state, for the metrics scrape (a full status per credential would
    /// format every timestamp of every credential on each scrape).
    pub fn state(&self) -> &'static str {
        let token = self.current();
        let inner = self.lock();
        state_name(&self.snapshot(&inner, token.as_deref()), SystemTime::now())
    }

    /// A snapshot for status endpoints.
    pub fn status(&self) -> CredentialStatus {
        let now = SystemTime::now();
        let token = self.current();
        let inner = self.lock();
        let valid = token.as_ref().is_some_and(|t| t.is_valid(now));
        let state = state_name(&self.snapshot(&inner, token.as_deref()), now);
        let next = match (inner.retry_at, &token) {
            _ if inner.reauth.is_some() => self.refusal_retry_at(&inner),
            // Nothing is scheduled: only a login moves it.
            _ if self.awaits_login(&inner) => None,
            (Some(at), _) if at > now => Some(at),
            (_, Some(t)) => Some(t.refresh_at.max(now)),
            _ => None,
        };
        CredentialStatus {
            name: self.spec.name.clone(),
            grant: self.spec.grant.as_str(),
            state,
            required: self.spec.required,
            ready: valid,
            expires_at: token.as_ref().map(|t| rfc3339(t.expires_at)),
            expires_in: token.as_ref().map(|t| t.ttl(now).as_secs()),
            last_refresh_at: inner.last_refresh_at.map(rfc3339),
            next_refresh_at: next.map(rfc3339),
            refreshes: Counts {
                ok: inner.refreshes_ok,
                failed: inner.refreshes_failed,
                joined: self.metrics.joined.get(),
            },
            last_error: last_error(&inner, self.remedy(), now),
        }
    }
}

/// The error an operator should see: the reason to re-authenticate, or the last one.
fn last_error(inner: &Inner, remedy: Remedy, now: SystemTime) -> Option<LastError> {
    match (&inner.reauth, &inner.last_error) {
        (Some(reason), _) => Some(LastError {
            message: format!("reauth required: {reason}; {remedy}"),
            at: inner
                .last_error
                .as_ref()
                .map_or_else(|| rfc3339(now), |(_, at)| rfc3339(*at)),
        }),
        (None, Some((error, at))) => Some(LastError {
            message: error.to_string(),
            at: rfc3339(*at),
        }),
        _ => None,
    }
}
