//! The gateway's background loops (key refresh, limiter eviction, service-identity keep-alive):
//! tracked, told to stop on shutdown, and waited for, so none outlives the server or is cut off
//! in the middle of its work (a refresh that has rotated a token finishes storing it).

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts background loops and stops them all at once.
#[derive(Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// What a loop waits with: its sleeps end early when the gateway stops.
#[derive(Clone)]
pub struct Stop(CancellationToken);

impl Stop {
    /// Sleeps `d`; false when the gateway is stopping (the loop should return), true otherwise.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.0.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// True once the gateway is stopping.
    pub fn is_stopping(&self) -> bool {
        self.0.is_cancelled()
    }
}

impl Background {
    /// A set with no loops yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` (a loop that waits with [`Stop::sleep`]) until it returns.
    pub fn spawn<F>(&self, task: impl FnOnce(Stop) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task(Stop(self.stop.clone())));
    }

    /// Tells every loop to stop and waits for them, at most `within` (a loop in the middle of a
    /// network call finishes it first); returns false if some were still running then.
    pub async fn shutdown(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        let done = tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                still_running = self.tracker.len(),
                "background work did not stop in time"
            );
        }
        done
    }

    /// How many loops are running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn shutdown_stops_sleeping_loops_and_waits_for_them() {
        let bg = Background::new();
        let rounds = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let rounds = rounds.clone();
            bg.spawn(|stop| async move {
                while stop.sleep(Duration::from_secs(3600)).await {
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        assert_eq!(bg.running(), 3);
        assert!(bg.shutdown(Duration::from_secs(5)).await);
        assert_eq!(bg.running(), 0);
        assert_eq!(rounds.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_loop_in_the_middle_of_its_work_finishes_it_before_shutdown_returns() {
        let bg = Background::new();
        let finished = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let f = finished.clone();
        bg.spawn(|stop| async move {
            let _ = started_tx.send(());
            // Work that must not be cut off (e.g. storing a rotated refresh token).
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.fetch_add(1, Ordering::SeqCst);
            stop.sleep(Duration::from_secs(3600)).await;
        });
        started_rx.await.unwrap();
        assert!(bg.shutdown(Duration::from_secs(5)).await);
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }
}
