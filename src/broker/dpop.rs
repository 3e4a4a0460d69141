//! A `dpop = true` credential's side of DPoP (RFC 9449): its key, loaded or made on
//! first use and then kept for the credential's life; the IdP's latest nonce; the
//! resource servers' nonces by origin; and the proofs apps and proxies ask for.
//!
//! The key is `dpop_key` when configured, else the one in the state store (made by the
//! first broker that needs it: every broker of a fleet signs with the same key). It
//! never leaves this module but as a signature: no log, status, metric or error shows
//! it (`dpop::Key`'s `Debug` shows the thumbprint only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use tracing::{info, warn};

use super::credential::Credential;
use crate::config::DpopSpec;
use crate::dpop::Key;
use crate::error::Error;
use crate::idp::dpop::{Nonce, valid_nonce};
use crate::secret::ExposeSecret;

/// How many resource-server origins keep a nonce; past it the oldest is forgotten.
pub const MAX_ORIGINS: usize = 1024;

/// The longest origin that keeps a nonce (a DNS name is at most 253 bytes): with
/// `MAX_ORIGINS` it bounds the memory nonces take, whatever hosts apps name.
pub const MAX_ORIGIN_LEN: usize = 512;

/// What a DPoP credential keeps besides its token.
#[derive(Debug)]
pub(crate) struct Dpop {
    spec: DpopSpec,
    /// Loaded once: a token bound to it must stay usable, so it never changes while
    /// the credential lives.
    key: OnceCell<Arc<Key>>,
    /// The token endpoint's latest `DPoP-Nonce`.
    pub idp_nonce: Nonce,
    /// Resource servers' latest `DPoP-Nonce`, by origin.
    nonces: Mutex<Nonces>,
}

impl Dpop {
    pub fn new(spec: &DpopSpec) -> Dpop {
        Dpop {
            spec: spec.clone(),
            key: OnceCell::new(),
            idp_nonce: Nonce::default(),
            nonces: Mutex::default(),
        }
    }

    fn nonces(&self) -> std::sync::MutexGuard<'_, Nonces> {
        // Each change is one insert or remove: a panic cannot leave it half made.
        self.nonces.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Credential {
    /// The DPoP key, loaded (or made and stored) on first use.
    pub(crate) async fn dpop_key(&self) -> Result<Option<Arc<Key>>, Error> {
        let Some(dpop) = &self.dpop else {
            return Ok(None);
        };
        let key = dpop
            .key
            .get_or_try_init(|| self.load_dpop_key(dpop))
            .await?;
        Ok(Some(key.clone()))
    }

    async fn load_dpop_key(&self, dpop: &Dpop) -> Result<Arc<Key>, Error> {
        let unusable = |why: String| Error::UpstreamUnavailable {
            reason: format!("the DPoP key cannot be used: {why}"),
            retry_after: std::time::Duration::from_secs(1),
        };
        let key = match &dpop.spec.key {
            Some(source) => {
                let pem = source
                    .read()
                    .map_err(|e| unusable(format!("dpop_key: {e}")))?;
                Key::from_pem(pem.expose_secret().as_bytes())
                    .map_err(|e| unusable(format!("dpop_key ({source:?}): {e}")))?
            }
            None => {
                let fresh = Key::generate().map_err(|e| unusable(e.to_string()))?;
                let stored = self
                    .shared
                    .store
                    .dpop_key(self.name(), fresh.pkcs8())
                    .await
                    .map_err(|e| Error::Store(e.to_string()))?;
                Key::from_pkcs8(&stored).map_err(|e| unusable(format!("the stored key: {e}")))?
            }
        };
        // The thumbprint is public (every bound token carries it as `cnf.jkt`).
        info!(credential = self.name(), jkt = %key.thumbprint(), "DPoP key ready");
        Ok(Arc::new(key))
    }

    /// Whether tokens of this credential are DPoP-bound.
    pub fn uses_dpop(&self) -> bool {
        self.dpop.is_some()
    }

    /// A proof for a request to a resource server with `token`, for `htm` and the
    /// normalised `htu`. `nonce`: the one the server sent the app (remembered for the
    /// origin); without it, the origin's remembered nonce, if any.
    pub async fn dpop_proof(
        &self,
        htm: &str,
        htu: &str,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<String, Error> {
        let Some(key) = self.dpop_key().await? else {
            return Err(Error::BadRequest(format!(
                "credential `{}` does not use DPoP (dpop = true)",
                self.name()
            )));
        };
        let origin = origin(htu);
        let nonce = match nonce {
            Some(nonce) => {
                self.remember_nonce(htu, nonce);
                Some(nonce.to_owned())
            }
            None => self.dpop.as_ref().and_then(|d| d.nonces().get(&origin)),
        };
        let ath = crate::dpop::ath(token);
        key.proof(htm, htu, Some(&ath), nonce.as_deref())
            .map_err(|e| Error::UpstreamUnavailable {
                reason: e.to_string(),
                retry_after: std::time::Duration::from_secs(1),
            })
    }

    /// Keeps a resource server's nonce for the origin of `htu` (a normalised htu).
    pub fn remember_nonce(&self, htu: &str, nonce: &str) {
        if let (Some(dpop), Some(nonce)) = (&self.dpop, valid_nonce(nonce.as_bytes())) {
            dpop.nonces().insert(origin(htu), nonce);
        }
    }

    /// Whether a stored token's type fits the settings: a bearer token stored before
    /// `dpop = true` was set is not bound to the key, and a bound one is of no use to
    /// apps that now send it as a bearer token; either way a new one is fetched.
    pub(super) fn stored_type_fits(&self, token_type: &str) -> bool {
        self.dpop.is_some() == token_type.eq_ignore_ascii_case("DPoP")
    }

    /// The answer's `token_type` for a DPoP credential: `DPoP` in any case, written as
    /// the RFC does; anything else means the IdP did not bind the token.
    pub(super) fn dpop_token_type(&self, token_type: String) -> Result<String, Error> {
        if self.dpop.is_none() {
            return Ok(token_type);
        }
        if token_type.eq_ignore_ascii_case("DPoP") {
            return Ok("DPoP".to_owned());
        }
        Err(Error::UpstreamUnavailable {
            reason: format!(
                "the identity provider answered token_type `{}`, not `DPoP`: it did not bind \
                 the token to the broker's key (does it support DPoP for this client?); the \
                 token is not served",
                token_type.chars().take(32).collect::<String>()
            ),
            retry_after: std::time::Duration::from_secs(1),
        })
    }
}

impl Credential {
    /// After an answer whose token is not bound: the IdP rotated the refresh token all
    /// the same, so the chain (already rotated in memory) is stored; the token is not.
    pub(super) async fn unbound(&self, error: Error) -> Error {
        let saved = self.saved(&self.lock(), None);
        if let Err(e) = self.write(saved).await {
            // Held for write-back: the store still has the spent token, marked as out.
            self.lock().chain_unsaved = true;
            warn!(credential = self.name(), error = %e, "could not store the rotated refresh token; writing it before the next refresh");
        }
        warn!(credential = self.name(), error = %error, "token not served");
        error
    }

    /// Writes a chain `unbound` could not, before the next refresh sends anything.
    pub(super) async fn save_chain(&self) -> Result<(), Error> {
        let saved = {
            let inner = self.lock();
            if !inner.chain_unsaved {
                return Ok(());
            }
            self.saved(&inner, None)
        };
        self.write(saved).await?;
        self.lock().chain_unsaved = false;
        info!(credential = self.name(), "stored the rotated refresh token");
        Ok(())
    }
}

/// `scheme://host:port` of a normalised htu: nonces are per origin (RFC 9449 section 9).
fn origin(htu: &str) -> String {
    match url::Url::parse(htu) {
        Ok(url) => url.origin().ascii_serialization(),
        Err(_) => htu.to_owned(),
    }
}

/// The latest nonce per origin, at most `MAX_ORIGINS` of them, each origin at most
/// `MAX_ORIGIN_LEN` bytes.
#[derive(Debug, Default)]
struct Nonces {
    by_origin: HashMap<String, (String, u64)>,
    /// Increases with every insert: the smallest is the oldest.
    clock: u64,
}

impl Nonces {
    fn insert(&mut self, origin: String, nonce: String) {
        if origin.len() > MAX_ORIGIN_LEN {
            return;
        }
        self.clock += 1;
        if self.by_origin.len() >= MAX_ORIGINS && !self.by_origin.contains_key(&origin) {
            let oldest = self
                .by_origin
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(origin, _)| origin.clone());
            if let Some(oldest) = oldest {
                self.by_origin.remove(&oldest);
            }
        }
        self.by_origin.insert(origin, (nonce, self.clock));
    }

    fn get(&self, origin: &str) -> Option<String> {
        self.by_origin.get(origin).map(|(nonce, _)| nonce.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_kept_per_origin_and_bounded_forgetting_the_oldest() {
        let mut nonces = Nonces::default();
        nonces.insert(origin("https://api.test/a"), "n1".into());
        nonces.insert(origin("https://api.test:443/b"), "n2".into());
        nonces.insert(origin("https://other.test/a"), "m1".into());
        assert_eq!(
            nonces.get(&origin("https://api.test/zzz")).as_deref(),
            Some("n2")
        );
        assert_eq!(
            nonces.get(&origin("http://api.test/a")),
            None,
            "scheme matters"
        );
        assert_eq!(
            nonces.get(&origin("https://api.test:8443/a")),
            None,
            "port matters"
        );
        for i in 0..MAX_ORIGINS + 10 {
            nonces.insert(format!("https://h{i}.test"), format!("x{i}"));
        }
        assert_eq!(nonces.by_origin.len(), MAX_ORIGINS);
        assert_eq!(
            nonces.get(&origin("https://api.test/")),
            None,
            "oldest forgotten"
        );
        let newest = format!("https://h{}.test", MAX_ORIGINS + 9);
        assert_eq!(nonces.get(&newest), Some(format!("x{}", MAX_ORIGINS + 9)));
        // Updating a known origin when full forgets nothing else.
        nonces.insert(newest.clone(), "again".into());
        assert_eq!(nonces.by_origin.len(), MAX_ORIGINS);
        assert!(nonces.get("https://h10.test").is_some());
    }

    #[test]
    fn an_overlong_origin_keeps_no_nonce() {
        let mut nonces = Nonces::default();
        let long = |n: usize| format!("https://{}.test", "a".repeat(n - "https://.test".len()));
        nonces.insert(long(MAX_ORIGIN_LEN), "kept".into());
        nonces.insert(long(MAX_ORIGIN_LEN + 1), "dropped".into());
        assert_eq!(nonces.get(&long(MAX_ORIGIN_LEN)), Some("kept".into()));
        assert_eq!(nonces.get(&long(MAX_ORIGIN_LEN + 1)), None);
        assert_eq!(nonces.by_origin.len(), 1);
    }
}
