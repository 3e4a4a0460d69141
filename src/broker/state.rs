//! A credential's situation as one type, and the one decision every want goes through:
//! pure functions of a snapshot, the want and the time. No I/O, no locks, no tasks, so
//! every rule (and every storm it prevents) is unit-tested here.
//!
//! `Credential::decide` takes the snapshot under its lock, asks `decide` here, and does
//! what the `Step` says (serve, join or start the flight, or fail). `status` names the
//! same situation for operators, so what `/v1/credentials` says and what a request gets
//! cannot drift apart.
//!
//! The rules that keep a local client from costing more than one IdP call per
//! `min_refresh_interval`:
//! - a token minted after a request arrived answers it, whatever its `min_ttl` (an IdP
//!   whose tokens live shorter than `min_ttl` cannot do better);
//! - within `min_refresh_interval` of the last refresh that a client asked for (a
//!   `min_ttl` beyond the token, a report, a forced refresh), a `min_ttl` request gets
//!   the current valid token, and a rejected-token report of that token gets
//!   `RefreshTooSoon` (the new token was refused too: a loop, or an IdP that hands out
//!   the same token again); a forced refresh gets the current token within
//!   `min_refresh_interval` of any refresh.
//!
//! The timer's and the first fetch's refreshes do not count for reports and `min_ttl`:
//! a client that finds a token refused right after the broker fetched it must be able
//! to ask for one more.

use std::time::{Duration, SystemTime};

use super::credential::Want;
use crate::token::Token;

/// Where a credential stands, as far as a decision or an operator is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Situation {
    /// The stored state is not loaded yet, or no token was ever had.
    Starting,
    /// A valid token is published and nothing is wrong.
    Valid,
    /// A refresh is in flight.
    Refreshing,
    /// The last refresh failed; no request starts another before `until`.
    BackingOff { until: SystemTime },
    /// The IdP refused (or the chain cannot safely go on): no call until the remedy.
    Refused,
    /// A `refresh_token` credential with no chain at all: no call until a login.
    LoginRequired,
    /// The broker is draining: no new refresh starts.
    Stopping,
}

/// What a decision reads, taken under the credential's lock.
pub(super) struct Snapshot<'a> {
    /// The published token, valid or not.
    pub token: Option<&'a Token>,
    /// Whether the stored state was loaded.
    pub restored: bool,
    pub refreshing: bool,
    pub refused: bool,
    pub stopping: bool,
    pub retry_at: Option<SystemTime>,
    /// Consecutive failed refreshes.
    pub failures: u32,
    /// When this broker's last successful refresh ended.
    pub last_refresh_at: Option<SystemTime>,
    /// When the last successful refresh that a client asked for ended (`min_ttl`, a
    /// report, a forced refresh).
    pub last_demanded_at: Option<SystemTime>,
    pub min_refresh_interval: Duration,
    /// No new token waits to be stored and no sent refresh token waits for its answer:
    /// otherwise the timer acts now rather than at the refresh point.
    pub settled: bool,
    /// A `refresh_token` credential whose state is loaded and holds no chain and no
    /// refusal: only a login can give it one.
    pub login_required: bool,
}

impl Snapshot<'_> {
    /// The situation, in the order that decides: a flight in progress answers first.
    pub fn situation(&self, now: SystemTime) -> Situation {
        if self.refused {
            Situation::Refused
        } else if self.refreshing {
            Situation::Refreshing
        } else if self.stopping {
            Situation::Stopping
        } else if self.login_required {
            Situation::LoginRequired
        } else if let Some(until) = self.retry_at.filter(|at| now < *at) {
            Situation::BackingOff { until }
        } else if self.valid(now).is_some() && self.restored {
            Situation::Valid
        } else {
            Situation::Starting
        }
    }

    fn valid(&self, now: SystemTime) -> Option<&Token> {
        self.token.filter(|t| t.is_valid(now))
    }

    /// Until when `last` is too recent for another refresh asked for locally.
    fn too_recent(&self, last: Option<SystemTime>, now: SystemTime) -> Option<SystemTime> {
        let last = last.filter(|last| *last <= now)?;
        // A clock stepped back puts `last` in the future: not taken as recent, so a
        // client is never told to wait for hours.
        let until = last.checked_add(self.min_refresh_interval)?;
        (now < until).then_some(until)
    }
}

/// What to do for a want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// The published token answers.
    Serve,
    /// Wait for the flight in progress.
    Join,
    /// Start the flight.
    Start,
    /// Answer with an error.
    Fail(Why),
}

/// Why a want gets an error instead of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Why {
    Refused,
    LoginRequired,
    ShuttingDown,
    /// Refreshes are backing off after a failure; the last error says why.
    BackingOff,
    /// The reported token is the one the last refresh made, less than
    /// `min_refresh_interval` ago; ask again after this long.
    TooSoon(Duration),
}

/// The one decision. `arrived`: when the request came in (a token minted since then
/// answers it); `now`: the time of the decision.
pub(super) fn decide(s: &Snapshot, want: &Want, arrived: SystemTime, now: SystemTime) -> Step {
    let valid = s.valid(now);
    let recent = s.too_recent(s.last_demanded_at, now);
    if let Some(token) = valid {
        let answers = match want {
            Want::Fresh(min_ttl) => {
                token.ttl(now) > *min_ttl || token.issued_at >= arrived || recent.is_some()
            }
            Want::Rejected(rejected) => !token.is(rejected),
            Want::Forced => s.too_recent(s.last_refresh_at, now).is_some(),
            Want::Timer => now < token.refresh_at && s.settled,
            // A login is adopted by its own flight, never through this decision.
            Want::Login => false,
        };
        if answers {
            return Step::Serve;
        }
    }
    match s.situation(now) {
        Situation::Refreshing => Step::Join,
        Situation::Refused => Step::Fail(Why::Refused),
        Situation::LoginRequired => Step::Fail(Why::LoginRequired),
        // Never a report's own rejected token, though.
        Situation::Stopping if valid.is_some() && !matches!(want, Want::Rejected(_)) => Step::Serve,
        Situation::Stopping => Step::Fail(Why::ShuttingDown),
        _ if matches!(want, Want::Rejected(_)) && valid.is_some() && recent.is_some() => {
            let until = recent.unwrap_or(now);
            Step::Fail(Why::TooSoon(until.duration_since(now).unwrap_or_default()))
        }
        // Stale-while-valid: a failing IdP is not asked again before its time, and a
        // read meanwhile gets the token that is still valid. A forced refresh asked for
        // a new token: it is told why there is none (the last error).
        Situation::BackingOff { .. } if *want != Want::Timer => match (want, valid) {
            (Want::Fresh(_), Some(_)) => Step::Serve,
            _ => Step::Fail(Why::BackingOff),
        },
        _ => Step::Start,
    }
}

/// After a flight failed or timed out: whether the published token still answers the
/// want (stale-while-valid). Never a report with the very token it rejected, nor a
/// forced refresh, which asked for a new token and is told why there is none.
pub(super) fn still_serves(token: &Token, want: &Want, now: SystemTime) -> bool {
    token.is_valid(now)
        && match want {
            Want::Rejected(rejected) => !token.is(rejected),
            Want::Forced | Want::Login => false,
            Want::Fresh(_) | Want::Timer => true,
        }
}

/// The state name operators see (`/v1/credentials`, the state metric, `/readyz`).
pub(super) fn state_name(s: &Snapshot, now: SystemTime) -> &'static str {
    let valid = s.valid(now).is_some();
    if s.refused {
        "reauth_required"
    } else if s.login_required && !s.refreshing {
        "login_required"
    } else if s.refreshing {
        if s.token.is_some() {
            "refreshing"
        } else {
            "starting"
        }
    } else if valid {
        if s.failures > 0 { "stale" } else { "valid" }
    } else if s.token.is_some() {
        // A token was had, and has expired.
        "expired"
    } else {
        "starting"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// A token issued at `issued` (seconds after t0) living `life` seconds, due at 80%.
    fn token(value: &str, issued: u64, life: u64) -> Token {
        let issued = t0() + SEC * issued as u32;
        Token::new(
            value,
            "Bearer".into(),
            None,
            issued,
            issued + SEC * life as u32,
            issued + SEC * (life * 8 / 10) as u32,
        )
    }

    fn snapshot(token: Option<&Token>) -> Snapshot<'_> {
        Snapshot {
            token,
            restored: true,
            refreshing: false,
            refused: false,
            stopping: false,
            retry_at: None,
            failures: 0,
            last_refresh_at: None,
            last_demanded_at: None,
            min_refresh_interval: SEC * 5,
            settled: true,
            login_required: false,
        }
    }

    fn at(secs: u64) -> SystemTime {
        t0() + SEC * secs as u32
    }

    #[test]
    fn a_min_ttl_beyond_the_token_lifetime_refreshes_once_per_interval() {
        // 10 s tokens, a client asking for 60 s: the first request refreshes.
        let old = token("old", 0, 10);
        let s = snapshot(Some(&old));
        assert_eq!(
            decide(&s, &Want::Fresh(SEC * 60), at(1), at(1)),
            Step::Start
        );
        // The new token, minted after the request arrived, answers it.
        let new = token("new", 2, 10);
        let s = Snapshot {
            last_refresh_at: Some(at(2)),
            last_demanded_at: Some(at(2)),
            ..snapshot(Some(&new))
        };
        assert_eq!(
            decide(&s, &Want::Fresh(SEC * 60), at(1), at(2)),
            Step::Serve
        );
        // Requests after it, within min_refresh_interval: the same token, no refresh.
        for later in 2..7 {
            let step = decide(&s, &Want::Fresh(SEC * 60), at(later), at(later));
            assert_eq!(step, Step::Serve, "at {later}s");
        }
        // Once the interval has passed, one more refresh.
        assert_eq!(
            decide(&s, &Want::Fresh(SEC * 60), at(7), at(7)),
            Step::Start
        );
    }

    #[test]
    fn a_report_of_the_token_just_refreshed_is_told_to_wait_not_refreshed_again() {
        let fresh = token("fresh", 10, 60);
        // The first report after the timer's (or the first fetch's) refresh refreshes.
        let timer = Snapshot {
            last_refresh_at: Some(at(10)),
            ..snapshot(Some(&fresh))
        };
        let report = Want::Rejected("fresh".into());
        assert_eq!(decide(&timer, &report, at(12), at(12)), Step::Start);
        // A forced refresh, though, waits for min_refresh_interval after any refresh.
        assert_eq!(decide(&timer, &Want::Forced, at(12), at(12)), Step::Serve);
        let s = Snapshot {
            last_demanded_at: Some(at(10)),
            ..timer
        };
        assert_eq!(
            decide(&s, &report, at(12), at(12)),
            Step::Fail(Why::TooSoon(SEC * 3))
        );
        // A report of an older token gets the current one at once.
        assert_eq!(
            decide(&s, &Want::Rejected("older".into()), at(12), at(12)),
            Step::Serve
        );
        // After the interval, the report refreshes.
        assert_eq!(decide(&s, &report, at(15), at(15)), Step::Start);
        // While a flight is out, reports join it rather than wait.
        let flying = Snapshot {
            refreshing: true,
            ..s
        };
        assert_eq!(decide(&flying, &report, at(12), at(12)), Step::Join);
    }

    #[test]
    fn while_backing_off_reads_get_the_valid_token_a_forced_refresh_the_error() {
        let still = token("still", 0, 60);
        let s = Snapshot {
            retry_at: Some(at(20)),
            failures: 1,
            ..snapshot(Some(&still))
        };
        assert_eq!(
            decide(&s, &Want::Forced, at(10), at(10)),
            Step::Fail(Why::BackingOff)
        );
        assert_eq!(
            decide(&s, &Want::Fresh(SEC * 55), at(10), at(10)),
            Step::Serve
        );
        assert_eq!(
            decide(&s, &Want::Rejected("still".into()), at(10), at(10)),
            Step::Fail(Why::BackingOff)
        );
        assert_eq!(decide(&s, &Want::Timer, at(50), at(50)), Step::Start);
        assert_eq!(state_name(&s, at(10)), "stale");
        // With no valid token, backing off is an error, not a hang or a storm.
        let none = Snapshot { token: None, ..s };
        assert_eq!(
            decide(&none, &Want::Forced, at(10), at(10)),
            Step::Fail(Why::BackingOff)
        );
    }

    #[test]
    fn a_refused_credential_fails_what_its_token_cannot_answer_and_says_so() {
        let s = Snapshot {
            refused: true,
            ..snapshot(None)
        };
        assert_eq!(
            decide(&s, &Want::Fresh(Duration::ZERO), at(1), at(1)),
            Step::Fail(Why::Refused)
        );
        assert_eq!(state_name(&s, at(1)), "reauth_required");
    }

    #[test]
    fn a_credential_that_never_had_a_token_is_starting_not_expired() {
        let s = Snapshot {
            failures: 3,
            retry_at: Some(at(5)),
            ..snapshot(None)
        };
        assert_eq!(state_name(&s, at(1)), "starting");
        let expired = token("gone", 0, 10);
        let s = Snapshot {
            token: Some(&expired),
            ..s
        };
        assert_eq!(state_name(&s, at(20)), "expired");
        let unrestored = Snapshot {
            restored: false,
            refreshing: true,
            ..snapshot(None)
        };
        assert_eq!(state_name(&unrestored, at(1)), "starting");
    }

    #[test]
    fn the_timer_acts_on_an_unsettled_token_and_a_draining_broker_starts_nothing() {
        let due_later = token("t", 0, 100);
        let unsettled = Snapshot {
            settled: false,
            ..snapshot(Some(&due_later))
        };
        assert_eq!(decide(&unsettled, &Want::Timer, at(1), at(1)), Step::Start);
        let stopping = Snapshot {
            stopping: true,
            ..snapshot(Some(&due_later))
        };
        assert_eq!(decide(&stopping, &Want::Forced, at(1), at(1)), Step::Serve);
        let empty = Snapshot {
            stopping: true,
            ..snapshot(None)
        };
        assert_eq!(
            decide(&empty, &Want::Fresh(Duration::ZERO), at(1), at(1)),
            Step::Fail(Why::ShuttingDown)
        );
        // A draining broker never hands a report back its rejected token.
        assert_eq!(
            decide(&stopping, &Want::Rejected("t".into()), at(1), at(1)),
            Step::Fail(Why::ShuttingDown)
        );
    }

    #[test]
    fn a_clock_stepped_back_does_not_make_the_last_refresh_recent_for_hours() {
        let t = token("t", 0, 7200);
        let s = Snapshot {
            last_refresh_at: Some(at(3600)),
            last_demanded_at: Some(at(3600)),
            ..snapshot(Some(&t))
        };
        // Now is an hour before the recorded refresh.
        assert_eq!(
            decide(&s, &Want::Rejected("t".into()), at(1), at(1)),
            Step::Start
        );
        assert_eq!(decide(&s, &Want::Forced, at(1), at(1)), Step::Start);
    }

    #[test]
    fn after_a_failed_flight_only_a_token_the_want_accepts_is_served() {
        let t = token("t", 0, 100);
        assert!(still_serves(&t, &Want::Fresh(SEC * 500), at(1)));
        assert!(!still_serves(&t, &Want::Forced, at(1)));
        assert!(still_serves(&t, &Want::Rejected("other".into()), at(1)));
        assert!(!still_serves(&t, &Want::Rejected("t".into()), at(1)));
        assert!(!still_serves(&t, &Want::Fresh(Duration::ZERO), at(101)));
    }

    #[test]
    fn a_credential_waiting_for_a_login_fails_every_want_and_calls_nobody() {
        let mut s = snapshot(None);
        s.login_required = true;
        let wants = [
            Want::Fresh(Duration::ZERO),
            Want::Fresh(SEC * 60),
            Want::Forced,
            Want::Timer,
            Want::Rejected("old".into()),
        ];
        for want in &wants {
            assert_eq!(
                decide(&s, want, at(1), at(1)),
                Step::Fail(Why::LoginRequired),
                "{want:?}"
            );
        }
        assert_eq!(state_name(&s, at(1)), "login_required");
        // A login's own flight running: reads wait for it, and it is what they see.
        s.refreshing = true;
        assert_eq!(
            decide(&s, &Want::Fresh(Duration::ZERO), at(1), at(1)),
            Step::Join
        );
        assert_eq!(state_name(&s, at(1)), "starting");
        // A refusal on record says more than "no chain": it is what operators see.
        s.refreshing = false;
        s.refused = true;
        assert_eq!(
            decide(&s, &Want::Timer, at(1), at(1)),
            Step::Fail(Why::Refused)
        );
        assert_eq!(state_name(&s, at(1)), "reauth_required");
    }

    #[test]
    fn a_login_is_never_answered_by_the_token_it_replaces() {
        let t = token("old", 0, 100);
        let s = snapshot(Some(&t));
        assert_eq!(decide(&s, &Want::Login, at(1), at(1)), Step::Start);
        assert!(!still_serves(&t, &Want::Login, at(1)));
        assert!(!Want::Login.satisfied_by(&t, at(1)));
    }
}
