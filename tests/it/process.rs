//! What the broker does to its own process at start: no core dumps (it holds refresh
//! tokens in memory).

use std::os::unix::fs::MetadataExt;

use crate::harness::*;

/// The soft and hard values of a line of `/proc/PID/limits`.
fn limit(pid: u32, name: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
    let mut values = line[name.len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_cannot_dump_core() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "");
    broker.ready().await;
    let pid = broker.proc.child.id();
    assert_eq!(
        limit(pid, "Max core file size"),
        ("0".into(), "0".into()),
        "RLIMIT_CORE, soft and hard"
    );
    // A process that is not dumpable has its /proc files owned by root; as root, the
    // owner says nothing (the unit test of `limits` checks the flag itself).
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid();
    let me = std::fs::metadata("/proc/self/status").unwrap().uid();
    if me != 0 {
        assert_eq!(owner, 0, "the broker is still dumpable");
    }
}
