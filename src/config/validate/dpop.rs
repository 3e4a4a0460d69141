//! `dpop` and `dpop_key` of a credential: DPoP (RFC 9449) for any grant that asks an
//! identity provider. The key file itself is read and parsed by `check-config
//! --check-secrets` (`preflight`) and at first use, not here: this is data only.

use super::Check;
use crate::config::DpopSpec;
use crate::config::raw::RawCredential;
use crate::secret::SecretSource;

/// The credential's DPoP settings, or `None` without `dpop = true`.
pub(super) fn dpop(
    check: &mut Check,
    key: &dyn Fn(&str) -> String,
    raw: &RawCredential,
    is_exec: bool,
) -> Option<DpopSpec> {
    let on = raw.dpop.unwrap_or(false);
    if on && is_exec {
        check.fail(
            key("dpop"),
            "is not used by grant = \"exec\" (the command asks no identity provider, so no \
             token is bound to a key); remove it",
        );
    }
    if let Some(source) = &raw.dpop_key {
        if !on {
            check.fail(
                key("dpop_key"),
                "is only used with dpop = true; set dpop = true or remove it",
            );
        }
        if matches!(source, SecretSource::Inline(text) if text.trim().is_empty()) {
            check.fail(key("dpop_key"), "is empty");
        }
    }
    on.then(|| DpopSpec {
        key: raw.dpop_key.clone(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::*;

    const IDP: &str = "token_url = \"https://idp.test/token\"\nclient_id = \"c\"\n";

    fn load(credential: &str) -> Result<CredentialSpec, String> {
        let toml = format!("[state]\ndir = \"/nonexistent\"\n[credentials.x]\n{credential}");
        load_str(&toml)
            .map(|mut c| c.credentials.remove(0))
            .map_err(|p| p.to_string())
    }

    #[test]
    fn dpop_works_with_every_idp_grant_and_a_key_file_is_optional() {
        let x = load(&format!("{IDP}refresh_token = \"r\"\ndpop = true\n")).unwrap();
        assert_eq!(x.dpop, Some(DpopSpec { key: None }));
        let x = load(&format!(
            "{IDP}grant = \"client_credentials\"\nclient_secret = \"s\"\ndpop = true\n\
             dpop_key = {{ file = \"/k.pem\" }}\n"
        ))
        .unwrap();
        assert_eq!(
            x.dpop,
            Some(DpopSpec {
                key: Some(SecretSource::File("/k.pem".into()))
            })
        );
        let x = load(&format!("{IDP}refresh_token = \"r\"\ndpop = false\n")).unwrap();
        assert_eq!(x.dpop, None);
        let x = load(&format!("{IDP}refresh_token = \"r\"\n")).unwrap();
        assert_eq!(x.dpop, None, "off by default");
    }

    #[test]
    fn impossible_dpop_settings_are_refused_naming_the_key() {
        let err = load(&format!(
            "{IDP}refresh_token = \"r\"\ndpop_key = {{ file = \"/k\" }}\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("credentials.x.dpop_key: is only used with dpop = true"),
            "{err}"
        );
        let err = load("grant = \"exec\"\nexec.command = [\"/bin/t\"]\ndpop = true\n").unwrap_err();
        assert!(
            err.contains("credentials.x.dpop: is not used by grant = \"exec\""),
            "{err}"
        );
        let err = load(&format!(
            "{IDP}refresh_token = \"r\"\ndpop = true\ndpop_key = \" \"\n"
        ))
        .unwrap_err();
        assert!(err.contains("credentials.x.dpop_key: is empty"), "{err}");
        let err = load(&format!("{IDP}refresh_token = \"r\"\ndpop = \"maybe\"\n")).unwrap_err();
        assert!(err.contains("credentials.x.dpop"), "{err}");
    }
}
