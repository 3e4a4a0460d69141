//! The GCE metadata server emulation, driven by Google's own auth libraries (Python
//! google-auth, Node google-auth-library) with no broker-specific code, and by hand
//! for the errors those libraries expect.

use crate::harness::*;
use crate::sdk;

const GCE: &str = r#"
[emulate.gce]
project_id = "demo-project"
service_accounts = { default = "x" }
"#;

fn gce_broker(idp: &Idp, dir: &std::path::Path) -> Broker {
    broker_with(idp, dir, GCE, "")
}

/// `host:port` of the broker, as `GCE_METADATA_HOST` wants it.
fn authority(broker: &Broker) -> String {
    broker.url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn python_google_auth_finds_the_metadata_server_and_gets_the_brokers_token() {
    let Some(mut python) = sdk::python() else {
        return;
    };
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = gce_broker(&idp, dir.path());
    let host = authority(&broker);
    python
        .arg(sdk::scripts().join("gce_google_auth.py"))
        .env("GCE_METADATA_HOST", &host)
        .env("GCE_METADATA_IP", &host);
    let home = dir.path().join("home");
    let stdout = tokio::task::spawn_blocking(move || sdk::run(python, &home, ""))
        .await
        .unwrap();
    let got = sdk::last_json(&stdout);

    let expected = broker.access_token("x").await;
    assert_eq!(got["kind"], "Credentials", "{got}");
    assert_eq!(got["project"], "demo-project");
    assert_eq!(got["token"], expected.as_str());
    assert_eq!(got["explicit_token"], expected.as_str());
    assert_eq!(got["email"], "x@demo-project.iam.gserviceaccount.com");
    assert_eq!(got["valid"], true);
    let unknown = got["unknown_account"].as_str().unwrap();
    assert!(unknown.contains("404"), "{unknown}");
    assert!(unknown.contains("no service account"), "{unknown}");
    assert_eq!(idp.whoami(&expected).await, 200);
    assert!(!broker.proc.logs().contains(&expected), "token in the logs");
}

#[tokio::test]
async fn node_google_auth_library_gets_the_brokers_token() {
    let Some(mut node) = sdk::node() else {
        return;
    };
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = gce_broker(&idp, dir.path());
    node.arg(sdk::scripts().join("gce_google_auth_library.cjs"))
        .env("GCE_METADATA_HOST", authority(&broker));
    let home = dir.path().join("home");
    let stdout = tokio::task::spawn_blocking(move || sdk::run(node, &home, ""))
        .await
        .unwrap();
    let got = sdk::last_json(&stdout);

    let expected = broker.access_token("x").await;
    assert_eq!(got["kind"], "Compute", "{got}");
    assert_eq!(got["project"], "demo-project");
    assert_eq!(got["token"], expected.as_str());
    assert_eq!(got["explicit_token"], expected.as_str());
    let unknown = got["unknown_account"].as_str().unwrap();
    assert!(
        unknown.contains("404") || unknown.contains("no service account"),
        "{unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_sdk_refreshes_make_one_idp_call() {
    let Some(mut python) = sdk::python() else {
        return;
    };
    // The threads wait on stdin for the port: they are all ready before the broker's
    // first fetch starts, and that fetch takes a second, so every call lands while
    // the broker has no token and must join the one flight.
    python
        .arg(sdk::scripts().join("gce_stampede.py"))
        .arg("300");
    let idp = Idp::start(&["--latency", "1500ms"]);
    let dir = tempdir();
    let home = dir.path().join("home");
    let (port_tx, port_rx) = std::sync::mpsc::channel::<String>();
    let script = tokio::task::spawn_blocking(move || {
        let port: String = port_rx.recv().unwrap();
        sdk::run(python, &home, &format!("{port}\n"))
    });
    let broker = gce_broker(&idp, dir.path());
    let port = broker.url.rsplit(':').next().unwrap().to_owned();
    port_tx.send(port).unwrap();
    let got = sdk::last_json(&script.await.unwrap());

    assert_eq!(got["failed"], 0, "{got}");
    assert_eq!(got["served"], 300, "{got}");
    assert_eq!(
        got["tokens"].as_array().unwrap().len(),
        1,
        "one token for all: {got}"
    );
    assert_eq!(idp.stat("refresh_grants").await, 1, "exactly one IdP call");
    assert_eq!(idp.stat("max_in_flight").await, 1);
}

async fn metadata(broker: &Broker, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut request = client().get(format!("{}{path}", broker.url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let flavor = response
        .headers()
        .get("metadata-flavor")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, flavor, response.text().await.unwrap())
}

#[tokio::test]
async fn bad_metadata_requests_get_the_answers_gce_gives() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = gce_broker(&idp, dir.path());
    let flavor = [("Metadata-Flavor", "Google")];
    let token_path = "/computeMetadata/v1/instance/service-accounts/default/token";

    let (status, echoed, body) = metadata(&broker, token_path, &[]).await;
    assert_eq!((status, echoed.as_str()), (403, "Google"), "{body}");
    assert!(body.contains("Metadata-Flavor"), "{body}");

    let wrong = [("Metadata-Flavor", "google-ish")];
    assert_eq!(metadata(&broker, token_path, &wrong).await.0, 403);

    let forwarded = [
        ("Metadata-Flavor", "Google"),
        ("X-Forwarded-For", "10.0.0.1"),
    ];
    let (status, _, body) = metadata(&broker, token_path, &forwarded).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("forwarded"), "{body}");

    let unknown =
        "/computeMetadata/v1/instance/service-accounts/nobody@x.iam.gserviceaccount.com/token";
    let (status, echoed, body) = metadata(&broker, unknown, &flavor).await;
    assert_eq!((status, echoed.as_str()), (404, "Google"), "{body}");
    assert!(
        body.contains("default/"),
        "names the accounts served: {body}"
    );

    let scoped = format!("{token_path}?scopes=https://www.googleapis.com/auth/cloud-platform");
    let (status, _, body) = metadata(&broker, &scoped, &flavor).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cloud-platform"), "{body}");

    let identity = "/computeMetadata/v1/instance/service-accounts/default/identity?audience=a";
    let (status, _, body) = metadata(&broker, identity, &flavor).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("ID token"), "{body}");

    let (status, _, body) = metadata(&broker, &format!("{token_path}?colour=red"), &flavor).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("colour"), "{body}");

    let (status, _, body) = metadata(&broker, "/computeMetadata/v1/instance/zone", &flavor).await;
    assert_eq!(status, 404, "{body}");

    // The broker's own API is untouched: `/token` still wants its header.
    assert_eq!(
        client()
            .get(format!("{}/token/x", broker.url))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let (status, _, body) = metadata(&broker, token_path, &flavor).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["access_token"],
        broker.access_token("x").await.as_str()
    );
    assert!(answer["expires_in"].as_u64().unwrap() > 0);
    let metrics = broker.metrics_text().await;
    let served =
        r#"token_broker_emulated_requests_total{credential="x",protocol="gce",outcome="served"} 1"#;
    assert!(metrics.contains(served), "{metrics}");
}

#[tokio::test]
async fn without_emulate_gce_the_metadata_paths_are_not_found() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "");
    let flavor = [("Metadata-Flavor", "Google")];
    let (status, _, _) = metadata(
        &broker,
        "/computeMetadata/v1/instance/service-accounts/default/token",
        &flavor,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(metadata(&broker, "/", &flavor).await.0, 404);
}
