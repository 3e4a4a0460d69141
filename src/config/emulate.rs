//! `[emulate.*]`: local token protocols that existing SDKs and tools already speak,
//! answered with the broker's credentials. Each protocol is off unless its table is
//! present. Plain data and its checks; `emulate` serves the protocols.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::CredentialSpec;
use super::validate::Check;
use crate::secret::SecretSource;

/// `[emulate]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmulate {
    pub gce: Option<RawGce>,
    pub azure: Option<RawAzure>,
    pub git: Option<RawGit>,
}

/// `[emulate.gce]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGce {
    pub project_id: Option<String>,
    pub service_accounts: Option<BTreeMap<String, String>>,
}

/// `[emulate.azure]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAzure {
    pub secret: Option<SecretSource>,
    pub resources: Option<BTreeMap<String, String>>,
}

/// `[emulate.git]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGit {
    pub hosts: Option<BTreeMap<String, String>>,
    pub username: Option<String>,
}

/// The protocols the broker answers besides its own API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmulateConfig {
    pub gce: Option<GceSpec>,
    pub azure: Option<AzureSpec>,
    pub git: Option<GitSpec>,
}

impl EmulateConfig {
    /// Whether any protocol is on.
    pub fn any(&self) -> bool {
        self.gce.is_some() || self.azure.is_some() || self.git.is_some()
    }
}

/// The GCE metadata server (`/computeMetadata/v1/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceSpec {
    /// Served at `project/project-id`; SDKs take it as the default project.
    pub project_id: String,
    /// Sorted by name; `default` is what SDKs ask for unless told otherwise.
    pub accounts: Vec<GceAccount>,
}

/// One service account of the emulated metadata server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceAccount {
    /// The key as written: `default`, another alias, or an email.
    pub name: String,
    /// What `.../email` answers: SDKs ask for the account by it after the first lookup.
    pub email: String,
    pub credential: String,
    /// The credential's `scope`, split: what `.../scopes` lists and `?scopes=` may ask.
    pub scopes: Vec<String>,
}

/// Azure managed identity, App Service protocol (`GET /msi/token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSpec {
    /// What every request must carry in `X-IDENTITY-HEADER` (apps get it as
    /// `IDENTITY_HEADER`); read at each request, so it can be rotated.
    pub secret: SecretSource,
    /// Resource (normalised by `azure_resource`) -> credential.
    pub resources: BTreeMap<String, String>,
}

/// A resource or scope as Azure SDKs send it, made comparable: `/.default` and a
/// trailing `/` dropped, lower case (`https://management.azure.com/.default` and
/// `https://Management.azure.com/` name one resource).
pub fn azure_resource(text: &str) -> String {
    let text = text.trim();
    let text = text.strip_suffix("/.default").unwrap_or(text);
    text.trim_end_matches('/').to_ascii_lowercase()
}

/// The git credential helper (`token-broker git-credential`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSpec {
    /// Host (as git sends it: lower case, with `:PORT` if not the default) -> credential.
    pub hosts: BTreeMap<String, String>,
    /// The user name git sends with the token (hosts differ: `x-access-token`, `oauth2`).
    pub username: String,
}

/// Default `emulate.git.username`.
pub const GIT_USERNAME: &str = "x-access-token";

/// Checks `[emulate]` against the credentials it names.
pub(super) fn emulate(
    check: &mut Check,
    raw: Option<RawEmulate>,
    credentials: &[CredentialSpec],
) -> EmulateConfig {
    let raw = raw.unwrap_or_default();
    EmulateConfig {
        gce: raw.gce.map(|gce| self::gce(check, gce, credentials)),
        azure: raw
            .azure
            .map(|azure| self::azure(check, azure, credentials)),
        git: raw.git.map(|git| self::git(check, git, credentials)),
    }
}

fn known(check: &mut Check, key: String, name: &str, credentials: &[CredentialSpec]) -> bool {
    let found = credentials.iter().any(|c| c.name == name);
    if !found {
        check.fail(key, format!("no credential is named `{name}`"));
    }
    found
}

fn gce(check: &mut Check, raw: RawGce, credentials: &[CredentialSpec]) -> GceSpec {
    let project_id = raw.project_id.unwrap_or_default();
    let printable = project_id
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'/');
    if project_id.is_empty() || !printable {
        check.fail(
            "emulate.gce.project_id",
            "is required: visible ASCII without `/`, e.g. \"my-project\"",
        );
    }
    let raw_accounts = raw.service_accounts.unwrap_or_default();
    if raw_accounts.is_empty() {
        check.fail(
            "emulate.gce.service_accounts",
            "name at least one account, e.g. { default = \"CREDENTIAL\" }",
        );
    }
    let mut accounts = Vec::new();
    for (name, credential) in raw_accounts {
        let key = format!("emulate.gce.service_accounts.{name}");
        if name.is_empty() || name.contains('/') || !name.is_ascii() {
            check.fail(&key, "an account name is ASCII without `/`");
            continue;
        }
        if !known(check, key, &credential, credentials) {
            continue;
        }
        let email = account_email(&name, &credential, &project_id, credentials);
        let scopes = credentials
            .iter()
            .find(|c| c.name == credential)
            .and_then(|c| c.scope.as_deref())
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        accounts.push(GceAccount {
            name,
            email,
            credential,
            scopes,
        });
    }
    let mut emails: Vec<&str> = accounts.iter().map(|a| a.email.as_str()).collect();
    emails.sort_unstable();
    if let Some(twice) = emails.windows(2).find(|w| w[0] == w[1]) {
        check.fail(
            "emulate.gce.service_accounts",
            format!("two accounts have the email `{}`", twice[0]),
        );
    }
    GceSpec {
        project_id,
        accounts,
    }
}

/// An account's email: its name if that is one, else the credential's `client_id` if
/// that is one (a `jwt_bearer` service account's), else one made from the names.
fn account_email(
    name: &str,
    credential: &str,
    project_id: &str,
    credentials: &[CredentialSpec],
) -> String {
    if name.contains('@') {
        return name.to_owned();
    }
    let client_id = credentials
        .iter()
        .find(|c| c.name == credential)
        .map(|c| c.client_id.as_str())
        .filter(|id| id.contains('@'));
    match client_id {
        Some(id) => id.to_owned(),
        None => format!("{credential}@{project_id}.iam.gserviceaccount.com"),
    }
}

fn azure(check: &mut Check, raw: RawAzure, credentials: &[CredentialSpec]) -> AzureSpec {
    let secret = raw.secret.unwrap_or_else(|| {
        check.fail(
            "emulate.azure.secret",
            "is required: the X-IDENTITY-HEADER value apps get as IDENTITY_HEADER, e.g. { file = \"/run/secrets/identity_header\" }",
        );
        SecretSource::Inline(String::new())
    });
    let raw_resources = raw.resources.unwrap_or_default();
    if raw_resources.is_empty() {
        check.fail(
            "emulate.azure.resources",
            "name at least one resource, e.g. { \"https://management.azure.com/\" = \"CREDENTIAL\" }",
        );
    }
    let mut resources = BTreeMap::new();
    for (resource, credential) in raw_resources {
        let key = format!("emulate.azure.resources.\"{resource}\"");
        let normalised = azure_resource(&resource);
        if normalised.is_empty() {
            check.fail(&key, "a resource is a URI or an app id");
            continue;
        }
        if !known(check, key.clone(), &credential, credentials) {
            continue;
        }
        if resources.insert(normalised, credential).is_some() {
            check.fail(key, "names the same resource as another key");
        }
    }
    AzureSpec { secret, resources }
}

fn git(check: &mut Check, raw: RawGit, credentials: &[CredentialSpec]) -> GitSpec {
    let raw_hosts = raw.hosts.unwrap_or_default();
    if raw_hosts.is_empty() {
        check.fail(
            "emulate.git.hosts",
            "name at least one host, e.g. { \"github.com\" = \"CREDENTIAL\" }",
        );
    }
    let mut hosts = BTreeMap::new();
    for (host, credential) in raw_hosts {
        let key = format!("emulate.git.hosts.\"{host}\"");
        let plain = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
        if !plain {
            check.fail(&key, "a host is a name or address with an optional :PORT");
            continue;
        }
        if known(check, key, &credential, credentials) {
            hosts.insert(host.to_ascii_lowercase(), credential);
        }
    }
    let username = raw.username.unwrap_or_else(|| GIT_USERNAME.to_owned());
    if username.is_empty() || username.contains(['\n', '\0']) {
        check.fail(
            "emulate.git.username",
            "must be a non-empty line without NUL",
        );
    }
    GitSpec { hosts, username }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::load_str;

    /// A config with two credentials (`gcp` a service account by `client_id`) and
    /// `emulate`.
    fn emulate(emulate: &str) -> Result<EmulateConfig, Vec<String>> {
        let toml = format!(
            "[credentials.gcp]\ntoken_url = \"https://idp.example.com/t\"\n\
             client_id = \"robot@p.iam.gserviceaccount.com\"\nrefresh_token = \"r\"\n\
             scope = \"a b\"\n\
             [credentials.plain]\ntoken_url = \"https://idp.example.com/t\"\n\
             client_id = \"c\"\nrefresh_token = \"r\"\n{emulate}"
        );
        load_str(&toml)
            .map(|c| c.emulate)
            .map_err(|p| p.0.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn without_a_table_nothing_is_emulated() {
        assert!(!emulate("").unwrap().any());
    }

    #[test]
    fn gce_accounts_take_their_email_from_the_name_the_client_id_or_the_names() {
        let gce = emulate(
            "[emulate.gce]\nproject_id = \"p\"\n\
             service_accounts = { default = \"gcp\", other = \"plain\", \"me@x.example\" = \"plain\" }\n",
        )
        .unwrap()
        .gce
        .unwrap();
        let email = |name: &str| {
            let account = gce.accounts.iter().find(|a| a.name == name).unwrap();
            (account.email.clone(), account.scopes.clone())
        };
        assert_eq!(
            email("default"),
            (
                "robot@p.iam.gserviceaccount.com".into(),
                vec!["a".into(), "b".into()]
            )
        );
        assert_eq!(email("other").0, "plain@p.iam.gserviceaccount.com");
        assert_eq!(email("me@x.example").0, "me@x.example");
    }

    #[test]
    fn bad_emulate_tables_name_their_keys() {
        let problems = emulate(
            "[emulate.gce]\nproject_id = \"a/b\"\nservice_accounts = { \"x/y\" = \"gcp\" }\n\
             [emulate.azure]\nsecret = \"s\"\n\
             resources = { \"https://r.example/\" = \"gcp\", \"https://R.example/.default\" = \"plain\" }\n\
             [emulate.git]\nhosts = { \"bad host\" = \"gcp\" }\nusername = \"\"\n",
        )
        .unwrap_err();
        for expected in [
            "emulate.gce.project_id: is required",
            "emulate.gce.service_accounts.x/y: an account name",
            "names the same resource as another key",
            "emulate.git.hosts.\"bad host\": a host is",
            "emulate.git.username: must be",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}: {problems:?}"
            );
        }
    }

    #[test]
    fn azure_resources_compare_without_default_slash_or_case() {
        assert_eq!(
            azure_resource("https://Management.azure.com/.default"),
            "https://management.azure.com"
        );
        assert_eq!(
            azure_resource(" https://management.azure.com/ "),
            "https://management.azure.com"
        );
        assert_eq!(azure_resource("api://my-app"), "api://my-app");
    }
}
