//! What an `exec` command leaves behind: its process group is killed when it ends, and
//! every process that ends up a child of the broker is reaped.
//!
//! Each command leads its own process group. Once the leader has exited (or timed
//! out), the rest of the group is killed: a background helper would otherwise keep
//! running, and keep the output pipes open. Processes orphaned by a command are handed
//! to the nearest subreaper, else to PID 1. The broker makes itself a subreaper at its
//! first command, so they come to it whether it is PID 1 (as in its container image,
//! where nothing else would reap them) or not, and it reaps them: the killed group
//! right away, and a daemon that left the group (`setsid`) when it exits, on SIGCHLD.
//!
//! tokio reaps each command leader itself (`Child::wait`). The sweep must never take
//! one of those from it, so leaders are registered in `LEADERS` from spawn until their
//! run is over, under the lock the sweep holds.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};
use tokio::process::{Child, Command};
use tracing::warn;

/// Pids of command leaders that tokio has yet to reap, or whose run is not over.
static LEADERS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Longest wait for a killed group to be gone; SIGKILL takes effect in microseconds.
const GROUP_GONE: Duration = Duration::from_secs(2);

/// A registered leader; unregisters on drop, once its run is over.
pub(super) struct Leader(Option<i32>);

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            leaders().get_or_insert_with(HashSet::new).remove(&pid);
        }
    }
}

fn leaders() -> MutexGuard<'static, Option<HashSet<i32>>> {
    // The set stays consistent through a panic: inserts and removes are single calls.
    LEADERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the command and registers its pid before any sweep can see it exit.
pub(super) fn spawn(command: &mut Command) -> std::io::Result<(Child, Leader)> {
    become_reaper();
    let mut set = leaders();
    let child = command.spawn()?;
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    if let Some(pid) = pid {
        set.get_or_insert_with(HashSet::new).insert(pid);
    }
    Ok((child, Leader(pid)))
}

/// The group a child leads (`process_group(0)`: its pid). `None` once it is reaped.
pub(super) fn group_of(child: &Child) -> Option<Pid> {
    child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(Pid::from_raw)
}

/// Sends SIGKILL to every process left in the group.
pub(super) fn kill_group(group: Option<Pid>) {
    if let Some(group) = group {
        // Fails only when no member is left.
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
}

/// After the leader is reaped: kills what is left of its group and waits until the
/// group is gone, reaping the members that became this process's children.
pub(super) async fn end_group(group: Option<Pid>) {
    let Some(group) = group else { return };
    kill_group(Some(group));
    let deadline = Instant::now() + GROUP_GONE;
    loop {
        // Only members are waited for: the leader, the one pid tokio reaps, is gone.
        while let Ok(Some(_)) = rustix::process::waitpgid(group, WaitOptions::NOHANG) {}
        let gone = rustix::process::test_kill_process_group(group) == Err(Errno::SRCH);
        if gone || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A scan of /proc: off the async threads.
    let _ = tokio::task::spawn_blocking(sweep).await;
}

/// Makes the broker the subreaper of what its commands orphan, and starts reaping on
/// SIGCHLD. Once per process.
fn become_reaper() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        #[cfg(target_os = "linux")]
        if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
            warn!(error = %e, "cannot become a subreaper; processes that exec commands orphan are left to PID 1");
        }
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
            Ok(mut children) => {
                tokio::spawn(async move {
                    while children.recv().await.is_some() {
                        let _ = tokio::task::spawn_blocking(sweep).await;
                    }
                });
            }
            Err(e) => warn!(error = %e, "cannot watch SIGCHLD; orphans are reaped after each exec run only"),
        }
    });
}

/// Reaps every zombie child that is not a command leader tokio waits for. Only a
/// subreaper or PID 1 gets such children.
fn sweep() {
    let me = std::process::id();
    if me != 1 && !is_subreaper() {
        return;
    }
    let set = leaders();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if set.as_ref().is_some_and(|s| s.contains(&pid)) || !zombie_child_of(pid, me) {
            continue;
        }
        if let Some(pid) = Pid::from_raw(pid) {
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
        }
    }
}

fn is_subreaper() -> bool {
    #[cfg(target_os = "linux")]
    return matches!(rustix::process::child_subreaper(), Ok(Some(_)));
    #[cfg(not(target_os = "linux"))]
    false
}

/// Whether `/proc/PID/stat` shows a zombie whose parent is `parent`.
fn zombie_child_of(pid: i32, parent: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    fields.next() == Some("Z") && fields.next() == Some(parent.to_string().as_str())
}
