//! Memory across proofs: replays, the bounded seen-set, nonce rotation, and the
//! several URLs one endpoint answers to.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use super::*;
use crate::dpop::Key;

fn htus() -> Vec<String> {
    vec![
        "http://localhost:9/token".to_owned(),
        "http://127.0.0.1:9/token".to_owned(),
    ]
}

#[test]
fn a_proof_is_good_for_one_request() {
    let mut proofs = Proofs::new(DpopPolicy::default());
    let key = Key::generate().unwrap();
    let now = SystemTime::now();
    let proof = key
        .proof("POST", "http://localhost:9/token", None, None)
        .unwrap();
    let verified = proofs.check(now, &proof, "POST", &htus(), None).unwrap();
    assert_eq!(verified.jkt, key.thumbprint());
    let again = proofs.check(now, &proof, "POST", &htus(), None);
    assert_eq!(again, Err(ProofRefusal::Replayed));
    // A fresh proof of the same key passes.
    let fresh = key
        .proof("POST", "http://localhost:9/token", None, None)
        .unwrap();
    assert!(proofs.check(now, &fresh, "POST", &htus(), None).is_ok());
}

#[test]
fn any_url_of_the_endpoint_passes_and_another_does_not() {
    let mut proofs = Proofs::new(DpopPolicy::default());
    let key = Key::generate().unwrap();
    let now = SystemTime::now();
    let second = key
        .proof("POST", "http://127.0.0.1:9/token", None, None)
        .unwrap();
    assert!(proofs.check(now, &second, "POST", &htus(), None).is_ok());
    let elsewhere = key
        .proof("POST", "http://127.0.0.1:9/other", None, None)
        .unwrap();
    assert_eq!(
        proofs.check(now, &elsewhere, "POST", &htus(), None),
        Err(ProofRefusal::Invalid(VerifyError::Htu))
    );
    let get = key
        .proof("GET", "http://127.0.0.1:9/token", None, None)
        .unwrap();
    assert_eq!(
        proofs.check(now, &get, "POST", &htus(), None),
        Err(ProofRefusal::Invalid(VerifyError::Htm))
    );
}

#[test]
fn the_seen_set_forgets_only_proofs_too_old_to_pass() {
    let mut proofs = Proofs::new(DpopPolicy::default());
    let now = SystemTime::now();
    let old = unix_secs(now) - MAX_AGE.as_secs() - 61;
    let recent = unix_secs(now) - 10;
    for i in 0..SEEN_PRUNE_AT {
        let iat = if i == 0 { recent } else { old };
        proofs.seen.insert(("k".into(), format!("j{i}")), iat);
    }
    let key = Key::generate().unwrap();
    let proof = key
        .proof("POST", "http://localhost:9/token", None, None)
        .unwrap();
    proofs.check(now, &proof, "POST", &htus(), None).unwrap();
    assert_eq!(proofs.seen.len(), 2, "the recent one and the new one");
    assert!(proofs.seen.contains_key(&("k".into(), "j0".into())));
}

#[test]
fn nonces_rotate_and_the_previous_one_stays_good() {
    let mut proofs = Proofs::new(DpopPolicy {
        nonce: true,
        required: false,
    });
    let key = Key::generate().unwrap();
    let t0 = SystemTime::now();
    let first = proofs.nonce(t0).unwrap();
    assert_eq!(proofs.nonce(t0 + Duration::from_secs(30)).unwrap(), first);
    let check = |proofs: &mut Proofs, at: SystemTime, nonce: Option<&str>| {
        let proof = key
            .proof_at("POST", "http://localhost:9/token", None, nonce, at)
            .unwrap();
        proofs.check(at, &proof, "POST", &htus(), None)
    };
    assert_eq!(check(&mut proofs, t0, None), Err(ProofRefusal::UseNonce));
    assert_eq!(
        check(&mut proofs, t0, Some("made-up")),
        Err(ProofRefusal::UseNonce)
    );
    assert!(check(&mut proofs, t0, Some(&first)).is_ok());
    let t1 = t0 + NONCE_ROTATION;
    let second = proofs.nonce(t1).unwrap();
    assert_ne!(second, first);
    assert!(check(&mut proofs, t1, Some(&first)).is_ok(), "previous");
    assert!(check(&mut proofs, t1, Some(&second)).is_ok(), "current");
    let t2 = t1 + NONCE_ROTATION;
    assert_eq!(
        check(&mut proofs, t2, Some(&first)),
        Err(ProofRefusal::UseNonce)
    );
    assert!(check(&mut proofs, t2, Some(&second)).is_ok());
}

#[test]
fn without_the_nonce_option_no_nonce_is_announced() {
    let mut proofs = Proofs::new(DpopPolicy::default());
    assert_eq!(proofs.nonce(SystemTime::now()), None);
}
