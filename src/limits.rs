//! Rate limits per caller (`tid` + `oid`) and per tenant: governor's GCRA, one atomic per key,
//! with the draft-ietf-httpapi-ratelimit-headers-11 `RateLimit-Policy` / `RateLimit` fields.
//!
//! governor's keyed limiter never forgets a key by itself, so a timer drops idle keys and the
//! number of tracked callers is capped.
//!
//! Beside the rate, [`InFlight`] caps how many requests one caller has in progress at once, so
//! a caller holding slow bodies open cannot take more than its share of the connections.

use crate::background::Background;
use crate::config::{LimitsConfig, Rate};
use crate::error::GatewayError;
use crate::metrics::{LimitMetrics, PolicyLabels};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub use crate::domain::RateLimitStatus;

/// The limits of one gateway process.
pub struct Limits {
    per_caller: KeyedLimiter,
    per_tenant: KeyedLimiter,
    caller_rate: Rate,
    tenant_rate: Rate,
    max_tracked_callers: usize,
    eviction: Duration,
    policies: Arc<str>,
    metrics: LimitMetrics,
}

fn quota(r: Rate) -> Quota {
    // Validated non-zero at configuration load.
    let per_minute = NonZeroU32::new(r.per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

impl Limits {
    /// Builds the limiters from configuration.
    pub fn new(cfg: &LimitsConfig) -> Self {
        let policies = format!(
            "\"per-caller\";q={};w=60, \"per-tenant\";q={};w=60",
            cfg.per_caller.per_minute, cfg.per_tenant.per_minute
        );
        Limits {
            per_caller: RateLimiter::keyed(quota(cfg.per_caller))
                .with_middleware::<StateInformationMiddleware>(),
            per_tenant: RateLimiter::keyed(quota(cfg.per_tenant))
                .with_middleware::<StateInformationMiddleware>(),
            caller_rate: cfg.per_caller,
            tenant_rate: cfg.per_tenant,
            max_tracked_callers: cfg.max_tracked_callers,
            eviction: Duration::from_secs(cfg.eviction_seconds),
            policies: policies.into(),
            metrics: LimitMetrics::default(),
        }
    }

    /// The same, counting decisions into `metrics`; [`Limits::update_gauges`] sets its
    /// tracked keys.
    pub fn with_metrics(mut self, metrics: LimitMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sets `rate_limit_tracked_keys`: called when `/metrics` is scraped, since counting the
    /// keys visits every shard of the limiter's map, too much for every request.
    pub fn update_gauges(&self) {
        for (policy, limiter) in [
            ("per-caller", &self.per_caller),
            ("per-tenant", &self.per_tenant),
        ] {
            self.metrics
                .tracked_keys
                .get_or_create(&PolicyLabels { policy })
                .set(limiter.len() as i64);
        }
    }

    /// Takes one request from the caller's and then the tenant's allowance.
    ///
    /// The caller is checked first so that one noisy caller is stopped before it eats the
    /// tenant's allowance. Returns the tighter of the two statuses for the response headers.
    pub fn check(&self, tenant_id: &str, object_id: &str) -> Result<RateLimitStatus, GatewayError> {
        let caller_key = format!("{tenant_id}:{object_id}");
        if self.per_caller.len() >= self.max_tracked_callers {
            self.evict();
            if self.per_caller.len() >= self.max_tracked_callers {
                tracing::warn!(
                    cap = self.max_tracked_callers,
                    "limiter is tracking its maximum number of callers"
                );
                self.metrics.decided("per-caller", "full");
                return Err(GatewayError::LimiterFull {
                    retry_after_secs: self.eviction.as_secs().max(1),
                });
            }
        }
        let caller = self.take(&self.per_caller, caller_key, "per-caller", self.caller_rate)?;
        let tenant = self.take(
            &self.per_tenant,
            tenant_id.to_string(),
            "per-tenant",
            self.tenant_rate,
        )?;
        Ok(if tenant.remaining < caller.remaining {
            tenant
        } else {
            caller
        })
    }

    fn take(
        &self,
        limiter: &KeyedLimiter,
        key: String,
        policy: &'static str,
        rate: Rate,
    ) -> Result<RateLimitStatus, GatewayError> {
        let per_unit = Duration::from_secs_f64(60.0 / f64::from(rate.per_minute.max(1)));
        let decision = limiter.check_key(&key);
        self.metrics.decided(
            policy,
            if decision.is_ok() {
                "allowed"
            } else {
                "limited"
            },
        );
        match decision {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = rate.burst.saturating_sub(remaining);
                Ok(RateLimitStatus {
                    policy,
                    remaining,
                    reset_secs: (per_unit * missing).as_secs_f64().ceil() as u64,
                    policies: self.policies.clone(),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                Err(GatewayError::RateLimited(RateLimitStatus {
                    policy,
                    remaining: 0,
                    // Whole seconds, rounded up, never 0: a client retrying at once would fail.
                    reset_secs: (wait.as_secs_f64().ceil() as u64).max(1),
                    policies: self.policies.clone(),
                }))
            }
        }
    }

    /// Drops keys whose state is indistinguishable from a fresh one.
    pub fn evict(&self) {
        for l in [&self.per_caller, &self.per_tenant] {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// How many callers are tracked now.
    pub fn tracked_callers(&self) -> usize {
        self.per_caller.len()
    }

    /// Runs [`Limits::evict`] on a timer until the gateway stops.
    pub fn spawn_eviction(self: &Arc<Self>, background: &Background) {
        let me = Arc::downgrade(self);
        let period = self.eviction;
        background.spawn(|stop| async move {
            while stop.sleep(period).await {
                match me.upgrade() {
                    Some(l) => l.evict(),
                    None => return,
                }
            }
        });
    }
}

/// One webhook source's own allowance (`[hooks.NAME] limits`): a source is one caller, so one
/// GCRA cell (governor's direct limiter) and no key to track.
pub struct SourceLimit {
    limiter: RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        DefaultClock,
        StateInformationMiddleware,
    >,
    rate: Rate,
    policies: Arc<str>,
}

impl SourceLimit {
    /// `per_minute` with bursts of `burst`.
    pub fn new(rate: Rate) -> Self {
        SourceLimit {
            limiter: RateLimiter::direct(quota(rate))
                .with_middleware::<StateInformationMiddleware>(),
            rate,
            policies: format!("\"per-source\";q={};w=60", rate.per_minute).into(),
        }
    }

    /// Takes one request from the source's allowance.
    pub fn check(&self) -> Result<RateLimitStatus, GatewayError> {
        let per_unit = Duration::from_secs_f64(60.0 / f64::from(self.rate.per_minute.max(1)));
        match self.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = self.rate.burst.saturating_sub(remaining);
                Ok(RateLimitStatus {
                    policy: "per-source",
                    remaining,
                    reset_secs: (per_unit * missing).as_secs_f64().ceil() as u64,
                    policies: self.policies.clone(),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Err(GatewayError::RateLimited(RateLimitStatus {
                    policy: "per-source",
                    remaining: 0,
                    reset_secs: (wait.as_secs_f64().ceil() as u64).max(1),
                    policies: self.policies.clone(),
                }))
            }
        }
    }
}

/// At most `limits.max_in_flight_per_caller` requests in progress per caller (`tid` + `oid`).
///
/// The map holds a key only while that caller has a request in progress (the last
/// [`InFlightSlot`] removes it), so it never has more entries than requests in flight, which
/// `server.max_connections` caps (HTTP/1.1 serves one request per connection at a time).
pub struct InFlight {
    max_per_caller: usize,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    gauge: Gauge,
}

/// One request's place in its caller's in-flight count; released on drop.
pub struct InFlightSlot {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
    gauge: Gauge,
}

impl InFlight {
    /// A cap of `max_per_caller`; `gauge` follows the total of requests in flight.
    pub fn new(max_per_caller: usize, gauge: Gauge) -> Self {
        InFlight {
            max_per_caller,
            counts: Arc::default(),
            gauge,
        }
    }

    /// Takes a slot for the caller, or refuses at once when it already has the cap's worth.
    pub fn acquire(&self, tenant_id: &str, object_id: &str) -> Result<InFlightSlot, GatewayError> {
        let key = format!("{tenant_id}:{object_id}");
        let mut counts = self.counts.lock();
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.max_per_caller {
            return Err(GatewayError::TooManyInFlight {
                limit: self.max_per_caller,
            });
        }
        *n += 1;
        drop(counts);
        self.gauge.inc();
        Ok(InFlightSlot {
            counts: self.counts.clone(),
            key,
            gauge: self.gauge.clone(),
        })
    }

    /// Callers with at least one request in progress.
    pub fn callers(&self) -> usize {
        self.counts.lock().len()
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
        drop(counts);
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_minute: u32, burst: u32, cap: usize) -> Limits {
        Limits::new(&LimitsConfig {
            per_caller: Rate { per_minute, burst },
            per_tenant: Rate {
                per_minute: 1000,
                burst: 1000,
            },
            max_tracked_callers: cap,
            eviction_seconds: 60,
            max_in_flight_per_caller: 32,
        })
    }

    #[test]
    fn a_caller_holds_at_most_its_cap_and_a_released_slot_is_free_again() {
        let f = InFlight::new(2, Gauge::default());
        let a = f.acquire("t", "u").unwrap();
        let _b = f.acquire("t", "u").unwrap();
        assert!(matches!(
            f.acquire("t", "u"),
            Err(GatewayError::TooManyInFlight { limit: 2 })
        ));
        // Another caller is not touched.
        let _c = f.acquire("t", "v").unwrap();
        drop(a);
        assert!(f.acquire("t", "u").is_ok());
    }

    #[test]
    fn a_caller_without_requests_in_flight_leaves_no_entry() {
        let f = InFlight::new(2, Gauge::default());
        let a = f.acquire("t", "u").unwrap();
        assert_eq!(f.callers(), 1);
        drop(a);
        assert_eq!(f.callers(), 0);
    }

    #[test]
    fn the_burst_passes_then_the_caller_is_refused_with_a_whole_second_wait() {
        let l = limits(10, 3, 100);
        for expected_remaining in [2, 1, 0] {
            assert_eq!(l.check("t", "u").unwrap().remaining, expected_remaining);
        }
        match l.check("t", "u") {
            Err(GatewayError::RateLimited(s)) => {
                assert_eq!(s.policy, "per-caller");
                assert!((1..=6).contains(&s.reset_secs), "{}", s.reset_secs);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Another caller of the same tenant is unaffected.
        assert!(l.check("t", "v").is_ok());
    }

    #[test]
    fn the_tenant_limit_covers_all_its_callers() {
        let l = Limits::new(&LimitsConfig {
            per_caller: Rate {
                per_minute: 100,
                burst: 100,
            },
            per_tenant: Rate {
                per_minute: 2,
                burst: 2,
            },
            max_tracked_callers: 100,
            eviction_seconds: 60,
            max_in_flight_per_caller: 32,
        });
        assert!(l.check("t", "a").is_ok());
        assert!(l.check("t", "b").is_ok());
        assert!(matches!(
            l.check("t", "c"),
            Err(GatewayError::RateLimited(RateLimitStatus {
                policy: "per-tenant",
                ..
            }))
        ));
        assert!(l.check("other", "c").is_ok());
    }

    #[test]
    fn tracked_callers_are_capped() {
        let l = limits(10, 3, 2);
        assert!(l.check("t", "a").is_ok());
        assert!(l.check("t", "b").is_ok());
        // Both keys are still recent (they used part of their burst), so eviction keeps them.
        assert!(matches!(
            l.check("t", "c"),
            Err(GatewayError::LimiterFull { .. })
        ));
        assert_eq!(l.tracked_callers(), 2);
    }
}
