//! When to try a failed delivery again: exponential backoff with full jitter, bounded by attempts and age, or the downstream's `Retry-After`.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// `retry_base`'s default: the first retry waits up to a second.
pub fn default_base() -> Duration {
    Duration::from_secs(1)
}
/// `retry_cap`'s default: no wait longer than five minutes.
pub fn default_cap() -> Duration {
    Duration::from_secs(300)
}
/// `retry_max_age`'s default: a day.
pub fn default_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The retry schedule of one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First retry waits up to this long.
    pub base: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
    /// Give up after this many attempts (`None`: no limit but age).
    pub max_attempts: Option<u32>,
    /// Give up once a delivery has been queued this long.
    pub max_age: Duration,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this Unix-ms instant.
    RetryAt(i64),
    /// Stop trying: a dead letter, for this reason.
    GiveUp(String),
}

impl RetryPolicy {
    /// The upper bound of the wait after `attempts` failures: `min(cap, base * 2^(attempts-1))`.
    pub fn envelope(&self, attempts: u32) -> Duration {
        let n = usize::try_from(attempts.max(1) - 1).unwrap_or(usize::MAX);
        ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.cap)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(n)
            .unwrap_or(self.cap)
    }

    /// Full jitter: a wait drawn uniformly from `[0, envelope]`.
    pub fn delay(&self, attempts: u32) -> Duration {
        let max = u64::try_from(self.envelope(attempts).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=max))
    }

    /// Decides after the `attempts`-th failed attempt of a delivery queued at `queued_at`
    /// (Unix ms), at `now`; `retry_after` is the downstream's own request, honoured as given.
    pub fn decide(
        &self,
        attempts: u32,
        queued_at: i64,
        now: i64,
        retry_after: Option<Duration>,
    ) -> Decision {
        if let Some(max) = self.max_attempts
            && attempts >= max
        {
            return Decision::GiveUp(format!("gave up after {attempts} attempts"));
        }
        let wait = retry_after.unwrap_or_else(|| self.delay(attempts));
        let at = now.saturating_add(ms(wait));
        if at.saturating_sub(queued_at) > ms(self.max_age) {
            return Decision::GiveUp(format!(
                "gave up: the next attempt would come more than {} after the event was queued",
                humantime::format_duration(self.max_age)
            ));
        }
        Decision::RetryAt(at)
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            max_attempts: None,
            max_age: Duration::from_secs(24 * 3600),
        }
    }

    #[test]
    fn envelope_doubles_up_to_the_cap() {
        let p = policy();
        let secs: Vec<u64> = (1..=11).map(|n| p.envelope(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(p.envelope(10_000), Duration::from_secs(300));
    }

    #[test]
    fn full_jitter_stays_within_the_envelope_and_spreads() {
        let p = policy();
        let waits: Vec<Duration> = (0..200).map(|_| p.delay(5)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(16)));
        assert!(waits.iter().any(|w| *w < Duration::from_secs(4)));
        assert!(waits.iter().any(|w| *w > Duration::from_secs(12)));
    }

    #[test]
    fn limits_and_retry_after() {
        let mut p = policy();
        let now = 1_000_000_000;
        assert_eq!(
            p.decide(1, now, now, Some(Duration::from_secs(7))),
            Decision::RetryAt(now + 7000)
        );
        assert!(matches!(
            p.decide(3, now - 24 * 3600 * 1000, now, None),
            Decision::GiveUp(_)
        ));
        p.max_attempts = Some(3);
        assert!(matches!(p.decide(2, now, now, None), Decision::RetryAt(_)));
        assert_eq!(
            p.decide(3, now, now, None),
            Decision::GiveUp("gave up after 3 attempts".into())
        );
    }
}
