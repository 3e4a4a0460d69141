//! When to refresh, as pure functions of time and a random draw, so the policy is
//! testable without clocks: the proactive point in a token's life, and the backoff
//! after failures; and `Spread`, which places proactive points where few others are.

use std::collections::BTreeMap;
use std::sync::Mutex;
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

/// The proactive refresh points handed out, counted per second, so that a new one can
/// avoid the busy seconds: of two random points in a token's jitter window, the one
/// whose second holds fewer is taken (the "power of two choices"). Thousands of tokens
/// fetched together then refresh evenly over their window instead of in random clumps,
/// and the waves of different lifetimes that fall on the same seconds make room for
/// each other. Counts are dropped once their second has passed; a point that is never
/// reached (its token was replaced sooner) is counted until then, a harmless bias.
#[derive(Default)]
pub struct Spread {
    planned: Mutex<BTreeMap<u64, u32>>,
}

impl Spread {
    /// A proactive refresh point for a token (see `refresh_at`), counted.
    pub fn refresh_at(
        &self,
        issued: SystemTime,
        expires: SystemTime,
        ratio: f64,
        jitter: f64,
    ) -> SystemTime {
        let draws = [rand::random::<f64>(), rand::random::<f64>()];
        self.choose(issued, expires, ratio, jitter, draws, SystemTime::now())
    }

    fn choose(
        &self,
        issued: SystemTime,
        expires: SystemTime,
        ratio: f64,
        jitter: f64,
        draws: [f64; 2],
        now: SystemTime,
    ) -> SystemTime {
        let [a, b] = draws.map(|draw| refresh_at(issued, expires, ratio, jitter, draw));
        let second = |at: SystemTime| {
            at.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let mut planned = self.planned.lock().unwrap_or_else(|p| p.into_inner());
        let now = second(now);
        if planned.first_key_value().is_some_and(|(at, _)| *at < now) {
            *planned = planned.split_off(&now);
        }
        let load = |at| planned.get(&second(at)).copied().unwrap_or(0);
        let chosen = if load(b) < load(a) { b } else { a };
        *planned.entry(second(chosen)).or_default() += 1;
        chosen
    }

    /// Seconds with points still ahead (for tests).
    #[cfg(test)]
    fn seconds(&self) -> usize {
        self.planned.lock().map_or(0, |p| p.len())
    }
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

    /// The busiest second's count when `tokens` tokens of each lifetime, all issued at
    /// `issued`, get their refresh points from `pick`.
    fn busiest(lifetimes: &[u64], tokens: usize, mut pick: impl FnMut(u64) -> SystemTime) -> u32 {
        let mut per_second = BTreeMap::<u64, u32>::new();
        for _ in 0..tokens {
            for &lifetime in lifetimes {
                let at = pick(lifetime)
                    .duration_since(T0)
                    .expect("after T0")
                    .as_secs();
                *per_second.entry(at).or_default() += 1;
            }
        }
        per_second.into_values().max().unwrap_or(0)
    }

    #[test]
    fn spread_fills_the_jitter_window_evenly() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let issued = T0 + Duration::from_secs(1000);
        let now = issued;
        // 2,000 tokens of 60 s, jitter 0.1: a window of 6 s, 333.3 a second if even.
        let spread = Spread::default();
        let two = busiest(&[60], 2000, |lifetime| {
            let expires = issued + Duration::from_secs(lifetime);
            spread.choose(issued, expires, 0.8, 0.1, [rng.random(), rng.random()], now)
        });
        assert!(two <= 340, "busiest second {two}");
        // One random draw each (what the spread improves on) clumps above that (359).
        let one = busiest(&[60], 2000, |lifetime| {
            refresh_at(
                issued,
                issued + Duration::from_secs(lifetime),
                0.8,
                0.1,
                rng.random(),
            )
        });
        assert!(one > 340, "busiest second {one}");
    }

    #[test]
    fn spread_makes_overlapping_waves_share_the_seconds() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let spread = Spread::default();
        let at = T0 + Duration::from_secs(1000);
        // A wave over 84..96 s (lifetime 120 s issued at `at`) and one over 84..90 s
        // (lifetime 60 s issued 42 s in): 3,000 points over 12 s, 6 of them shared.
        let mut pick = |issued: SystemTime, lifetime: u64| {
            let expires = issued + Duration::from_secs(lifetime);
            spread.choose(issued, expires, 0.8, 0.1, [rng.random(), rng.random()], at)
        };
        let mut per_second = BTreeMap::<u64, u32>::new();
        for _ in 0..1500 {
            for (issued, lifetime) in [(at + Duration::from_secs(42), 60), (at, 120)] {
                let second = pick(issued, lifetime)
                    .duration_since(at)
                    .expect("after at")
                    .as_secs();
                *per_second.entry(second).or_default() += 1;
            }
        }
        // Random draws put 1500/6 + 1500/12 = 375 in each shared second (391 at worst
        // with this seed); the spread moves points of the wider wave out of them (312).
        let busiest = per_second.values().copied().max().unwrap_or(0);
        assert!(busiest < 330, "busiest second {busiest}: {per_second:?}");
    }

    #[test]
    fn spread_forgets_seconds_that_have_passed() {
        let spread = Spread::default();
        let issued = T0 + Duration::from_secs(1000);
        let expires = issued + Duration::from_secs(100);
        for i in 0..10 {
            let draw = i as f64 / 10.0;
            spread.choose(issued, expires, 0.8, 0.5, [draw, draw], issued);
        }
        assert_eq!(spread.seconds(), 10);
        // Points at 30..80 s; at 60 s those before it are gone.
        spread.choose(
            issued,
            expires,
            0.8,
            0.0,
            [0.0, 0.0],
            issued + Duration::from_secs(60),
        );
        assert_eq!(spread.seconds(), 5);
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
