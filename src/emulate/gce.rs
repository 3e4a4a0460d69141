//! The GCE metadata server, as Google's SDKs use it (`GCE_METADATA_HOST`,
//! `GCE_METADATA_IP`): the ping at `/`, `project/project-id`, and
//! `instance/service-accounts/...` (listing, `?recursive=true` info, `email`, `scopes`,
//! `aliases`, `token`). `identity` is refused: the broker holds OAuth access tokens and
//! cannot mint ID tokens for arbitrary audiences, so it says so instead of faking one.
//!
//! Like GCE, every request needs `Metadata-Flavor: Google` (403 without: the header is
//! what a forged browser request or an SSRF cannot add) and every answer carries it
//! (SDKs check it to tell the metadata server from anything else on the port).
//! Errors are short text bodies, as GCE sends; SDKs show them in their exceptions.

use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Refused, forwarded, token};
use crate::broker::Want;
use crate::config::{GceAccount, GceSpec};
use crate::error::Error;
use crate::server::{App, Peer};

const FLAVOR: &str = "metadata-flavor";

/// Query parameters this emulation understands; anything else is a 400.
const KNOWN_PARAMS: [&str; 3] = ["recursive", "scopes", "audience"];

/// Every `GET` under `/computeMetadata/v1`, and the ping at `/`.
pub async fn answer(
    State(app): State<App>,
    peer: Option<Extension<Peer>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(gce) = app.emulate.gce.as_ref() else {
        return text(
            StatusCode::NOT_FOUND,
            "the GCE metadata server is not emulated",
        );
    };
    if forwarded(&headers) {
        return text(
            StatusCode::FORBIDDEN,
            "forwarded requests (Forwarded or X-Forwarded-For) are refused: the metadata server is for local clients",
        );
    }
    if headers
        .get(FLAVOR)
        .is_none_or(|v| v.as_bytes() != b"Google")
    {
        return text(
            StatusCode::FORBIDDEN,
            "Missing required header \"Metadata-Flavor\": \"Google\"",
        );
    }
    let query = match Query::parse(uri.query()) {
        Ok(query) => query,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    let path = uri.path();
    if path == "/" {
        return text(StatusCode::OK, "computeMetadata/");
    }
    let rest = path
        .strip_prefix("/computeMetadata/v1")
        .unwrap_or_default()
        .trim_start_matches('/');
    let peer = peer.map(|Extension(p)| p);
    route(&app, gce, rest, &query, peer.as_ref()).await
}

async fn route(
    app: &App,
    gce: &GceSpec,
    rest: &str,
    query: &Query,
    peer: Option<&Peer>,
) -> Response {
    let dir = rest.trim_end_matches('/');
    match dir {
        "" => listing(["instance/", "project/"]),
        "project" if query.recursive => json_answer(json!({ "projectId": gce.project_id })),
        "project" => listing(["project-id"]),
        "project/project-id" => text(StatusCode::OK, &gce.project_id),
        "instance" if query.recursive => {
            json_answer(json!({ "serviceAccounts": all_accounts(gce) }))
        }
        "instance" => listing(["service-accounts/"]),
        "instance/service-accounts" if query.recursive => json_answer(all_accounts(gce)),
        "instance/service-accounts" => text(StatusCode::OK, &account_names(gce)),
        _ => match dir.strip_prefix("instance/service-accounts/") {
            Some(account) => account_route(app, gce, account, query, peer).await,
            None => not_found(rest),
        },
    }
}

async fn account_route(
    app: &App,
    gce: &GceSpec,
    path: &str,
    query: &Query,
    peer: Option<&Peer>,
) -> Response {
    let (name, leaf) = path.split_once('/').unwrap_or((path, ""));
    let Some(account) = find(gce, name) else {
        return text(
            StatusCode::NOT_FOUND,
            &format!(
                "no service account `{name}`; this broker serves: {}",
                account_names(gce).trim_end().replace('\n', " ")
            ),
        );
    };
    match leaf {
        "" if query.recursive => json_answer(info(gce, account)),
        "" => listing(["aliases", "email", "identity", "scopes", "token"]),
        "email" => text(StatusCode::OK, &account.email),
        "aliases" => text(StatusCode::OK, &aliases(gce, account).join("\n")),
        "scopes" => text(StatusCode::OK, &account.scopes.join("\n")),
        "token" => access_token(app, account, query, peer).await,
        "identity" => text(
            StatusCode::NOT_FOUND,
            "identity tokens are not served: the broker holds the credential's OAuth access token and cannot mint an ID token for an arbitrary audience",
        ),
        _ => not_found(path),
    }
}

async fn access_token(
    app: &App,
    account: &GceAccount,
    query: &Query,
    peer: Option<&Peer>,
) -> Response {
    if let Some(missing) = query.scopes.iter().find(|s| !account.scopes.contains(s)) {
        let held = match account.scopes.is_empty() {
            true => "none: its credential sets no `scope`".to_owned(),
            false => account.scopes.join(" "),
        };
        return text(
            StatusCode::BAD_REQUEST,
            &format!(
                "scopes: `{missing}` is not a scope of service account {} (it has {held}); the broker serves the one token its credential `{}` holds",
                account.email, account.credential
            ),
        );
    }
    let want = Want::Fresh(Duration::ZERO);
    match token(app, "gce", &account.credential, peer, None, want).await {
        Ok(token) => {
            let ttl = token.ttl(SystemTime::now()).as_secs();
            let token_type = match token.token_type.is_empty() {
                true => "Bearer",
                false => token.token_type.as_str(),
            };
            json_answer(json!({
                "access_token": token.secret(),
                "expires_in": ttl,
                "token_type": token_type,
            }))
        }
        Err(Refused::Forbidden) => text(
            StatusCode::FORBIDDEN,
            &format!(
                "this client may not fetch credential `{}` (the metadata protocol carries no client key; allowed_uids and allowed_gids admit unix-socket clients)",
                account.credential
            ),
        ),
        Err(Refused::Broker(error)) => broker_error(&error),
    }
}

/// The broker's reason for having no token, with the status GCE would use.
fn broker_error(error: &Error) -> Response {
    let (status, retry_after) = super::broker_status(error);
    super::with_retry_after(text(status, &error.to_string()), retry_after)
}

fn find<'a>(gce: &'a GceSpec, name: &str) -> Option<&'a GceAccount> {
    gce.accounts
        .iter()
        .find(|a| a.name == name)
        .or_else(|| gce.accounts.iter().find(|a| a.email == name))
}

/// The names an account answers to besides its email.
fn aliases<'a>(gce: &'a GceSpec, account: &GceAccount) -> Vec<&'a str> {
    gce.accounts
        .iter()
        .filter(|a| a.email == account.email && a.name != a.email)
        .map(|a| a.name.as_str())
        .collect()
}

fn info(gce: &GceSpec, account: &GceAccount) -> Value {
    json!({
        "aliases": aliases(gce, account),
        "email": account.email,
        "scopes": account.scopes,
    })
}

/// Every name and email, each once, one per line with a trailing `/` (as GCE lists).
fn account_names(gce: &GceSpec) -> String {
    let mut names: Vec<&str> = gce
        .accounts
        .iter()
        .flat_map(|a| [a.name.as_str(), a.email.as_str()])
        .collect();
    names.sort_unstable();
    names.dedup();
    names.iter().map(|n| format!("{n}/\n")).collect()
}

fn all_accounts(gce: &GceSpec) -> Value {
    let mut map = serde_json::Map::new();
    for account in &gce.accounts {
        map.insert(account.name.clone(), info(gce, account));
        map.insert(account.email.clone(), info(gce, account));
    }
    Value::Object(map)
}

fn not_found(path: &str) -> Response {
    text(
        StatusCode::NOT_FOUND,
        &format!(
            "`{path}` is not served: the broker emulates project/project-id and instance/service-accounts/ only"
        ),
    )
}

/// The query of a metadata request.
#[derive(Default)]
struct Query {
    recursive: bool,
    /// `?scopes=a,b` on `token`.
    scopes: Vec<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default())
            .map_err(|e| format!("bad query string: {e}"))?;
        let mut parsed = Query::default();
        for (key, value) in pairs {
            match key.as_str() {
                "recursive" => parsed.recursive = value.eq_ignore_ascii_case("true"),
                "scopes" => parsed.scopes.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                ),
                "audience" => {}
                other => {
                    return Err(format!(
                        "unknown query parameter `{other}`; this metadata server knows {}",
                        KNOWN_PARAMS.join(", ")
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

fn listing<const N: usize>(entries: [&str; N]) -> Response {
    text(StatusCode::OK, &entries.join("\n"))
}

fn text(status: StatusCode, body: &str) -> Response {
    reply(status, "application/text", Body::from(body.to_owned()))
}

fn json_answer(value: Value) -> Response {
    reply(
        StatusCode::OK,
        "application/json",
        Body::from(value.to_string()),
    )
}

fn reply(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(FLAVOR, HeaderValue::from_static("Google"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
