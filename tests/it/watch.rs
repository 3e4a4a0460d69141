//! Watching for new tokens: ETags, conditional reads, long polls that end soon after a
//! refresh (or with 304), an event stream with one event per refresh, the watcher cap,
//! and watchers outliving the request deadline but not shutdown.

use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;

use crate::harness::*;
use crate::in_process::InProcess;

/// The config of a broker whose credential `x` may be refreshed at any time; `server`
/// lines are added to `[server]`.
fn watched_config(idp: &Idp, dir: &std::path::Path, server: &str) -> String {
    let bootstrap = dir.join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let server = match server.contains("request_timeout") {
        true => server.to_owned(),
        false => format!("{server}request_timeout = \"5s\"\n"),
    };
    base_config(dir).replace("request_timeout = \"5s\"\n", &server)
        + &refresh_credential("x", idp, &bootstrap, "min_refresh_interval = \"0s\"")
}

/// Such a broker as a child process.
fn watched_broker(idp: &Idp, dir: &std::path::Path, server: &str) -> Broker {
    Broker::start(dir, &watched_config(idp, dir, server))
}

/// `GET {url}{path}` with the `Token-Broker` header.
async fn get(url: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{url}{path}"))
        .header("Token-Broker", "1")
        .send()
        .await
        .unwrap()
}

/// `GET /token/x` with `If-None-Match` and an optional `wait`.
async fn conditional(url: &str, etag: &str, wait: Option<&str>) -> reqwest::Response {
    let query = wait.map(|w| format!("?wait={w}")).unwrap_or_default();
    client()
        .get(format!("{url}/token/x{query}"))
        .header("Token-Broker", "1")
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap()
}

fn etag(response: &reqwest::Response) -> String {
    response.headers()["etag"].to_str().unwrap().to_owned()
}

async fn current(url: &str) -> (String, String) {
    let response = get(url, "/token/x").await;
    assert_eq!(response.status(), 200);
    let tag = etag(&response);
    let body: Value = response.json().await.unwrap();
    (body["access_token"].as_str().unwrap().to_owned(), tag)
}

async fn forced_refresh(url: &str) -> String {
    let response = client()
        .post(format!("{url}/token/x/refresh"))
        .header("Token-Broker", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_conditional_reads_and_a_long_poll_answered_by_a_refresh() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let broker = watched_broker(&idp, dir.path(), "");
    let (first, tag) = current(&broker.url).await;
    assert!(
        tag.starts_with('"') && tag.ends_with('"') && tag.len() == 18,
        "{tag}"
    );
    assert!(!tag.contains(&first[..8]));
    let raw = broker.get("/token/x?format=raw").await;
    assert_eq!(etag(&raw), tag, "one tag per version, whatever the format");

    // Conditional reads answer at once: 304 for the current tag, 200 for another.
    let same = conditional(&broker.url, &tag, None).await;
    assert_eq!(same.status(), 304);
    assert_eq!(etag(&same), tag);
    assert_eq!(same.headers()["cache-control"], "no-store");
    assert!(same.text().await.unwrap().is_empty());
    assert_eq!(
        conditional(&broker.url, "\"0000000000000000\"", Some("30s"))
            .await
            .status(),
        200
    );
    let started = Instant::now();
    assert_eq!(broker.get("/token/x?wait=30s").await.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "wait without If-None-Match answers at once"
    );

    // A long poll ends as soon as a refresh publishes a new version.
    let url = broker.url.clone();
    let poll = tokio::spawn({
        let tag = tag.clone();
        async move {
            let response = client()
                .get(format!("{url}/token/x?wait=50s"))
                .header("Token-Broker", "1")
                .header("If-None-Match", tag)
                .send()
                .await
                .unwrap();
            (Instant::now(), response)
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !poll.is_finished(),
        "the poll waits while the version is unchanged"
    );
    let refreshed_at = Instant::now();
    let second = forced_refresh(&broker.url).await;
    let (answered_at, response) = poll.await.unwrap();
    assert_eq!(response.status(), 200);
    let new_tag = etag(&response);
    assert_ne!(new_tag, tag);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["access_token"], second.as_str());
    assert_ne!(second, first);
    assert!(
        answered_at.duration_since(refreshed_at) < Duration::from_secs(5),
        "the poll ended with the refresh, not with its wait"
    );
    assert_eq!(current(&broker.url).await.1, new_tag);
}

// In process, with the clock paused while the poll waits: the waits are the broker's
// own timers, and the router's 6 s deadline is a timer too, so it would fire first.
#[tokio::test]
async fn a_long_poll_without_news_gets_304_and_is_not_cut_by_the_request_deadline() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    // request_timeout 1s: the router's deadline for a request is 6s.
    let config = watched_config(&idp, dir.path(), "request_timeout = \"1s\"\n");
    let broker = InProcess::start(&config).await;
    let (_, tag) = current(&broker.url).await;

    tokio::time::pause();
    let started = Instant::now();
    let response = conditional(&broker.url, &tag, Some("1500ms")).await;
    assert_eq!(response.status(), 304);
    assert_eq!(etag(&response), tag);
    assert!(started.elapsed() >= Duration::from_millis(1500));

    let started = Instant::now();
    let response = conditional(&broker.url, &tag, Some("8s")).await;
    assert_eq!(response.status(), 304, "{:?}", response.text().await);
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "waited the whole 8s"
    );
    tokio::time::resume();

    let bad = conditional(&broker.url, &tag, Some("soon")).await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().starts_with("wait:"),
        "{body}"
    );
    broker.stop().await.unwrap();
}

/// Reads an event stream frame by frame (frames end with a blank line).
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(url: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = client()
            .get(format!("{url}/token/x/events"))
            .header("Token-Broker", "1");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.unwrap()
    }

    fn new(response: reqwest::Response) -> Events {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-store");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next frame, or `None` when the stream ends.
    async fn next(&mut self, limit: Duration) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame = self.buffer[..end].to_owned();
                self.buffer.drain(..end + 2);
                return Some(frame);
            }
            let chunk = tokio::time::timeout(limit, self.response.chunk())
                .await
                .expect("no frame in time")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `token` event: (id, access token).
    async fn token(&mut self) -> (String, String) {
        loop {
            let frame = self
                .next(Duration::from_secs(20))
                .await
                .expect("the stream ended");
            if frame.starts_with(':') {
                continue;
            }
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {frame:?}"))
                    .to_owned()
            };
            assert_eq!(field("event: "), "token");
            let data: Value = serde_json::from_str(&field("data: ")).unwrap();
            return (
                field("id: "),
                data["access_token"].as_str().unwrap().to_owned(),
            );
        }
    }
}

// In process: the quiet stretch runs on a paused clock (the keep-alive is the broker's
// own timer); the refreshes around it, which call the IdP, on the real one.
#[tokio::test]
async fn an_event_stream_carries_one_event_per_refresh_and_keeps_alive() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    // request_timeout 1s: the stream outlives the router's 6s deadline below.
    let config = watched_config(&idp, dir.path(), "request_timeout = \"1s\"\n");
    let broker = InProcess::start(&config).await;
    let (first, tag) = current(&broker.url).await;

    let mut events = Events::new(Events::open(&broker.url, None).await);
    let (id, token) = events.token().await;
    assert_eq!((format!("\"{id}\""), token), (tag.clone(), first));
    let mut ids = vec![id];
    for _ in 0..3 {
        let refreshed = forced_refresh(&broker.url).await;
        let (id, token) = events.token().await;
        assert_eq!(token, refreshed, "each refresh is one event with its token");
        assert_eq!(
            format!("\"{id}\""),
            current(&broker.url).await.1,
            "the id is the ETag"
        );
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 4);

    // Quiet for longer than the keep-alive interval and the request deadline.
    tokio::time::pause();
    let started = Instant::now();
    let frame = events.next(Duration::from_secs(20)).await.unwrap();
    assert_eq!(frame, ": keep-alive");
    assert!(started.elapsed() >= Duration::from_secs(10));
    tokio::time::resume();
    let refreshed = forced_refresh(&broker.url).await;
    assert_eq!(
        events.token().await.1,
        refreshed,
        "still streaming after the deadline"
    );

    // Reconnecting with the last id skips the version already seen.
    let (_, tag) = current(&broker.url).await;
    let mut resumed = Events::new(Events::open(&broker.url, Some(tag.trim_matches('"'))).await);
    let refreshed = forced_refresh(&broker.url).await;
    assert_eq!(resumed.token().await.1, refreshed);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_guarded_capped_and_end_at_shutdown() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let mut broker = watched_broker(&idp, dir.path(), "max_watchers = 2\n");
    let (_, tag) = current(&broker.url).await;

    let bare = client()
        .get(format!("{}/token/x/events", broker.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 403, "the Token-Broker header is required");
    // The same guards as a token read, with the same answers.
    for (header, value, code) in [
        ("X-Forwarded-For", "203.0.113.9", "forwarded_request"),
        ("Host", "evil.example", "bad_host"),
    ] {
        let refused = client()
            .get(format!("{}/token/x/events", broker.url))
            .header("Token-Broker", "1")
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{header}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"], code, "{header}: {body}");
    }
    let unknown = broker.get("/token/nope/events").await;
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["error"], "unknown_credential", "{body}");
    assert_eq!(broker.get("/token/x/events?min_ttl=1s").await.status(), 400);

    let mut stream = Events::new(Events::open(&broker.url, None).await);
    stream.token().await;
    let url = broker.url.clone();
    let poll = tokio::spawn({
        let tag = tag.clone();
        async move {
            client()
                .get(format!("{url}/token/x?wait=60s"))
                .header("Token-Broker", "1")
                .header("If-None-Match", tag)
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = Events::open(&broker.url, None).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_watchers");
    let over = conditional(&broker.url, &tag, Some("5s")).await;
    assert_eq!(over.status(), 503, "long polls share the cap");
    assert!(
        broker
            .metrics_text()
            .await
            .contains("token_broker_watchers 2")
    );

    // SIGTERM ends the stream and the poll at once, and the broker exits.
    let started = Instant::now();
    signal(&broker.proc.child, "TERM");
    assert_eq!(
        stream.next(Duration::from_secs(5)).await,
        None,
        "the stream ended"
    );
    let answered = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answered.status(), 304);
    assert!(broker.proc.wait_exit(Duration::from_secs(5)).success());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_credential_ends_its_streams_and_moves_long_polls_on() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let broker = watched_broker(&idp, dir.path(), "");
    let (first, tag) = current(&broker.url).await;
    let mut stream = Events::new(Events::open(&broker.url, None).await);
    stream.token().await;
    let url = broker.url.clone();
    let poll = tokio::spawn(async move {
        client()
            .get(format!("{url}/token/x?wait=60s"))
            .header("Token-Broker", "1")
            .header("If-None-Match", tag)
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new scope replaces the credential: its successor fetches a token for it.
    let path = dir.path().join("config.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, config + "scope = \"changed\"\n").unwrap();
    signal(&broker.proc.child, "HUP");

    assert_eq!(
        stream.next(Duration::from_secs(10)).await,
        None,
        "the stream ended"
    );
    let answered = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        answered.status(),
        200,
        "the poll answered from the successor"
    );
    let body: Value = answered.json().await.unwrap();
    assert_ne!(body["access_token"], first.as_str());
    assert_eq!(body["scope"], "changed");
}
