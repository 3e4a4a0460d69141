//! Every output shape a command may print, and every way it can be wrong without the
//! error ever quoting the output.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::secret::ExposeSecret;
use base64::Engine as _;

fn ok(text: &str, format: ExecFormat) -> TokenResponse {
    parse(text.as_bytes(), format).unwrap()
}

fn left(response: &TokenResponse) -> u64 {
    response
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs()
}

#[test]
fn raw_tokens_take_their_lifetime_from_the_jwt_or_the_default() {
    let opaque = ok("  opaque-token-123\n", ExecFormat::Auto);
    assert_eq!(opaque.access_token.expose_secret(), "opaque-token-123");
    assert_eq!(
        (opaque.token_type.as_str(), opaque.expires_at),
        ("Bearer", None)
    );
    let exp = SystemTime::now() + Duration::from_secs(600);
    let exp = exp
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"));
    let jwt = ok(&format!("e30.{payload}.sig\n"), ExecFormat::Raw);
    assert!((598..=600).contains(&left(&jwt)));
}

#[test]
fn a_jwt_exp_in_milliseconds_is_no_lifetime() {
    let ms = (SystemTime::now() + Duration::from_secs(600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{ms}}}"));
    let jwt = ok(&format!("e30.{payload}.sig"), ExecFormat::Raw);
    assert_eq!(jwt.expires_at, None, "default_lifetime applies");
}

#[test]
fn an_expiry_in_milliseconds_is_refused_like_a_jwt_exp_in_milliseconds() {
    let ms = (SystemTime::now() + Duration::from_secs(600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let text = format!(r#"{{"access_token":"t","expires_at":{ms}}}"#);
    let error = parse(text.as_bytes(), ExecFormat::Json).err().unwrap();
    assert!(
        error.contains("neither an RFC 3339 time nor unix seconds"),
        "{error}"
    );
}

#[test]
fn exec_credentials_of_kubernetes_plugins_are_read() {
    let later = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(900));
    let v1 = format!(
        r#"{{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{{"token":"k8s-aws-v1.abc","expirationTimestamp":"{later}"}}}}"#
    );
    let parsed = ok(&v1, ExecFormat::Auto);
    assert_eq!(parsed.access_token.expose_secret(), "k8s-aws-v1.abc");
    assert!((898..=900).contains(&left(&parsed)));
    // The same instant written with an offset, as Go may write it.
    let offset = later.to_string().replace('Z', "+00:00");
    let with_offset = v1.replace(&later.to_string(), &offset);
    assert_eq!(
        ok(&with_offset, ExecFormat::Json).expires_at,
        parsed.expires_at
    );
    assert_eq!(
        rfc3339("2030-01-01T02:00:00+02:00"),
        rfc3339("2030-01-01T00:00:00Z")
    );
    let no_expiry = r#"{"kind":"ExecCredential","status":{"token":"t"}}"#;
    assert_eq!(ok(no_expiry, ExecFormat::Json).expires_at, None);
}

#[test]
fn oauth_shaped_objects_and_the_azure_cli_are_read() {
    let parsed = ok(
        r#"{"access_token":"at","expires_in":"120","token_type":"DPoP","scope":"read"}"#,
        ExecFormat::Auto,
    );
    assert_eq!(parsed.token_type, "DPoP");
    assert_eq!(parsed.scope.as_deref(), Some("read"));
    assert!((118..=120).contains(&left(&parsed)));
    let on = SystemTime::now() + Duration::from_secs(3000);
    let on = on.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let azure =
        format!(r#"{{"accessToken":"az","expires_on":{on},"tokenType":"Bearer","tenant":"t"}}"#);
    assert!((2998..=3000).contains(&left(&ok(&azure, ExecFormat::Json))));
}

#[test]
fn bad_output_is_refused_without_quoting_it() {
    let secret = "s3cr3t-value";
    let past = humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(5));
    let cases: Vec<(String, ExecFormat, &str)> = vec![
        (String::new(), ExecFormat::Auto, "printed nothing"),
        (
            format!("{secret} {secret}"),
            ExecFormat::Auto,
            "not one token",
        ),
        (
            format!("{secret}\n{secret}"),
            ExecFormat::Raw,
            "not one token",
        ),
        (
            format!("{{\"access_token\": \"{secret}"),
            ExecFormat::Auto,
            "not valid JSON",
        ),
        (secret.to_owned(), ExecFormat::Json, "not valid JSON"),
        (format!("[\"{secret}\"]"), ExecFormat::Json, "not an object"),
        (
            format!("{{\"token\":\"{secret}\"}}"),
            ExecFormat::Json,
            "neither status.token nor access_token",
        ),
        (
            format!("{{\"kind\":\"Other\",\"status\":{{\"token\":\"{secret}\"}}}}"),
            ExecFormat::Json,
            "other than ExecCredential",
        ),
        (
            "{\"kind\":\"ExecCredential\",\"status\":{\"clientCertificateData\":\"x\"}}".to_owned(),
            ExecFormat::Json,
            "client certificates",
        ),
        (
            format!("{{\"status\":{{\"token\":\"{secret}\",\"expirationTimestamp\":\"soon\"}}}}"),
            ExecFormat::Json,
            "not an RFC 3339 time",
        ),
        (
            format!("{{\"access_token\":\"{secret}\",\"expires_in\":-5}}"),
            ExecFormat::Json,
            "expires_in is not",
        ),
        (
            format!("{{\"status\":{{\"token\":\"{secret}\",\"expirationTimestamp\":\"{past}\"}}}}"),
            ExecFormat::Json,
            "already expired",
        ),
    ];
    for (text, format, message) in cases {
        let err = parse(text.as_bytes(), format).err().unwrap();
        assert!(err.contains(message), "{text}: {err}");
        assert!(!err.contains(secret), "{err}");
    }
    assert!(
        parse(b"\xff\xfe", ExecFormat::Auto)
            .err()
            .unwrap()
            .contains("UTF-8")
    );
}
