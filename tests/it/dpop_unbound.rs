//! An IdP that answers a DPoP token request with a token it did not bind (`token_type`
//! `Bearer`): the token is not served, with a clear error, and the refresh token that
//! answer rotated is kept, so the chain goes on. The dev IdP always binds when it gets a
//! proof, so a small token endpoint in the test plays this IdP: it rotates refresh
//! tokens strictly (`r-0`, `r-1`, ...), answers `Bearer` once and then `dpop`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};

use crate::harness::*;

/// What each token request presented: its refresh token and whether it had a proof.
type Seen = Arc<Mutex<Vec<(String, bool)>>>;

async fn token(State(seen): State<Seen>, headers: HeaderMap, body: String) -> axum::Json<Value> {
    let presented = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "refresh_token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let mut seen = seen.lock().unwrap();
    seen.push((presented, headers.contains_key("dpop")));
    let n = seen.len();
    let token_type = if n == 1 { "Bearer" } else { "dpop" };
    axum::Json(json!({
        "access_token": format!("t-{n}"),
        "token_type": token_type,
        "refresh_token": format!("r-{n}"),
        "expires_in": 300,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_token_is_not_served_and_the_chain_it_rotated_goes_on() {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/token", post(token))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempdir();
    let config = base_config(dir.path())
        + &format!(
            "[credentials.x]\ntoken_url = \"http://{addr}/token\"\nclient_id = \"c\"\n\
             refresh_token = \"r-0\"\ndpop = true\nbackoff_initial = \"1s\"\n"
        );
    let broker = Broker::start(dir.path(), &config);

    let response = broker.get("/token/x").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("token_type `Bearer`, not `DPoP`"),
        "{body}"
    );
    assert!(!message.contains("t-1"), "the unbound token is not named");
    // Stored before the error was answered (the retry waits for the 1 s backoff).
    let state: Vec<u8> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(
        state.windows(5).any(|w| w == b"\"r-1\""),
        "the rotated refresh token is stored"
    );

    // The retry presents the refresh token the refused answer rotated, and takes the
    // bound token whatever the case of its type.
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        let response = broker.get("/token/x").await;
        if response.status() == 200 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "{}", broker.proc.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (
            served["access_token"].as_str(),
            served["token_type"].as_str()
        ),
        (Some("t-2"), Some("DPoP"))
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [("r-0".to_owned(), true), ("r-1".to_owned(), true)]);
}

/// The IdP of `a_rotated_chain_that_could_not_be_written_is_written_before_the_next_refresh`:
/// holds its first (unbound) answer until `release`, and notes whether the state store
/// still held the spent `r-0` when the second request came.
#[derive(Clone)]
struct Held {
    seen: Seen,
    release: Arc<tokio::sync::Notify>,
    state: std::path::PathBuf,
    spent_stored_at_retry: Arc<Mutex<Option<bool>>>,
}

async fn held_token(
    State(held): State<Held>,
    headers: HeaderMap,
    body: String,
) -> axum::Json<Value> {
    let n = held.seen.lock().unwrap().len() + 1;
    if n == 1 {
        held.seen.lock().unwrap().push(("first".into(), true));
        held.release.notified().await;
    } else if n == 2 {
        let stored: Vec<u8> = std::fs::read_dir(&held.state)
            .unwrap()
            .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap_or_default())
            .collect();
        let spent = stored.windows(5).any(|w| w == b"\"r-0\"");
        *held.spent_stored_at_retry.lock().unwrap() = Some(spent);
    }
    token(State(held.seen.clone()), headers, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_chain_that_could_not_be_written_is_written_before_the_next_refresh() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let held = Held {
        seen: Arc::default(),
        release: Arc::default(),
        state: state.clone(),
        spent_stored_at_retry: Arc::default(),
    };
    let app = Router::new()
        .route("/token", post(held_token))
        .with_state(held.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = base_config(dir.path())
        + &format!(
            "[credentials.x]\ntoken_url = \"http://{addr}/token\"\nclient_id = \"c\"\n\
             refresh_token = \"r-0\"\ndpop = true\nbackoff_initial = \"1s\"\n"
        );
    let mut broker = Broker::start(dir.path(), &config);
    let url = broker.url.clone();
    let first = tokio::spawn(async move {
        client()
            .get(format!("{url}/token/x"))
            .header("Token-Broker", "1")
            .send()
            .await
            .unwrap()
            .status()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "{}", broker.proc.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `r-0` is marked as out; a directory where the next generation goes makes the
    // write of the chain the answer rotates fail.
    let blocked = state.join(format!(
        "x.{}.state",
        crate::failures::newest_generation(&state) + 1
    ));
    std::fs::create_dir(&blocked).unwrap();
    held.seen.lock().unwrap().clear();
    held.release.notify_one();
    assert_eq!(first.await.unwrap(), 503);
    broker.proc.wait_for("the failed chain write", |line| {
        line.contains("could not store the rotated refresh token")
            .then_some(())
    });
    std::fs::remove_dir(&blocked).unwrap();

    // The retry writes the rotated chain before it sends it: the spent token is not
    // left in the store (not even as the fallback generation) when the next goes out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.get("/token/x").await.status() != 200 {
        assert!(Instant::now() < deadline, "{}", broker.proc.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(*held.spent_stored_at_retry.lock().unwrap(), Some(false));
    let seen = held.seen.lock().unwrap().clone();
    assert_eq!(seen, [("r-0".to_owned(), true), ("r-1".to_owned(), true)]);
}
