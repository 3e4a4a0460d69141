//! Signing, checked by an independent verifier (openssl) for every key shape.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::test_keys::{Kind, es256_to_der, generate, openssl_verifies};

fn key(keys: &crate::test_keys::Keys, alg: Option<SigningAlg>) -> Result<SigningKey, String> {
    SigningKey::from_pem(&SecretString::from(keys.private_pem()), alg, None)
        .map_err(|e| e.to_string())
}

fn parts(jwt: &SecretString) -> (String, Value, Vec<u8>) {
    let jwt = jwt.expose_secret();
    let (input, sig) = jwt.rsplit_once('.').unwrap();
    let header = input.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    (
        input.to_owned(),
        header,
        URL_SAFE_NO_PAD.decode(sig).unwrap(),
    )
}

#[test]
fn rsa_keys_sign_rs256_that_openssl_verifies() {
    for kind in [Kind::RsaPkcs8, Kind::RsaPkcs1] {
        let keys = generate(kind);
        let signer = key(&keys, None).unwrap();
        assert_eq!(signer.alg(), SigningAlg::Rs256, "{kind:?}");
        let jwt = signer
            .sign(&claims(
                "c",
                "c",
                "https://idp/token",
                Duration::from_secs(60),
            ))
            .unwrap();
        let (input, header, sig) = parts(&jwt);
        assert_eq!(header["alg"], "RS256");
        assert!(
            openssl_verifies(&keys.public, input.as_bytes(), &sig),
            "{kind:?}"
        );
        assert!(!openssl_verifies(&keys.public, b"something else", &sig));
    }
}

#[test]
fn ec_keys_sign_es256_that_openssl_verifies() {
    for kind in [Kind::EcPkcs8, Kind::EcSec1] {
        let keys = generate(kind);
        let signer = SigningKey::from_pem(
            &SecretString::from(keys.private_pem()),
            Some(SigningAlg::Es256),
            Some("key-1".into()),
        )
        .unwrap();
        let jwt = signer
            .sign(&claims(
                "c",
                "c",
                "https://idp/token",
                Duration::from_secs(60),
            ))
            .unwrap();
        let (input, header, sig) = parts(&jwt);
        assert_eq!(
            (header["alg"].as_str(), header["kid"].as_str()),
            (Some("ES256"), Some("key-1"))
        );
        assert_eq!(sig.len(), 64, "JWS wants r || s, not DER");
        assert!(
            openssl_verifies(&keys.public, input.as_bytes(), &es256_to_der(&sig)),
            "{kind:?}"
        );
    }
}

#[test]
fn the_algorithm_must_fit_the_key_and_errors_show_no_key() {
    let ec = generate(Kind::EcPkcs8);
    let err = key(&ec, Some(SigningAlg::Rs256)).unwrap_err();
    assert!(err.contains("\"RS256\" needs an RSA key"), "{err}");
    let rsa = generate(Kind::RsaPkcs1);
    let err = key(&rsa, Some(SigningAlg::Es256)).unwrap_err();
    assert!(err.contains("\"ES256\" needs an EC P-256 key"), "{err}");
    let small = generate(Kind::Rsa1024);
    let err = key(&small, None).unwrap_err();
    assert!(err.contains("2048 bits"), "{err}");
    let pem = rsa.private_pem();
    let body = pem.lines().nth(1).unwrap();
    for bad in [&pem.replace(body, "AAAA")[..], "not a key", ""] {
        let err = SigningKey::from_pem(&SecretString::from(bad.to_owned()), None, None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains(body), "{err}");
    }
    let debug = format!("{:?}", key(&rsa, None).unwrap());
    assert!(debug.contains("Rs256") && !debug.contains(body), "{debug}");
}

#[test]
fn claims_carry_the_lifetime_and_a_fresh_jti() {
    let a = claims("iss", "sub", "aud", Duration::from_secs(300));
    let b = claims("iss", "sub", "aud", Duration::from_secs(300));
    assert_eq!(a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap(), 300);
    assert_eq!(
        (a["iss"].as_str(), a["sub"].as_str(), a["aud"].as_str()),
        (Some("iss"), Some("sub"), Some("aud"))
    );
    assert_ne!(a["jti"], b["jti"]);
}
