//! The hot-path baseline: the least an axum 0.8 server can do to answer
//! `GET /token/{name}` with a fixed JSON body. The body is read from a file so that it is
//! byte for byte the size of the broker's real answer.
//!
//! Usage: baseline --listen 127.0.0.1:PORT --body-file PATH

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;

async fn token(State(body): State<Bytes>) -> impl IntoResponse {
    // The same two headers the broker sends, so the responses are the same size.
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:39100".to_owned();
    let mut body_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--body-file" => body_file = args.next(),
            other => {
                panic!("unknown argument {other}; usage: baseline --listen ADDR --body-file PATH")
            }
        }
    }
    let body = match body_file {
        Some(path) => Bytes::from(std::fs::read(&path).expect("read --body-file")),
        None => Bytes::from_static(b"{}"),
    };
    let app = Router::new()
        .route("/token/{name}", get(token))
        .with_state(body);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("bind --listen")
        // The broker sets TCP_NODELAY on every connection; so does the baseline.
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    eprintln!("baseline listening on {listen}");
    axum::serve(listener, app).await.expect("serve");
}
