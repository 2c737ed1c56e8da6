//! Time as the run scheduler (and the simulated Graph's cooldown) sees it.
//!
//! Intune's rule is about time: one sync per 10 minutes per tenant. Everything the scheduler
//! decides (when a run may start, `started_at`, `not_before`, the cooldown learned from Graph,
//! how long finished runs stay readable) reads the time from a [`Clock`] it is given, so that
//! tests can run a timeline in virtual time with a [`ManualClock`] they advance explicitly,
//! and assert exact instants instead of sleeping real seconds. Production uses
//! [`SystemClock`].
//!
//! Not on the clock, on purpose: network and caller timeouts, the pauses between attempts of
//! one run (backoff, `Retry-After`, 409 polls), token lifetimes and the audit trail's record
//! times. Those are bounded, short, and race real I/O; a frozen clock would hold a caller's
//! connection open instead of making a test faster. (tokio's paused clock was not used for
//! the same reason: with auto-advance it jumps timers while the runtime waits on real sockets,
//! firing HTTP timeouts.)

use chrono::{DateTime, Utc};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A sleep on a [`Clock`]: owned, so a task can hold it across awaits.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The source of time for scheduling decisions.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The wall-clock time now (what runs report and what Graph's timestamps compare with).
    fn now(&self) -> DateTime<Utc>;

    /// The monotonic time now, for durations that must not jump with the wall clock.
    fn instant(&self) -> Instant;

    /// Completes once [`Clock::now`] has reached `deadline` (at once if it already has).
    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep;
}

/// The real time: `Utc::now`, `Instant::now`, tokio's timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep {
        // The wall clock may step while we sleep; callers re-check the time after waking
        // (the scheduler loops until its run's time has come), so one conversion is enough.
        let wait = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// The default clock: the real one.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that stands still until [`ManualClock::advance`] moves it: a test decides exactly
/// when time passes, so it can assert exact instants and skip waits without sleeping.
#[derive(Debug)]
pub struct ManualClock {
    start: DateTime<Utc>,
    start_instant: Instant,
    /// How far the clock has been advanced; sleepers watch it.
    elapsed: watch::Sender<Duration>,
}

impl ManualClock {
    /// A clock standing at the real time now, truncated to the millisecond: Graph stamps times
    /// in milliseconds, so a truncated start makes Graph's times and the scheduler's compare
    /// exactly. Near the real time, not at an arbitrary epoch, because tokens and the audit
    /// trail keep real time and their records stay readable side by side.
    pub fn new() -> ManualClock {
        ManualClock::starting_at(chrono::SubsecRound::trunc_subsecs(Utc::now(), 3))
    }

    /// A clock standing at `start`.
    pub fn starting_at(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            start,
            start_instant: Instant::now(),
            elapsed: watch::channel(Duration::ZERO).0,
        }
    }

    /// Moves the clock forward by `d` and wakes every sleep whose deadline has come.
    pub fn advance(&self, d: Duration) {
        self.elapsed.send_modify(|e| *e += d);
    }

    fn at(start: DateTime<Utc>, elapsed: Duration) -> DateTime<Utc> {
        start + chrono::TimeDelta::from_std(elapsed).unwrap_or(chrono::TimeDelta::MAX)
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        ManualClock::at(self.start, *self.elapsed.borrow())
    }

    fn instant(&self) -> Instant {
        self.start_instant + *self.elapsed.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep {
        let start = self.start;
        let mut rx = self.elapsed.subscribe();
        Box::pin(async move {
            loop {
                if ManualClock::at(start, *rx.borrow_and_update()) >= deadline {
                    return;
                }
                if rx.changed().await.is_err() {
                    // The clock is gone, so this time never comes: waking would fire early.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_stands_still_until_advanced_and_then_wakes_due_sleeps() {
        let clock = Arc::new(ManualClock::new());
        let t0 = clock.now();
        let i0 = clock.instant();
        assert_eq!(clock.now(), t0, "no time passes by itself");
        let due = tokio::spawn(clock.sleep_until(t0 + chrono::TimeDelta::seconds(10)));
        let past = clock.sleep_until(t0 - chrono::TimeDelta::seconds(1));
        tokio::time::timeout(Duration::from_secs(1), past)
            .await
            .expect("a deadline already passed completes at once");

        clock.advance(Duration::from_secs(9));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!due.is_finished(), "9 s is not 10 s");
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(1), due)
            .await
            .expect("woken once its time came")
            .unwrap();
        assert_eq!(clock.now(), t0 + chrono::TimeDelta::seconds(10));
        assert_eq!(clock.instant() - i0, Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_system_clock_sleeps_until_the_deadline() {
        let clock = SystemClock;
        let start = Instant::now();
        clock
            .sleep_until(clock.now() + chrono::TimeDelta::milliseconds(50))
            .await;
        assert!(start.elapsed() >= Duration::from_millis(40));
    }
}
