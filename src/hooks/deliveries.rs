//! The delivery ids a source has seen, for its sender's whole retry window: the only replay
//! defence where nothing fresh is signed, and what keeps a retried webhook from triggering a
//! second sync.
//!
//! A delivery is *claimed* before its work and either *kept* (its work was done: a retry is a
//! duplicate) or *released* (it was refused for a reason on our side or its limits: the
//! sender's retry must be served). Claims are atomic, so fifty concurrent copies of one
//! delivery make one claim.
//!
//! Where the ids live is a [`DeliveryStore`]: [`Deliveries`] in this process (moka), or
//! [`RedisDeliveries`], shared by every replica, so a delivery sent to two replicas at once
//! runs once. A Redis that cannot answer refuses the delivery (503 `state-unavailable`): a
//! doubled webhook action is what the gateway exists to prevent.

use crate::error::GatewayError;
use crate::state::{Redis, Unavailable};
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A store's answer, boxed so a source can hold any store as `Arc<dyn DeliveryStore>`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>;

/// Where a source's delivery ids live: claim, keep, release (the step, `pipeline::post_hook`,
/// decides which).
pub trait DeliveryStore: Send + Sync {
    /// Claims `id`: [`Claim::New`] for exactly one of any number of concurrent callers, on
    /// any replica sharing the store.
    fn claim<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Claim>;
    /// Marks a claimed delivery handled: retries of it are duplicates of `run`.
    fn keep<'a>(&'a self, id: &'a str, run: Option<Uuid>) -> StoreFuture<'a, ()>;
    /// Forgets a claimed delivery that was not handled, so the sender's retry is served.
    fn release<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;
}

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

/// The delivery ids one source has seen, in this process (moka: a TTL of the replay window, a
/// cap, LRU order).
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

    /// Delivery ids remembered now (moka counts lazily, so pending work is run first).
    #[cfg(test)]
    fn len(&self) -> u64 {
        self.seen.run_pending_tasks();
        self.seen.entry_count()
    }
}

impl DeliveryStore for Deliveries {
    fn claim<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Claim> {
        let claim = Deliveries::claim(self, id);
        Box::pin(async move { Ok(claim) })
    }

    fn keep<'a>(&'a self, id: &'a str, run: Option<Uuid>) -> StoreFuture<'a, ()> {
        Deliveries::keep(self, id, run);
        Box::pin(async { Ok(()) })
    }

    fn release<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Deliveries::release(self, id);
        Box::pin(async { Ok(()) })
    }
}

/// What an in-progress claim holds in Redis.
const IN_PROGRESS: &str = "in_progress";

/// Claim: `SET key in_progress NX PX window`, or the value already there, in one round trip.
const CLAIM_SCRIPT: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return redis.call('GET', KEYS[1]) or ARGV[1]
"#;

/// Release: `DEL` only while the claim is still in progress (never a kept delivery).
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// One source's delivery ids in Redis, shared by every replica: `in_progress` while claimed,
/// `done:<run id>` (or `done:`) once kept, each for the replay window. The sender's id is
/// hashed into the key (SHA-256), so a key's length and characters never depend on a sender.
pub struct RedisDeliveries {
    redis: Redis,
    source: String,
    window: Duration,
    claim: redis::Script,
    release: redis::Script,
}

impl RedisDeliveries {
    /// The ids of source `name`, each remembered for `window`.
    pub fn new(redis: Redis, name: &str, window: Duration) -> Self {
        RedisDeliveries {
            redis,
            source: name.to_string(),
            window,
            claim: redis::Script::new(CLAIM_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
        }
    }

    fn key(&self, id: &str) -> String {
        let digest = Sha256::digest(id.as_bytes());
        let mut hex = String::with_capacity(64);
        for b in digest {
            hex.push_str(&format!("{b:02x}"));
        }
        self.redis.key(&format!("delivery:{}:{hex}", self.source))
    }

    fn window_ms(&self) -> u64 {
        self.window.as_millis().clamp(1, u128::from(u64::MAX)) as u64
    }
}

/// Always closed: a delivery whose id cannot be checked is refused, and its sender retries.
fn unavailable(e: Unavailable) -> GatewayError {
    tracing::warn!(error = %e, "a webhook delivery id could not be checked; refusing the delivery");
    GatewayError::StateUnavailable {
        retry_after_secs: 1,
    }
}

/// What a value in Redis says about a delivery.
fn parse_seen(value: &str) -> Seen {
    match value.strip_prefix("done:") {
        Some("") => Seen::Done(None),
        Some(run) => Seen::Done(Uuid::parse_str(run).ok()),
        // `in_progress`, or anything this version does not know: treated as in progress, so
        // the sender retries rather than the action running twice.
        None => Seen::InProgress,
    }
}

impl DeliveryStore for RedisDeliveries {
    fn claim<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let mut invocation = self.claim.prepare_invoke();
            invocation
                .key(self.key(id))
                .arg(IN_PROGRESS)
                .arg(self.window_ms());
            let mut conn = self.redis.connection();
            let found: Option<String> = self
                .redis
                .call("delivery_claim", invocation.invoke_async(&mut conn))
                .await
                .map_err(unavailable)?;
            Ok(match found {
                None => Claim::New,
                Some(v) => Claim::Duplicate(parse_seen(&v)),
            })
        })
    }

    fn keep<'a>(&'a self, id: &'a str, run: Option<Uuid>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let value = match run {
                Some(r) => format!("done:{r}"),
                None => "done:".to_string(),
            };
            let mut conn = self.redis.connection();
            let key = self.key(id);
            let window = self.window_ms();
            let _: Option<String> = self
                .redis
                .call("delivery_keep", async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("XX")
                        .arg("PX")
                        .arg(window)
                        .query_async(&mut conn)
                        .await
                })
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut invocation = self.release.prepare_invoke();
            invocation.key(self.key(id)).arg(IN_PROGRESS);
            let mut conn = self.redis.connection();
            let _: i64 = self
                .redis
                .call("delivery_release", invocation.invoke_async(&mut conn))
                .await
                .map_err(unavailable)?;
            Ok(())
        })
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
