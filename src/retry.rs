//! How long to wait before trying again: one policy type for every retry loop in the gateway
//! (a run's Graph attempts, the exchange at Entra, the signing-key load, the audit sink), and
//! `Retry-After` as servers send it.

use rand::Rng;
use std::time::Duration;

/// A retry schedule: `first`, then doubling (or constant) up to `max`, optionally with full
/// jitter (a uniform draw between zero and the schedule's delay, as in AWS's "Exponential
/// Backoff and Jitter", so many retrying clients do not move in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    doubling: bool,
    full_jitter: bool,
}

impl Backoff {
    /// The same delay before every retry.
    pub const fn constant(delay: Duration) -> Self {
        Backoff {
            first: delay,
            max: delay,
            doubling: false,
            full_jitter: false,
        }
    }

    /// `first`, `2 × first`, `4 × first`, ... capped at `max`.
    pub const fn exponential(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            doubling: true,
            full_jitter: false,
        }
    }

    /// The same schedule, each delay drawn uniformly from zero to it.
    pub const fn with_full_jitter(self) -> Self {
        Backoff {
            full_jitter: true,
            ..self
        }
    }

    /// The wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = if self.doubling {
            self.first
                .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
                .min(self.max)
        } else {
            self.first
        };
        if self.full_jitter {
            let millis = rand::rng().random_range(0..=ceiling.as_millis() as u64);
            Duration::from_millis(millis)
        } else {
            ceiling
        }
    }

    /// [`Backoff::delay`], unless the server said how long to wait (`Retry-After`), which wins.
    pub fn delay_or(&self, retry: u32, retry_after_secs: Option<u64>) -> Duration {
        match retry_after_secs {
            Some(secs) => Duration::from_secs(secs),
            None => self.delay(retry),
        }
    }
}

/// `Retry-After` as whole seconds from now: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .map(|d| d.as_secs_f64().ceil() as u64)
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exponential_schedule_doubles_up_to_its_cap() {
        let b = Backoff::exponential(Duration::from_millis(250), Duration::from_secs(1));
        let delays: Vec<u64> = (1..=5).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [250, 500, 1000, 1000, 1000]);
    }

    #[test]
    fn full_jitter_stays_between_zero_and_the_schedule() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2))
            .with_full_jitter();
        for retry in 1..=8 {
            let ceiling = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2))
                .delay(retry);
            for _ in 0..50 {
                assert!(b.delay(retry) <= ceiling);
            }
        }
    }

    #[test]
    fn a_constant_schedule_never_grows() {
        let b = Backoff::constant(Duration::from_millis(500));
        assert_eq!(b.delay(1), b.delay(10));
    }

    #[test]
    fn the_servers_retry_after_wins_over_the_schedule() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.delay_or(1, Some(7)), Duration::from_secs(7));
        assert_eq!(b.delay_or(1, None), Duration::from_millis(100));
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("120"), Some(120));
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(61);
        let secs = parse_retry_after(&httpdate::fmt_http_date(in_a_minute)).unwrap();
        assert!((59..=62).contains(&secs), "{secs}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
