//! Unix socket listeners whose file has its final mode from the moment it appears.
//!
//! Binding and then `chmod`ing leaves a window in which the file has the mode the umask
//! allows (under `umask 000`, any local user may connect). On Linux a socket file takes
//! its mode from the socket's own inode, masked by the umask, so the mode is set on the
//! socket before `bind`; a `chmod` afterwards only widens it to what the umask took away,
//! which exposes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::Mode;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Pending connections the kernel queues before `accept` (tokio's default).
const BACKLOG: i32 = 1024;

/// Binds and listens on `path` with `mode`, never with a wider one.
pub fn bind(path: &Path, mode: u32) -> std::io::Result<tokio::net::UnixListener> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::fs::fchmod(&socket, Mode::from_raw_mode(mode))?;
    rustix::net::bind(&socket, &SocketAddrUnix::new(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    rustix::net::listen(&socket, BACKLOG)?;
    tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(socket))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A watcher stats the path as fast as it can while the socket is bound, again and
    /// again; the first mode it sees must already be the configured one (the default
    /// umask, 022, would let the file appear as 0755 first).
    #[tokio::test]
    async fn the_socket_file_never_appears_with_a_wider_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.sock");
        for _ in 0..300 {
            let done = Arc::new(AtomicBool::new(false));
            let watcher = {
                let (path, done) = (path.clone(), done.clone());
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        if let Ok(meta) = std::fs::symlink_metadata(&path) {
                            return Some(meta.permissions().mode() & 0o777);
                        }
                    }
                    None
                })
            };
            // Let the watcher start spinning first.
            std::thread::sleep(std::time::Duration::from_micros(200));
            let listener = super::bind(&path, 0o600).unwrap();
            done.store(true, Ordering::Relaxed);
            if let Some(first) = watcher.join().unwrap() {
                assert_eq!(first, 0o600, "the socket file first appeared as {first:o}");
            }
            drop(listener);
            std::fs::remove_file(&path).unwrap();
        }
    }
}
