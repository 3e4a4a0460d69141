//! Azure managed identity (the App Service protocol), driven by the Azure SDKs' own
//! `ManagedIdentityCredential` (Python azure-identity, Node @azure/identity) with no
//! broker-specific code, and by hand for the errors they expect.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::*;
use crate::sdk;

const SECRET: &str = "identity-header-secret-0123456789";

fn azure_broker(idp: &Idp, dir: &std::path::Path) -> Broker {
    let secret = dir.join("identity_header");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let section = format!(
        "[emulate.azure]\nsecret = {{ file = \"{}\" }}\nresources = {{ \"https://management.azure.com/\" = \"x\" }}\n",
        secret.display()
    );
    broker_with(idp, dir, &section, "")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn python_azure_identity_gets_the_brokers_token() {
    let Some(mut python) = sdk::python() else {
        return;
    };
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = azure_broker(&idp, dir.path());
    python
        .arg(sdk::scripts().join("azure_identity.py"))
        .env("IDENTITY_ENDPOINT", format!("{}/msi/token", broker.url))
        .env("IDENTITY_HEADER", SECRET);
    let home = dir.path().join("home");
    let stdout = tokio::task::spawn_blocking(move || sdk::run(python, &home, ""))
        .await
        .unwrap();
    let got = sdk::last_json(&stdout);

    let expected = broker.access_token("x").await;
    assert_eq!(got["token"], expected.as_str(), "{got}");
    let expires_on = got["expires_on"].as_u64().unwrap();
    assert!(
        expires_on > now_secs() && expires_on < now_secs() + 7200,
        "{got}"
    );
    let unknown = got["unknown_resource"].as_str().unwrap();
    assert!(unknown.contains("vault.azure.net"), "{unknown}");
    let wrong = got["wrong_secret"].as_str().unwrap();
    assert!(wrong.contains("X-IDENTITY-HEADER"), "{wrong}");
    assert_eq!(idp.whoami(&expected).await, 200);
    assert!(!broker.proc.logs().contains(&expected), "token in the logs");
    assert!(!broker.proc.logs().contains(SECRET), "secret in the logs");
}

#[tokio::test]
async fn node_azure_identity_gets_the_brokers_token() {
    let Some(mut node) = sdk::node() else {
        return;
    };
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = azure_broker(&idp, dir.path());
    node.arg(sdk::scripts().join("azure_identity.cjs"))
        .env("IDENTITY_ENDPOINT", format!("{}/msi/token", broker.url))
        .env("IDENTITY_HEADER", SECRET);
    let home = dir.path().join("home");
    let stdout = tokio::task::spawn_blocking(move || sdk::run(node, &home, ""))
        .await
        .unwrap();
    let got = sdk::last_json(&stdout);

    let expected = broker.access_token("x").await;
    assert_eq!(got["token"], expected.as_str(), "{got}");
    let expires_ms = got["expires_on"].as_u64().unwrap();
    assert!(expires_ms / 1000 > now_secs(), "{got}");
    let unknown = got["unknown_resource"].as_str().unwrap();
    assert!(
        unknown.contains("vault.azure.net") || unknown.contains("400"),
        "{unknown}"
    );
}

async fn msi(broker: &Broker, query: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut request = client().get(format!("{}/msi/token?{query}", broker.url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn bad_managed_identity_requests_get_app_service_shaped_errors() {
    let idp = Idp::start(&[]);
    let dir = tempdir();
    let broker = azure_broker(&idp, dir.path());
    let good = "resource=https://management.azure.com&api-version=2019-08-01";
    let secret = [("X-IDENTITY-HEADER", SECRET)];

    let (status, body) = msi(&broker, good, &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["statusCode"], 401);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("X-IDENTITY-HEADER")
    );
    let near = format!("{}x", &SECRET[..SECRET.len() - 1]);
    assert_eq!(
        msi(&broker, good, &[("X-IDENTITY-HEADER", &near)]).await.0,
        401
    );

    let forwarded = [("X-IDENTITY-HEADER", SECRET), ("Forwarded", "for=10.0.0.1")];
    assert_eq!(msi(&broker, good, &forwarded).await.0, 403);

    for (query, mentions) in [
        (
            "resource=https://vault.azure.net&api-version=2019-08-01",
            "vault.azure.net",
        ),
        (
            "resource=https://management.azure.com&api-version=2017-09-01",
            "2017-09-01",
        ),
        ("api-version=2019-08-01", "resource"),
        (&format!("{good}&client_id=abc") as &str, "client_id"),
        (&format!("{good}&colour=red"), "colour"),
    ] {
        let (status, body) = msi(&broker, query, &secret).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["statusCode"], 400);
        assert!(
            body["message"].as_str().unwrap().contains(mentions),
            "{query}: {body}"
        );
    }

    // A scope or a differently written resource names the same one.
    for resource in [
        "https://management.azure.com/.default",
        "https://MANAGEMENT.azure.com/",
    ] {
        let query = format!("resource={}&api-version=2019-08-01", urlencode(resource));
        let (status, body) = msi(&broker, &query, &secret).await;
        assert_eq!(status, 200, "{resource}: {body}");
        assert_eq!(
            body["access_token"],
            broker.access_token("x").await.as_str()
        );
        assert_eq!(body["resource"], resource);
        assert_eq!(body["token_type"], "Bearer");
        let expires_on: u64 = body["expires_on"].as_str().unwrap().parse().unwrap();
        assert!(expires_on > now_secs());
    }
    let metrics = broker.metrics_text().await;
    let served = r#"token_broker_emulated_requests_total{credential="x",protocol="azure",outcome="served"} 2"#;
    assert!(metrics.contains(served), "{metrics}");
}
