//! Conversions between durations, Unix seconds and fractions of a span, in one place, so that no
//! cast elsewhere can silently wrap or truncate.

use std::time::Duration;

/// Whole seconds of `d` as the signed Unix-seconds arithmetic uses them; saturates at `i64::MAX`
/// (about 292 billion years, beyond any configurable duration).
pub fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Whole microseconds of `d`; saturates at `u64::MAX`.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `fraction` of `span` seconds, rounded toward zero. Float-to-integer `as` saturates in Rust (and
/// maps NaN to 0), which is the behaviour wanted for a point inside a lifetime.
#[allow(clippy::cast_possible_truncation)]
pub fn fraction_of(span: i64, fraction: f64) -> i64 {
    (span as f64 * fraction) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate_instead_of_wrapping() {
        assert_eq!(secs(Duration::from_secs(90)), 90);
        assert_eq!(secs(Duration::from_secs(u64::MAX)), i64::MAX);
        assert_eq!(micros(Duration::MAX), u64::MAX);
        assert_eq!(fraction_of(3600, 0.5), 1800);
        assert_eq!(fraction_of(i64::MAX, 2.0), i64::MAX);
        assert_eq!(fraction_of(100, f64::NAN), 0);
    }
}
