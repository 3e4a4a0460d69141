//! DPoP (RFC 9449) held by the broker, against the dev IdP's DPoP support: token
//! requests carry proofs and answer the IdP's nonce challenge, apps get proofs bound to
//! the token from `POST /token/NAME/proof` (one refresh for a burst, every proof valid
//! and distinct, a replay refused by the resource server), the proxy sends `DPoP` and
//! answers a resource server's nonce challenge, and the key stays the same across a
//! restart without ever showing up in logs, status, metrics or errors.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures_util::future::join_all;
use serde_json::{Value, json};
use token_broker::dpop;

use crate::harness::*;

/// `POST /token/{name}/proof` with `body`; status and JSON body.
pub async fn proof(broker: &Broker, name: &str, query: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}/token/{name}/proof{query}", broker.url))
        .header("Token-Broker", "1")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The claims of a JWT, unverified.
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The key thumbprint an access token is bound to (`cnf.jkt`).
pub fn jkt(token: &str) -> String {
    claims(token)["cnf"]["jkt"]
        .as_str()
        .unwrap_or_else(|| panic!("no cnf.jkt in {}", claims(token)))
        .to_owned()
}

/// `GET /api/whoami` with `Authorization: DPoP` and the proof; status and headers.
pub async fn whoami(idp: &Idp, token: &str, proof: &str) -> (u16, reqwest::header::HeaderMap) {
    let response = client()
        .get(format!("{}/api/whoami", idp.url))
        .header("Authorization", format!("DPoP {token}"))
        .header("DPoP", proof)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.headers().clone())
}

/// Checks a proof as a resource server would, and returns its `jti`.
fn verified(proof: &str, htm: &str, htu: &str, token: &str) -> dpop::Verified {
    let expect = dpop::Expect {
        htm,
        htu,
        now: SystemTime::now(),
        max_age: Duration::from_secs(60),
        nonces: &[],
        access_token: Some(token),
    };
    dpop::verify(proof, &expect).unwrap_or_else(|e| panic!("proof refused: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_carry_proofs_answer_the_nonce_challenge_and_tokens_say_dpop() {
    let idp = Idp::start(&["--access-ttl", "300s", "--dpop-nonce"]);
    let dir = tempdir();
    let broker = broker_for(
        &idp,
        dir.path(),
        "dpop = true\nmin_refresh_interval = \"0s\"",
    );
    let body = broker.token("x").await;
    assert_eq!(body["token_type"], "DPoP", "{body}");
    let first = body["access_token"].as_str().unwrap().to_owned();
    let key = jkt(&first);
    // The first request had no nonce: the IdP challenged it, the broker sent it again,
    // and that one refresh (two HTTP requests) spent the bootstrap token once.
    assert!(idp.stat("dpop_nonce_challenges").await >= 1);
    assert_eq!(idp.stat("refresh_grants").await, 1);
    assert_eq!(idp.stat("dpop_token_requests").await, 1);
    let metrics = broker.metrics_text().await;
    let refreshes: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("token_broker_refreshes_total{") && l.contains("result=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refreshes, 1.0, "{metrics}");
    // A refresh spends the refresh token bound to the key: the same key signs again,
    // with the nonce it remembered (no second challenge needed for it).
    let challenges = idp.stat("dpop_nonce_challenges").await;
    let response = broker.refresh("x", None).await;
    assert_eq!(response.status(), 200, "{}", broker.proc.logs());
    let second: Value = response.json().await.unwrap();
    assert_eq!(second["token_type"], "DPoP");
    let second = second["access_token"].as_str().unwrap();
    assert_ne!(second, first);
    assert_eq!(jkt(second), key);
    assert_eq!(idp.stat("dpop_nonce_challenges").await, challenges);
    assert_eq!(idp.stat("reuse_detected").await, 0);
    // Every format that shows the type says DPoP.
    let raw = broker
        .get("/token/x?format=raw")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(raw, second);
    let status = broker.status().await;
    assert!(!status.to_string().contains(second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_proofs_make_one_refresh_and_five_hundred_valid_distinct_proofs() {
    let idp = Idp::start(&["--access-ttl", "100s", "--latency", "300ms"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "dpop = true");
    let first = broker.access_token("x").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = idp.stat("refresh_grants").await;
    let htu = "https://api.example.com/v1/x";

    // The current token has under 99s left: every request needs the refreshed one.
    let asks = (0..500).map(|_| {
        proof(
            &broker,
            "x",
            "?min_ttl=99s",
            json!({"htm": "GET", "htu": htu}),
        )
    });
    let answers = join_all(asks).await;

    assert_eq!(
        idp.stat("refresh_grants").await - before,
        1,
        "exactly one refresh"
    );
    let mut jtis = HashSet::new();
    let mut tokens = HashSet::new();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["token_type"], "DPoP");
        assert!(body["expires_in"].as_u64().unwrap() > 90);
        let token = body["access_token"].as_str().unwrap();
        let verified = verified(body["dpop"].as_str().unwrap(), "GET", htu, token);
        assert_eq!(
            verified.jkt,
            jkt(token),
            "signed by the key the token is bound to"
        );
        jtis.insert(verified.jti);
        tokens.insert(token.to_owned());
    }
    assert_eq!(jtis.len(), 500, "every proof has its own jti");
    assert_eq!(tokens.len(), 1, "every proof is for the one new token");
    assert!(!tokens.contains(&first));
    assert_eq!(idp.stat("max_in_flight").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_works_at_whoami_once_and_its_replay_and_a_bearer_use_are_refused() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "dpop = true");
    let htu = format!("{}/api/whoami", idp.url);
    // A query and a fragment are no part of htu: stripped.
    let (status, body) = proof(
        &broker,
        "x",
        "",
        json!({"htm": "GET", "htu": format!("{htu}?a=1#f")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let signed = body["dpop"].as_str().unwrap();
    assert_eq!(claims(signed)["htu"], htu);
    assert_eq!(whoami(&idp, token, signed).await.0, 200);
    assert_eq!(whoami(&idp, token, signed).await.0, 401, "a replayed proof");
    assert_eq!(
        idp.whoami(token).await,
        401,
        "a bound token used as a bearer token"
    );
    // A fresh proof works again.
    let (_, again) = proof(&broker, "x", "", json!({"htm": "GET", "htu": htu})).await;
    assert_eq!(
        whoami(&idp, token, again["dpop"].as_str().unwrap()).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proof_endpoint_refuses_bad_requests_and_bearer_credentials_clearly() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path())
        + &refresh_credential("x", &idp, &bootstrap, "dpop = true")
        + "\n[credentials.plain]\ngrant = \"client_credentials\"\nclient_id = \"dev-client\"\n\
           client_secret = \"dev-secret\"\n"
        + &format!("token_url = \"{}/token\"\n", idp.url);
    let broker = Broker::start(dir.path(), &config);
    let ok = json!({"htm": "GET", "htu": "https://api.test/"});
    let (status, body) = proof(&broker, "plain", "", ok.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("dpop_not_enabled")),
        "{body}"
    );
    assert_eq!(broker.token("plain").await["token_type"], "Bearer");
    for (bad, says) in [
        (json!({"htm": "G T", "htu": "https://api.test/"}), "htm"),
        (json!({"htm": "GET", "htu": "/relative"}), "absolute"),
        (json!({"htm": "GET", "htu": "ftp://api.test/"}), "http"),
        (
            json!({"htm": "GET", "htu": "https://api.test/", "nonce": "a b"}),
            "nonce",
        ),
        (json!({"htm": "GET"}), "htu"),
    ] {
        let (status, body) = proof(&broker, "x", "", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request");
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{bad}: {body}"
        );
    }
    let (status, _) = proof(&broker, "x", "?wait=1s", ok.clone()).await;
    assert_eq!(status, 400);
    let (status, _) = proof(&broker, "nope", "", ok.clone()).await;
    assert_eq!(status, 404);
    // The same guards as a read.
    let response = client()
        .post(format!("{}/token/x/proof", broker.url))
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "no Token-Broker header");
    let (status, body) = proof(&broker, "x", "", ok).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_nonce_is_remembered_for_its_origin_and_used_for_later_proofs() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let broker = broker_for(&idp, dir.path(), "dpop = true");
    let ask = |htu: &str, nonce: Option<&str>| {
        let mut body = json!({"htm": "POST", "htu": htu});
        if let Some(nonce) = nonce {
            body["nonce"] = json!(nonce);
        }
        body
    };
    let nonce_of = |body: &Value| claims(body["dpop"].as_str().unwrap())["nonce"].clone();
    let (_, none) = proof(&broker, "x", "", ask("https://a.test/x", None)).await;
    assert_eq!(nonce_of(&none), Value::Null);
    let (_, given) = proof(&broker, "x", "", ask("https://a.test/x", Some("n-1"))).await;
    assert_eq!(nonce_of(&given), "n-1");
    let (_, later) = proof(&broker, "x", "", ask("https://A.test:443/other", None)).await;
    assert_eq!(nonce_of(&later), "n-1", "same origin, later proof");
    let (_, elsewhere) = proof(&broker, "x", "", ask("https://b.test/x", None)).await;
    assert_eq!(nonce_of(&elsewhere), Value::Null, "another origin");
}

/// A PKCS#8 PEM of a fresh key, and the base64url of its private scalar `d`.
fn key_pem() -> (String, String) {
    let key = dpop::Key::generate().unwrap();
    let der = key.pkcs8();
    // ring's PKCS#8 for P-256 holds `d` as the OCTET STRING right after the
    // ECPrivateKey version: 02 01 01 04 20 <32 bytes>.
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .unwrap()
        + 5;
    let d = URL_SAFE_NO_PAD.encode(&der[at..at + 32]);
    let body = STANDARD.encode(&*der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    (pem, d)
}

/// Every form `d` could be printed in.
fn forms_of(d: &str) -> Vec<String> {
    let bytes = URL_SAFE_NO_PAD.decode(d).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        d.to_owned(),
        STANDARD.encode(&bytes),
        hex,
        d[..20].to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_key_signs_and_never_shows_in_logs_status_metrics_or_errors() {
    let idp = Idp::start(&["--access-ttl", "300s"]);
    let dir = tempdir();
    let (pem, d) = key_pem();
    let key_file = dir.path().join("dpop.pem");
    std::fs::write(&key_file, &pem).unwrap();
    let extra = format!(
        "dpop = true\ndpop_key = {{ file = \"{}\" }}",
        key_file.display()
    );
    let broker = broker_with(&idp, dir.path(), "", &extra);
    let expected = dpop::Key::from_pem(pem.as_bytes()).unwrap().thumbprint();
    let token = broker.access_token("x").await;
    assert_eq!(
        jkt(&token),
        expected,
        "the token is bound to the configured key"
    );
    let (status, body) = proof(
        &broker,
        "x",
        "",
        json!({"htm": "GET", "htu": "https://a.test/"}),
    )
    .await;
    assert_eq!(status, 200);
    let mut seen = vec![body.to_string(), broker.status().await.to_string()];
    seen.push(broker.metrics_text().await);
    let (_, bad) = proof(&broker, "x", "", json!({"htm": "GET", "htu": "nope"})).await;
    seen.push(bad.to_string());
    // check-config --check-secrets reads and parses it, and says nothing of it.
    let out = std::process::Command::new(bin())
        .args(["check-config", "--check-secrets", "--config"])
        .arg(dir.path().join("config.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
    seen.push(String::from_utf8_lossy(&out.stderr).into_owned());
    seen.push(broker.proc.logs());
    for text in &seen {
        for form in forms_of(&d) {
            assert!(!text.contains(&form), "key material in: {text}");
        }
        assert!(
            !text.contains(pem.lines().nth(1).unwrap()),
            "PEM in: {text}"
        );
    }
    assert!(
        broker.proc.logs().contains(&expected),
        "the thumbprint (public) is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_file_is_named_by_check_config_and_refused_at_first_use() {
    let dir = tempdir();
    let key_file = dir.path().join("dpop.pem");
    // A PEM block, but no EC P-256 key in it.
    std::fs::write(
        &key_file,
        "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let config = base_config(dir.path())
        + &format!(
            "[credentials.x]\ngrant = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/token\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\ndpop = true\ndpop_key = {{ file = \"{}\" }}\n",
            key_file.display()
        );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &config).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check-config", "--check-secrets", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("credentials.x.dpop_key"), "{text}");
    let broker = Broker::start(dir.path(), &config);
    let response = broker.get("/token/x").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("DPoP key"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_reaches_whoami_with_dpop_answering_its_nonce_challenge() {
    let idp = Idp::start(&["--access-ttl", "300s", "--dpop-nonce"]);
    let dir = tempdir();
    let proxies = crate::proxy::proxy("idp", &idp.url, "");
    let mut broker = crate::proxy::start_with(&idp, dir.path(), "dpop = true", &proxies, &[]);
    let addr = crate::proxy::proxy_addr(&mut broker, "idp");
    let whoami = format!("http://{addr}/api/whoami");
    broker.token("x").await;
    let grants = idp.stat("refresh_grants").await;
    let response = client().get(&whoami).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", broker.proc.logs());
    // Answered by the nonce retry with the same token, not by a refresh.
    assert_eq!(idp.stat("refresh_grants").await, grants);
    let challenges = idp.stat("dpop_nonce_challenges").await;
    // The token endpoint's challenge and the resource server's.
    assert!(challenges >= 2, "{challenges}");
    let metrics = broker.metrics_text().await;
    assert!(
        crate::fleet::metric(
            &metrics,
            "token_broker_proxy_retries_total{proxy=\"idp\",result=\"dpop_nonce\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // The nonce is remembered for the origin: the next request needs no retry.
    let response = client().get(&whoami).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(idp.stat("dpop_nonce_challenges").await, challenges);
    // A request with a body is proved for its own method.
    let response = client().post(&whoami).body("x").send().await.unwrap();
    assert_ne!(response.status(), 401, "{}", broker.proc.logs());
}
