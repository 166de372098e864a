//! Retry delays of failed jobs (DESIGN invariant 5): exponential backoff with
//! jitter, capped, computed with backon. This module only computes delays;
//! the wait itself happens in the broker (delay queues, or the embedded
//! broker's timers), never in a sleeping worker.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How failed jobs are retried. The app reads it from
/// `WAPIPE_RETRY_MIN_DELAY_MS`, `WAPIPE_RETRY_MAX_DELAY_MS` and
/// `WAPIPE_RETRY_MAX_ATTEMPTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the second attempt (before jitter).
    pub min_delay: Duration,
    /// No delay is ever longer than this, jitter included.
    pub max_delay: Duration,
    /// Attempts in all, the first included. A job still failing with a
    /// retryable error after this many goes to the dead-letter queue.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(1000),
            max_delay: Duration::from_millis(300_000),
            max_attempts: 8,
        }
    }
}

/// After this many doublings every delay is at the cap anyway; bounding the
/// walk keeps `delay_for(u32::MAX)` cheap.
const MAX_STEPS: u32 = 64;

impl RetryPolicy {
    /// Delay before retrying a job whose attempt number `attempt` (1 = first
    /// delivery) just failed: about `min_delay * 2^(attempt-1)`, plus up to
    /// 100% jitter, never above `max_delay`.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        // A misconfigured policy (max below min) must not produce delays
        // above the documented cap.
        let max = self.max_delay;
        let min = self.min_delay.min(max);
        let steps = attempt.clamp(1, MAX_STEPS);
        let delay = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_max_times(steps as usize)
            .build()
            .nth(steps as usize - 1)
            .unwrap_or(max);
        // backon adds jitter on top of the capped delay, so a delay near the
        // cap can come out up to twice the cap: clamp again.
        delay.min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            min_delay: Duration::from_millis(min_ms),
            max_delay: Duration::from_millis(max_ms),
            max_attempts: 8,
        }
    }

    #[test]
    fn defaults_match_the_documented_env_defaults() {
        let p = RetryPolicy::default();
        assert_eq!(p.min_delay, Duration::from_millis(1000));
        assert_eq!(p.max_delay, Duration::from_millis(300_000));
        assert_eq!(p.max_attempts, 8);
    }

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds() {
        let p = policy(100, 1_000_000);
        for _ in 0..200 {
            for attempt in 1..=8u32 {
                let base = Duration::from_millis(100 * 2u64.pow(attempt - 1));
                let d = p.delay_for(attempt);
                assert!(d >= base, "attempt {attempt}: {d:?} < {base:?}");
                assert!(d <= base * 2, "attempt {attempt}: {d:?} > 2x{base:?}");
            }
        }
    }

    #[test]
    fn never_exceeds_max_delay() {
        let p = policy(1000, 5000);
        for _ in 0..200 {
            for attempt in [1, 2, 3, 4, 5, 10, 100, u32::MAX] {
                assert!(p.delay_for(attempt) <= Duration::from_millis(5000));
            }
        }
        // Attempt 0 is treated as the first attempt, not as an error.
        assert!(p.delay_for(0) >= Duration::from_millis(1000));
    }

    #[test]
    fn max_below_min_is_capped_at_max() {
        let p = policy(10_000, 500);
        for attempt in 1..10 {
            assert!(p.delay_for(attempt) <= Duration::from_millis(500));
        }
    }

    #[test]
    fn jitter_varies_the_delay() {
        let p = policy(1000, 1_000_000);
        let delays: std::collections::HashSet<_> = (0..50).map(|_| p.delay_for(3)).collect();
        assert!(delays.len() > 1, "no jitter: {delays:?}");
    }
}
