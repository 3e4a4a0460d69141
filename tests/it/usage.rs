//! What a newcomer types: the README's "Try it" lines and the `dev` banner, as written,
//! and the client commands' usage errors and unreachable-broker messages.

use std::process::Command;

use crate::harness::*;

/// Usage errors are found before any request (exit 2); an unreachable broker is named
/// with the cause (exit 3).
#[test]
fn get_checks_its_arguments_locally_and_names_why_the_broker_is_unreachable() {
    // A port nothing listens on: bound, then let go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let url = format!("http://{addr}");
    let run = |args: &[&str]| {
        let output = Command::new(bin()).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    for args in [
        &["get", "x", "--min-ttl", "banana", "--url", &url][..],
        &["get", "a/b", "--url", &url],
        &["get", "x", "--url", "banana"],
        &["status", "--url", "ftp://127.0.0.1/"],
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("cannot reach"), "{args:?}: {stderr}");
    }
    let (code, stderr) = run(&["get", "x", "--min-ttl", "5m", "--url", &url]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("connection refused to {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("error sending request"), "{stderr}");
    let (code, stderr) = run(&["status", "--url", &url]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");
}

/// Every curl line of the README's "Try it" and of the banner `dev` prints works as
/// written: the banner's as printed, the README's with the default addresses (which
/// `dev --help` shows) mapped to the ones this test bound on port 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_and_the_try_it_lines_work_as_written() {
    let help = Command::new(bin())
        .args(["dev", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for default in ["[default: 127.0.0.1:8656]", "[default: 127.0.0.1:8657]"] {
        assert!(help.contains(default), "{default} missing from:\n{help}");
    }
    let mut dev = Proc::spawn(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--idp-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let (broker, idp) = dev.wait_for("the dev banner", |line| {
        let rest = line.strip_prefix("token-broker dev: the broker on ")?;
        let (broker, rest) = rest.split_once(", a dev IdP on ")?;
        Some((broker.to_owned(), rest.trim_end_matches('.').to_owned()))
    });
    dev.wait_for("the end of the banner", |line| {
        line.starts_with("Ctrl-C").then_some(())
    });
    let banner: Vec<String> = dev
        .logs()
        .lines()
        .filter_map(|l| l.strip_prefix("  curl ").map(|rest| format!("curl {rest}")))
        .collect();
    assert!(banner.len() >= 3, "{}", dev.logs());

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let try_it = readme.split("\n## Try it").nth(1).unwrap();
    let try_it = try_it.split("\n## ").next().unwrap();
    let readme_lines: Vec<String> = try_it
        .lines()
        .filter(|l| l.starts_with("curl "))
        .map(|l| {
            l.replace("http://127.0.0.1:8656", &broker)
                .replace("http://127.0.0.1:8657", &idp)
        })
        .collect();
    assert!(readme_lines.len() >= 3, "{try_it}");

    for line in banner.iter().chain(&readme_lines) {
        // Each answers 200 once the demo credential has its first token.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let output = Command::new("bash")
                .arg("-c")
                .arg(format!("{line} -s -o /dev/null -w '%{{http_code}}'"))
                .output()
                .unwrap();
            let code = String::from_utf8_lossy(&output.stdout).into_owned();
            if code == "200" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "`{line}` answered {code:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert!(dev.terminate().success());
}
