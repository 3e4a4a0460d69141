//! Who is calling the token endpoint: client authentication as RFC 6749 section 2.3 and
//! RFC 7523 section 2.2 define it, against the clients this IdP knows. There is one
//! confidential client (its secret, and a registered public key for `private_key_jwt`
//! when one is given) and, optionally, one public client that only names itself.
//!
//! Failures are `invalid_client`, except requests that mix methods or leave out a
//! required parameter (`invalid_request`). A client assertion is good for one use.

use super::jwt::{self, Expect, PublicKey, Replay};
use super::protocol::{self, ClientCredentials, Params, TokenError};
use super::stats::Stats;
use crate::secret::constant_time_eq;

/// `client_assertion_type` of a JWT client assertion.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Client credentials as presented, whichever way they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// HTTP Basic, or `client_id` and `client_secret` in the body.
    Secret(ClientCredentials),
    /// `private_key_jwt`: a signed client assertion.
    Assertion {
        client_id: Option<String>,
        assertion_type: Option<String>,
        assertion: Redacted,
    },
    /// A bare `client_id`: a public client.
    Public(String),
    /// Nothing at all (allowed for the jwt-bearer grant only).
    Nothing,
}

/// A presented assertion, kept out of `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads the client credentials from the `Authorization` header and the body.
pub fn presented(authorization: Option<&str>, params: &Params) -> Result<Presented, TokenError> {
    let assertion = params.get("client_assertion");
    let assertion_type = params.get("client_assertion_type");
    if assertion.is_some() || assertion_type.is_some() {
        if authorization.is_some() || params.get("client_secret").is_some() {
            return Err(TokenError::InvalidRequest(
                "use one client authentication method, not both",
            ));
        }
        let assertion = assertion.ok_or(TokenError::InvalidRequest(
            "client_assertion_type without client_assertion",
        ))?;
        return Ok(Presented::Assertion {
            client_id: params.get("client_id").map(str::to_owned),
            assertion_type: assertion_type.map(str::to_owned),
            assertion: Redacted(assertion.to_owned()),
        });
    }
    Ok(match protocol::client_credentials(authorization, params)? {
        Some(credentials) => Presented::Secret(credentials),
        None => match (params.get("client_id"), params.get("client_secret")) {
            (Some(id), None) => Presented::Public(id.to_owned()),
            _ => Presented::Nothing,
        },
    })
}

/// Who the request comes from, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The confidential client, by secret or by client assertion.
    Confidential(String),
    /// The registered public client.
    Public(String),
    /// No client at all.
    Anonymous,
}

impl Caller {
    /// The client id, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Caller::Confidential(id) | Caller::Public(id) => Some(id),
            Caller::Anonymous => None,
        }
    }
}

/// The clients this IdP knows.
#[derive(Clone)]
pub struct Clients {
    /// The confidential client.
    pub id: String,
    pub secret: String,
    /// Its public key, for `private_key_jwt`.
    pub key: Option<PublicKey>,
    /// A public client (no secret), if one is registered.
    pub public_id: Option<String>,
}

impl Clients {
    /// Authenticates the presented credentials; a used client assertion is remembered
    /// so it cannot be replayed.
    pub fn authenticate(
        &self,
        presented: &Presented,
        expect: &Expect<'_>,
        replay: &mut Replay,
        stats: &mut Stats,
    ) -> Result<Caller, TokenError> {
        match presented {
            Presented::Secret(c) => {
                let id_ok = constant_time_eq(c.id.as_bytes(), self.id.as_bytes());
                let secret_ok = constant_time_eq(c.secret.as_bytes(), self.secret.as_bytes());
                match id_ok && secret_ok {
                    true => Ok(Caller::Confidential(self.id.clone())),
                    false => Err(TokenError::InvalidClient("unknown client or wrong secret")),
                }
            }
            Presented::Assertion {
                client_id,
                assertion_type,
                assertion,
            } => self.assertion(
                client_id.as_deref(),
                assertion_type.as_deref(),
                &assertion.0,
                expect,
                replay,
                stats,
            ),
            Presented::Public(id) if self.public_id.as_deref() == Some(id) => {
                Ok(Caller::Public(id.clone()))
            }
            Presented::Public(_) => Err(TokenError::InvalidClient(
                "client authentication is required",
            )),
            Presented::Nothing => Ok(Caller::Anonymous),
        }
    }

    /// `private_key_jwt`: iss = sub = the client id, aud = this token endpoint, a
    /// signature by the registered key, and a `jti` not seen before.
    fn assertion(
        &self,
        client_id: Option<&str>,
        assertion_type: Option<&str>,
        assertion: &str,
        expect: &Expect<'_>,
        replay: &mut Replay,
        stats: &mut Stats,
    ) -> Result<Caller, TokenError> {
        match assertion_type {
            None => {
                return Err(TokenError::InvalidRequest(
                    "client_assertion needs client_assertion_type",
                ));
            }
            Some(CLIENT_ASSERTION_TYPE) => {}
            Some(_) => {
                return Err(TokenError::InvalidClient(
                    "unsupported client_assertion_type",
                ));
            }
        }
        let key = self.key.as_ref().ok_or(TokenError::InvalidClient(
            "no public key is registered for private_key_jwt",
        ))?;
        let claims = jwt::verify(assertion, key, expect).map_err(TokenError::InvalidClient)?;
        if claims.iss != self.id || claims.sub != self.id {
            return Err(TokenError::InvalidClient(
                "the client assertion's iss and sub must both be the client id",
            ));
        }
        if client_id.is_some_and(|id| id != self.id) {
            return Err(TokenError::InvalidClient(
                "client_id does not match the client assertion",
            ));
        }
        if !replay.first_use(&claims, expect.now) {
            stats.assertion_replays += 1;
            return Err(TokenError::InvalidClient(
                "the client assertion was already used (jti replay)",
            ));
        }
        stats.client_assertions += 1;
        Ok(Caller::Confidential(self.id.clone()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(body: &str, authorization: Option<&str>) -> Result<Presented, TokenError> {
        presented(authorization, &Params::parse(body.as_bytes()).unwrap())
    }

    #[test]
    fn one_method_per_request_and_assertions_stay_out_of_debug() {
        let both = parse("client_assertion=a.b.c", Some("Basic ZDpz"));
        assert_eq!(both.unwrap_err().code(), "invalid_request");
        let both = parse("client_assertion=a.b.c&client_secret=s", None);
        assert_eq!(both.unwrap_err().code(), "invalid_request");
        let half = parse("client_assertion_type=x", None);
        assert_eq!(half.unwrap_err().code(), "invalid_request");
        let assertion = parse("client_assertion=very.secret.jwt&client_id=c", None).unwrap();
        assert!(!format!("{assertion:?}").contains("very.secret.jwt"));
        assert_eq!(
            parse("client_id=spa", None).unwrap(),
            Presented::Public("spa".into())
        );
        assert_eq!(parse("client_secret=s", None).unwrap(), Presented::Nothing);
        assert_eq!(parse("", None).unwrap(), Presented::Nothing);
    }
}
