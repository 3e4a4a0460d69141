//! The settings `token-broker login` uses to obtain a credential's first refresh token:
//! where the user is sent (authorization and device authorization endpoints), which
//! scope is asked for, and where the loopback listener waits for the redirect. The
//! running broker never reads them.

use super::EndpointUrl;

/// A `refresh_token` credential's login settings; every one optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginSpec {
    /// `authorization_endpoint`: where the browser goes; else from discovery.
    pub authorization_endpoint: Option<EndpointUrl>,
    /// `device_authorization_endpoint` (RFC 8628); else from discovery.
    pub device_authorization_endpoint: Option<EndpointUrl>,
    /// `login.scope`: replaces the default (the credential's `scope`, plus
    /// `offline_access` when discovery lists it).
    pub scope: Option<String>,
    /// `login.redirect_port`: the loopback port to listen on; a random one if unset.
    pub redirect_port: Option<u16>,
    /// `login.redirect_path`: the path of the redirect URI (default `/callback`).
    pub redirect_path: String,
}

/// The redirect path used when `login.redirect_path` is not set.
pub const DEFAULT_REDIRECT_PATH: &str = "/callback";
