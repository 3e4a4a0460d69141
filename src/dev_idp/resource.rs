//! `GET /api/whoami`: the protected resource, where clients check that an access
//! token works.
//!
//! A bearer token is sent as `Authorization: Bearer`. A DPoP-bound token must come as
//! `Authorization: DPoP <token>` with a `DPoP` proof of its key for this very request
//! (RFC 9449 section 7): method and URL, `ath` the token's hash, a `jti` never seen,
//! and with `--dpop-nonce` the server's nonce. A bound token sent as a bearer token is
//! refused: that is the point of binding it.

use std::time::SystemTime;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::DevIdp;
use super::http::{dpop_headers, endpoint_urls, no_store_json, with_dpop_nonce};
use super::proofs::ProofRefusal;
use super::state::WhoAmI;
use super::state::dpop_state::ProofRequest;

/// Why whoami refused, each rendered with its own challenge.
enum Refusal {
    /// Missing, unknown, expired or revoked, sent as a bearer token.
    Bearer,
    /// A DPoP-bound token sent as a bearer token.
    BoundAsBearer,
    /// Sent with the DPoP scheme, but unknown, expired, revoked, not bound, or bound
    /// to another key than the proof's.
    DpopToken,
    /// The proof was refused or must carry the nonce.
    Proof(ProofRefusal),
}

/// `GET /api/whoami`.
pub async fn whoami(State(idp): State<DevIdp>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(scheme, token)| (scheme, token.trim()));
    let answer = match authorization {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("dpop") => dpop(&idp, &headers, token),
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => bearer(&idp, token),
        _ => Err(Refusal::Bearer),
    };
    let response = match answer {
        Ok(who) => no_store_json(StatusCode::OK, &json!(who)),
        Err(refusal) => refused(&refusal),
    };
    with_dpop_nonce(&idp, response)
}

fn bearer(idp: &DevIdp, token: &str) -> Result<WhoAmI, Refusal> {
    idp.with_state(|state| {
        if state.bound_key(token).is_some() {
            return Err(Refusal::BoundAsBearer);
        }
        state
            .whoami(SystemTime::now(), token)
            .ok_or(Refusal::Bearer)
    })
}

fn dpop(idp: &DevIdp, headers: &HeaderMap, token: &str) -> Result<WhoAmI, Refusal> {
    let proofs = dpop_headers(headers);
    idp.with_state(|state| {
        let now = SystemTime::now();
        let htus = endpoint_urls(headers, state.listen_addr(), "/api/whoami");
        let request = ProofRequest {
            proofs: &proofs,
            htm: "GET",
            htus: &htus,
            access_token: Some(token),
            required: true,
        };
        let verified = state
            .check_proof(now, &request)
            .map_err(Refusal::Proof)?
            .ok_or(Refusal::Proof(ProofRefusal::Required))?;
        if state.bound_key(token) != Some(verified.jkt.as_str()) {
            return Err(Refusal::DpopToken);
        }
        state.whoami(now, token).ok_or(Refusal::DpopToken)
    })
}

/// A 401 with the `WWW-Authenticate` challenge of RFC 6750 section 3 or RFC 9449
/// section 7.1; descriptions are fixed strings, never the token or the proof.
fn refused(refusal: &Refusal) -> Response {
    let (scheme, error, description) = match refusal {
        Refusal::Bearer => (
            "Bearer",
            "invalid_token",
            "missing, unknown, expired or revoked access token",
        ),
        Refusal::BoundAsBearer => (
            "DPoP",
            "invalid_token",
            "this token is bound to a DPoP key: send it as Authorization: DPoP with a DPoP proof",
        ),
        Refusal::DpopToken => (
            "DPoP",
            "invalid_token",
            "unknown, expired or revoked access token, or not bound to the proof's key",
        ),
        Refusal::Proof(ProofRefusal::UseNonce) => (
            "DPoP",
            "use_dpop_nonce",
            "the DPoP proof must carry the nonce of the DPoP-Nonce header",
        ),
        Refusal::Proof(_) => ("DPoP", "invalid_dpop_proof", "the DPoP proof was refused"),
    };
    let body = json!({"error": error, "error_description": description});
    let mut response = no_store_json(StatusCode::UNAUTHORIZED, &body);
    let challenge = if scheme == "DPoP" {
        let algs = crate::dpop::SIGNING_ALGS.join(" ");
        format!("DPoP error=\"{error}\", algs=\"{algs}\"")
    } else {
        format!("Bearer error=\"{error}\"")
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
