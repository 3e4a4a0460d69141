//! Key pairs for unit tests, made by the `openssl` command line (tests/run.sh installs
//! it), and openssl as an independent verifier of the signatures the broker makes.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shapes of private key the broker reads.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    RsaPkcs8,
    RsaPkcs1,
    EcPkcs8,
    EcSec1,
    /// Too small for RS256 (ring refuses RSA keys under 2048 bits).
    Rsa1024,
}

/// A generated pair in its own directory.
pub struct Keys {
    _dir: tempfile::TempDir,
    pub private: PathBuf,
    pub public: PathBuf,
}

impl Keys {
    pub fn private_pem(&self) -> String {
        std::fs::read_to_string(&self.private).unwrap()
    }

    // Only the dev IdP's tests verify with the public key.
    #[cfg_attr(not(feature = "dev-idp"), allow(dead_code))]
    pub fn public_pem(&self) -> Vec<u8> {
        std::fs::read(&self.public).unwrap()
    }
}

/// Runs openssl, panicking with its stderr if it fails.
pub fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (tests/run.sh installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn generate(kind: Kind) -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("key.pem");
    let public = dir.path().join("pub.pem");
    let out = private.to_str().unwrap();
    match kind {
        Kind::RsaPkcs8 => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            out,
        ]),
        Kind::RsaPkcs1 => openssl(&["genrsa", "-traditional", "-out", out, "2048"]),
        Kind::Rsa1024 => openssl(&["genrsa", "-out", out, "1024"]),
        Kind::EcPkcs8 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            out,
        ]),
        Kind::EcSec1 => openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            out,
        ]),
    }
    openssl(&[
        "pkey",
        "-in",
        out,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    Keys {
        _dir: dir,
        private,
        public,
    }
}

/// Whether `openssl dgst -sha256 -verify` accepts `signature` (DER for ECDSA) over
/// `input` with the public key at `public`.
pub fn openssl_verifies(public: &Path, input: &[u8], signature: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (data, sig) = (dir.path().join("data"), dir.path().join("sig"));
    std::fs::write(&data, input).unwrap();
    std::fs::write(&sig, signature).unwrap();
    Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(&sig)
        .arg(&data)
        .output()
        .unwrap()
        .status
        .success()
}

/// A JWS ES256 signature (`r || s`, 32 bytes each) as the DER `ECDSA-Sig-Value`
/// openssl verifies.
pub fn es256_to_der(signature: &[u8]) -> Vec<u8> {
    let integer = |bytes: &[u8]| {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        let mut value = if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
            vec![0]
        } else {
            Vec::new()
        };
        value.extend(trimmed);
        let mut out = vec![0x02, value.len() as u8];
        out.extend(value);
        out
    };
    let (r, s) = signature.split_at(32);
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}
