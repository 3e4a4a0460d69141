//! Where a login goes: the token, authorization and device authorization endpoints, and
//! the scope asked for. Each endpoint comes from the config when it names one, else
//! from the issuer's metadata (OIDC discovery or RFC 8414); the scope is `login.scope`,
//! else the credential's `scope` plus `offline_access` when the issuer lists it (some
//! IdPs issue refresh tokens only for that scope).

use crate::config::{CredentialSpec, Endpoint, EndpointUrl};
use crate::idp::{Discovery, IdpClient};

use super::LoginError;

/// Everything a login needs to know about the IdP's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub token: EndpointUrl,
    pub authorization: Option<EndpointUrl>,
    pub device_authorization: Option<EndpointUrl>,
    /// The scope to ask for; `None` asks for the IdP's default.
    pub scope: Option<String>,
}

impl Endpoints {
    /// The authorization endpoint, or why there is none.
    pub fn authorization(&self, name: &str) -> Result<&EndpointUrl, LoginError> {
        self.authorization.as_ref().ok_or_else(|| {
            LoginError::Usage(format!(
                "credentials.{name} has no authorization endpoint: set \
                 `authorization_endpoint`, or `issuer` if the IdP publishes one \
                 (or log in with --device)"
            ))
        })
    }

    /// The device authorization endpoint, or why there is none.
    pub fn device_authorization(&self, name: &str) -> Result<&EndpointUrl, LoginError> {
        self.device_authorization.as_ref().ok_or_else(|| {
            LoginError::Usage(format!(
                "credentials.{name} has no device authorization endpoint: set \
                 `device_authorization_endpoint`, or `issuer` if the IdP publishes one \
                 (or log in without --device)"
            ))
        })
    }
}

/// Resolves the endpoints of `spec`, fetching the issuer's metadata when it has one.
pub async fn endpoints(idp: &IdpClient, spec: &CredentialSpec) -> Result<Endpoints, LoginError> {
    let discovery = match &spec.endpoint {
        Some(Endpoint::Issuer(issuer)) => Some(
            idp.discover_login(issuer)
                .await
                .map_err(|e| LoginError::Idp(format!("discovery of {issuer}: {e}")))?,
        ),
        _ => None,
    };
    combine(spec, discovery).ok_or_else(|| {
        LoginError::Usage(format!("credentials.{} has no token endpoint", spec.name))
    })
}

/// The config's endpoints, filled in from `discovery`; the config wins.
pub fn combine(spec: &CredentialSpec, discovery: Option<Discovery>) -> Option<Endpoints> {
    let login = &spec.login;
    let (token, authorization, device, supported) = match (&spec.endpoint, discovery) {
        (Some(Endpoint::TokenUrl(url)), found) => {
            let found = found.map(|d| {
                (
                    d.authorization_endpoint,
                    d.device_authorization_endpoint,
                    d.scopes_supported,
                )
            });
            let (a, d, s) = found.unwrap_or_default();
            (url.clone(), a, d, s)
        }
        (_, Some(d)) => (
            d.token_endpoint,
            d.authorization_endpoint,
            d.device_authorization_endpoint,
            d.scopes_supported,
        ),
        (_, None) => return None,
    };
    Some(Endpoints {
        token,
        authorization: login.authorization_endpoint.clone().or(authorization),
        device_authorization: login.device_authorization_endpoint.clone().or(device),
        scope: scope(spec, &supported),
    })
}

/// `login.scope` as written, else the credential's scope with `offline_access` added
/// when the issuer supports it and it is not there yet.
fn scope(spec: &CredentialSpec, supported: &[String]) -> Option<String> {
    if let Some(scope) = &spec.login.scope {
        return Some(scope.clone());
    }
    let mut scopes: Vec<&str> = spec
        .scope
        .as_deref()
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    if supported.iter().any(|s| s == "offline_access") && !scopes.contains(&"offline_access") {
        scopes.push("offline_access");
    }
    (!scopes.is_empty()).then(|| scopes.join(" "))
}

/// Whether `scope` asks for an OpenID Connect login (which then carries a `nonce`).
pub fn is_oidc(scope: Option<&str>) -> bool {
    scope.is_some_and(|s| s.split_whitespace().any(|one| one == "openid"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> CredentialSpec {
        let toml = format!("[credentials.x]\nclient_id = \"c\"\nrefresh_token = \"r\"\n{extra}\n");
        crate::config::load_str(&toml)
            .unwrap()
            .credentials
            .remove(0)
    }

    fn url(text: &str) -> EndpointUrl {
        EndpointUrl {
            url: text.parse().unwrap(),
            text: text.to_owned(),
        }
    }

    fn discovered(scopes: &[&str]) -> Discovery {
        Discovery {
            token_endpoint: url("https://idp.example/oauth/token"),
            authorization_endpoint: Some(url("https://idp.example/oauth/authorize")),
            device_authorization_endpoint: Some(url("https://idp.example/oauth/device")),
            scopes_supported: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn discovery_fills_in_what_the_config_leaves_out() {
        let spec = spec(
            "issuer = \"https://idp.example\"\nscope = \"read\"\n\
             authorization_endpoint = \"https://login.example/authorize\"",
        );
        let found = combine(&spec, Some(discovered(&["read", "offline_access"]))).unwrap();
        assert_eq!(found.token.text, "https://idp.example/oauth/token");
        assert_eq!(
            found.authorization.unwrap().text,
            "https://login.example/authorize",
            "the config wins"
        );
        assert_eq!(
            found.device_authorization.unwrap().text,
            "https://idp.example/oauth/device"
        );
        assert_eq!(found.scope.as_deref(), Some("read offline_access"));
    }

    #[test]
    fn offline_access_is_added_only_when_listed_and_login_scope_replaces_all() {
        let plain = spec("issuer = \"https://idp.example\"\nscope = \"openid read\"");
        let scope = |spec: &CredentialSpec, d| combine(spec, Some(d)).unwrap().scope;
        assert_eq!(
            scope(&plain, discovered(&[])).as_deref(),
            Some("openid read")
        );
        let has = spec("issuer = \"https://idp.example\"\nscope = \"offline_access read\"");
        assert_eq!(
            scope(&has, discovered(&["offline_access"])).as_deref(),
            Some("offline_access read"),
            "not twice"
        );
        let none = spec("issuer = \"https://idp.example\"");
        assert_eq!(scope(&none, discovered(&[])), None);
        let own = spec(
            "issuer = \"https://idp.example\"\nscope = \"read\"\nlogin.scope = \"read write\"",
        );
        assert_eq!(
            scope(&own, discovered(&["offline_access"])).as_deref(),
            Some("read write")
        );
        assert!(is_oidc(Some("read openid")) && !is_oidc(Some("openidx")) && !is_oidc(None));
    }

    #[test]
    fn a_token_url_alone_has_no_login_endpoints_and_says_which_key_to_set() {
        let spec = spec("token_url = \"https://idp.example/token\"");
        let found = combine(&spec, None).unwrap();
        assert_eq!(found.token.text, "https://idp.example/token");
        let err = found.authorization("x").unwrap_err().to_string();
        assert!(err.contains("`authorization_endpoint`"), "{err}");
        let err = found.device_authorization("x").unwrap_err().to_string();
        assert!(err.contains("`device_authorization_endpoint`"), "{err}");
    }
}
