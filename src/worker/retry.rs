//! Retry delays: exponential backoff with jitter, capped. Pure.

use std::time::Duration;

/// The longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The wait before the attempt after `failed_attempt` (1 for the first
/// failure): `base · 2^(failed_attempt-1)`, capped at [`MAX_BACKOFF`], of
/// which the upper half is scaled by `jitter` (0.0..1.0) so that runs
/// failing together do not retry in lockstep.
pub fn retry_delay(base: Duration, failed_attempt: i32, jitter: f64) -> Duration {
    let exponent = failed_attempt.saturating_sub(1).clamp(0, 30) as u32;
    let full = base.saturating_mul(1u32 << exponent).min(MAX_BACKOFF);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt_within_the_jitter_band() {
        let base = Duration::from_secs(1);
        assert_eq!(retry_delay(base, 1, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(base, 1, 0.0), Duration::from_millis(500));
        assert_eq!(retry_delay(base, 2, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(base, 3, 1.0), Duration::from_secs(4));
        assert_eq!(retry_delay(base, 4, 0.5), Duration::from_secs(6));
    }

    #[test]
    fn is_capped() {
        assert_eq!(retry_delay(Duration::from_secs(10), 40, 1.0), MAX_BACKOFF);
        assert_eq!(
            retry_delay(Duration::from_secs(10), i32::MAX, 1.0),
            MAX_BACKOFF
        );
    }

    #[test]
    fn zero_base_means_at_once() {
        assert_eq!(retry_delay(Duration::ZERO, 3, 0.7), Duration::ZERO);
    }
}
