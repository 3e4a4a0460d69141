//! `POST /token/{name}/proof`: a DPoP proof (RFC 9449) for one request an app is about
//! to make with the credential's token, so apps get sender-constrained tokens without
//! holding a key or a JOSE library.
//!
//! The token comes through the credential's one gate (`Credential::get`), as for a read,
//! after the same guards and client rules; the proof is signed by the broker's key and
//! bound to that token (`ath`). Parsing and answering only: the key and the nonces are
//! the broker's.

use std::time::SystemTime;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::debug;

use super::App;
use super::error::ApiError;
use super::listen::Peer;
use crate::broker::Want;

/// The body: what the app's request will be.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofBody {
    htm: String,
    htu: String,
    /// The `DPoP-Nonce` the resource server sent the app, if it sent one.
    nonce: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProofQuery {
    min_ttl: Option<String>,
}

/// A checked proof request.
struct Asked {
    htm: String,
    /// Normalised: no query, no fragment.
    htu: String,
    nonce: Option<String>,
    min_ttl: std::time::Duration,
}

/// `POST /token/{name}/proof`.
pub async fn proof_named(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    peer: Option<Extension<Peer>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = match &path {
        Ok(Path(name)) => Ok(name.as_str()),
        Err(_) => Err(ApiError::bad_request(
            "the credential name is not valid UTF-8",
        )),
    };
    let peer = peer.map(|Extension(p)| p);
    let credential = match super::token::resolve(&app, Some(name), peer.as_ref(), &headers) {
        Ok(credential) => credential,
        Err(error) => return error.into_response(),
    };
    if !credential.uses_dpop() {
        credential.count_failed("dpop_not_enabled");
        return ApiError::NotDpop(credential.name().to_owned()).into_response();
    }
    let asked = match parse(query.as_deref(), &body) {
        Ok(asked) => asked,
        Err(error) => return error.into_response(),
    };
    debug!(credential = credential.name(), htm = %asked.htm, "proof request");
    let token = match credential.get(Want::Fresh(asked.min_ttl)).await {
        Ok(token) => token,
        Err(error) => return failed(&credential, error),
    };
    let proof = credential
        .dpop_proof(
            &asked.htm,
            &asked.htu,
            token.secret(),
            asked.nonce.as_deref(),
        )
        .await;
    match proof {
        Ok(proof) => {
            credential.count_served();
            answer(
                token.secret(),
                &proof,
                token.ttl(SystemTime::now()).as_secs(),
            )
        }
        Err(error) => failed(&credential, error),
    }
}

fn failed(credential: &crate::broker::Credential, error: crate::error::Error) -> Response {
    let e = ApiError::about(error, credential.name());
    credential.count_failed(e.code());
    e.into_response()
}

fn answer(token: &str, proof: &str, expires_in: u64) -> Response {
    let body = serde_json::json!({
        "access_token": token,
        "token_type": "DPoP",
        "dpop": proof,
        "expires_in": expires_in,
    });
    super::json_no_store(StatusCode::OK, body)
}

fn parse(query: Option<&str>, body: &[u8]) -> Result<Asked, ApiError> {
    let query: ProofQuery = match query.filter(|q| !q.is_empty()) {
        None => ProofQuery::default(),
        Some(q) => serde_urlencoded::from_str(q).map_err(|e| {
            ApiError::bad_request(format!("bad query string: {e}; known parameters: min_ttl"))
        })?,
    };
    let min_ttl = match query.min_ttl.as_deref() {
        None => std::time::Duration::ZERO,
        Some(text) => crate::duration::parse(text)
            .map_err(|e| ApiError::bad_request(format!("min_ttl: {e}")))?,
    };
    let body: ProofBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "bad JSON body ({e}); send {{\"htm\": \"GET\", \"htu\": \"https://api.example.com/path\", \"nonce\": optional}}"
        ))
    })?;
    if !is_method(&body.htm) {
        return Err(ApiError::bad_request(
            "htm: not an HTTP method (a token such as GET or POST)",
        ));
    }
    let htu = crate::dpop::normalize_htu(&body.htu)
        .map_err(|e| ApiError::bad_request(format!("{e} (absolute http or https URI)")))?;
    if let Some(nonce) = &body.nonce
        && crate::idp::dpop::valid_nonce(nonce.as_bytes()).is_none()
    {
        return Err(ApiError::bad_request(
            "nonce: not a DPoP nonce (1-1024 visible ASCII characters, no quote or backslash)",
        ));
    }
    Ok(Asked {
        htm: standard_case(body.htm),
        htu,
        nonce: body.nonce,
        min_ttl,
    })
}

/// An HTTP method: a `token` of RFC 9110 section 5.6.2, of sane length.
fn is_method(text: &str) -> bool {
    (1..=32).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The methods of RFC 9110 and PATCH, which HTTP clients send uppercase.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// `htm` as the request will carry it: methods are case-sensitive (RFC 9110 section
/// 9.1) and a resource server compares `htm` exactly, so a standard method in another
/// case (`get`) is uppercased, as clients send it; any other method is kept as given.
fn standard_case(htm: String) -> String {
    match STANDARD_METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(&htm))
    {
        Some(method) => (*method).to_owned(),
        None => htm,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse_body(json: &str) -> Result<Asked, String> {
        parse(None, json.as_bytes()).map_err(|e| e.code().to_owned() + ": " + &format!("{e:?}"))
    }

    #[test]
    fn a_request_is_normalised_and_bad_ones_are_refused() {
        let asked =
            parse_body(r#"{"htm":"GET","htu":"HTTPS://Api.Example.com:443/v1/x?q=1#f"}"#).unwrap();
        assert_eq!(asked.htu, "https://api.example.com/v1/x");
        assert_eq!(asked.htm, "GET");
        assert_eq!(asked.nonce, None);
        for (given, sent) in [("get", "GET"), ("Patch", "PATCH"), ("x-Custom", "x-Custom")] {
            let body = format!(r#"{{"htm":"{given}","htu":"https://a.test/"}}"#);
            assert_eq!(parse_body(&body).unwrap().htm, sent, "{given}");
        }
        let asked = parse(
            Some("min_ttl=30s"),
            br#"{"htm":"PATCH","htu":"http://127.0.0.1:9/a","nonce":"n-1"}"#,
        )
        .unwrap();
        assert_eq!(
            (asked.min_ttl.as_secs(), asked.nonce.as_deref()),
            (30, Some("n-1"))
        );
        for bad in [
            r#"{"htm":"GE T","htu":"https://a.test/"}"#,
            r#"{"htm":"","htu":"https://a.test/"}"#,
            r#"{"htm":"GET","htu":"/relative"}"#,
            r#"{"htm":"GET","htu":"ftp://a.test/"}"#,
            r#"{"htm":"GET","htu":"https://user:pw@a.test/"}"#,
            r#"{"htm":"GET","htu":"https://a.test/","nonce":"a b"}"#,
            r#"{"htm":"GET","htu":"https://a.test/","extra":1}"#,
            r#"{"htm":"GET"}"#,
            "not json",
        ] {
            let err = parse_body(bad)
                .err()
                .unwrap_or_else(|| panic!("accepted {bad}"));
            assert!(err.starts_with("bad_request"), "{bad}: {err}");
        }
        assert!(
            parse(
                Some("format=raw"),
                br#"{"htm":"GET","htu":"https://a.test/"}"#
            )
            .is_err()
        );
    }
}
