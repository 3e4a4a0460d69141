//! Outbound TLS: the dev IdP behind HTTPS with certificates made here, a private CA
//! trusted through `idp.ca_file`, and a client certificate for mutual TLS.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use crate::harness::*;

/// Writes ca.pem, server.pem/server.key and client.pem/client.key into `dir`.
pub fn make_certificates(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: OpenSSL clients (redis-cli) take a leaf whose issuer equals
    // its subject for self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "token-broker test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();

    let mut client_params = CertificateParams::new(vec!["token-broker".to_owned()]).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
}

fn broker_with_idp_section(idp: &Idp, dir: &Path, idp_section: &str) -> Broker {
    let config = format!(
        "{}[idp]\ntimeout = \"3s\"\n{idp_section}\n[credentials.m]\ngrant = \"client_credentials\"\ntoken_url = \"{}/token\"\nclient_id = \"dev-client\"\nclient_secret = \"dev-secret\"\n",
        base_config(dir),
        idp.url
    );
    Broker::start(dir, &config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_and_a_client_certificate_reach_an_mtls_idp() {
    let certs = tempdir();
    make_certificates(certs.path());
    let path = |name: &str| certs.path().join(name).display().to_string();
    let idp = Idp::start(&[
        "--tls-cert",
        &path("server.pem"),
        "--tls-key",
        &path("server.key"),
        "--tls-client-ca",
        &path("ca.pem"),
    ]);
    assert!(idp.url.starts_with("https://127.0.0.1:"), "{}", idp.url);

    let full = format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        path("ca.pem"),
        path("client.pem"),
        path("client.key")
    );
    let dir = tempdir();
    let broker = broker_with_idp_section(&idp, dir.path(), &full);
    let token = broker.access_token("m").await;

    // The IdP accepts the token: check through a client that trusts the same CA.
    let identity = [
        std::fs::read(path("client.pem")).unwrap(),
        std::fs::read(path("client.key")).unwrap(),
    ]
    .concat();
    let tls_client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(path("ca.pem")).unwrap()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    let whoami = tls_client
        .get(format!("{}/api/whoami", idp.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(whoami.status(), 200);

    // Without the private CA the IdP's certificate is unknown; without the client
    // certificate the IdP refuses the handshake. Either way: 503, never a token.
    let ca_only = format!("ca_file = \"{}\"\n", path("ca.pem"));
    for (section, what) in [
        ("", "no ca_file"),
        (ca_only.as_str(), "no client certificate"),
    ] {
        let dir = tempdir();
        let broker = broker_with_idp_section(&idp, dir.path(), section);
        let response = broker.get("/token/m").await;
        assert_eq!(response.status(), 503, "{what}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "upstream_unavailable", "{what}: {body}");
    }
}

#[test]
fn mismatched_tls_settings_are_config_errors() {
    let dir = tempdir();
    let config = format!(
        "{}[idp]\nclient_cert = \"/x.pem\"\n[credentials.m]\ngrant = \"client_credentials\"\ntoken_url = \"https://i/t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
        base_config(dir.path())
    );
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let output = std::process::Command::new(bin())
        .args([
            "check-config",
            "--config",
            dir.path().join("c.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("idp.client_cert"));
}
