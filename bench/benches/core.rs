//! Micro-benchmarks of the broker's core, below the HTTP stack:
//!
//! - `token read (cached)`: `Credential::get` for a token that is cached, the work a
//!   `GET /token/NAME` asks of the broker once the request is parsed (one atomic load);
//! - `response body`: completing a token version's pre-encoded JSON with `expires_in`;
//! - `stampede of N waiters`: N concurrent requests for a token that needs a refresh,
//!   joined onto one flight, here an `exec` command (no network), so the figure is the
//!   refresh plus the cost of coalescing and waking N waiters.
//!
//! Run with `cargo bench --manifest-path bench/Cargo.toml`. The end-to-end figures
//! (HTTP included, against a baseline server) come from `bench/run.sh`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use token_broker::broker::{Broker, Credential, STATES, Want};
use token_broker::metrics::Metrics;
use token_broker::store::Store;
use tokio_util::sync::CancellationToken;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A broker with one `exec` credential whose command prints a token that lives
/// `lifetime` seconds.
fn credential(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    lifetime: u64,
) -> Arc<Credential> {
    let config = format!(
        r#"
[state]
dir = "{}"

[credentials.x]
grant = "exec"
exec.command = ["/bin/echo", "{{\"access_token\": \"bench-token\", \"expires_in\": {lifetime}}}"]
"#,
        dir.display()
    );
    let config = token_broker::config::load_str(&config).expect("config");
    rt.block_on(async {
        let store = Store::open(&config.state).await.expect("store");
        let broker = Broker::new(
            &config,
            store,
            Metrics::new(STATES),
            CancellationToken::new(),
        )
        .expect("broker");
        let credential = broker.credential("x").expect("credential");
        credential
            .get(Want::Fresh(Duration::ZERO))
            .await
            .expect("first token");
        // The broker must outlive the benchmark: its credentials point back at it.
        std::mem::forget(broker);
        credential
    })
}

fn cached_read(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let credential = credential(&rt, dir.path(), 3600);
    c.bench_function("token read (cached)", |b| {
        b.to_async(&rt)
            .iter(|| credential.get(Want::Fresh(Duration::ZERO)))
    });
    let token = credential.current().expect("token");
    c.bench_function("response body", |b| {
        b.iter(|| token.json_body(SystemTime::now()))
    });
}

fn stampede(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    // Tokens live 60 s; asking for more than that always needs a refresh, and every
    // waiter takes the fresh token it brings.
    let credential = credential(&rt, dir.path(), 60);
    let mut group = c.benchmark_group("stampede");
    group.sample_size(20);
    for waiters in [1usize, 100, 1000] {
        group.bench_with_input(BenchmarkId::new("waiters", waiters), &waiters, |b, &n| {
            b.to_async(&rt).iter(|| {
                let credential = credential.clone();
                async move {
                    let all = (0..n).map(|_| {
                        let credential = credential.clone();
                        tokio::spawn(async move {
                            credential.get(Want::Fresh(Duration::from_secs(120))).await
                        })
                    });
                    for joined in futures_util::future::join_all(all).await {
                        joined.expect("task").expect("token");
                    }
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, cached_read, stampede);
criterion_main!(benches);
