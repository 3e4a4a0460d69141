//! What a proxy changes in the headers it passes on: hop-by-hop headers (RFC 9110
//! section 7.6.1) are dropped both ways, and upstream requests get the upstream's
//! `Host` and the credential's `Authorization` in place of the client's.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message: never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop headers: the fixed ones, `Upgrade` (a proxy that does not
/// tunnel cannot switch protocols), and every header `Connection` names.
pub fn drop_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Readies a client's headers for the upstream, once per request: hop-by-hop and the
/// client's own credentials out, the upstream's `Host` in. Each attempt then adds the
/// token (`bearer`).
pub fn upstream_request(headers: &mut HeaderMap, host: &HeaderValue) {
    drop_hop_by_hop(headers);
    // The proxy answers `Expect: 100-continue` to its client itself; hyper's client
    // sends the body without waiting for the upstream's 100.
    headers.remove(header::EXPECT);
    // A key that lets a client use this credential is for the broker, not the API.
    headers.remove("token-broker-key");
    headers.remove(header::AUTHORIZATION);
    // A proof of the client's own would not be for the token the proxy sends.
    headers.remove("dpop");
    headers.insert(header::HOST, host.clone());
}

/// `Authorization: Bearer TOKEN`, marked sensitive (never indexed, shown redacted).
pub fn bearer(token: &str) -> Option<HeaderValue> {
    authorization("Bearer", token)
}

/// `Authorization: SCHEME TOKEN` (`Bearer`, or `DPoP` for a bound token), sensitive.
pub fn authorization(scheme: &str, token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("{scheme} {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A resource server's DPoP nonce challenge (RFC 9449 section 9) that can be answered:
/// a 401 that `asks_for_nonce`, with a `DPoP-Nonce` a proof can carry.
pub fn nonce_challenge(status: axum::http::StatusCode, headers: &HeaderMap) -> bool {
    asks_for_nonce(status, headers)
        && headers
            .get("dpop-nonce")
            .and_then(|v| crate::idp::dpop::valid_nonce(v.as_bytes()))
            .is_some()
}

/// 401 with `WWW-Authenticate: DPoP error="use_dpop_nonce"`: the proof lacked a nonce,
/// the token itself was not refused (whether or not a usable nonce came with it).
pub fn asks_for_nonce(status: axum::http::StatusCode, headers: &HeaderMap) -> bool {
    status == axum::http::StatusCode::UNAUTHORIZED
        && headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                let v = v.trim_start();
                v.len() > 4
                    && v[..4].eq_ignore_ascii_case("dpop")
                    && v[4..].starts_with(' ')
                    && v.contains("use_dpop_nonce")
            })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_go() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Hop, x-other"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("x-other", "2"),
            ("x-end-to-end", "3"),
            ("content-length", "10"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        drop_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["content-length", "x-end-to-end"]);
    }

    #[test]
    fn the_upstream_gets_its_host_and_the_token_not_the_clients() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9000"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer mine"),
        );
        headers.insert("token-broker-key", HeaderValue::from_static("k"));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        let host = HeaderValue::from_static("api.example.com");
        upstream_request(&mut headers, &host);
        assert!(!headers.contains_key(header::AUTHORIZATION));
        headers.insert(header::AUTHORIZATION, bearer("theirs").unwrap());
        assert_eq!(headers[header::HOST], "api.example.com");
        assert_eq!(headers[header::AUTHORIZATION], "Bearer theirs");
        assert!(headers[header::AUTHORIZATION].is_sensitive());
        assert!(!format!("{headers:?}").contains("theirs"));
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn only_a_dpop_use_dpop_nonce_401_with_a_nonce_is_a_nonce_challenge() {
        use axum::http::StatusCode;
        let headers = |auth: &'static str, nonce: Option<&'static str>| {
            let mut h = HeaderMap::new();
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(auth));
            if let Some(nonce) = nonce {
                h.insert("dpop-nonce", HeaderValue::from_static(nonce));
            }
            h
        };
        let with = |status: StatusCode, auth: &'static str, nonce: bool| {
            nonce_challenge(status, &headers(auth, nonce.then_some("n1")))
        };
        let challenge = r#"DPoP error="use_dpop_nonce", error_description="fresh""#;
        assert!(with(StatusCode::UNAUTHORIZED, challenge, true));
        assert!(with(
            StatusCode::UNAUTHORIZED,
            r#"dpop error="use_dpop_nonce""#,
            true
        ));
        assert!(!with(StatusCode::UNAUTHORIZED, challenge, false));
        // A nonce no proof may carry cannot be answered, yet the token was not refused.
        let unusable = headers(challenge, Some("a b"));
        assert!(!nonce_challenge(StatusCode::UNAUTHORIZED, &unusable));
        assert!(asks_for_nonce(StatusCode::UNAUTHORIZED, &unusable));
        assert!(asks_for_nonce(
            StatusCode::UNAUTHORIZED,
            &headers(challenge, None)
        ));
        assert!(!asks_for_nonce(
            StatusCode::UNAUTHORIZED,
            &headers(r#"DPoP error="invalid_token""#, Some("n1"))
        ));
        assert!(!with(StatusCode::BAD_REQUEST, challenge, true));
        assert!(!with(
            StatusCode::UNAUTHORIZED,
            r#"DPoP error="invalid_token""#,
            true
        ));
        assert!(!with(
            StatusCode::UNAUTHORIZED,
            r#"Bearer error="use_dpop_nonce""#,
            true
        ));
    }
}
