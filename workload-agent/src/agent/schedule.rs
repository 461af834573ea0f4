//! When to renew and how long to wait after a failure: pure functions, so the timing can be
//! tested without clocks.

use std::time::Duration;

/// The planned renewal time (Unix seconds) of a certificate valid from `not_before` to
/// `not_after`: after `fraction` of its lifetime, moved earlier by up to `jitter` of the lifetime
/// (`unit` is a uniform random number in [0, 1)).
pub fn renewal_time(not_before: i64, not_after: i64, fraction: f64, jitter: f64, unit: f64) -> i64 {
    if not_after <= not_before {
        return not_before;
    }
    let life = (not_after - not_before) as f64;
    let at = not_before as f64 + life * fraction - life * jitter * unit.clamp(0.0, 1.0);
    float_secs(at).clamp(not_before, not_after)
}

/// A point inside the CA's suggested renewal window (RFC 9773 section 4.2: clients pick a
/// uniformly random time in the window, so a fleet told "now" does not arrive all at once).
pub fn pick_in_window(start: i64, end: i64, unit: f64) -> i64 {
    if end <= start {
        return start;
    }
    start + float_secs((end - start) as f64 * unit.clamp(0.0, 1.0))
}

/// Delay before retry number `attempt` (0 for the first retry): exponential from `initial`,
/// capped at `max`, with "equal jitter" (between half and all of the step), and never past the
/// point where the certificate would expire before the next try (`until_expiry`), so a CA that
/// comes back in time is always tried in time.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, until_expiry: Duration, unit: f64) -> Duration {
    let step = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let jittered = step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
    // Leave room for a few more attempts before expiry.
    let ceiling = (until_expiry / 4).max(Duration::from_millis(200));
    jittered.min(ceiling).max(Duration::from_millis(100))
}

/// Seconds computed in floating point, back to Unix seconds. Float-to-integer `as` saturates in
/// Rust (NaN becomes 0); every caller clamps the result into a window anyway.
#[allow(clippy::cast_possible_truncation)]
fn float_secs(x: f64) -> i64 {
    x as i64
}

/// A duration in whole milliseconds, for logs; saturates at `u64::MAX`.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds_with_jitter_only_earlier() {
        assert_eq!(renewal_time(0, 60, 2.0 / 3.0, 0.0, 0.9), 40);
        assert_eq!(renewal_time(1000, 1060, 2.0 / 3.0, 0.1, 0.0), 1040);
        assert_eq!(renewal_time(1000, 1060, 2.0 / 3.0, 0.1, 1.0), 1034);
        for i in 0..100 {
            let t = renewal_time(0, 3600, 2.0 / 3.0, 0.05, f64::from(i) / 100.0);
            assert!((2220..=2400).contains(&t), "{t}");
        }
        // A certificate already past its lifetime is renewed now, not before notBefore.
        assert_eq!(renewal_time(10, 5, 0.5, 0.0, 0.0), 10);
    }

    #[test]
    fn window_picks_stay_inside() {
        assert_eq!(pick_in_window(100, 200, 0.0), 100);
        assert_eq!(pick_in_window(100, 200, 0.5), 150);
        assert_eq!(pick_in_window(100, 100, 0.5), 100);
        assert_eq!(pick_in_window(200, 100, 0.5), 200);
    }

    #[test]
    fn backoff_doubles_is_capped_and_respects_expiry() {
        let s = Duration::from_secs;
        assert_eq!(backoff(0, s(1), s(60), s(3600), 1.0), s(1));
        assert_eq!(backoff(3, s(1), s(60), s(3600), 1.0), s(8));
        assert_eq!(backoff(10, s(1), s(60), s(3600), 1.0), s(60));
        assert_eq!(backoff(10, s(1), s(60), s(3600), 0.0), s(30));
        assert_eq!(backoff(40, s(1), s(60), s(3600), 1.0), s(60));
        // 20 s before expiry the agent tries at least every 5 s.
        assert_eq!(backoff(10, s(1), s(60), s(20), 1.0), s(5));
        assert_eq!(backoff(10, s(1), s(60), s(0), 1.0), Duration::from_millis(200));
    }
}
