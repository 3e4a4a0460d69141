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
    headers.insert(header::HOST, host.clone());
}

/// `Authorization: Bearer TOKEN`, marked sensitive (never indexed, shown redacted).
pub fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
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
}
