//! Verification: a round trip for each algorithm, then one proof per rule, each broken
//! in exactly that way and refused with that rule's error.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use super::{Expect, Key, VerifyError, ath, normalize_htu, verify};
use crate::test_keys::{self, Kind};

const HTU: &str = "https://idp.example/token";
const MAX_AGE: Duration = Duration::from_secs(300);

fn expect(now: SystemTime) -> Expect<'static> {
    Expect {
        htm: "POST",
        htu: HTU,
        now,
        max_age: MAX_AGE,
        nonces: &[],
        access_token: None,
    }
}

fn claims(now: SystemTime) -> Value {
    let iat = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"jti": "j-1", "htm": "POST", "htu": HTU, "iat": iat})
}

fn header(key: &Key) -> Value {
    json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk()})
}

/// A proof with `edit` applied to a valid header and claims.
fn proof_with(key: &Key, edit: impl FnOnce(&mut Value, &mut Value)) -> String {
    let now = SystemTime::now();
    let (mut h, mut c) = (header(key), claims(now));
    edit(&mut h, &mut c);
    key.sign_jws(&h, &c).unwrap()
}

#[test]
fn an_es256_proof_verifies_and_names_its_key() {
    let key = Key::generate().unwrap();
    let now = SystemTime::now();
    let proof = key.proof("POST", HTU, None, None).unwrap();
    let verified = verify(&proof, &expect(now)).unwrap();
    assert_eq!(verified.jkt, key.thumbprint());
    assert!(verified.jti.len() >= 16);
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(verified.iat.abs_diff(secs) <= 1);
}

/// An RS256 proof made with ring's RSA signer and an openssl-made key.
fn rs256_proof(pem: &str, claims: &Value) -> (String, String) {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let pair = match der {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).unwrap(),
        _ => panic!("a PKCS#8 key"),
    };
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let (n, e) = (b64(&public.n), b64(&public.e));
    let jwk = json!({"kty": "RSA", "n": n, "e": e});
    let header = json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": jwk});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut sig = vec![0u8; pair.public().modulus_len()];
    let rng = SystemRandom::new();
    pair.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
        .unwrap();
    let jkt = super::jwk::PublicJwk::parse("RS256", jwk.as_object().unwrap())
        .ok()
        .unwrap()
        .thumbprint();
    (format!("{input}.{}", b64(&sig)), jkt)
}

#[test]
fn an_rs256_proof_verifies() {
    let keys = test_keys::generate(Kind::RsaPkcs8);
    let now = SystemTime::now();
    let (proof, jkt) = rs256_proof(&keys.private_pem(), &claims(now));
    assert_eq!(verify(&proof, &expect(now)).unwrap().jkt, jkt);
    let (bad, _) = rs256_proof(&keys.private_pem(), &claims(now));
    let tampered = format!("{}x", &bad[..bad.len() - 1]);
    assert!(verify(&tampered, &expect(now)).is_err());
}

#[test]
fn a_proof_that_is_no_jws_is_malformed() {
    let key = Key::generate().unwrap();
    let good = key.proof("POST", HTU, None, None).unwrap();
    let now = SystemTime::now();
    let parts: Vec<&str> = good.split('.').collect();
    for bad in [
        String::new(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.x"),
        format!("!!.{}.{}", parts[1], parts[2]),
        format!("{}.{}.!!", parts[0], parts[1]),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode("[1]"),
            parts[1],
            parts[2]
        ),
        "a".repeat(9000),
    ] {
        assert_eq!(verify(&bad, &expect(now)), Err(VerifyError::Malformed));
    }
}

#[test]
fn the_header_must_say_dpop_jwt_with_a_supported_alg() {
    let key = Key::generate().unwrap();
    let now = SystemTime::now();
    let check = |edit: fn(&mut Value)| verify(&proof_with(&key, |h, _| edit(h)), &expect(now));
    assert_eq!(check(|h| h["typ"] = json!("JWT")), Err(VerifyError::Typ));
    assert_eq!(
        check(|h| drop(h.as_object_mut().unwrap().remove("typ"))),
        Err(VerifyError::Typ)
    );
    for alg in ["none", "HS256", "ES384", "es256"] {
        let proof = proof_with(&key, |h, _| h["alg"] = json!(alg));
        assert_eq!(verify(&proof, &expect(now)), Err(VerifyError::Alg), "{alg}");
    }
}

#[test]
fn the_jwk_must_be_a_public_key_of_the_alg() {
    let key = Key::generate().unwrap();
    let now = SystemTime::now();
    let jwk_error = |edit: fn(&mut Value)| {
        let result = verify(&proof_with(&key, |h, _| edit(h)), &expect(now));
        assert!(matches!(result, Err(VerifyError::Jwk(_))), "{result:?}");
    };
    jwk_error(|h| drop(h.as_object_mut().unwrap().remove("jwk")));
    jwk_error(|h| h["jwk"] = json!("a string"));
    jwk_error(|h| h["jwk"]["d"] = json!("c2VjcmV0"));
    jwk_error(|h| h["jwk"]["crv"] = json!("P-384"));
    jwk_error(|h| h["jwk"]["x"] = json!("AAAA"));
    jwk_error(|h| h["alg"] = json!("RS256"));
}

#[test]
fn a_signature_must_verify_with_the_jwk_in_the_header() {
    let key = Key::generate().unwrap();
    let other = Key::generate().unwrap();
    let now = SystemTime::now();
    let good = key.proof("POST", HTU, None, None).unwrap();
    let (rest, sig) = good.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[10] ^= 1;
    let flipped = format!("{rest}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(verify(&flipped, &expect(now)), Err(VerifyError::Signature));
    // Another key's jwk in the header, this key's signature.
    let swapped = proof_with(&key, |h, _| h["jwk"] = other.public_jwk());
    assert_eq!(verify(&swapped, &expect(now)), Err(VerifyError::Signature));
    // Claims moved from another valid proof under this header and signature.
    let another = key.proof("GET", HTU, None, None).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let spliced = format!(
        "{}.{}.{}",
        parts[0],
        another.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(verify(&spliced, &expect(now)), Err(VerifyError::Signature));
}

#[test]
fn each_claim_is_checked_against_the_request() {
    let key = Key::generate().unwrap();
    let now = SystemTime::now();
    let check = |edit: fn(&mut Value)| verify(&proof_with(&key, |_, c| edit(c)), &expect(now));
    let remove = |c: &mut Value, name: &str| drop(c.as_object_mut().unwrap().remove(name));
    assert_eq!(
        check(|c| c["jti"] = json!("")),
        Err(VerifyError::Missing("jti"))
    );
    assert_eq!(
        check(|c| c["jti"] = json!("j".repeat(300))),
        Err(VerifyError::Missing("jti"))
    );
    assert_eq!(check(|c| c["htm"] = json!("GET")), Err(VerifyError::Htm));
    assert_eq!(check(|c| c["htm"] = json!("post")), Err(VerifyError::Htm));
    assert_eq!(
        check(|c| c["htu"] = json!("https://idp.example/other")),
        Err(VerifyError::Htu)
    );
    assert_eq!(
        check(|c| c["htu"] = json!("http://idp.example/token")),
        Err(VerifyError::Htu)
    );
    assert_eq!(check(|c| c["htu"] = json!("/token")), Err(VerifyError::Htu));
    assert_eq!(
        check(|c| c["iat"] = json!("now")),
        Err(VerifyError::Missing("iat"))
    );
    assert_eq!(check(|c| c["iat"] = json!(u64::MAX)), Err(VerifyError::Iat));
    for name in ["jti", "htm", "htu", "iat"] {
        let proof = proof_with(&key, |_, c| remove(c, name));
        assert_eq!(
            verify(&proof, &expect(now)),
            Err(VerifyError::Missing(name))
        );
    }
}

#[test]
fn htu_is_compared_after_normalisation() {
    let key = Key::generate().unwrap();
    let now = SystemTime::now();
    let proof = proof_with(&key, |_, c| {
        c["htu"] = json!("HTTPS://IDP.example:443/token?x=1#frag");
    });
    assert!(verify(&proof, &expect(now)).is_ok());
}

#[test]
fn iat_must_lie_within_the_window() {
    let key = Key::generate().unwrap();
    let now = SystemTime::now();
    let at = |t: SystemTime| key.proof_at("POST", HTU, None, None, t).unwrap();
    let old = at(now - MAX_AGE - Duration::from_secs(2));
    assert_eq!(verify(&old, &expect(now)), Err(VerifyError::Iat));
    let future = at(now + Duration::from_secs(120));
    assert_eq!(verify(&future, &expect(now)), Err(VerifyError::Iat));
    assert!(verify(&at(now - MAX_AGE + Duration::from_secs(2)), &expect(now)).is_ok());
    assert!(verify(&at(now + Duration::from_secs(30)), &expect(now)).is_ok());
}

#[test]
fn a_demanded_nonce_must_be_one_of_the_accepted() {
    let key = Key::generate().unwrap();
    let now = SystemTime::now();
    let nonces = ["current", "previous"];
    let with = |nonce: Option<&str>| {
        let proof = key.proof("POST", HTU, None, nonce).unwrap();
        verify(
            &proof,
            &Expect {
                nonces: &nonces,
                ..expect(now)
            },
        )
    };
    assert_eq!(with(None), Err(VerifyError::Nonce));
    assert_eq!(with(Some("stale")), Err(VerifyError::Nonce));
    assert!(with(Some("current")).is_ok());
    assert!(with(Some("previous")).is_ok());
    // Not demanded: a nonce the proof carries anyway is no fault.
    let proof = key.proof("POST", HTU, None, Some("any")).unwrap();
    assert!(verify(&proof, &expect(now)).is_ok());
}

#[test]
fn ath_must_be_the_hash_of_the_token_sent() {
    let key = Key::generate().unwrap();
    let now = SystemTime::now();
    let token = "an.access.token";
    let expect = Expect {
        access_token: Some(token),
        htm: "GET",
        ..expect(now)
    };
    let with = |ath: Option<&str>| verify(&key.proof("GET", HTU, ath, None).unwrap(), &expect);
    assert_eq!(with(None), Err(VerifyError::Ath));
    assert_eq!(with(Some(&ath("another.token"))), Err(VerifyError::Ath));
    assert_eq!(with(Some(token)), Err(VerifyError::Ath));
    assert!(with(Some(&ath(token))).is_ok());
}

#[test]
fn errors_name_the_rule_and_never_the_proof() {
    let key = Key::generate().unwrap();
    let proof = key.proof("GET", HTU, None, None).unwrap();
    let err = verify(&proof, &expect(SystemTime::now())).unwrap_err();
    assert_eq!(err, VerifyError::Htm);
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("htm"), "{shown}");
    assert!(!shown.contains(&proof[..20]), "{shown}");
}

#[test]
fn htu_normalisation() {
    let ok = |input: &str, want: &str| assert_eq!(normalize_htu(input).as_deref(), Ok(want));
    ok(
        "https://api.example.com/v1/x",
        "https://api.example.com/v1/x",
    );
    ok(
        "HTTPS://API.Example.COM:443/v1/x?q=1#f",
        "https://api.example.com/v1/x",
    );
    ok("http://example.com:80", "http://example.com/");
    ok(
        "http://example.com:8080/a/../b",
        "http://example.com:8080/b",
    );
    ok("http://127.0.0.1:9/token", "http://127.0.0.1:9/token");
    use super::HtuError::*;
    let bad = |input: &str, want| assert_eq!(normalize_htu(input), Err(want), "{input}");
    bad("/relative", NotAbsolute);
    bad("", NotAbsolute);
    bad("ftp://example.com/x", NotHttp);
    bad("urn:x:y", NotHttp);
    bad("https://user:pw@example.com/", UserInfo);
    bad("https://user@example.com/", UserInfo);
    let err = normalize_htu("https://user:hunter2@example.com/").unwrap_err();
    assert!(!err.to_string().contains("hunter2"));
}
