//! Verification against keys made by openssl and JWTs signed by the broker's signer,
//! plus every way an assertion can be wrong.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::SigningAlg;
use crate::idp::SigningKey;
use crate::test_keys::{Kind, generate, openssl};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::time::{Duration, UNIX_EPOCH};

const AUD: &str = "http://127.0.0.1:1/token";

fn signer(keys: &crate::test_keys::Keys) -> SigningKey {
    SigningKey::from_pem(&SecretString::from(keys.private_pem()), None, None).unwrap()
}

fn sign(key: &SigningKey, patch: serde_json::Value) -> String {
    let mut claims = crate::idp::assertion_claims("svc", "svc", AUD, Duration::from_secs(60));
    for (k, v) in patch.as_object().unwrap() {
        match v {
            serde_json::Value::Null => claims.remove(k),
            v => claims.insert(k.clone(), v.clone()),
        };
    }
    key.sign(&claims).unwrap().expose_secret().to_owned()
}

fn expect(now: SystemTime) -> (Vec<String>, SystemTime) {
    (vec![AUD.to_owned()], now)
}

fn check(token: &str, key: &PublicKey) -> Result<Claims, &'static str> {
    let (audiences, now) = expect(SystemTime::now());
    verify(
        token,
        key,
        &Expect {
            audiences: &audiences,
            now,
        },
    )
}

#[test]
fn rsa_and_ec_public_keys_verify_what_the_broker_signs() {
    for kind in [Kind::RsaPkcs8, Kind::EcSec1] {
        let keys = generate(kind);
        let public = PublicKey::from_pem(&keys.public_pem()).unwrap();
        let claims = check(&sign(&signer(&keys), json!({})), &public).unwrap();
        assert_eq!((claims.iss.as_str(), claims.sub.as_str()), ("svc", "svc"));
        let other = PublicKey::from_pem(&generate(kind).public_pem()).unwrap();
        assert_eq!(
            check(&sign(&signer(&keys), json!({})), &other).err(),
            Some("the assertion's signature does not verify with the registered key")
        );
    }
}

#[test]
fn only_the_algorithm_of_the_key_is_accepted() {
    let keys = generate(Kind::EcPkcs8);
    let public = PublicKey::from_pem(&keys.public_pem()).unwrap();
    let token = sign(&signer(&keys), json!({}));
    let (_, rest) = token.split_once('.').unwrap();
    for alg in ["none", "HS256", "RS256"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg}).to_string());
        let forged = format!("{header}.{rest}");
        assert_eq!(
            check(&forged, &public).err(),
            Some("the assertion's alg does not match the registered key"),
            "{alg}"
        );
    }
    let rsa = SigningKey::from_pem(
        &SecretString::from(generate(Kind::RsaPkcs1).private_pem()),
        Some(SigningAlg::Rs256),
        None,
    )
    .unwrap();
    assert!(check(&sign(&rsa, json!({})), &public).is_err());
    assert!(check("a.b", &public).is_err());
    assert!(check("", &public).is_err());
}

#[test]
fn claims_must_be_fresh_and_for_this_endpoint() {
    let keys = generate(Kind::EcPkcs8);
    let key = signer(&keys);
    let public = PublicKey::from_pem(&keys.public_pem()).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let cases = [
        (
            json!({"aud": "https://elsewhere/token"}),
            "aud is not this token endpoint",
        ),
        (
            json!({"aud": ["https://elsewhere/token"]}),
            "aud is not this token endpoint",
        ),
        (json!({"exp": now - 1}), "has expired"),
        (json!({"exp": now + 7200}), "lives too long"),
        (json!({"exp": null}), "no numeric exp"),
        (json!({"iat": now + 600}), "not a past time"),
        (json!({"jti": null}), "no jti"),
        (json!({"sub": ""}), "no sub"),
    ];
    for (patch, message) in cases {
        let err = check(&sign(&key, patch.clone()), &public).err().unwrap();
        assert!(err.contains(message), "{patch}: {err}");
    }
    assert!(check(&sign(&key, json!({"aud": [AUD, "other"]})), &public).is_ok());
}

#[test]
fn a_jti_is_good_for_one_use() {
    let keys = generate(Kind::EcPkcs8);
    let public = PublicKey::from_pem(&keys.public_pem()).unwrap();
    let token = sign(&signer(&keys), json!({}));
    let mut replay = Replay::default();
    let claims = check(&token, &public).unwrap();
    assert!(replay.first_use(&claims, SystemTime::now()));
    assert!(!replay.first_use(&claims, SystemTime::now()));
    let fresh = check(&sign(&signer(&keys), json!({})), &public).unwrap();
    assert!(replay.first_use(&fresh, SystemTime::now()));
}

#[test]
fn unsupported_keys_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = (dir.path().join("k.pem"), dir.path().join("p.pem"));
    let (key, public) = (key.to_str().unwrap(), public.to_str().unwrap());
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-out",
        key,
    ]);
    openssl(&["pkey", "-in", key, "-pubout", "-out", public]);
    let err = PublicKey::from_file(public).unwrap_err();
    assert!(err.contains("only RSA and EC P-256"), "{err}");
    assert!(
        PublicKey::from_file(key)
            .unwrap_err()
            .contains("BEGIN PUBLIC KEY")
    );
    assert!(
        PublicKey::from_file("/nonexistent")
            .unwrap_err()
            .contains("cannot read")
    );
}
