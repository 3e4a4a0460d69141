//! Limits the daemon sets on its own process at start (`run` and `dev`), before it
//! reads a secret: no core dumps, since the process holds refresh tokens and client
//! secrets in memory, and as many file descriptors as the hard limit allows.

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rustix::process::{DumpableBehavior, Resource};

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
