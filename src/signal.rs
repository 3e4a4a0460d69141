//! Process signals. SIGTERM is how Kubernetes (and docker) ask a container to stop;
//! SIGINT is Ctrl-C. Either starts a graceful drain bounded by `server.shutdown_grace`.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGTERM or SIGINT.
pub async fn terminated() {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process can only be killed; wait forever.
        _ => std::future::pending::<()>().await,
    }
}
