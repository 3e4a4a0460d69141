//! Validation of the login settings: the two endpoints (checked like `token_url`) and
//! the `login` table, only on `refresh_token` credentials (other grants need no user).

use super::super::raw::RawCredential;
use super::{Check, checked_url};
use crate::config::{DEFAULT_REDIRECT_PATH, EndpointUrl, LoginSpec};

/// The checked login settings of a credential whose grant is `grant`.
pub(super) fn login(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
    is_refresh_token: bool,
) -> LoginSpec {
    let mut endpoint = |field: &str, text: Option<&String>| {
        let text = text?;
        match checked_url(text) {
            Ok(url) => Some(EndpointUrl {
                url,
                text: text.trim().to_owned(),
            }),
            Err(e) => {
                check.fail(key(field), e);
                None
            }
        }
    };
    let authorization_endpoint = endpoint(
        "authorization_endpoint",
        raw.authorization_endpoint.as_ref(),
    );
    let device_authorization_endpoint = endpoint(
        "device_authorization_endpoint",
        raw.device_authorization_endpoint.as_ref(),
    );
    let table = raw.login.as_ref();
    let scope = table.and_then(|l| l.scope.clone());
    if scope.as_deref().is_some_and(|s| s.trim().is_empty()) {
        check.fail(
            key("login.scope"),
            "must not be empty; remove it for the default",
        );
    }
    let redirect_port = table.and_then(|l| l.redirect_port);
    if redirect_port == Some(0) {
        check.fail(
            key("login.redirect_port"),
            "must be 1-65535; remove it for a random port",
        );
    }
    let redirect_path = table
        .and_then(|l| l.redirect_path.clone())
        .unwrap_or_else(|| DEFAULT_REDIRECT_PATH.to_owned());
    if !valid_path(&redirect_path) {
        check.fail(
            key("login.redirect_path"),
            format!("`{redirect_path}` is not a path like /callback (a `/`, then letters, digits, `-_./~`)"),
        );
    }
    let set = [
        (
            "authorization_endpoint",
            raw.authorization_endpoint.is_some(),
        ),
        (
            "device_authorization_endpoint",
            raw.device_authorization_endpoint.is_some(),
        ),
        ("login", table.is_some()),
    ];
    if !is_refresh_token {
        for (field, _) in set.iter().filter(|(_, set)| *set) {
            check.fail(
                key(field),
                "is only used by `token-broker login`, which obtains a refresh token; \
                 it applies to grant = \"refresh_token\" only",
            );
        }
    }
    LoginSpec {
        authorization_endpoint,
        device_authorization_endpoint,
        scope: scope.map(|s| s.trim().to_owned()),
        redirect_port,
        redirect_path,
    }
}

/// A redirect path: absolute, without query, fragment or anything that needs escaping,
/// so the URI registered at the IdP and the one sent are the same string.
fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 200
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::load_str;

    const BASE: &str = r#"
[credentials.x]
token_url = "https://idp.example/token"
client_id = "c"
refresh_token = "r"
"#;

    fn problems(extra: &str) -> Vec<String> {
        match load_str(&format!("{BASE}{extra}")) {
            Ok(_) => Vec::new(),
            Err(p) => p.0.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn login_settings_are_read_with_defaults() {
        let config = load_str(&format!(
            "{BASE}authorization_endpoint = \"https://idp.example/authorize\"\n\
             login.scope = \"openid offline_access\"\nlogin.redirect_port = 8400\n"
        ))
        .unwrap();
        let login = &config.credentials[0].login;
        assert_eq!(
            login.authorization_endpoint.as_ref().unwrap().text,
            "https://idp.example/authorize"
        );
        assert_eq!(login.device_authorization_endpoint, None);
        assert_eq!(login.scope.as_deref(), Some("openid offline_access"));
        assert_eq!(login.redirect_port, Some(8400));
        assert_eq!(login.redirect_path, "/callback");
    }

    #[test]
    fn bad_login_settings_name_their_key() {
        let found = problems(
            "device_authorization_endpoint = \"http://idp.example/device\"\n\
             login.redirect_port = 0\nlogin.redirect_path = \"cb?x=1\"\nlogin.scope = \" \"\n",
        );
        for key in [
            "credentials.x.device_authorization_endpoint: `http://idp.example/device` uses plain http",
            "credentials.x.login.redirect_port: must be 1-65535",
            "credentials.x.login.redirect_path: `cb?x=1` is not a path",
            "credentials.x.login.scope: must not be empty",
        ] {
            assert!(found.iter().any(|p| p.starts_with(key)), "{key}: {found:?}");
        }
        let typo = problems("login.redirect_prot = 1\n");
        assert!(typo.iter().any(|p| p.contains("redirect_prot")), "{typo:?}");
    }

    #[test]
    fn login_settings_on_another_grant_are_refused() {
        let config = r#"
[credentials.cc]
grant = "client_credentials"
token_url = "https://idp.example/token"
client_id = "c"
client_secret = "s"
authorization_endpoint = "https://idp.example/authorize"
login.scope = "a"
"#;
        let found: Vec<String> = load_str(config)
            .unwrap_err()
            .0
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("credentials.cc.authorization_endpoint: is only used by"));
        assert!(found[1].starts_with("credentials.cc.login: is only used by"));
    }
}
