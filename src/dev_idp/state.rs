//! The dev IdP's pure logic: authenticating the client, granting tokens, remembering
//! issued access tokens, armed faults and the counters. The refresh token lineage rules
//! live in `families`; authorization codes in `codes` and device codes in `device`.
//!
//! No HTTP and no clock here: every operation where time matters takes `now`, so the
//! rules can be unit tested exactly. The HTTP layer owns the one lock around `State`
//! and the sleeping; this file never waits.

use super::clients::{Caller, Clients, Presented};
use super::families::{Families, FamilyId};
use super::faults::{Fault, PendingFault};
use super::jwt::{Expect, PublicKey, Replay};
use super::proofs::Proofs;
use super::protocol::{Grant, Params, TokenError};
use super::stats::Stats;
use super::tokens::Claims;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// The subject of tokens minted from refresh families: one pretend user is enough.
const DEV_USER: &str = "dev-user";

/// Above this many remembered access tokens, expired ones are forgotten on the next
/// issue, so a long soak does not grow memory without bound.
const ACCESS_TOKEN_PRUNE_AT: usize = 4096;

/// The fixed rules of one IdP instance, taken from its options.
#[derive(Clone)]
pub struct Config {
    /// The clients this IdP knows.
    pub clients: Clients,
    /// Lifetime of every access token.
    pub access_ttl: Duration,
    /// How long after its first use a refresh token may be replayed harmlessly.
    pub reuse_grace: Duration,
    /// Strict rotation (true) or a non-rotating IdP whose refresh tokens never wear out.
    pub rotation: bool,
    /// Leave `expires_in` out of token responses, to test clients that read `exp`.
    pub omit_expires_in: bool,
    /// Write access tokens' JWT `iat` and `exp` in milliseconds (a misbehaving IdP).
    pub exp_in_millis: bool,
    /// Access tokens without a `jti`: the same claims in the same second, the same token.
    pub no_jti: bool,
    /// Verifies jwt-bearer grant assertions; without it that grant is refused.
    pub bearer_key: Option<PublicKey>,
    /// The `iss` a jwt-bearer assertion must carry.
    pub bearer_issuer: String,
    /// Subject tokens accepted for token exchange besides this IdP's own access tokens.
    pub subject_tokens: Vec<String>,
    /// The rules of the user-facing flows: authorization code and device code.
    pub login: LoginConfig,
}

/// How the authorization-code and device flows behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginConfig {
    /// Redirect URIs that may receive authorization codes.
    pub redirect_uris: Vec<String>,
    /// Approve every authorization request and device code at once, for tests.
    pub auto_approve: bool,
    /// How long a device code waits for the user (RFC 8628 `expires_in`).
    pub device_code_ttl: Duration,
    /// The polling interval a device code starts with (RFC 8628 `interval`).
    pub device_interval: Duration,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            redirect_uris: Vec::new(),
            auto_approve: false,
            device_code_ttl: Duration::from_secs(600),
            device_interval: Duration::from_secs(5),
        }
    }
}

/// What the IdP remembers of one access token, to answer `/api/whoami`.
struct AccessRecord {
    /// The issuing family; `None` for `client_credentials`, which has no family.
    family: Option<FamilyId>,
    sub: String,
    client_id: String,
    /// Exact expiry; the JWT's `exp` is this rounded down to seconds.
    expires: SystemTime,
    /// The DPoP key thumbprint the token is bound to; a bound token is refused as a
    /// bearer token.
    jkt: Option<String>,
}

/// Why a successful grant succeeded, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A refresh token was used up and a successor issued.
    Rotated,
    /// A used refresh token replayed within grace got its original successor again.
    GraceReplay,
    /// A non-rotating IdP refreshed without issuing a successor.
    NotRotated,
    /// A `client_credentials` grant.
    ClientCredentials,
    /// A token exchange (RFC 8693).
    TokenExchange,
    /// A jwt-bearer grant (RFC 7523).
    JwtBearer,
    /// An authorization code redeemed (RFC 6749 4.1 with PKCE).
    AuthorizationCode,
    /// An approved device code redeemed (RFC 8628).
    DeviceCode,
}

/// A successful token response, before rendering (RFC 6749 5.1).
#[derive(Debug)]
pub struct Issued {
    /// The new access token.
    pub access_token: String,
    /// Seconds until expiry, or `None` when configured to omit it.
    pub expires_in: Option<u64>,
    /// The successor refresh token, when rotation issued one.
    pub refresh_token: Option<String>,
    /// The scope granted, if any is known.
    pub scope: Option<String>,
    /// What kind of success this was.
    pub outcome: Outcome,
    /// RFC 8693's `issued_token_type`, for token exchanges.
    pub issued_token_type: Option<&'static str>,
    /// Bound to a DPoP key: answered with `token_type: DPoP`.
    pub dpop: bool,
}

/// The answer of `/api/whoami` for a valid access token.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// The token's subject.
    pub sub: String,
    /// The client it was issued to.
    pub client_id: String,
    /// Whole seconds of validity left.
    pub expires_in: u64,
}

/// What a token request learns on arrival, before any waiting.
#[derive(Debug)]
pub struct Arrival {
    /// The fault this request consumed, if one was armed.
    pub fault: Option<Fault>,
    /// The latency to sleep before answering.
    pub latency: Duration,
}

/// All mutable IdP state. The HTTP layer wraps it in one mutex.
pub struct State {
    config: Config,
    /// Runtime-adjustable through `/admin/latency`.
    latency: Duration,
    /// Fallback host for discovery when a request carries no usable `Host`.
    listen_addr: Option<String>,
    families: Families,
    access_tokens: HashMap<String, AccessRecord>,
    fault: Option<PendingFault>,
    stats: Stats,
    /// `jti`s of client and grant assertions already used.
    replay: Replay,
    /// Authorization codes issued, spent ones included (for reuse detection).
    codes: HashMap<String, codes::CodeRecord>,
    /// Device codes issued, with the user codes that name them.
    devices: device::Devices,
    /// DPoP proofs seen and server nonces.
    proofs: Proofs,
    /// The DPoP key the token request in progress proved possession of: what it
    /// issues is bound to it. Set only for the length of one `token_bound` call.
    binding: Option<String>,
}

impl State {
    /// An IdP with no families yet.
    pub fn new(config: Config, latency: Duration) -> State {
        State {
            config,
            latency,
            listen_addr: None,
            families: Families::default(),
            access_tokens: HashMap::new(),
            fault: None,
            stats: Stats::default(),
            replay: Replay::default(),
            codes: HashMap::new(),
            devices: device::Devices::default(),
            proofs: Proofs::default(),
            binding: None,
        }
    }

    /// Starts a new family with the given first refresh token (or a random one) and
    /// returns that token.
    pub fn mint_family(&mut self, scope: Option<String>, token: Option<String>) -> String {
        self.families.mint(scope, token)
    }

    /// Counts a token request in and hands it the next armed fault, in arrival order.
    pub fn arrive(&mut self) -> Arrival {
        self.stats.enter();
        let fault = self.take_fault();
        if fault.is_some() {
            self.stats.errors_injected += 1;
        }
        Arrival {
            fault,
            latency: self.latency,
        }
    }

    /// Counts a token request out.
    pub fn leave(&mut self) {
        self.stats.leave();
    }

    fn take_fault(&mut self) -> Option<Fault> {
        let pending = self.fault.as_mut()?;
        let fault = pending.fault.clone();
        pending.remaining = pending.remaining.saturating_sub(1);
        if pending.remaining == 0 {
            self.fault = None;
        }
        Some(fault)
    }

    /// `token_bound` for a request without a DPoP proof (the unit tests' shorthand).
    #[cfg(test)]
    pub fn token(
        &mut self,
        now: SystemTime,
        client: &Presented,
        params: &Params,
        audiences: &[String],
    ) -> Result<Issued, TokenError> {
        self.token_bound(now, client, params, audiences, None)
    }

    /// Handles a parsed token request. Client authentication comes first, so a wrong
    /// secret never touches (or uses up) the refresh token it came with. `audiences`
    /// are the URLs of this token endpoint, which signed assertions must name. `jkt`
    /// is the DPoP key the request proved possession of: the tokens it issues are
    /// bound to that key, and a bound refresh token needs it.
    pub fn token_bound(
        &mut self,
        now: SystemTime,
        client: &Presented,
        params: &Params,
        audiences: &[String],
        jkt: Option<String>,
    ) -> Result<Issued, TokenError> {
        self.binding = jkt;
        let result = self.authenticate_and_grant(now, client, params, audiences);
        self.binding = None;
        result
    }

    fn authenticate_and_grant(
        &mut self,
        now: SystemTime,
        client: &Presented,
        params: &Params,
        audiences: &[String],
    ) -> Result<Issued, TokenError> {
        let expect = Expect { audiences, now };
        let result = self
            .config
            .clients
            .authenticate(client, &expect, &mut self.replay, &mut self.stats)
            .and_then(|caller| Ok((caller, Grant::parse(params)?)))
            .and_then(|(caller, grant)| self.grant(&expect, &caller, &grant));
        if let Err(err) = &result {
            self.count_error(err);
        }
        result
    }

    /// Counts an error answer in the counters that track its kind.
    pub fn count_error(&mut self, err: &TokenError) {
        match err {
            TokenError::InvalidClient(_) => self.stats.invalid_client += 1,
            TokenError::InvalidGrant(_) => self.stats.invalid_grant += 1,
            TokenError::InvalidRequest(_) => self.stats.invalid_request += 1,
            _ => {}
        }
    }

    fn grant(
        &mut self,
        expect: &Expect<'_>,
        caller: &Caller,
        grant: &Grant,
    ) -> Result<Issued, TokenError> {
        let now = expect.now;
        let client = match (caller, grant) {
            // RFC 7523 2.1: client authentication is optional for the jwt-bearer grant.
            (Caller::Anonymous, Grant::JwtBearer { .. }) => "",
            (Caller::Anonymous, _) => {
                return Err(TokenError::InvalidClient(
                    "client authentication is required",
                ));
            }
            (Caller::Public(_), Grant::ClientCredentials { .. }) => {
                return Err(TokenError::InvalidClient(
                    "client_credentials needs client authentication; a public client cannot use it",
                ));
            }
            (caller, _) => caller.id().unwrap_or_default(),
        }
        .to_owned();
        match grant {
            Grant::Refresh {
                refresh_token,
                scope,
            } => self.refresh(now, &client, refresh_token, scope.as_deref()),
            Grant::ClientCredentials { scope } => {
                self.stats.client_credentials_grants += 1;
                Ok(self.issue(
                    now,
                    None,
                    &client,
                    &client,
                    scope.clone(),
                    None,
                    Outcome::ClientCredentials,
                ))
            }
            Grant::TokenExchange(exchange) => self.token_exchange(now, &client, exchange),
            Grant::JwtBearer { assertion, scope } => {
                self.jwt_bearer(expect, &client, assertion, scope.clone())
            }
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
            } => self.authorization_code(now, &client, code, redirect_uri, code_verifier),
            Grant::DeviceCode { device_code } => self.device_code(now, &client, device_code),
        }
    }

    /// Mints and remembers an access token for `client`.
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &mut self,
        now: SystemTime,
        family: Option<FamilyId>,
        sub: &str,
        client: &str,
        scope: Option<String>,
        refresh_token: Option<String>,
        outcome: Outcome,
    ) -> Issued {
        let ttl = self.config.access_ttl;
        let mut claims = Claims::new(sub, client, now, ttl);
        if self.config.no_jti {
            claims.jti.clear();
        }
        let jkt = self.binding.clone();
        if let (Some(family), Some(jkt)) = (family, &jkt) {
            self.families.bind(family, jkt);
        }
        claims.cnf_jkt.clone_from(&jkt);
        let access_token = claims.encode(self.config.exp_in_millis);
        if self.access_tokens.len() >= ACCESS_TOKEN_PRUNE_AT {
            self.access_tokens.retain(|_, record| record.expires > now);
        }
        self.access_tokens.insert(
            access_token.clone(),
            AccessRecord {
                family,
                sub: claims.sub,
                client_id: claims.client_id,
                expires: now + ttl,
                jkt: jkt.clone(),
            },
        );
        Issued {
            access_token,
            expires_in: (!self.config.omit_expires_in).then_some(ttl.as_secs()),
            refresh_token,
            scope,
            outcome,
            issued_token_type: None,
            dpop: jkt.is_some(),
        }
    }

    /// Revokes every live family and returns how many that was.
    pub fn revoke_all(&mut self) -> u64 {
        let revoked = self.families.revoke_all();
        self.stats.families_revoked += revoked;
        revoked
    }

    /// Forgets every access token issued so far (refresh tokens stay valid): the API
    /// now refuses tokens the broker still holds as valid, as after a key rotation at
    /// the resource server. Returns how many there were.
    pub fn forget_access_tokens(&mut self) -> u64 {
        let forgotten = self.access_tokens.len() as u64;
        self.access_tokens.clear();
        forgotten
    }

    /// Who a bearer token speaks for, if it is issued, unexpired and not revoked.
    pub fn whoami(&self, now: SystemTime, token: &str) -> Option<WhoAmI> {
        let record = self.access_tokens.get(token)?;
        let left = record.expires.duration_since(now).ok()?;
        if left.is_zero() {
            return None;
        }
        let revoked = record
            .family
            .is_some_and(|family| self.families.is_revoked(family));
        (!revoked).then(|| WhoAmI {
            sub: record.sub.clone(),
            client_id: record.client_id.clone(),
            expires_in: left.as_secs(),
        })
    }

    /// The counters, with the live-family gauge filled in.
    pub fn stats(&self) -> Stats {
        Stats {
            active_families: self.families.active(),
            ..self.stats
        }
    }

    /// Zeroes the counters (see `Stats::reset`).
    pub fn reset_stats(&mut self) {
        self.stats.reset();
    }

    /// Arms (or with `None`, clears) the fault for the next token requests.
    pub fn set_fault(&mut self, fault: Option<PendingFault>) {
        self.fault = fault;
    }

    /// The armed fault, if any.
    pub fn fault(&self) -> Option<&PendingFault> {
        self.fault.as_ref()
    }

    /// Changes the latency of later token requests.
    pub fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    /// Records the address the server listens on, the discovery fallback.
    pub fn set_listen_addr(&mut self, addr: String) {
        self.listen_addr = Some(addr);
    }

    /// The address the server listens on, once known.
    pub fn listen_addr(&self) -> Option<&str> {
        self.listen_addr.as_deref()
    }
}

#[path = "exchange.rs"]
mod exchange;

#[path = "refresh.rs"]
mod refresh;

#[path = "dpop_state.rs"]
pub(super) mod dpop_state;

#[path = "codes.rs"]
mod codes;

#[path = "device.rs"]
pub(super) mod device;

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "login_tests.rs"]
mod login_tests;
