//! Header-injecting proxies (`[proxies.NAME]`): for an app that cannot be changed to
//! fetch tokens, a local listener that forwards every request to one upstream with the
//! credential's current token in `Authorization` (for a `dpop = true` credential,
//! `Authorization: DPoP` and a fresh `DPoP` proof for each request).
//!
//! Layout: `forward` (one request: admission, the token, the upstream call, the retry
//! after a 401, and a DPoP credential's retry after a nonce challenge), `body` (streaming request bodies, and keeping small ones for that
//! retry), `headers` (hop-by-hop headers, `Host`, `Authorization`), `client` (the
//! upstream HTTP client and its TLS roots).
//!
//! A proxy is a `server::Handler` on the broker's own connection loop, so it gets the
//! same header deadline and head-size cap as the API. It decides nothing about tokens:
//! it asks the credential (`Credential::get`), and reports an upstream 401 as a rejected
//! token, which joins the credential's single flight like any other report.

mod body;
mod client;
mod forward;
mod headers;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderValue;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use client::{ClientError, read_roots};

use crate::broker::Broker;
use crate::config::{Config, ProxySpec};
use crate::metrics::ProxyMetrics;
use crate::server::{App, Connections, Handler, Listener, Peer};

/// One proxy, shared by its connections.
#[derive(Clone)]
pub struct Proxy(Arc<Inner>);

struct Inner {
    spec: ProxySpec,
    broker: Arc<Broker>,
    client: client::Client,
    metrics: ProxyMetrics,
    /// `Host` names a request may carry (DNS-rebinding protection, as for the API).
    hosts: Arc<HashSet<String>>,
    /// `scheme://authority/prefix` of the upstream, without a trailing slash.
    base: String,
    /// The upstream's `Host`.
    host: HeaderValue,
    /// Until this unix time (ms), upstream 401s are passed on without a refresh: the
    /// upstream refused a token fresh from one, so another would not help.
    quiet_until: AtomicU64,
}

impl Handler for Proxy {
    fn call(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
        peer: &Peer,
    ) -> impl Future<Output = axum::response::Response> + Send {
        self.0.forward(request, peer)
    }
}

/// Binds every proxy's listener, so a taken address fails start-up.
pub async fn bind(config: &Config) -> anyhow::Result<Vec<(ProxySpec, Listener)>> {
    let mut bound = Vec::new();
    for spec in &config.proxies {
        let listener = crate::server::bind(&spec.listen, config.server.socket_mode)
            .await
            .with_context(|| {
                format!(
                    "proxies.{}.listen: cannot listen on {}",
                    spec.name, spec.listen
                )
            })?;
        bound.push((spec.clone(), listener));
    }
    Ok(bound)
}

/// Serves every bound proxy until `stop`, then lets open requests finish.
pub fn start(
    bound: Vec<(ProxySpec, Listener)>,
    broker: &Arc<Broker>,
    config: &Config,
    connections: &Arc<Connections>,
    stop: CancellationToken,
) -> anyhow::Result<JoinSet<std::io::Result<()>>> {
    let mut tasks = JoinSet::new();
    for (spec, listener) in bound {
        let proxy = Proxy::new(spec, broker, config, &listener)?;
        let spec = &proxy.0.spec;
        info!(proxy = %spec.name, listen = %listener.describe(), upstream = %spec.upstream, credential = %spec.credential, "proxy serving");
        // A proxied connection also opens one to the upstream: it counts twice.
        let (timeout, connections) = (config.server.header_timeout, connections.clone());
        tasks.spawn(listener.serve(proxy, timeout, connections, 2, stop.clone()));
    }
    Ok(tasks)
}

impl Proxy {
    fn new(
        spec: ProxySpec,
        broker: &Arc<Broker>,
        config: &Config,
        listener: &Listener,
    ) -> anyhow::Result<Proxy> {
        let ca_file = spec.ca_file.as_ref().or(config.idp.ca_file.as_ref());
        let client = client::build(ca_file.map(|p| p.as_path()), config.idp.connect_timeout)
            .with_context(|| format!("proxies.{}", spec.name))?;
        let url = &spec.upstream;
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let prefix = url.path().trim_end_matches('/');
        Ok(Proxy(Arc::new(Inner {
            base: format!("{}://{authority}{prefix}", url.scheme()),
            host: HeaderValue::from_str(&authority)
                .with_context(|| format!("proxies.{}.upstream: not a host name", spec.name))?,
            hosts: App::hosts(&config.server, std::slice::from_ref(listener)),
            metrics: broker.metrics().proxy(&spec.name),
            broker: broker.clone(),
            client,
            spec,
            quiet_until: AtomicU64::new(0),
        })))
    }
}

/// How long upstream 401s are passed on without a refresh after the upstream refused
/// a token fresh from one.
const QUIET: Duration = Duration::from_secs(30);
