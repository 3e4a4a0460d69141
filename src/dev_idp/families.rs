//! Refresh token families: strict rotation, reuse detection with an optional grace
//! window, and revocation.
//!
//! A family is the lineage of refresh tokens descended from one minted token. This file
//! decides what a presented refresh token is worth; it issues no access tokens and keeps
//! no counters, which is the state's job.

use super::tokens;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// Identifies a family; an index into `Families::families`, which never shrinks.
pub type FamilyId = usize;

/// The rotation rules, fixed per IdP.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Strict rotation (true) or a non-rotating IdP whose refresh tokens never wear out.
    pub rotation: bool,
    /// How long after its first use a token may be replayed harmlessly.
    pub reuse_grace: Duration,
}

/// One lineage. Reuse of any used member revokes all of it, as RFC 6819 5.2.2.3
/// suggests: the IdP cannot tell the thief from the owner, so both lose.
struct Family {
    /// Scope granted when the family was minted; refreshes may narrow it, not widen it.
    scope: Option<String>,
    /// Once revoked, no member refreshes and no access token it issued is valid.
    revoked: bool,
    /// The DPoP key (its RFC 7638 thumbprint) the family is bound to, from its first
    /// token issued with a proof on (RFC 9449 section 5): later refreshes must prove
    /// possession of that key.
    jkt: Option<String>,
}

/// What the IdP remembers of one refresh token.
struct RefreshRecord {
    family: FamilyId,
    /// Set at the first rotation; a second presentation is reuse.
    used: Option<FirstUse>,
}

/// The first rotation of a token, kept so that a replay within grace gets the same
/// successor instead of forking the family.
struct FirstUse {
    at: SystemTime,
    successor: String,
}

/// How a refresh succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshKind {
    /// The token was used up and a successor issued.
    Rotated,
    /// A used token replayed within grace got its original successor again.
    GraceReplay,
    /// A non-rotating IdP refreshed without a successor.
    NotRotated,
}

/// A successful refresh, before any access token is minted.
#[derive(Debug)]
pub struct Refreshed {
    /// The family the access token will belong to.
    pub family: FamilyId,
    /// The refresh token to hand back, if any.
    pub successor: Option<String>,
    /// The scope granted.
    pub scope: Option<String>,
    /// What happened.
    pub kind: RefreshKind,
}

/// Why a refresh was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Never issued by this IdP.
    Unknown,
    /// Its family was revoked earlier.
    Revoked,
    /// Reused past grace; its family has just been revoked.
    Reused,
    /// Asked for more scope than the family was granted.
    ScopeExceeded,
}

/// Every family and every refresh token ever issued. Used tokens are kept for good, as
/// reuse detection needs them; a dev IdP's lifetime keeps that small.
#[derive(Default)]
pub struct Families {
    families: Vec<Family>,
    tokens: HashMap<String, RefreshRecord>,
}

impl Families {
    /// Starts a family with the given first token (or a random one) and returns it.
    pub fn mint(&mut self, scope: Option<String>, token: Option<String>) -> String {
        self.start(scope, token).1
    }

    /// Like `mint`, also naming the family, so the caller can revoke it later.
    pub fn start(&mut self, scope: Option<String>, token: Option<String>) -> (FamilyId, String) {
        let token = token.unwrap_or_else(tokens::refresh_token);
        self.families.push(Family {
            scope,
            revoked: false,
            jkt: None,
        });
        let family = self.families.len() - 1;
        // A chosen token that already exists moves to the new family: the caller asked
        // for exactly that string to work from now on.
        self.tokens
            .insert(token.clone(), RefreshRecord { family, used: None });
        (family, token)
    }

    /// Judges a presented refresh token at `now`, rotating it when the policy says so.
    pub fn refresh(
        &mut self,
        now: SystemTime,
        presented: &str,
        scope: Option<&str>,
        policy: Policy,
    ) -> Result<Refreshed, Refusal> {
        let record = self.tokens.get(presented).ok_or(Refusal::Unknown)?;
        let family = record.family;
        let first_use = record.used.as_ref().map(|u| (u.at, u.successor.clone()));
        let original = self.families.get(family).ok_or(Refusal::Unknown)?;
        if original.revoked {
            return Err(Refusal::Revoked);
        }
        let scope = granted_scope(original.scope.as_deref(), scope)?;
        let (successor, kind) = match (policy.rotation, first_use) {
            (false, _) => (None, RefreshKind::NotRotated),
            (true, None) => (
                Some(self.rotate(now, presented, family)),
                RefreshKind::Rotated,
            ),
            (true, Some((at, successor))) => {
                // A clock that stepped back counts as no time elapsed. The comparison is
                // strict so that a zero grace forgives nothing.
                let elapsed = now.duration_since(at).unwrap_or(Duration::ZERO);
                if elapsed >= policy.reuse_grace {
                    self.revoke(family);
                    return Err(Refusal::Reused);
                }
                (Some(successor), RefreshKind::GraceReplay)
            }
        };
        Ok(Refreshed {
            family,
            successor,
            scope,
            kind,
        })
    }

    /// Uses up `presented` and returns its new successor in the same family.
    fn rotate(&mut self, now: SystemTime, presented: &str, family: FamilyId) -> String {
        let successor = tokens::refresh_token();
        self.tokens
            .insert(successor.clone(), RefreshRecord { family, used: None });
        if let Some(record) = self.tokens.get_mut(presented) {
            record.used = Some(FirstUse {
                at: now,
                successor: successor.clone(),
            });
        }
        successor
    }

    /// Revokes one family; true if it was live until now.
    pub fn revoke(&mut self, family: FamilyId) -> bool {
        match self.families.get_mut(family) {
            Some(family) if !family.revoked => {
                family.revoked = true;
                true
            }
            _ => false,
        }
    }

    /// Revokes every live family and returns how many that was.
    pub fn revoke_all(&mut self) -> u64 {
        (0..self.families.len())
            .map(|family| u64::from(self.revoke(family)))
            .sum()
    }

    /// Whether tokens of this family must be refused (an unknown family counts as
    /// revoked, the safe answer).
    pub fn is_revoked(&self, family: FamilyId) -> bool {
        self.families.get(family).is_none_or(|f| f.revoked)
    }

    /// The DPoP key thumbprint `presented`'s family is bound to, if any.
    pub fn binding(&self, presented: &str) -> Option<&str> {
        let family = self.tokens.get(presented)?.family;
        self.families.get(family)?.jkt.as_deref()
    }

    /// Binds a family to a DPoP key; a family stays bound to its first key.
    pub fn bind(&mut self, family: FamilyId, jkt: &str) {
        if let Some(family) = self.families.get_mut(family) {
            family.jkt.get_or_insert_with(|| jkt.to_owned());
        }
    }

    /// How many families are live.
    pub fn active(&self) -> u64 {
        self.families.iter().filter(|f| !f.revoked).count() as u64
    }
}

/// The scope a refresh grants: the requested one if it stays within the family's
/// original scope (RFC 6749 6), else the original. A family minted without a scope
/// places no limit, since there is nothing to compare against.
fn granted_scope(
    original: Option<&str>,
    requested: Option<&str>,
) -> Result<Option<String>, Refusal> {
    match (original, requested) {
        (Some(original), Some(requested)) => {
            let allowed: HashSet<&str> = original.split_whitespace().collect();
            if requested.split_whitespace().all(|s| allowed.contains(s)) {
                Ok(Some(requested.to_owned()))
            } else {
                Err(Refusal::ScopeExceeded)
            }
        }
        (original, requested) => Ok(requested.or(original).map(str::to_owned)),
    }
}
