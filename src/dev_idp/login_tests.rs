//! Unit tests of the login flows' rules (authorization codes and device codes), driven
//! with explicit times and no HTTP.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::dev_idp::authorize::{self, AuthRequest};
use crate::dev_idp::protocol::ClientCredentials;
use std::time::UNIX_EPOCH;

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const REDIRECT: &str = "http://127.0.0.1:4321/callback";

fn config(auto_approve: bool) -> Config {
    Config {
        clients: Clients {
            id: "dev-client".to_owned(),
            secret: "dev-secret".to_owned(),
            key: None,
            public_id: Some("cli".to_owned()),
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
        login: LoginConfig {
            redirect_uris: vec!["http://127.0.0.1/callback".to_owned()],
            auto_approve,
            ..LoginConfig::default()
        },
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn confidential() -> Presented {
    Presented::Secret(ClientCredentials {
        id: "dev-client".to_owned(),
        secret: "dev-secret".to_owned(),
    })
}

fn request(client_id: &str) -> AuthRequest {
    AuthRequest {
        client_id: client_id.to_owned(),
        redirect_uri: REDIRECT.to_owned(),
        scope: Some("openid".to_owned()),
        state: Some("xyz".to_owned()),
        code_challenge: authorize::s256(VERIFIER),
    }
}

fn redeem(
    state: &mut State,
    now: SystemTime,
    client: &Presented,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<Issued, TokenError> {
    let body = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={verifier}",
        url::form_urlencoded::byte_serialize(redirect_uri.as_bytes()).collect::<String>()
    );
    state.token(now, client, &Params::parse(body.as_bytes()).unwrap(), &[])
}

fn poll(state: &mut State, now: SystemTime, device_code: &str) -> Result<Issued, TokenError> {
    let body = format!(
        "grant_type={}&device_code={device_code}",
        crate::dev_idp::protocol::DEVICE_CODE
    );
    let params = Params::parse(body.as_bytes()).unwrap();
    state.token(now, &confidential(), &params, &[])
}

fn device(state: &mut State, now: SystemTime) -> device::DeviceGrant {
    let params = Params::parse(b"scope=openid").unwrap();
    state
        .device_authorization(now, &confidential(), &params, &[])
        .unwrap()
}

fn refresh_with(state: &mut State, now: SystemTime, token: &str) -> Result<Issued, TokenError> {
    let body = format!("grant_type=refresh_token&refresh_token={token}");
    let params = Params::parse(body.as_bytes()).unwrap();
    state.token(now, &confidential(), &params, &[])
}

#[test]
fn a_code_redeems_once_and_its_reuse_revokes_what_it_issued() {
    let mut state = State::new(config(false), Duration::ZERO);
    let code = state.issue_code(at(0), request("dev-client"));
    let issued = redeem(
        &mut state,
        at(1),
        &confidential(),
        &code,
        REDIRECT,
        VERIFIER,
    )
    .unwrap();
    assert_eq!(issued.outcome, Outcome::AuthorizationCode);
    assert_eq!(issued.scope.as_deref(), Some("openid"));
    let refresh_token = issued.refresh_token.unwrap();
    assert!(state.whoami(at(1), &issued.access_token).is_some());
    let again = redeem(
        &mut state,
        at(2),
        &confidential(),
        &code,
        REDIRECT,
        VERIFIER,
    );
    assert_eq!(again.unwrap_err().code(), "invalid_grant");
    assert!(state.whoami(at(2), &issued.access_token).is_none());
    let refused = refresh_with(&mut state, at(3), &refresh_token).unwrap_err();
    assert_eq!(refused.code(), "invalid_grant");
    let stats = state.stats();
    assert_eq!(stats.authorization_code_grants, 1);
    assert_eq!((stats.code_reuses, stats.families_revoked), (1, 1));
    assert_eq!(stats.active_families, 0);
}

#[test]
fn a_code_lives_a_minute_and_a_failed_redemption_spends_it() {
    let mut state = State::new(config(false), Duration::ZERO);
    let code = state.issue_code(at(0), request("dev-client"));
    let late = redeem(
        &mut state,
        at(60),
        &confidential(),
        &code,
        REDIRECT,
        VERIFIER,
    );
    assert_eq!(late.unwrap_err().to_string(), "authorization code expired");

    let code = state.issue_code(at(100), request("dev-client"));
    let wrong = "x".repeat(43);
    let bad = redeem(
        &mut state,
        at(101),
        &confidential(),
        &code,
        REDIRECT,
        &wrong,
    );
    assert_eq!(
        bad.unwrap_err().to_string(),
        "code_verifier does not match the code_challenge"
    );
    let retry = redeem(
        &mut state,
        at(102),
        &confidential(),
        &code,
        REDIRECT,
        VERIFIER,
    );
    assert_eq!(retry.unwrap_err().code(), "invalid_grant");

    let code = state.issue_code(at(200), request("dev-client"));
    let other_port = "http://127.0.0.1:9999/callback";
    let moved = redeem(
        &mut state,
        at(201),
        &confidential(),
        &code,
        other_port,
        VERIFIER,
    );
    assert_eq!(
        moved.unwrap_err().to_string(),
        "redirect_uri differs from the authorization request's"
    );
    assert_eq!(state.stats().authorization_code_grants, 0);
}

#[test]
fn a_code_is_bound_to_its_client_which_another_cannot_burn() {
    let mut state = State::new(config(false), Duration::ZERO);
    let code = state.issue_code(at(0), request("dev-client"));
    let public = Presented::Public("cli".to_owned());
    let stolen = redeem(&mut state, at(1), &public, &code, REDIRECT, VERIFIER);
    assert_eq!(stolen.unwrap_err().code(), "invalid_grant");
    assert!(
        redeem(
            &mut state,
            at(2),
            &confidential(),
            &code,
            REDIRECT,
            VERIFIER
        )
        .is_ok()
    );
    // A public client redeems its own codes with nothing but its id and the verifier.
    let code = state.issue_code(at(3), request("cli"));
    assert!(redeem(&mut state, at(4), &public, &code, REDIRECT, VERIFIER).is_ok());
}

#[test]
fn polling_too_fast_slows_the_device_code_down_by_five_seconds_each_time() {
    let mut state = State::new(config(false), Duration::ZERO);
    let grant = device(&mut state, at(0));
    assert_eq!((grant.expires_in, grant.interval), (600, 5));
    assert_eq!(grant.user_code.len(), 9);
    let code = grant.device_code.as_str();
    let answers: Vec<&str> = [0, 1, 7, 22, 27]
        .map(|secs| poll(&mut state, at(secs), code).unwrap_err().code())
        .to_vec();
    // Interval 5: 1 s is too soon (now 10); 6 s later still too soon (now 15); 15 s
    // later is fine; 5 s after that is too soon again, as the interval stays grown.
    assert_eq!(
        answers,
        [
            "authorization_pending",
            "slow_down",
            "slow_down",
            "authorization_pending",
            "slow_down"
        ]
    );
    assert_eq!(state.stats().slow_downs, 3);
}

#[test]
fn a_device_code_is_approved_denied_or_expires_and_redeems_once() {
    let mut state = State::new(config(false), Duration::ZERO);
    let grant = device(&mut state, at(0));
    let typed = grant.user_code.replace('-', " ").to_lowercase();
    state.decide_device(at(1), &typed, true).unwrap();
    let refused = state.decide_device(at(1), &grant.user_code, false);
    assert_eq!(
        refused.unwrap_err(),
        "this code was already approved or denied"
    );
    let issued = poll(&mut state, at(2), &grant.device_code).unwrap();
    assert_eq!(issued.outcome, Outcome::DeviceCode);
    assert!(issued.refresh_token.is_some());
    let again = poll(&mut state, at(20), &grant.device_code).unwrap_err();
    assert_eq!(again.to_string(), "device code already used");

    let denied = device(&mut state, at(0));
    state
        .decide_device(at(1), &denied.user_code, false)
        .unwrap();
    let answer = poll(&mut state, at(2), &denied.device_code).unwrap_err();
    assert_eq!(answer.code(), "access_denied");

    let late = device(&mut state, at(0));
    let answer = poll(&mut state, at(600), &late.device_code).unwrap_err();
    assert_eq!(answer.code(), "expired_token");
    let too_late = state.decide_device(at(600), &late.user_code, true);
    assert!(too_late.unwrap_err().contains("expired"));
    for typo in ["", "ABCD-EFG", "AEIO-UAEI", "nope"] {
        assert!(state.decide_device(at(1), typo, true).is_err(), "{typo}");
    }
    assert_eq!(state.stats().device_code_grants, 1);
}

#[test]
fn auto_approve_approves_device_codes_at_once() {
    let mut state = State::new(config(true), Duration::ZERO);
    let grant = device(&mut state, at(0));
    assert!(poll(&mut state, at(0), &grant.device_code).is_ok());
    let anonymous = state.device_authorization(at(0), &Presented::Nothing, &Params::default(), &[]);
    assert_eq!(anonymous.unwrap_err().code(), "invalid_client");
    let bad_scope = Params::parse(b"scope=a\"b").unwrap();
    let refused = state.device_authorization(at(0), &confidential(), &bad_scope, &[]);
    assert_eq!(refused.unwrap_err().code(), "invalid_scope");
}
