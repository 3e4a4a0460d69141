//! One published version of a credential's access token.
//!
//! A `Token` is immutable and shared by `Arc`: the read path loads the current one from
//! an `ArcSwap` and answers from bytes encoded once per version. Only `expires_in` changes
//! from second to second, so the JSON body is stored without it and completed per request.
//! The token bytes are zeroized when the last copy is dropped.
//!
//! Each version also draws a random 64-bit id, its entity tag: clients compare versions
//! with it (`ETag`, `If-None-Match`, watch streams) without it saying anything about the
//! token. A hash of the token would let anyone who sees the tag confirm a guessed token
//! offline; a process-wide counter would repeat after a restart and make a client wait
//! on a tag that now names another token.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

/// An access token as served.
pub struct Token {
    /// The bare token, for `format=raw`; the buffer is wiped when the last copy drops.
    raw: Bytes,
    /// `{"access_token":...,"expires_at":...` without `expires_in` and the closing brace.
    json_head: Bytes,
    /// This version's random id.
    version: u64,
    /// The id as a quoted entity tag, encoded once so responses carry it without
    /// allocating.
    etag: Bytes,
    pub token_type: String,
    pub scope: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// When the proactive refresh is due (jitter drawn once per version).
    pub refresh_at: SystemTime,
}

#[derive(Serialize)]
struct Head<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// Owner of token bytes that wipes them on drop.
struct Wiped(Vec<u8>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Token {
    /// Builds a version and encodes its response bytes.
    pub fn new(
        access_token: &str,
        token_type: String,
        scope: Option<String>,
        issued_at: SystemTime,
        expires_at: SystemTime,
        refresh_at: SystemTime,
    ) -> Token {
        let head = Head {
            access_token,
            token_type: &token_type,
            expires_at: rfc3339(expires_at),
            scope: scope.as_deref(),
        };
        // One buffer holds the bare token, the JSON head and the entity tag: thousands
        // of versions are held at once, and each allocation costs its own overhead. It
        // is sized exactly first, so it never grows: a grown buffer would leave a copy
        // of the token behind in freed memory, where the wipe on drop cannot reach it.
        let mut json_len = Counter(0);
        // Serializing a struct of strings cannot fail.
        let _ = serde_json::to_writer(&mut json_len, &head);
        let mut bytes =
            Vec::with_capacity(access_token.len() + json_len.0 - 1 + EXPIRES_IN.len() + ETAG_LEN);
        bytes.extend_from_slice(access_token.as_bytes());
        let raw_end = bytes.len();
        let _ = serde_json::to_writer(&mut bytes, &head);
        bytes.pop();
        bytes.extend_from_slice(EXPIRES_IN);
        let head_end = bytes.len();
        let version = rand::random::<u64>();
        bytes.extend_from_slice(&quoted_hex(version));
        debug_assert_eq!(bytes.len(), bytes.capacity());
        let all = Bytes::from_owner(Wiped(bytes));
        Token {
            raw: all.slice(..raw_end),
            json_head: all.slice(raw_end..head_end),
            version,
            etag: all.slice(head_end..),
            token_type,
            scope,
            issued_at,
            expires_at,
            refresh_at,
        }
    }

    /// Time left before expiry (zero once expired).
    pub fn ttl(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }

    /// Whether the token has any lifetime left.
    pub fn is_valid(&self, now: SystemTime) -> bool {
        self.expires_at > now
    }

    /// This version's id: another version of the credential has another id.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The entity tag of this version, quoted (`"0123456789abcdef"`).
    pub fn etag(&self) -> Bytes {
        self.etag.clone()
    }

    /// Whether an `If-None-Match` value names this version: `*`, or a list of tags
    /// (weak ones compared weakly, as RFC 9110 says for `If-None-Match`).
    pub fn matches(&self, if_none_match: &[u8]) -> bool {
        if_none_match.split(|b| *b == b',').any(|tag| {
            let tag = tag.trim_ascii();
            let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
            tag == b"*" || tag == &self.etag[..]
        })
    }

    /// The bare token bytes.
    pub fn raw(&self) -> Bytes {
        self.raw.clone()
    }

    /// The access token as text (for persisting).
    pub fn secret(&self) -> &str {
        std::str::from_utf8(&self.raw).unwrap_or_default()
    }

    /// Whether `candidate` is this token, compared in constant time.
    pub fn is(&self, candidate: &str) -> bool {
        crate::secret::constant_time_eq(&self.raw, candidate.as_bytes())
    }

    /// The JSON body with `expires_in` as of `now`.
    pub fn json_body(&self, now: SystemTime) -> Bytes {
        let mut out = BytesMut::with_capacity(self.json_head.len() + 24);
        out.put_slice(&self.json_head);
        put_decimal(&mut out, self.ttl(now).as_secs());
        out.put_u8(b'}');
        out.freeze()
    }
}

/// Appends `n` in decimal without an allocation (this runs once per token read).
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
}

/// What follows the JSON head's last field; `expires_in` is appended per request.
const EXPIRES_IN: &[u8] = br#","expires_in":"#;

/// Length of an entity tag: `"` + 16 hex digits + `"`.
const ETAG_LEN: usize = 18;

/// Counts what is written to it (to size a buffer before filling it).
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `"` + 16 lower-case hex digits + `"`.
fn quoted_hex(n: u64) -> [u8; ETAG_LEN] {
    let mut out = [b'"'; ETAG_LEN];
    for (i, digit) in out[1..17].iter_mut().enumerate() {
        let nibble = (n >> (60 - 4 * i)) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    out
}

/// RFC 3339 in UTC with whole seconds; times past year 9999, which RFC 3339 cannot
/// write, are written as its last second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t.min(crate::duration::latest())).to_string()
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[redacted]")
            .field("expires_at", &rfc3339(self.expires_at))
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_valid_json_with_a_live_expires_in() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = Token::new(
            "s3cr\"et",
            "Bearer".into(),
            Some("a b".into()),
            now,
            now + Duration::from_secs(90),
            now + Duration::from_secs(72),
        );
        let body: serde_json::Value = serde_json::from_slice(&t.json_body(now)).unwrap();
        assert_eq!(body["access_token"], "s3cr\"et");
        assert_eq!(body["expires_in"], 90);
        assert_eq!(body["expires_at"], "1970-01-12T13:48:10Z");
        assert_eq!(body["scope"], "a b");
        let later: serde_json::Value =
            serde_json::from_slice(&t.json_body(now + Duration::from_secs(100))).unwrap();
        assert_eq!(later["expires_in"], 0);
        assert!(t.is("s3cr\"et") && !t.is("s3cr") && !t.is("s3cr\"eT"));
        for n in [0, 7, 10, 86_399, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        assert!(!format!("{t:?}").contains("s3cr"));
    }

    #[test]
    fn an_expiry_past_year_9999_is_written_as_its_last_second() {
        let now = SystemTime::now();
        // A JWT `exp` in milliseconds, read as seconds: the year 55000.
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        let t = Token::new("t", "Bearer".into(), None, now, far, far);
        let body: serde_json::Value = serde_json::from_slice(&t.json_body(now)).unwrap();
        assert_eq!(body["expires_at"], "9999-12-31T23:59:59Z");
        assert!(body["expires_in"].as_u64().unwrap() > 200_000_000_000);
    }

    #[test]
    fn versions_have_their_own_tags_and_match_if_none_match_lists() {
        let now = SystemTime::now();
        let make = || Token::new("same", "Bearer".into(), None, now, now, now);
        let (a, b) = (make(), make());
        assert_ne!(a.version(), b.version());
        assert_ne!(a.etag(), b.etag());
        let tag = String::from_utf8(a.etag().to_vec()).unwrap();
        assert_eq!(tag.len(), 18);
        assert!(tag.starts_with('"') && tag.ends_with('"'));
        assert!(!tag.contains("same"));
        assert!(a.matches(tag.as_bytes()));
        assert!(a.matches(format!("\"x\", W/{tag} ").as_bytes()));
        assert!(a.matches(b"*"));
        assert!(!a.matches(b"\"x\""));
        assert!(!b.matches(tag.as_bytes()));
        assert!(!a.matches(tag.trim_matches('"').as_bytes()));
        assert_eq!(quoted_hex(0x0123_4567_89ab_cdef), *b"\"0123456789abcdef\"");
    }
}
