//! Durations as users write them: `30s`, `5m`, `1h`, `250ms`, `1h30m`, or a plain
//! integer meaning seconds. One parser for the config file, the CLI and query strings,
//! so every surface accepts the same spellings.

use std::time::Duration;

/// 9999-12-31T23:59:59Z in unix seconds: the last instant RFC 3339 can write. Token
/// lifetimes are capped here, so every expiry can be served, stored and compared.
pub const LATEST_UNIX_SECS: u64 = 253_402_300_799;

/// The instant of `LATEST_UNIX_SECS`.
pub fn latest() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(LATEST_UNIX_SECS)
}

/// Unix seconds as an instant, if they are plausible: a time past year 9999 is no time
/// in seconds (most often milliseconds by mistake), and counts as none.
pub fn unix_time(secs: f64) -> Option<std::time::SystemTime> {
    let plausible = secs.is_finite() && secs >= 0.0 && secs <= LATEST_UNIX_SECS as f64;
    plausible.then(|| std::time::UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// Parses `30s`, `5m`, `1h`, `250ms`, `1h 30m` or a plain number of seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 30s, 5m, 1h"))
}

/// Formats a duration the way `parse` reads it back (`1m 30s`, `250ms`).
pub fn format(duration: Duration) -> String {
    // Whole milliseconds keep the output short; nothing here needs more.
    let rounded = Duration::from_millis(duration.as_millis().min(u64::MAX as u128) as u64);
    humantime::format_duration(rounded).to_string()
}

/// The longest duration a setting takes. Every setting is a timeout, an interval or a
/// lifetime, and none makes sense beyond a year; the bound keeps every sum and product
/// the program forms from settings (`now + interval`, `4 * timeout`) far from overflow,
/// which would otherwise panic at start, on a connection or at shutdown.
pub const LONGEST_SETTING: Duration = Duration::from_secs(365 * 24 * 3600);

/// Serde helper: accepts a duration string or an integer number of seconds, at most
/// `LONGEST_SETTING`.
pub mod serde_opt {
    use serde::de::{self, Visitor};
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    use super::LONGEST_SETTING;

    /// `Option` needs a `Deserialize` type to hold.
    struct Wrapped(Duration);

    impl<'de> Deserialize<'de> for Wrapped {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Shape).map(Wrapped)
        }
    }

    /// A duration as text or whole seconds; hand-written so a mistake says what a
    /// duration looks like, not serde's "untagged enum".
    struct Shape;

    impl<'de> Visitor<'de> for Shape {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as \"30s\", \"5m\", \"1h\" or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("must not be negative"))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            super::parse(text).map_err(E::custom)
        }
    }

    /// Deserializes an optional duration (`"30s"` or `30`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(Wrapped(duration)) = Option::<Wrapped>::deserialize(d)? else {
            return Ok(None);
        };
        if duration > LONGEST_SETTING {
            return Err(serde::de::Error::custom(
                "is longer than 365 days, the longest any setting takes",
            ));
        }
        Ok(Some(duration))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_spellings() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse(" 1h 30m "), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        for bad in ["", "abc", "-5s", "5 parsecs"] {
            let err = parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(parse("abc").unwrap_err().contains("30s"));
    }

    #[test]
    fn format_round_trips() {
        for d in [Duration::from_secs(90), Duration::from_millis(250)] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
