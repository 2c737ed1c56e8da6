//! Finished runs, kept readable at `GET /sync/runs/{id}` for a while: the newest
//! `max_finished_runs`, none older than `run_retention_seconds`.
//!
//! A plain FIFO under a mutex rather than a general cache: runs finish in order and are read
//! rarely, so the oldest is always the one to drop. A frequency-based cache (moka's TinyLFU)
//! may refuse a new entry when full, which here would make a run that just finished unreadable,
//! and its per-insert upkeep was 3.6% of the gateway's CPU time at steady state in the proxy
//! benchmark, against 1.7% for this archive (`bench/README.md`).

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The archive of finished runs (`V` is `Arc<RunCell>`; generic so it can be tested alone).
pub(super) struct Archive<V> {
    inner: Mutex<Inner<V>>,
    max: usize,
    retention: Duration,
}

struct Inner<V> {
    runs: HashMap<Uuid, V>,
    /// Insertion order with each run's time of archiving, oldest first.
    order: VecDeque<(Instant, Uuid)>,
}

impl<V: Clone> Archive<V> {
    /// An archive of at most `max` runs, each kept at most `retention`.
    pub(super) fn new(max: u64, retention: Duration) -> Archive<V> {
        Archive {
            inner: Mutex::new(Inner {
                runs: HashMap::new(),
                order: VecDeque::new(),
            }),
            max: usize::try_from(max).unwrap_or(usize::MAX).max(1),
            retention,
        }
    }

    /// Keeps `run` under `id` as of `now` (the scheduler's clock), dropping the oldest runs
    /// beyond the cap or the retention.
    pub(super) fn insert(&self, id: Uuid, run: V, now: Instant) {
        let mut g = self.inner.lock();
        if g.runs.insert(id, run).is_none() {
            g.order.push_back((now, id));
        }
        self.expire(&mut g, now);
    }

    /// The run archived under `id`, if it is still kept at `now` (the scheduler's clock).
    pub(super) fn get(&self, id: &Uuid, now: Instant) -> Option<V> {
        let mut g = self.inner.lock();
        self.expire(&mut g, now);
        g.runs.get(id).cloned()
    }

    fn expire(&self, g: &mut Inner<V>, now: Instant) {
        while let Some(&(at, id)) = g.order.front() {
            let too_many = g.order.len() > self.max;
            let too_old = now.saturating_duration_since(at) >= self.retention;
            if !too_many && !too_old {
                break;
            }
            g.order.pop_front();
            g.runs.remove(&id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_runs_stay_and_the_oldest_go_beyond_the_cap() {
        let a = Archive::new(3, Duration::from_secs(3600));
        let now = Instant::now();
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        for (n, id) in ids.iter().enumerate() {
            a.insert(*id, n, now);
        }
        assert_eq!(a.len(), 3);
        assert_eq!(a.get(&ids[0], now), None);
        assert_eq!(a.get(&ids[1], now), None);
        for (n, id) in ids.iter().enumerate().skip(2) {
            assert_eq!(a.get(id, now), Some(n));
        }
    }

    #[test]
    fn runs_older_than_the_retention_are_dropped() {
        let a = Archive::new(100, Duration::from_secs(60));
        let start = Instant::now();
        let (old, new) = (Uuid::now_v7(), Uuid::now_v7());
        a.insert(old, "old", start);
        a.insert(new, "new", start + Duration::from_secs(30));
        let later = start + Duration::from_secs(61);
        assert_eq!(a.get(&old, later), None);
        assert_eq!(a.get(&new, later), Some("new"));
        assert_eq!(a.len(), 1);
    }
}
