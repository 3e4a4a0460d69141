//! The key: generation, storage round trips, PEM shapes, thumbprints against the RFC
//! 7638 example, and a Debug that shows no key material.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::jwk::PublicJwk;
use super::{Key, KeyError, ath};
use crate::test_keys::{self, Kind, openssl};

/// The RSA key of RFC 7638 section 3.1 and the thumbprint the RFC gives for it.
const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
const RFC7638_THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

fn jwk(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

#[test]
fn the_rsa_thumbprint_is_the_one_rfc_7638_gives() {
    let key = jwk(json!({"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256"}));
    let key = PublicJwk::parse("RS256", &key).ok().unwrap();
    assert_eq!(key.thumbprint(), RFC7638_THUMBPRINT);
}

#[test]
fn the_ec_thumbprint_hashes_crv_kty_x_y_in_order() {
    // RFC 7517 appendix A.1's EC key; the expected value was computed apart from this
    // code, as SHA-256 over {"crv":"P-256","kty":"EC","x":"..","y":".."}.
    let key = jwk(json!({
        "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
        "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
        "use": "enc", "kid": "1", "crv": "P-256", "kty": "EC",
    }));
    let key = PublicJwk::parse("ES256", &key).ok().unwrap();
    assert_eq!(
        key.thumbprint(),
        "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s"
    );
}

#[test]
fn ath_is_the_example_of_rfc_9449() {
    assert_eq!(
        ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
}

#[test]
fn a_generated_key_survives_its_pkcs8_storage() {
    let key = Key::generate().unwrap();
    let again = Key::from_pkcs8(&key.pkcs8()).unwrap();
    assert_eq!(key.thumbprint(), again.thumbprint());
    assert_eq!(key.public_jwk(), again.public_jwk());
    assert_ne!(key.thumbprint(), Key::generate().unwrap().thumbprint());
    let public = PublicJwk::parse("ES256", &jwk(key.public_jwk()))
        .ok()
        .unwrap();
    assert_eq!(public.thumbprint(), key.thumbprint());
}

#[test]
fn debug_shows_the_thumbprint_and_no_key_material() {
    let key = Key::generate().unwrap();
    let shown = format!("{key:?} {key:#?}");
    assert!(shown.contains(&key.thumbprint()), "{shown}");
    // The private scalar is the last 32 bytes of ring's PKCS#8 (before the public key).
    let pkcs8 = key.pkcs8();
    for window in pkcs8.windows(8) {
        let hex: String = window.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex), "{shown}");
        assert!(!shown.contains(&URL_SAFE_NO_PAD.encode(window)), "{shown}");
    }
    assert!(!shown.contains("pkcs8"), "{shown}");
}

#[test]
fn pkcs8_and_sec1_pems_of_one_key_are_the_same_key() {
    let keys = test_keys::generate(Kind::EcSec1);
    let pkcs8 = keys.private.with_extension("p8");
    let (from, to) = (keys.private.to_str().unwrap(), pkcs8.to_str().unwrap());
    openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", from, "-out", to]);
    let sec1 = Key::from_pem(keys.private_pem().as_bytes()).unwrap();
    let p8 = Key::from_pem(&std::fs::read(&pkcs8).unwrap()).unwrap();
    assert_eq!(sec1.thumbprint(), p8.thumbprint());
    assert!(keys.private_pem().contains("BEGIN EC PRIVATE KEY"));
}

#[test]
fn rsa_and_non_pem_keys_are_refused_by_name() {
    let rsa = test_keys::generate(Kind::RsaPkcs1);
    let err = Key::from_pem(rsa.private_pem().as_bytes()).unwrap_err();
    assert_eq!(err, KeyError::Rsa);
    let rsa8 = test_keys::generate(Kind::RsaPkcs8);
    let err = Key::from_pem(rsa8.private_pem().as_bytes()).unwrap_err();
    assert!(matches!(err, KeyError::Rejected(_)), "{err}");
    assert_eq!(Key::from_pem(b"not a key").unwrap_err(), KeyError::NotPem);
    assert!(Key::from_pkcs8(b"\x30\x00").is_err());
}

#[test]
fn a_proof_has_the_rfc_header_and_claims() {
    let key = Key::generate().unwrap();
    let proof = key
        .proof("POST", "https://idp.example/token", Some("abc"), Some("n1"))
        .unwrap();
    let part = |i: usize| -> Value {
        let bytes = URL_SAFE_NO_PAD.decode(proof.split('.').nth(i).unwrap());
        serde_json::from_slice(&bytes.unwrap()).unwrap()
    };
    let (header, claims) = (part(0), part(1));
    assert_eq!(header["typ"], "dpop+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["jwk"], key.public_jwk());
    assert!(header["jwk"].get("d").is_none());
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["htu"], "https://idp.example/token");
    assert_eq!(claims["ath"], "abc");
    assert_eq!(claims["nonce"], "n1");
    assert!(claims["iat"].as_u64().unwrap() > 1_700_000_000);
    let jti = URL_SAFE_NO_PAD.decode(claims["jti"].as_str().unwrap());
    assert!(jti.unwrap().len() * 8 >= 96);
    let bare = key.proof("GET", "https://a.example/", None, None).unwrap();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(bare.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(claims.get("ath").is_none() && claims.get("nonce").is_none());
    assert_ne!(claims["jti"], part(1)["jti"]);
}

#[test]
fn openssl_verifies_a_proof_with_the_key_it_made_and_the_jwk_is_its_public_key() {
    let keys = test_keys::generate(Kind::EcPkcs8);
    let key = Key::from_pem(keys.private_pem().as_bytes()).unwrap();
    let proof = key
        .proof("GET", "https://api.example/x", None, None)
        .unwrap();
    let (input, sig) = proof.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert_eq!(sig.len(), 64, "JWS ES256 is r || s, not DER");
    let der = test_keys::es256_to_der(&sig);
    assert!(test_keys::openssl_verifies(
        &keys.public,
        input.as_bytes(),
        &der
    ));
    assert!(!test_keys::openssl_verifies(&keys.public, b"other", &der));
    // The SubjectPublicKeyInfo ends with the uncompressed point 04 || x || y.
    let pem = String::from_utf8(keys.public_pem()).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let spki = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let point = &spki[spki.len() - 64..];
    let jwk = key.public_jwk();
    let decode = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
    assert_eq!([decode("x"), decode("y")].concat(), point);
}
