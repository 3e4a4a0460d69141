//! Listeners and the connection loop: TCP addresses and unix sockets, bound before
//! serving (so a busy port is a start-up error and tests can bind port 0), each
//! connection served by hyper with limits a slow or hostile client cannot get around:
//! a deadline for request headers (which also closes idle keep-alive connections), a
//! cap on header size, a cap on open connections (`connections`), JSON bodies for the
//! parser's own refusals (`parse_errors`), and graceful draining at shutdown. The API,
//! the ops port and the proxies (`proxy`) share it: each is a `Handler`.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use std::convert::Infallible;
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::api::Api;
use super::connections::{Connections, Slot};
use super::parse_errors::JsonParseErrors;
use crate::config::Listen;

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 32 * 1024;

/// Who is on the other end of a connection; every request carries it as an extension.
#[derive(Clone, Debug)]
pub enum Peer {
    Tcp(std::net::SocketAddr),
    /// From SO_PEERCRED: the kernel's word on the client process, not the client's.
    Unix {
        uid: u32,
        gid: u32,
    },
}

/// What a connection runs for each of its requests.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn call(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
        peer: &Peer,
    ) -> impl Future<Output = axum::response::Response> + Send;
}

impl Handler for Api {
    fn call(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
        peer: &Peer,
    ) -> impl Future<Output = axum::response::Response> + Send {
        self.handle(request, Some(peer))
    }
}

/// A bound listener.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Binds an address. A unix socket file left by a dead broker is replaced; one that
/// still answers belongs to a live broker and is refused.
pub async fn bind(listen: &Listen, socket_mode: u32) -> std::io::Result<Listener> {
    match listen {
        Listen::Tcp(addr) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await?)),
        Listen::Unix(path) => {
            if path.exists() {
                if tokio::net::UnixStream::connect(path).await.is_ok() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("{} is served by a running process", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let listener = super::unix_socket::bind(path, socket_mode)?;
            Ok(Listener::Unix(listener, path.clone()))
        }
    }
}

impl Listener {
    /// Where it listens, as a user would write it.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// The TCP address, if this is a TCP listener.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// Accepts until `stop`, then waits for open connections to finish their requests.
    /// Each connection holds `weight` of `connections`' slots while it is open.
    pub async fn serve(
        self,
        api: impl Handler,
        header_timeout: Duration,
        connections: Arc<Connections>,
        weight: u32,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        // Every connection task holds a receiver: `closed` resolves once all have ended.
        let (drained, drain_handle) = tokio::sync::watch::channel(());
        let mut backoff = Backoff::default();
        while let Some((permit, _)) = connections.reserve(weight, &stop).await {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = self.accept() => accepted,
            };
            match accepted {
                Ok(Some((io, peer))) => {
                    backoff.reset();
                    let slot = connections.open(permit, &stop);
                    spawn_connection(io, peer, &api, header_timeout, slot, drain_handle.clone());
                }
                Ok(None) => {}
                Err(e) => backoff.wait(&e, &stop).await,
            }
        }
        if let Listener::Unix(_, path) = &self {
            let _ = std::fs::remove_file(path);
        }
        drop(self);
        drop(drain_handle);
        drained.closed().await;
        Ok(())
    }

    async fn accept(&self) -> std::io::Result<Option<(Box<dyn Io>, Peer)>> {
        match self {
            Listener::Tcp(l) => {
                let (stream, addr) = l.accept().await?;
                // Token answers are small; waiting to coalesce them only adds latency.
                let _ = stream.set_nodelay(true);
                Ok(Some((Box::new(stream), Peer::Tcp(addr))))
            }
            Listener::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                // Without credentials the peer cannot be checked: drop the connection.
                let Ok(cred) = stream.peer_cred() else {
                    return Ok(None);
                };
                let peer = Peer::Unix {
                    uid: cred.uid(),
                    gid: cred.gid(),
                };
                Ok(Some((Box::new(stream), peer)))
            }
        }
    }
}

/// A connection of either kind.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

fn spawn_connection(
    io: Box<dyn Io>,
    peer: Peer,
    api: &impl Handler,
    header_timeout: Duration,
    slot: Slot,
    drain_handle: tokio::sync::watch::Receiver<()>,
) {
    let slot = Arc::new(slot);
    let connection = Arc::new((api.clone(), peer, slot.clone()));
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let connection = connection.clone();
            async move {
                let (api, peer, slot) = &*connection;
                slot.requested();
                Ok::<_, Infallible>(api.call(request, peer).await)
            }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(JsonParseErrors::new(io)), service);
    tokio::spawn(async move {
        let _drain_handle = drain_handle;
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            // Shutdown, or room needed: finish the request under way, if any, and close.
            _ = slot.close.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = ended {
            debug!(error = %e, "connection ended with an error");
        }
    });
}

/// How long a listener waits after a failed `accept`: out of descriptors (`EMFILE`,
/// `ENFILE`) or memory, retrying at once would spin; the wait doubles up to a second
/// while the failures go on, and one warning is logged per run of them.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    async fn wait(&mut self, error: &std::io::Error, stop: &CancellationToken) {
        if self.failures == 0 {
            warn!(error = %error, "accept failed; backing off until it succeeds again");
        } else {
            debug!(error = %error, failures = self.failures, "accept failed again");
        }
        let delay = Self::FIRST
            .saturating_mul(1 << self.failures.min(7))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    fn reset(&mut self) {
        if self.failures > 0 {
            info!(failures = self.failures, "accepting connections again");
            self.failures = 0;
        }
    }
}
