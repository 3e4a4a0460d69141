//! Unit tests of the state rules, driven with explicit times and no HTTP.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::dev_idp::faults::{Fault, PendingFault};
use crate::dev_idp::protocol::ClientCredentials;
use std::time::UNIX_EPOCH;

fn config() -> Config {
    Config {
        clients: Clients {
            id: "dev-client".to_owned(),
            secret: "dev-secret".to_owned(),
            key: None,
            public_id: None,
        },
        access_ttl: Duration::from_secs(300),
        reuse_grace: Duration::ZERO,
        rotation: true,
        omit_expires_in: false,
        exp_in_millis: false,
        no_jti: false,
        bearer_key: None,
        bearer_issuer: "dev-client".to_owned(),
        subject_tokens: Vec::new(),
        login: LoginConfig::default(),
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn good() -> Presented {
    Presented::Secret(credentials())
}

fn credentials() -> ClientCredentials {
    ClientCredentials {
        id: "dev-client".to_owned(),
        secret: "dev-secret".to_owned(),
    }
}

fn refresh_params(token: &str) -> Params {
    Params::parse(format!("grant_type=refresh_token&refresh_token={token}").as_bytes()).unwrap()
}

fn refresh(state: &mut State, now: SystemTime, token: &str) -> Result<Issued, TokenError> {
    state.token(now, &good(), &refresh_params(token), &[])
}

fn idp(config: Config) -> (State, String) {
    let mut state = State::new(config, Duration::ZERO);
    let token = state.mint_family(None, None);
    (state, token)
}

#[test]
fn rotation_issues_a_successor_and_uses_up_the_presented_token() {
    let (mut state, first) = idp(config());
    let issued = refresh(&mut state, at(0), &first).unwrap();
    assert_eq!(issued.outcome, Outcome::Rotated);
    assert_eq!(issued.expires_in, Some(300));
    let second = issued.refresh_token.unwrap();
    assert_ne!(second, first);
    let next = refresh(&mut state, at(1), &second).unwrap();
    assert_eq!(next.outcome, Outcome::Rotated);
    assert_eq!(state.stats().refresh_grants, 2);
    assert!(state.whoami(at(1), &next.access_token).is_some());
}

#[test]
fn reuse_past_grace_revokes_the_whole_family() {
    let (mut state, first) = idp(config());
    let issued = refresh(&mut state, at(0), &first).unwrap();
    let second = issued.refresh_token.unwrap();
    let err = refresh(&mut state, at(0), &first).unwrap_err();
    assert_eq!(err.code(), "invalid_grant");
    // The innocent-looking successor dies with its family, and so do its access tokens.
    assert_eq!(
        refresh(&mut state, at(1), &second).unwrap_err().code(),
        "invalid_grant"
    );
    assert!(state.whoami(at(1), &issued.access_token).is_none());
    let stats = state.stats();
    assert_eq!(stats.reuse_detected, 1);
    assert_eq!(stats.families_revoked, 1);
    assert_eq!(stats.invalid_grant, 2);
    assert_eq!(stats.active_families, 0);
}

#[test]
fn reuse_within_grace_replays_the_same_successor() {
    let (mut state, first) = idp(Config {
        reuse_grace: Duration::from_secs(5),
        ..config()
    });
    let original = refresh(&mut state, at(10), &first).unwrap();
    let replay = refresh(&mut state, at(14), &first).unwrap();
    assert_eq!(replay.outcome, Outcome::GraceReplay);
    assert_eq!(replay.refresh_token, original.refresh_token);
    assert_ne!(replay.access_token, original.access_token);
    let late = refresh(&mut state, at(15), &first).unwrap_err();
    assert_eq!(late.code(), "invalid_grant");
    let stats = state.stats();
    assert_eq!(
        (
            stats.refresh_grants,
            stats.reuse_grace_hits,
            stats.reuse_detected
        ),
        (1, 1, 1)
    );
}

#[test]
fn no_rotation_keeps_the_token_valid_forever() {
    let (mut state, first) = idp(Config {
        rotation: false,
        ..config()
    });
    for secs in [0, 0, 1_000_000] {
        let issued = refresh(&mut state, at(secs), &first).unwrap();
        assert_eq!(issued.outcome, Outcome::NotRotated);
        assert_eq!(issued.refresh_token, None);
    }
    let stats = state.stats();
    assert_eq!((stats.refresh_grants, stats.reuse_detected), (3, 0));
}

#[test]
fn client_credentials_issue_no_refresh_token() {
    let (mut state, _) = idp(config());
    let params = Params::parse(b"grant_type=client_credentials&scope=read").unwrap();
    let issued = state.token(at(0), &good(), &params, &[]).unwrap();
    assert_eq!(issued.outcome, Outcome::ClientCredentials);
    assert_eq!(issued.refresh_token, None);
    assert_eq!(issued.scope.as_deref(), Some("read"));
    let me = state.whoami(at(0), &issued.access_token).unwrap();
    assert_eq!(me.sub, "dev-client");
    assert_eq!(state.stats().client_credentials_grants, 1);
}

#[test]
fn wrong_secret_does_not_consume_the_refresh_token() {
    let (mut state, first) = idp(config());
    let wrong = Presented::Secret(ClientCredentials {
        secret: "nope".to_owned(),
        ..credentials()
    });
    let err = state
        .token(at(0), &wrong, &refresh_params(&first), &[])
        .unwrap_err();
    assert_eq!((err.code(), err.status()), ("invalid_client", 401));
    let err = state
        .token(at(0), &Presented::Nothing, &refresh_params(&first), &[])
        .unwrap_err();
    assert_eq!(err.code(), "invalid_client");
    let issued = refresh(&mut state, at(1), &first).unwrap();
    assert_eq!(issued.outcome, Outcome::Rotated);
    let stats = state.stats();
    assert_eq!((stats.invalid_client, stats.reuse_detected), (2, 0));
}

#[test]
fn unknown_token_is_invalid_grant() {
    let (mut state, _) = idp(config());
    assert_eq!(
        refresh(&mut state, at(0), "nope").unwrap_err().code(),
        "invalid_grant"
    );
    assert_eq!(state.stats().invalid_grant, 1);
}

#[test]
fn access_tokens_expire_and_omit_expires_in_still_expires() {
    let (mut state, first) = idp(Config {
        omit_expires_in: true,
        ..config()
    });
    let issued = refresh(&mut state, at(0), &first).unwrap();
    assert_eq!(issued.expires_in, None);
    assert_eq!(
        state
            .whoami(at(299), &issued.access_token)
            .unwrap()
            .expires_in,
        1
    );
    assert!(state.whoami(at(300), &issued.access_token).is_none());
    assert!(state.whoami(at(0), "not-issued").is_none());
}

#[test]
fn revoke_all_and_mint_again() {
    let (mut state, first) = idp(config());
    let issued = refresh(&mut state, at(0), &first).unwrap();
    state.mint_family(None, None);
    assert_eq!(state.stats().active_families, 2);
    assert_eq!(state.revoke_all(), 2);
    assert_eq!(state.revoke_all(), 0);
    assert!(state.whoami(at(0), &issued.access_token).is_none());
    let fresh = state.mint_family(None, None);
    assert!(refresh(&mut state, at(1), &fresh).is_ok());
    let stats = state.stats();
    assert_eq!((stats.families_revoked, stats.active_families), (2, 1));
}

#[test]
fn scope_may_narrow_but_not_widen() {
    let mut state = State::new(config(), Duration::ZERO);
    let token = state.mint_family(Some("read write".to_owned()), None);
    let issued = refresh(&mut state, at(0), &token).unwrap();
    assert_eq!(issued.scope.as_deref(), Some("read write"));
    let next = issued.refresh_token.unwrap();
    let params = Params::parse(
        format!("grant_type=refresh_token&refresh_token={next}&scope=admin").as_bytes(),
    )
    .unwrap();
    let err = state.token(at(1), &good(), &params, &[]).unwrap_err();
    assert_eq!(err.code(), "invalid_scope");
    let params = Params::parse(
        format!("grant_type=refresh_token&refresh_token={next}&scope=read").as_bytes(),
    )
    .unwrap();
    let narrowed = state.token(at(1), &good(), &params, &[]).unwrap();
    assert_eq!(narrowed.scope.as_deref(), Some("read"));
}

#[test]
fn faults_are_consumed_in_arrival_order() {
    let (mut state, _) = idp(config());
    state.set_fault(Some(PendingFault {
        fault: Fault::Hang(Duration::from_secs(1)),
        remaining: 2,
    }));
    assert!(state.arrive().fault.is_some());
    assert_eq!(state.fault().unwrap().remaining, 1);
    assert!(state.arrive().fault.is_some());
    assert!(state.arrive().fault.is_none());
    let stats = state.stats();
    assert_eq!((stats.errors_injected, stats.token_requests), (2, 3));
    assert_eq!((stats.in_flight, stats.max_in_flight), (3, 3));
    state.leave();
    state.reset_stats();
    let stats = state.stats();
    assert_eq!(
        (stats.token_requests, stats.in_flight, stats.max_in_flight),
        (0, 2, 2)
    );
}

#[test]
fn chosen_initial_token_works() {
    let mut state = State::new(config(), Duration::ZERO);
    let token = state.mint_family(None, Some("chosen".to_owned()));
    assert_eq!(token, "chosen");
    assert!(refresh(&mut state, at(0), "chosen").is_ok());
}
