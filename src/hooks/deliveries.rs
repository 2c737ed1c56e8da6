//! The delivery ids a source has seen, for its sender's whole retry window: the only replay
//! defence where nothing fresh is signed, and what keeps a retried webhook from triggering a
//! second sync.
//!
//! A delivery is *claimed* before its work and either *kept* (its work was done: a retry is a
//! duplicate) or *released* (it was refused for a reason on our side or its limits: the
//! sender's retry must be served). Claims are atomic, so fifty concurrent copies of one
//! delivery make one claim.

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Delivery ids remembered per source at most; beyond it the oldest go first (and
/// `hook_deliveries_evicted_total` counts them). At ~200 bytes an entry, about 20 MB a source.
pub const MAX_DELIVERIES_PER_SOURCE: u64 = 100_000;

/// Where a delivery id stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Being handled by another request right now.
    InProgress,
    /// Handled; the run it joined, if it joined one.
    Done(Option<Uuid>),
}

/// What [`Deliveries::claim`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// First seen: the caller owns it and must [`Deliveries::keep`] or [`Deliveries::release`].
    New,
    /// Seen before, within the window.
    Duplicate(Seen),
}

/// The delivery ids one source has seen (moka: a TTL of the replay window, a cap, LRU order).
pub struct Deliveries {
    seen: moka::sync::Cache<String, Seen>,
}

impl Deliveries {
    /// Remembers ids for `window`, at most `cap` of them; evictions by the cap count in `evicted`.
    pub fn new(window: Duration, cap: u64, evicted: Counter) -> Self {
        let seen = moka::sync::Cache::builder()
            .max_capacity(cap)
            .time_to_live(window)
            // The oldest go first when the cap is reached (moka's default, TinyLFU, would
            // refuse new ids in favour of ones seen more often, which is backwards here).
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |_k: Arc<String>, _v, cause| {
                if cause == RemovalCause::Size {
                    evicted.inc();
                }
            })
            .build();
        Deliveries { seen }
    }

    /// Claims `id`: [`Claim::New`] for exactly one of any number of concurrent callers.
    pub fn claim(&self, id: &str) -> Claim {
        let entry = self
            .seen
            .entry(id.to_string())
            .or_insert_with(|| Seen::InProgress);
        if entry.is_fresh() {
            Claim::New
        } else {
            Claim::Duplicate(entry.into_value())
        }
    }

    /// Marks a claimed delivery handled: retries of it are duplicates of `run`.
    pub fn keep(&self, id: &str, run: Option<Uuid>) {
        self.seen.insert(id.to_string(), Seen::Done(run));
    }

    /// Forgets a claimed delivery that was not handled, so the sender's retry is served.
    pub fn release(&self, id: &str) {
        self.seen.invalidate(id);
    }

    /// Delivery ids remembered now (approximate: moka counts lazily).
    pub fn len(&self) -> u64 {
        self.seen.run_pending_tasks();
        self.seen.entry_count()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliveries(cap: u64) -> (Deliveries, Counter) {
        let evicted = Counter::default();
        (
            Deliveries::new(Duration::from_secs(3600), cap, evicted.clone()),
            evicted,
        )
    }

    #[test]
    fn the_first_claim_is_new_and_a_second_is_a_duplicate_in_progress() {
        let (d, _) = deliveries(10);
        assert_eq!(d.claim("a"), Claim::New);
        assert_eq!(d.claim("a"), Claim::Duplicate(Seen::InProgress));
    }

    #[test]
    fn a_kept_delivery_is_a_duplicate_naming_its_run() {
        let (d, _) = deliveries(10);
        let run = Uuid::now_v7();
        assert_eq!(d.claim("a"), Claim::New);
        d.keep("a", Some(run));
        assert_eq!(d.claim("a"), Claim::Duplicate(Seen::Done(Some(run))));
    }

    #[test]
    fn a_released_delivery_can_be_claimed_again() {
        let (d, _) = deliveries(10);
        assert_eq!(d.claim("a"), Claim::New);
        d.release("a");
        assert_eq!(d.claim("a"), Claim::New);
    }

    #[test]
    fn concurrent_claims_of_one_id_make_exactly_one_new() {
        let (d, _) = deliveries(10);
        let d = Arc::new(d);
        let news: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let d = d.clone();
                    s.spawn(move || usize::from(d.claim("same") == Claim::New))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(news, 1);
    }

    #[test]
    fn ids_beyond_the_cap_evict_the_oldest_and_count_it() {
        let (d, evicted) = deliveries(100);
        for i in 0..300 {
            assert_eq!(d.claim(&format!("id-{i}")), Claim::New);
            d.keep(&format!("id-{i}"), None);
        }
        d.seen.run_pending_tasks();
        assert!(d.len() <= 100, "{} ids kept", d.len());
        assert!(evicted.get() >= 200, "{} evictions counted", evicted.get());
        // The newest is still remembered; the oldest is not.
        assert_eq!(d.claim("id-299"), Claim::Duplicate(Seen::Done(None)));
        assert_eq!(d.claim("id-0"), Claim::New);
    }
}
