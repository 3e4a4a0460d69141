//! The `htu` claim: the request URI a proof is for, compared after normalisation.
//!
//! RFC 9449 section 4.2 names the URI "without query and fragment parts", and section
//! 4.3 compares after the syntax-based normalisation of RFC 3986 section 6.2.2 and the
//! scheme-based one of 6.2.3. The `url` crate does both (lowercase scheme and host,
//! default port dropped, empty path as `/`, percent-encoding and dot segments settled).

use url::Url;

/// Why a string is not a usable `htu`. The message never repeats the input, which may
/// carry a password in its userinfo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HtuError {
    #[error("htu is not an absolute URI")]
    NotAbsolute,
    #[error("htu must be an http or https URI")]
    NotHttp,
    #[error("htu must not carry a user name or password")]
    UserInfo,
    #[error("htu has no host")]
    NoHost,
}

/// The normal form of `htu`: an absolute http(s) URI without userinfo; its query and
/// fragment are dropped rather than refused, as the RFC writes the claim without them
/// and a caller naming the full request URI means the same resource.
pub fn normalize_htu(htu: &str) -> Result<String, HtuError> {
    let mut url = Url::parse(htu).map_err(|_| HtuError::NotAbsolute)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HtuError::NotHttp);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(HtuError::UserInfo);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(HtuError::NoHost);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url.into())
}
