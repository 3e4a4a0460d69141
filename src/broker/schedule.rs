//! When to refresh, as pure functions of time and a random draw, so the policy is
//! testable without clocks: the proactive point in a token's life, and the backoff
//! after failures.

use std::time::{Duration, SystemTime};

/// Never refresh a token sooner than this after it was issued, so an IdP that hands
/// out already-expired tokens cannot drive a hot loop.
pub const MIN_TOKEN_AGE: Duration = Duration::from_secs(1);

/// The proactive refresh point: `ratio` of the lifetime, minus up to `jitter` of the
/// lifetime drawn by `draw` (in 0..1), so tokens issued together spread out.
pub fn refresh_at(
    issued: SystemTime,
    expires: SystemTime,
    ratio: f64,
    jitter: f64,
    draw: f64,
) -> SystemTime {
    let lifetime = expires.duration_since(issued).unwrap_or_default();
    let fraction = (ratio - jitter * draw.clamp(0.0, 1.0)).clamp(0.0, 1.0);
    let offset = lifetime.mul_f64(fraction).max(MIN_TOKEN_AGE.min(lifetime));
    issued + offset.max(Duration::from_millis(100))
}

/// Delay before retry number `failures` (1 for the first retry): exponential, capped,
/// with full jitter above a floor of `initial`, and never sooner than the IdP's
/// `Retry-After`.
pub fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    draw: f64,
) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let ceiling = initial.saturating_mul(1 << exponent).min(max);
    let spread = ceiling.saturating_sub(initial);
    let delay = initial + spread.mul_f64(draw.clamp(0.0, 1.0));
    delay.max(retry_after.unwrap_or_default().min(max.saturating_mul(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn refresh_happens_at_the_ratio_minus_jitter() {
        let exp = T0 + Duration::from_secs(100);
        assert_eq!(
            refresh_at(T0, exp, 0.8, 0.1, 0.0),
            T0 + Duration::from_secs(80)
        );
        assert_eq!(
            refresh_at(T0, exp, 0.8, 0.1, 1.0),
            T0 + Duration::from_secs(70)
        );
        let spread: Vec<_> = (0..=10)
            .map(|i| refresh_at(T0, exp, 0.8, 0.1, i as f64 / 10.0))
            .collect();
        assert!(spread.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn degenerate_lifetimes_still_wait_a_little() {
        assert_eq!(
            refresh_at(T0, T0, 0.8, 0.1, 0.5),
            T0 + Duration::from_millis(100)
        );
        let two = T0 + Duration::from_secs(2);
        assert_eq!(refresh_at(T0, two, 0.1, 0.0, 0.0), T0 + MIN_TOKEN_AGE);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let (s1, max) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(backoff(1, s1, max, None, 1.0), s1);
        assert_eq!(backoff(3, s1, max, None, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(3, s1, max, None, 0.0), s1);
        assert_eq!(backoff(40, s1, max, None, 1.0), max);
        let ra = Some(Duration::from_secs(30));
        assert_eq!(backoff(1, s1, max, ra, 0.5), Duration::from_secs(30));
    }
}
