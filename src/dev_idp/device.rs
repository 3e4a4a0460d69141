//! The device authorization grant (RFC 8628): device codes for the polling client, user
//! codes for the person at the verification page, and the polling rules. A child of
//! `state`.
//!
//! A device code is pending until the user approves or denies it (or at once approved
//! with `--auto-approve`), and good for one redemption. Polling a pending code sooner
//! than its interval after the previous poll answers `slow_down` and adds 5 seconds to
//! that code's interval (RFC 8628 3.5).

use super::{DEV_USER, Issued, Outcome, State};
use crate::dev_idp::authorize;
use crate::dev_idp::clients::{Caller, Presented};
use crate::dev_idp::jwt::Expect;
use crate::dev_idp::protocol::{Params, TokenError};
use crate::dev_idp::tokens;
use rand::Rng as _;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// RFC 8628 6.1's alphabet: consonants only, so no code spells a word, and none of the
/// easily confused characters.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Eight characters: 20^8 codes, typed as `ABCD-EFGH`.
const USER_CODE_LEN: usize = 8;
/// What `slow_down` adds to a device code's interval (RFC 8628 3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Past this many device codes, expired ones are forgotten on the next issue.
const PRUNE_AT: usize = 4096;

/// Where a device code stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    Denied,
    /// Approved and exchanged for tokens; it cannot be used again.
    Redeemed,
}

struct DeviceRecord {
    client_id: String,
    scope: Option<String>,
    expires: SystemTime,
    /// Grows by `SLOW_DOWN_STEP` at each `slow_down`.
    interval: Duration,
    last_poll: Option<SystemTime>,
    status: Status,
}

/// Every device code issued, and the user codes that name them.
#[derive(Default)]
pub struct Devices {
    by_device_code: HashMap<String, DeviceRecord>,
    /// Normalized user code (no dash) to device code.
    by_user_code: HashMap<String, String>,
}

/// The answer of `POST /device_authorization`, before the URLs are added.
#[derive(Debug)]
pub struct DeviceGrant {
    pub device_code: String,
    /// As shown to the user: `ABCD-EFGH`.
    pub user_code: String,
    pub expires_in: u64,
    pub interval: u64,
}

/// Why the verification page refused a decision; each is shown to the user as is.
pub type PageRefusal = &'static str;

impl State {
    /// `POST /device_authorization`: authenticates the client like the token endpoint
    /// and issues a device code with its user code.
    pub fn device_authorization(
        &mut self,
        now: SystemTime,
        client: &Presented,
        params: &Params,
        audiences: &[String],
    ) -> Result<DeviceGrant, TokenError> {
        let expect = Expect { audiences, now };
        let result = self
            .config
            .clients
            .authenticate(client, &expect, &mut self.replay, &mut self.stats)
            .and_then(|caller| self.new_device_code(now, &caller, params));
        if let Err(err) = &result {
            self.count_error(err);
        }
        result
    }

    fn new_device_code(
        &mut self,
        now: SystemTime,
        caller: &Caller,
        params: &Params,
    ) -> Result<DeviceGrant, TokenError> {
        let client_id = caller.id().ok_or(TokenError::InvalidClient(
            "client authentication is required",
        ))?;
        let scope = params.get("scope");
        if scope.is_some_and(|scope| !authorize::valid_scope(scope)) {
            return Err(TokenError::InvalidScope("scope is malformed"));
        }
        let devices = &mut self.devices;
        if devices.by_device_code.len() >= PRUNE_AT {
            devices.by_device_code.retain(|_, d| d.expires > now);
            let live = &devices.by_device_code;
            devices
                .by_user_code
                .retain(|_, code| live.contains_key(code));
        }
        let user_code = loop {
            let candidate = random_user_code();
            if !devices.by_user_code.contains_key(&candidate) {
                break candidate;
            }
        };
        let device_code = tokens::random_b64(32);
        let login = &self.config.login;
        let status = match login.auto_approve {
            true => Status::Approved,
            false => Status::Pending,
        };
        devices
            .by_user_code
            .insert(user_code.clone(), device_code.clone());
        devices.by_device_code.insert(
            device_code.clone(),
            DeviceRecord {
                client_id: client_id.to_owned(),
                scope: scope.map(str::to_owned),
                expires: now + login.device_code_ttl,
                interval: login.device_interval,
                last_poll: None,
                status,
            },
        );
        Ok(DeviceGrant {
            device_code,
            user_code: display_user_code(&user_code),
            expires_in: login.device_code_ttl.as_secs(),
            interval: login.device_interval.as_secs(),
        })
    }

    /// The user's answer at the verification page.
    pub fn decide_device(
        &mut self,
        now: SystemTime,
        user_code: &str,
        approve: bool,
    ) -> Result<(), PageRefusal> {
        let unknown = "unknown user code; check it against the one on your device";
        let key = normalize_user_code(user_code).ok_or(unknown)?;
        let devices = &mut self.devices;
        let device_code = devices.by_user_code.get(&key).ok_or(unknown)?;
        let record = devices.by_device_code.get_mut(device_code).ok_or(unknown)?;
        if now >= record.expires {
            return Err("this code has expired; start again on your device");
        }
        if record.status != Status::Pending {
            return Err("this code was already approved or denied");
        }
        record.status = match approve {
            true => Status::Approved,
            false => Status::Denied,
        };
        Ok(())
    }

    /// The device-code grant: one poll by an authenticated `client`.
    pub(super) fn device_code(
        &mut self,
        now: SystemTime,
        client: &str,
        device_code: &str,
    ) -> Result<Issued, TokenError> {
        let record = self
            .devices
            .by_device_code
            .get_mut(device_code)
            .ok_or(TokenError::InvalidGrant("unknown device code"))?;
        if record.client_id != client {
            return Err(TokenError::InvalidGrant(
                "the device code was issued to another client",
            ));
        }
        if now >= record.expires {
            return Err(TokenError::ExpiredToken);
        }
        match record.status {
            Status::Pending => {
                let last = record.last_poll.replace(now);
                // A clock that stepped back counts as no time elapsed.
                let since = last.map(|last| now.duration_since(last).unwrap_or_default());
                if since.is_some_and(|since| since < record.interval) {
                    record.interval += SLOW_DOWN_STEP;
                    self.stats.slow_downs += 1;
                    return Err(TokenError::SlowDown);
                }
                Err(TokenError::AuthorizationPending)
            }
            Status::Denied => Err(TokenError::AccessDenied),
            Status::Redeemed => Err(TokenError::InvalidGrant("device code already used")),
            Status::Approved => {
                record.status = Status::Redeemed;
                let scope = record.scope.clone();
                let (family, refresh_token) = self.families.start(scope.clone(), None);
                self.stats.device_code_grants += 1;
                let outcome = Outcome::DeviceCode;
                Ok(self.issue(
                    now,
                    Some(family),
                    DEV_USER,
                    client,
                    scope,
                    Some(refresh_token),
                    outcome,
                ))
            }
        }
    }
}

fn random_user_code() -> String {
    let mut rng = rand::rng();
    (0..USER_CODE_LEN)
        .map(|_| char::from(USER_CODE_ALPHABET[rng.random_range(0..USER_CODE_ALPHABET.len())]))
        .collect()
}

/// `ABCDEFGH` as `ABCD-EFGH`.
fn display_user_code(code: &str) -> String {
    let (head, tail) = code.split_at(USER_CODE_LEN / 2);
    format!("{head}-{tail}")
}

/// What the user typed, as stored: case, dashes and spaces do not matter (RFC 8628 6.1);
/// `None` if it cannot be a user code of this IdP.
fn normalize_user_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid =
        code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b));
    valid.then_some(code)
}
