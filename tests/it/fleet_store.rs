//! The shared store itself, against a real redis-server: fencing of stale writers,
//! records sealed at rest, a wrong key refused at start-up, TLS with a private CA, and
//! the compose demo's Redis ACL and secrets.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use futures_util::StreamExt;
use secrecy::SecretString;
use token_broker::config::{OnStoreUnavailable, RedisConfig};
use token_broker::store::{Fence, Notice, RedisStore, Saved, StoreError, WriteKind};

use crate::fleet::{Fleet, converged, fleet_config};
use crate::harness::*;
use crate::redis_server::RedisServer;

fn store_config(url: &str, lease: Duration) -> RedisConfig {
    RedisConfig {
        url: url.to_owned(),
        username: None,
        password: None,
        key_prefix: "token-broker:".to_owned(),
        on_unavailable: OnStoreUnavailable::Wait,
        lease_duration: lease,
        poll_interval: Duration::from_secs(1),
        timeout: Duration::from_millis(400),
        encryption_key: None,
        ca_file: None,
    }
}

fn saved(refresh_token: &str) -> Saved {
    let now = SystemTime::now();
    Saved {
        refresh_token: Some(SecretString::from(refresh_token.to_owned())),
        access_token: Some(SecretString::from("at".to_owned())),
        token_type: "Bearer".into(),
        scope: None,
        issued_at: now,
        expires_at: now + Duration::from_secs(60),
        bootstrap: None,
        reauth_reason: None,
        in_flight_since: None,
    }
}

fn fence(expected: u64, next: u64, lease: &str) -> Fence {
    Fence {
        expected,
        next,
        lease: Some(lease.to_owned()),
        stamp: format!("stamp-{next}"),
        ..Fence::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_its_lease_or_read_an_old_version_is_refused() {
    let redis = RedisServer::start();
    let config = store_config(&redis.url(), Duration::from_secs(1));
    let (a, b) = (
        RedisStore::new(&config).unwrap(),
        RedisStore::new(&config).unwrap(),
    );
    let notices = b.subscribe().await.unwrap();
    tokio::pin!(notices);

    assert!(a.acquire("x", "lease-a").await.unwrap());
    assert!(
        !b.acquire("x", "lease-b").await.unwrap(),
        "the lease is held"
    );
    assert_eq!(
        a.save("x", &saved("rt-1"), &fence(0, 1, "lease-a")).await,
        Ok(1)
    );
    let notice = tokio::time::timeout(Duration::from_secs(5), notices.next()).await;
    let expected = Notice {
        name: "x".into(),
        version: 1,
    };
    assert_eq!(notice.unwrap(), Some(expected), "every write is announced");

    // A stalls past its lease; B takes over and writes.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        b.acquire("x", "lease-b").await.unwrap(),
        "the lease ran out"
    );
    assert_eq!(
        b.save("x", &saved("rt-2"), &fence(1, 2, "lease-b")).await,
        Ok(2)
    );

    // A wakes up and writes what it had: refused, whatever version it names.
    for stale in [fence(1, 2, "lease-a"), fence(2, 3, "lease-a")] {
        let refused = a.save("x", &saved("rt-stale"), &stale).await;
        assert!(
            matches!(&refused, Err(StoreError::Fenced(why)) if why.contains("no longer holds the refresh lease")),
            "{refused:?}"
        );
    }
    assert!(
        !a.renew("x", "lease-a", Duration::from_secs(1))
            .await
            .unwrap()
    );
    a.release("x", "lease-a").await.unwrap();
    assert_eq!(
        redis.cli(&["GET", "token-broker:lease:x"]).trim(),
        "lease-b"
    );

    // The lease holder itself is refused when it read an old version.
    let behind = b.save("x", &saved("rt-old"), &fence(1, 2, "lease-b")).await;
    assert!(
        matches!(&behind, Err(StoreError::Fenced(why)) if why.contains("newer record")),
        "{behind:?}"
    );
    let record = a.read("x").await.unwrap().unwrap();
    assert_eq!(record.version, 2);
    let kept = record.saved.refresh_token.unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&kept), "rt-2");
    b.release("x", "lease-b").await.unwrap();
    assert!(
        redis
            .cli(&["GET", "token-broker:lease:x"])
            .trim()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_lease_a_writer_may_record_only_what_overwrites_nothing_newer() {
    let redis = RedisServer::start();
    let config = store_config(&redis.url(), Duration::from_secs(1));
    let (a, b) = (
        RedisStore::new(&config).unwrap(),
        RedisStore::new(&config).unwrap(),
    );
    let kind = |kind, f: Fence| Fence { kind, ..f };
    assert!(a.acquire("x", "lease-a").await.unwrap());
    let mark = kind(WriteKind::Mark, fence(0, 1, "lease-a"));
    assert_eq!(a.save("x", &saved("rt-1"), &mark).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(1300)).await;

    // A's lease ran out and nobody took it: a mark (the token would be sent next) is
    // refused, a cleared mark over the version A wrote goes through.
    let again = kind(WriteKind::Mark, fence(1, 2, "lease-a"));
    assert!(matches!(
        a.save("x", &saved("rt-1"), &again).await,
        Err(StoreError::Fenced(_))
    ));
    assert_eq!(
        a.save("x", &saved("rt-1"), &fence(1, 2, "lease-a")).await,
        Ok(2)
    );
    assert_eq!(
        redis
            .cli(&["HGET", "token-broker:record:x", "stamp"])
            .trim(),
        "stamp-2"
    );

    // B takes the lease: now nothing of A's goes through, a new token included.
    assert!(b.acquire("x", "lease-b").await.unwrap());
    let token = kind(WriteKind::Token, fence(2, 1 << 20, "lease-a"));
    assert!(matches!(
        a.save("x", &saved("rt-2"), &token).await,
        Err(StoreError::Fenced(_))
    ));
    assert_eq!(
        a.save("x", &saved("rt-1"), &fence(2, 3, "lease-a"))
            .await
            .ok(),
        None
    );
    // B stops the chain (a later write, an older rotation) and lets go; A's new token
    // then goes over it, being newer, but never over a newer token.
    assert_eq!(
        b.save("x", &saved("stopped"), &fence(2, 3, "lease-b"))
            .await,
        Ok(3)
    );
    b.release("x", "lease-b").await.unwrap();
    assert_eq!(a.save("x", &saved("rt-2"), &token).await, Ok(1 << 20));
    let older = kind(WriteKind::Token, fence(2, 1 << 20, "lease-a"));
    assert!(matches!(
        a.save("x", &saved("rt-2b"), &older).await,
        Err(StoreError::Fenced(_))
    ));

    // While the credential is held back after lost writes, no mark goes through.
    assert!(b.acquire("x", "lease-b").await.unwrap());
    b.hold("x", Duration::from_secs(5)).await.unwrap();
    b.hold("x", Duration::from_secs(1)).await.unwrap();
    let held = b.held_until("x").await.unwrap().unwrap();
    assert!(
        held > SystemTime::now() + Duration::from_secs(4),
        "the longer hold stays"
    );
    let mark = kind(WriteKind::Mark, fence(1 << 20, (1 << 20) + 1, "lease-b"));
    let refused = b.save("x", &saved("rt-2"), &mark).await;
    assert!(
        matches!(&refused, Err(StoreError::Fenced(why)) if why.contains("held back")),
        "{refused:?}"
    );
    let record = a.read("x").await.unwrap().unwrap();
    let kept = record.saved.refresh_token.unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&kept), "rt-2");
}

fn write_key(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    let key = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    std::fs::write(&path, key).unwrap();
    path
}

/// Every value under `prefix`, as redis-cli prints it raw.
fn dump(redis: &RedisServer, prefix: &str) -> Vec<u8> {
    let keys = redis.cli(&["KEYS", &format!("{prefix}*")]);
    let mut all = Vec::new();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        let read = match redis.cli(&["TYPE", key]).trim() {
            "hash" => "HGETALL",
            _ => "GET",
        };
        all.extend(redis.cli_bytes(&[read, key]));
    }
    assert!(!all.is_empty(), "nothing under {prefix}");
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_sealed_at_rest_and_a_wrong_key_fails_clearly() {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--save", ""]);
    // Without rotation the stored refresh token stays the bootstrap: the test knows it.
    let idp = Idp::start(&["--access-ttl", "600s", "--no-rotation"]);
    let keys = tempdir();
    let key = write_key(keys.path(), "key", 1);
    let sealed = format!("encryption_key = {{ file = \"{}\" }}", key.display());
    let fleet = Fleet::start(&idp, &redis, 2, &sealed, "");
    let token = fleet.converged().await;

    let stored = dump(&redis, "token-broker:");
    assert!(contains(&stored, "tb-sealed-1:"), "the record is sealed");
    for secret in [&idp.refresh_token, &token, "refresh_token"] {
        assert!(!contains(&stored, secret), "`{secret}` is stored in clear");
    }
    let on_disk = || redis.files_on_disk();
    crate::failures::eventually("the AOF to hold the record", || async {
        contains(&on_disk(), "tb-sealed-1:")
    })
    .await;
    for secret in [&idp.refresh_token, &token] {
        assert!(!contains(&on_disk(), secret), "in clear in Redis' files");
    }

    // The same check sees a record stored in clear (another prefix, no key).
    let mut clear = Fleet {
        brokers: Vec::new(),
        dirs: Vec::new(),
    };
    clear.add(&idp, &redis.url(), "key_prefix = \"clear:\"", "", &[]);
    clear.converged().await;
    assert!(contains(&dump(&redis, "clear:"), &idp.refresh_token));

    // Brokers with another key, or none, refuse to start and say why.
    let other = write_key(keys.path(), "other", 2);
    let cases = [
        (
            format!("encryption_key = {{ file = \"{}\" }}", other.display()),
            "state.encryption_key is not the key the records under key prefix `token-broker:` were written with",
        ),
        (
            String::new(),
            "the records under key prefix `token-broker:` are encrypted; set state.encryption_key",
        ),
    ];
    for (state, expected) in cases {
        let dir = tempdir();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            fleet_config(dir.path(), &redis.url(), &state, &idp, ""),
        )
        .unwrap();
        let mut proc = Proc::spawn(&["run", "--config", path.to_str().unwrap()], &[]);
        let status = proc.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "{}", proc.logs());
        assert!(proc.logs().contains(expected), "{}", proc.logs());
        assert!(!proc.logs().contains(&idp.refresh_token));
    }
    assert_eq!(fleet.converged().await, token, "nothing was overwritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_is_verified() {
    let certs = tempdir();
    crate::tls::make_certificates(certs.path());
    let path = |name: &str| certs.path().join(name).display().to_string();
    let redis = RedisServer::start_tls(&path("server.pem"), &path("server.key"), &path("ca.pem"));
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let mut fleet = Fleet {
        brokers: Vec::new(),
        dirs: Vec::new(),
    };
    let trusting = format!("ca_file = \"{}\"", path("ca.pem"));
    fleet.add(&idp, &url, &trusting, "", &[]);
    fleet.add(&idp, &url, &trusting, "", &[]);
    fleet.converged().await;
    assert!(
        !redis
            .cli(&["HGET", "token-broker:record:x", "version"])
            .trim()
            .is_empty(),
        "the record went over TLS"
    );
    assert_eq!(idp.stat("refresh_grants").await, 1);

    // Without the CA, the built-in web roots do not trust the server: no state, 503.
    let mut untrusting = Fleet {
        brokers: Vec::new(),
        dirs: Vec::new(),
    };
    untrusting.add(&idp, &url, "", "", &[]);
    let response = untrusting.brokers[0].get("/token/x").await;
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_demo_acl_and_secrets_let_brokers_work_and_nothing_more() {
    let compose = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose");
    let acl = compose.join("redis/users.acl");
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--aclfile",
        acl.to_str().unwrap(),
    ]);
    let idp = Idp::start(&["--access-ttl", "600s"]);
    let secret = |name: &str| compose.join("secrets").join(name).display().to_string();
    let state = format!(
        "username = \"token-broker\"\npassword = {{ file = \"{}\" }}\n\
         encryption_key = {{ file = \"{}\" }}\npoll_interval = \"1h\"\n",
        secret("redis_password"),
        secret("state_key")
    );
    let credential = "min_refresh_interval = \"0s\"\n";
    let mut fleet = Fleet {
        brokers: Vec::new(),
        dirs: Vec::new(),
    };
    for _ in 0..2 {
        fleet.add(
            &idp,
            &redis.url(),
            &state,
            credential,
            &[("RUST_LOG", "trace")],
        );
    }
    let old = fleet.converged().await;
    // Leases, fenced writes, notices (no polling here) all pass the ACL.
    let response = fleet.brokers[0].refresh("x", None).await;
    assert_eq!(response.status(), 200);
    let brokers: Vec<&Broker> = fleet.brokers.iter().collect();
    assert_ne!(converged(&brokers).await, old);
    assert_eq!(idp.stat("refresh_grants").await, 2);
    // The default user may only ping.
    assert!(redis.cli(&["KEYS", "*"]).contains("NOPERM"));
    // Not even at trace level do the Redis password or the encryption key show.
    let secrets = [secret("redis_password"), secret("state_key")]
        .map(|path| std::fs::read_to_string(path).unwrap().trim().to_owned());
    for broker in &fleet.brokers {
        let logs = broker.proc.logs();
        let verbose = logs
            .lines()
            .filter(|l| l.contains("\"level\":\"DEBUG\"") || l.contains("\"level\":\"TRACE\""))
            .count();
        assert!(
            verbose >= 1,
            "trace logging was on: {verbose} verbose lines"
        );
        for value in secrets.iter().chain([&old, &idp.refresh_token]) {
            assert!(!logs.contains(value.as_str()), "a secret in the logs");
        }
        let metrics = broker.metrics_text().await;
        assert!(!secrets.iter().any(|v| metrics.contains(v.as_str())));
    }
}
