//! Listeners: TCP addresses and unix sockets, bound before serving so `main` can report
//! a busy port as a start-up error and tests can bind port 0.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use axum::Router;

use crate::config::Listen;

/// A bound listener.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Binds an address. A unix socket file left by a dead broker is replaced; one that
/// still answers belongs to a live broker and is refused.
pub async fn bind(listen: &Listen) -> std::io::Result<Listener> {
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
            let listener = tokio::net::UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
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

    pub(super) async fn serve(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self {
            Listener::Tcp(l) => {
                axum::serve(l, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Listener::Unix(l, path) => {
                let result = axum::serve(l, router)
                    .with_graceful_shutdown(shutdown)
                    .await;
                let _ = std::fs::remove_file(path);
                result
            }
        }
    }
}
