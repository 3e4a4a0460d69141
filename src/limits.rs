//! Limits the daemon sets on its own process at start (`run` and `dev`), before it
//! reads a secret: no core dumps, since the process holds refresh tokens and client
//! secrets in memory, and as many file descriptors as the hard limit allows, of which
//! connections may take all but a reserve (`default_max_connections`).

use rustix::process::{DumpableBehavior, Resource, Rlimit};

/// Turns core dumps off for good: `RLIMIT_CORE` 0 (soft and hard, so it cannot be
/// raised again) and not dumpable (which also keeps other processes of the same uid
/// from attaching a debugger or reading `/proc/PID/mem`).
pub fn no_core_dumps() -> std::io::Result<()> {
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    rustix::process::setrlimit(Resource::Core, none)?;
    rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Raises the soft descriptor limit to the hard one: the default soft limit (often
/// 1024) is a guard for old `select` users, not a budget a server should keep. Returns
/// the soft limit now in effect (`None`: unlimited).
pub fn raise_nofile() -> std::io::Result<Option<u64>> {
    let limit = rustix::process::getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        rustix::process::setrlimit(Resource::Nofile, raised)?;
    }
    Ok(rustix::process::getrlimit(Resource::Nofile).current)
}

/// The soft descriptor limit (`None`: unlimited).
pub fn nofile() -> Option<u64> {
    rustix::process::getrlimit(Resource::Nofile).current
}

/// Descriptors kept from connections for everything else: the runtime, the listeners,
/// state writes, sinks, Redis, and up to `idp.max_concurrent` IdP calls.
pub fn reserve(idp_max_concurrent: usize) -> u64 {
    256 + idp_max_concurrent as u64
}

/// `server.max_connections` when not set: the descriptor limit less `reserve`, but
/// never less than half the limit, so a small limit still takes connections.
pub fn default_max_connections(nofile: Option<u64>, idp_max_concurrent: usize) -> usize {
    let Some(limit) = nofile else {
        return MAX_CONNECTIONS_UNLIMITED;
    };
    let reserve = reserve(idp_max_concurrent).min(limit / 2);
    usize::try_from(limit - reserve).unwrap_or(MAX_CONNECTIONS_UNLIMITED)
}

/// The default cap when descriptors are unlimited: far more than a sidecar sees.
const MAX_CONNECTIONS_UNLIMITED: usize = 1 << 20;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rustix::process::{DumpableBehavior, Resource};

    #[test]
    fn the_default_cap_keeps_a_reserve_and_at_most_half() {
        use super::default_max_connections as cap;
        assert_eq!(cap(Some(256), 64), 128);
        assert_eq!(cap(Some(1024), 64), 1024 - 320);
        assert_eq!(cap(Some(1 << 20), 64), (1 << 20) - 320);
        assert_eq!(cap(Some(1), 64), 1);
        assert_eq!(cap(None, 64), 1 << 20);
    }

    /// Changes the test process itself, harmlessly: it may no longer dump core.
    #[test]
    fn core_dumps_are_off_and_the_process_is_not_dumpable() {
        super::no_core_dumps().unwrap();
        let core = rustix::process::getrlimit(Resource::Core);
        assert_eq!((core.current, core.maximum), (Some(0), Some(0)));
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            DumpableBehavior::NotDumpable
        );
    }
}
