//! The proxies' HTTP client: hyper's pooled client over HTTP/1.1, TLS through rustls
//! trusting the built-in web roots plus a configured CA file.
//!
//! hyper's own client rather than reqwest: a proxy must pass requests on as they are,
//! and reqwest adds headers (`Accept`), reads proxy settings from the environment and
//! wants a `Sync` request body; hyper (already in the tree through reqwest and axum)
//! streams any body both ways and adds nothing but `Host`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Any error a body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body going upstream.
pub type Outgoing = UnsyncBoxBody<Bytes, BoxError>;

/// The pooled client one proxy uses.
pub type Client = Legacy<HttpsConnector<HttpConnector>, Outgoing>;

/// How long an unused upstream connection stays open for reuse.
const IDLE: Duration = Duration::from_secs(60);

/// Why a proxy's upstream client cannot be had. Each names the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file cannot be read, or is not PEM.
    #[error("cannot read PEM certificates from {}: {cause}", path.display())]
    Unreadable {
        path: PathBuf,
        cause: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no certificate.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// rustls refuses one of the CA file's certificates.
    #[error("{}: a certificate is not usable: {cause}", path.display())]
    Unusable { path: PathBuf, cause: rustls::Error },
    /// rustls refuses its own settings.
    #[error("TLS setup: {0}")]
    Tls(rustls::Error),
}

/// A client trusting the web roots plus `ca_file`'s certificates.
pub fn build(ca_file: Option<&Path>, connect_timeout: Duration) -> Result<Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_roots(path)? {
            roots.add(cert).map_err(|cause| ClientError::Unusable {
                path: path.to_owned(),
                cause,
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_nodelay(true);
    // A silently vanished upstream is noticed instead of pinning a request forever.
    tcp.set_keepalive(Some(Duration::from_secs(30)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Legacy::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector))
}

/// The certificates of a PEM file; an error if it holds none.
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|cause| ClientError::Unreadable {
            path: path.to_owned(),
            cause,
        })?;
    if certs.is_empty() {
        return Err(ClientError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}
