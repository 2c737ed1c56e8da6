//! Rate limits per caller (`tid` + `oid`) and per tenant: GCRA (the algorithm governor
//! uses), with the draft-ietf-httpapi-ratelimit-headers-11 `RateLimit-Policy` / `RateLimit`
//! fields.
//!
//! The step decides; a [`RateStore`] only stores the cells and takes from them. Two stores:
//! [`GovernorStore`] (`[state] backend = "memory"`, one process: governor's keyed limiter, whose
//! keys a timer drops when idle and whose count is capped) and [`RedisRates`]
//! (`backend = "redis"`, shared by every replica: the same GCRA as one Lua script per check,
//! on Redis's clock). Both answer in the same [`Taken`] terms, so the headers, the 429 and its
//! `Retry-After` are computed once, here, the same for both.
//!
//! Beside the rate, [`InFlight`] caps how many requests one caller has in progress at once, so
//! a caller holding slow bodies open cannot take more than its share of the connections.

use crate::background::Background;
use crate::config::{FailMode, LimitsConfig, Rate};
use crate::error::GatewayError;
use crate::metrics::{LimitMetrics, PolicyLabels};
use crate::state::{Redis, Unavailable};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub use crate::domain::RateLimitStatus;

/// A store's answer, boxed so the step can hold any store as `Arc<dyn RateStore>`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Unavailable>> + Send + 'a>>;

/// One GCRA cell to take a request from.
#[derive(Debug, Clone, Copy)]
pub struct Cell<'a> {
    /// The policy (`per-caller`, `per-tenant`, `per-source`): a fixed word, part of the key.
    pub policy: &'static str,
    /// Whose cell within the policy (the caller, the tenant, the source).
    pub key: &'a str,
    /// Its rate.
    pub rate: Rate,
}

/// What a store answered for one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Admitted; `remaining` requests could follow at once (governor's remaining burst).
    Allowed {
        /// Requests left in the burst.
        remaining: u32,
    },
    /// Refused; the cell conforms again after `wait`.
    Refused {
        /// How long until a request would be admitted.
        wait: Duration,
    },
}

/// Where the limiter's cells live: takes one request from each cell in order, stopping at the
/// first refusal (the cells before it keep their take, as governor's limiters do one after
/// the other). Atomic per call: concurrent calls never both take the last request.
pub trait RateStore: Send + Sync {
    /// One answer per cell taken, the last one `Refused` if a cell refused.
    fn take<'a>(&'a self, cells: &'a [Cell<'a>]) -> StoreFuture<'a, Vec<Taken>>;

    /// Keys this store holds for `policy`, if it counts them (the memory store; Redis forgets
    /// idle keys by their TTL and has no cap to enforce).
    fn tracked(&self, _policy: &str) -> Option<usize> {
        None
    }

    /// Drops keys whose state is indistinguishable from a fresh one (the memory store).
    fn evict(&self) {}

    /// `cells` as a script on this store takes them ([`GCRA_FUNCTION`]), when another step's
    /// script on the same store may take them with its own work (the shared store); `None`
    /// for a store no script reaches (memory).
    fn script_cells(&self, _cells: &[Cell<'_>]) -> Option<Vec<ScriptCell>> {
        None
    }
}

fn quota(r: Rate) -> Quota {
    // Validated non-zero at configuration load.
    let per_minute = NonZeroU32::new(r.per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

/// The memory store: one governor keyed limiter per policy, each with its policy's rate.
pub struct GovernorStore {
    limiters: Vec<(&'static str, Rate, KeyedLimiter)>,
}

impl GovernorStore {
    /// A limiter for each `(policy, rate)`; a cell must name one of these with its rate.
    pub fn new(policies: &[(&'static str, Rate)]) -> Self {
        GovernorStore {
            limiters: policies
                .iter()
                .map(|&(p, r)| {
                    (
                        p,
                        r,
                        RateLimiter::keyed(quota(r))
                            .with_middleware::<StateInformationMiddleware>(),
                    )
                })
                .collect(),
        }
    }

    fn limiter(&self, policy: &str) -> Option<&KeyedLimiter> {
        self.limiters
            .iter()
            .find(|(p, _, _)| *p == policy)
            .map(|(_, _, l)| l)
    }

    /// The same decision as [`RateStore::take`], synchronously (governor needs no I/O).
    pub fn take_now(&self, cells: &[Cell<'_>]) -> Result<Vec<Taken>, Unavailable> {
        let mut out = Vec::with_capacity(cells.len());
        for cell in cells {
            let limiter = self.limiter(cell.policy).ok_or_else(|| Unavailable {
                operation: "rate_check",
                reason: format!("no limiter for policy {}", cell.policy),
            })?;
            debug_assert!(self
                .limiters
                .iter()
                .any(|(p, r, _)| *p == cell.policy && *r == cell.rate));
            match limiter.check_key(&cell.key.to_string()) {
                Ok(snapshot) => out.push(Taken::Allowed {
                    remaining: snapshot.remaining_burst_capacity(),
                }),
                Err(not_until) => {
                    out.push(Taken::Refused {
                        wait: not_until.wait_time_from(limiter.clock().now()),
                    });
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl RateStore for GovernorStore {
    fn take<'a>(&'a self, cells: &'a [Cell<'a>]) -> StoreFuture<'a, Vec<Taken>> {
        let taken = self.take_now(cells);
        Box::pin(async move { taken })
    }

    fn tracked(&self, policy: &str) -> Option<usize> {
        self.limiter(policy).map(|l| l.len())
    }

    fn evict(&self) {
        for (_, _, l) in &self.limiters {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// GCRA exactly as governor computes it, in microseconds (Lua's numbers are doubles: exact to
/// 2^53, so microseconds since the epoch fit and nanoseconds would not), on Redis's clock
/// (`TIME`), as a Lua function that takes one request from each of `cells` (`{key, t, tau}`:
/// the emission interval and the burst tolerance, `t` × (burst − 1)) in order, in one atomic
/// script: [`GCRA_SCRIPT`] on its own, or the shared run schedule's join on the warm path
/// ([`ScriptCell`]). A key's TTL ends when its cell is full again, so idle callers vanish on
/// their own. Returns a flat list, per cell taken, 1 and the remaining burst, or 0 and the wait
/// in microseconds (then it stops: the cells before keep their take, as in memory), and
/// whether a cell refused.
pub(crate) const GCRA_FUNCTION: &str = r#"
local function gcra(cells)
  local now = redis.call('TIME')
  local t0 = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local out = {}
  for _, c in ipairs(cells) do
    local key, t, tau = c[1], tonumber(c[2]), tonumber(c[3])
    local tat = tonumber(redis.call('GET', key)) or t0
    local earliest = tat - tau
    if t0 < earliest then
      out[#out + 1] = 0
      out[#out + 1] = earliest - t0
      return out, true
    end
    local nxt = math.max(tat, t0) + t
    redis.call('SET', key, string.format('%.0f', nxt), 'PX', math.max(1, math.ceil((nxt - t0) / 1000)))
    out[#out + 1] = 1
    out[#out + 1] = math.floor(math.min(t0 + tau + t - nxt, tau + t) / t)
  end
  return out, false
end
"#;

/// One check on its own: KEYS are the cells in order; ARGV holds each cell's `t` and `tau`.
const GCRA_SCRIPT: &str = r#"
local cells = {}
for i = 1, #KEYS do cells[i] = {KEYS[i], ARGV[2 * i - 1], ARGV[2 * i]} end
local out = gcra(cells)
return out
"#;

/// A cell as a script on the shared store takes it: its full key and its GCRA parameters in
/// microseconds, for [`GCRA_FUNCTION`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptCell {
    /// The cell's Redis key (with `state.key_prefix`).
    pub key: String,
    /// The emission interval.
    pub t: u64,
    /// The burst tolerance.
    pub tau: u64,
}

/// The store's answer for a check taken inside a script: the flat list [`GCRA_FUNCTION`]
/// returns, one pair per cell taken.
pub fn taken_from_flat(flat: &[i64]) -> Result<Vec<Taken>, Unavailable> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    for pair in flat.chunks(2) {
        match pair {
            [1, remaining] => out.push(Taken::Allowed {
                remaining: (*remaining).clamp(0, i64::from(u32::MAX)) as u32,
            }),
            [0, wait] => out.push(Taken::Refused {
                wait: Duration::from_micros((*wait).max(0) as u64),
            }),
            _ => {
                return Err(Unavailable {
                    operation: "rate_check",
                    reason: "unexpected answer from the rate script".into(),
                })
            }
        }
    }
    Ok(out)
}

/// A cell's GCRA parameters in microseconds: the emission interval and the burst tolerance,
/// from governor's own `Quota` (so both stores round alike).
fn gcra_micros(rate: Rate) -> (u64, u64) {
    let q = quota(rate);
    let t = (q.replenish_interval().as_nanos() / 1000).max(1) as u64;
    let tau = t * u64::from(q.burst_size().get() - 1);
    (t, tau)
}

/// The Redis store: the cells of every replica in one Redis, taken by [`GCRA_SCRIPT`]
/// (`EVALSHA`, loaded again by the crate if Redis forgot it).
pub struct RedisRates {
    redis: Redis,
    script: redis::Script,
}

impl RedisRates {
    /// Cells under `state.key_prefix` + `rate:`.
    pub fn new(redis: Redis) -> Self {
        RedisRates {
            redis,
            script: redis::Script::new(&format!("{GCRA_FUNCTION}{GCRA_SCRIPT}")),
        }
    }

    fn cell_key(&self, cell: &Cell<'_>) -> String {
        self.redis
            .key(&format!("rate:{}:{}", cell.policy, cell.key))
    }
}

impl RateStore for RedisRates {
    fn take<'a>(&'a self, cells: &'a [Cell<'a>]) -> StoreFuture<'a, Vec<Taken>> {
        Box::pin(async move {
            let mut invocation = self.script.prepare_invoke();
            for cell in cells {
                let (t, tau) = gcra_micros(cell.rate);
                invocation.key(self.cell_key(cell)).arg(t).arg(tau);
            }
            let mut conn = self.redis.connection();
            let flat: Vec<i64> = self
                .redis
                .call("rate_check", invocation.invoke_async(&mut conn))
                .await?;
            taken_from_flat(&flat)
        })
    }

    fn script_cells(&self, cells: &[Cell<'_>]) -> Option<Vec<ScriptCell>> {
        Some(
            cells
                .iter()
                .map(|cell| {
                    let (t, tau) = gcra_micros(cell.rate);
                    ScriptCell {
                        key: self.cell_key(cell),
                        t,
                        tau,
                    }
                })
                .collect(),
        )
    }
}

/// The status a taken cell gives the response headers: what remains and when the burst is
/// whole again, or the refusal with its `Retry-After` (whole seconds, rounded up, never 0: a
/// client retrying at once would fail).
fn status(
    policy: &'static str,
    rate: Rate,
    taken: Taken,
    policies: &Arc<str>,
) -> Result<RateLimitStatus, GatewayError> {
    match taken {
        Taken::Allowed { remaining } => {
            let per_unit = Duration::from_secs_f64(60.0 / f64::from(rate.per_minute.max(1)));
            let missing = rate.burst.saturating_sub(remaining);
            Ok(RateLimitStatus {
                policy,
                remaining,
                reset_secs: (per_unit * missing).as_secs_f64().ceil() as u64,
                policies: policies.clone(),
            })
        }
        Taken::Refused { wait } => Err(GatewayError::RateLimited(RateLimitStatus {
            policy,
            remaining: 0,
            reset_secs: (wait.as_secs_f64().ceil() as u64).max(1),
            policies: policies.clone(),
        })),
    }
}

/// How long a client waits after `state-unavailable`: long enough not to hammer a gateway
/// whose store is down, short enough to notice it is back.
const STATE_RETRY_AFTER_SECS: u64 = 1;

/// What a limiter does when its store cannot answer: refuse (`closed`) or admit, logging at
/// most once per [`OPEN_LOG_EVERY`] and counting every admission (`open`).
struct OnStoreFailure {
    mode: FailMode,
    last_log: AtomicU64,
    started: Instant,
}

/// A store that stays down must not flood the log with one line per admitted request.
const OPEN_LOG_EVERY: Duration = Duration::from_secs(10);

impl OnStoreFailure {
    fn new(mode: FailMode) -> Self {
        OnStoreFailure {
            mode,
            last_log: AtomicU64::new(u64::MAX),
            started: Instant::now(),
        }
    }

    /// `Ok(None)` (admitted without a status) or the refusal.
    fn decide(
        &self,
        e: &Unavailable,
        policy: &'static str,
        metrics: &LimitMetrics,
    ) -> Result<Option<RateLimitStatus>, GatewayError> {
        match self.mode {
            FailMode::Closed => {
                metrics.decided(policy, "unavailable");
                Err(GatewayError::StateUnavailable {
                    retry_after_secs: STATE_RETRY_AFTER_SECS,
                })
            }
            FailMode::Open => {
                metrics.decided(policy, "failed_open");
                let now = self.started.elapsed().as_secs();
                let last = self.last_log.load(Ordering::Relaxed);
                if (last == u64::MAX || now >= last + OPEN_LOG_EVERY.as_secs())
                    && self
                        .last_log
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        error = %e,
                        "rate limits cannot be checked (state backend unavailable); admitting without them, as state.on_unavailable.limits = \"open\" says"
                    );
                }
                Ok(None)
            }
        }
    }
}

/// A caller's check named but not taken yet ([`Limits::prepare`]): taken by [`Limits::take`],
/// or inside the shared run schedule's join ([`Limits::script_cells`], [`Limits::decide`]).
#[derive(Debug)]
pub struct PendingCheck {
    caller_key: String,
    tenant_key: String,
}

/// The caller and tenant limits of one gateway process.
pub struct Limits {
    store: Arc<dyn RateStore>,
    caller_rate: Rate,
    tenant_rate: Rate,
    max_tracked_callers: usize,
    eviction: Duration,
    policies: Arc<str>,
    metrics: LimitMetrics,
    on_failure: OnStoreFailure,
}

impl Limits {
    /// The limits from configuration, in this process's memory ([`GovernorStore`]).
    pub fn new(cfg: &LimitsConfig) -> Self {
        let policies = format!(
            "\"per-caller\";q={};w=60, \"per-tenant\";q={};w=60",
            cfg.per_caller.per_minute, cfg.per_tenant.per_minute
        );
        Limits {
            store: Arc::new(GovernorStore::new(&[
                ("per-caller", cfg.per_caller),
                ("per-tenant", cfg.per_tenant),
            ])),
            caller_rate: cfg.per_caller,
            tenant_rate: cfg.per_tenant,
            max_tracked_callers: cfg.max_tracked_callers,
            eviction: Duration::from_secs(cfg.eviction_seconds),
            policies: policies.into(),
            metrics: LimitMetrics::default(),
            on_failure: OnStoreFailure::new(FailMode::Closed),
        }
    }

    /// The same limits kept in `store` (e.g. [`RedisRates`]), doing what `on_unavailable`
    /// says when it cannot answer.
    pub fn with_store(mut self, store: Arc<dyn RateStore>, on_unavailable: FailMode) -> Self {
        self.store = store;
        self.on_failure = OnStoreFailure::new(on_unavailable);
        self
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
        for policy in ["per-caller", "per-tenant"] {
            if let Some(n) = self.store.tracked(policy) {
                self.metrics
                    .tracked_keys
                    .get_or_create(&PolicyLabels { policy })
                    .set(n as i64);
            }
        }
    }

    /// Takes one request from the caller's and then the tenant's allowance, in one store call
    /// (one Redis round trip).
    ///
    /// The caller is checked first so that one noisy caller is stopped before it eats the
    /// tenant's allowance. Returns the tighter of the two statuses for the response headers,
    /// or `None` when the store could not answer and `state.on_unavailable.limits = "open"`
    /// admitted the request without a status.
    pub async fn check(
        &self,
        tenant_id: &str,
        object_id: &str,
    ) -> Result<Option<RateLimitStatus>, GatewayError> {
        let pending = self.prepare(tenant_id, object_id)?;
        self.take(&pending).await
    }

    /// The first half of [`Limits::check`]: refuses when the limiter tracks its maximum of
    /// callers, and otherwise names the caller's and the tenant's cells without taking from
    /// them yet.
    pub fn prepare(&self, tenant_id: &str, object_id: &str) -> Result<PendingCheck, GatewayError> {
        if let Some(n) = self.store.tracked("per-caller") {
            if n >= self.max_tracked_callers {
                self.store.evict();
                if self.store.tracked("per-caller").unwrap_or(0) >= self.max_tracked_callers {
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
        }
        // `{tid}`: a Redis Cluster hash tag, so a caller's cell and its tenant's share a slot
        // and one script may touch both.
        Ok(PendingCheck {
            caller_key: format!("{{{tenant_id}}}:{object_id}"),
            tenant_key: format!("{{{tenant_id}}}"),
        })
    }

    /// The second half of [`Limits::check`]: takes `pending` from the store now.
    pub async fn take(
        &self,
        pending: &PendingCheck,
    ) -> Result<Option<RateLimitStatus>, GatewayError> {
        let cells = self.cells(pending);
        match self.store.take(&cells).await {
            Ok(taken) => self.decide(pending, taken),
            Err(e) => self.on_failure.decide(&e, "per-caller", &self.metrics),
        }
    }

    /// `pending`'s cells as a script on the shared store takes them, so that the run
    /// schedule's join takes them in its own script (one round trip for both); `None` on the
    /// memory store, where there is no round trip to save.
    pub fn script_cells(&self, pending: &PendingCheck) -> Option<Vec<ScriptCell>> {
        self.store.script_cells(&self.cells(pending))
    }

    /// Whether another step's script on the store may take a check ([`Limits::script_cells`]).
    pub fn takes_in_scripts(&self) -> bool {
        self.store.script_cells(&[]).is_some()
    }

    /// The answer for `pending` from what the store took (here or in another step's script):
    /// the tighter status, or the refusal, counted as [`Limits::check`] counts them.
    pub fn decide(
        &self,
        pending: &PendingCheck,
        taken: Vec<Taken>,
    ) -> Result<Option<RateLimitStatus>, GatewayError> {
        let cells = self.cells(pending);
        let mut statuses = Vec::with_capacity(2);
        for (cell, t) in cells.iter().zip(taken) {
            self.metrics.decided(
                cell.policy,
                match t {
                    Taken::Allowed { .. } => "allowed",
                    Taken::Refused { .. } => "limited",
                },
            );
            statuses.push(status(cell.policy, cell.rate, t, &self.policies)?);
        }
        Ok(statuses.into_iter().reduce(|caller, tenant| {
            if tenant.remaining < caller.remaining {
                tenant
            } else {
                caller
            }
        }))
    }

    fn cells<'a>(&self, pending: &'a PendingCheck) -> [Cell<'a>; 2] {
        [
            Cell {
                policy: "per-caller",
                key: &pending.caller_key,
                rate: self.caller_rate,
            },
            Cell {
                policy: "per-tenant",
                key: &pending.tenant_key,
                rate: self.tenant_rate,
            },
        ]
    }

    /// Drops keys whose state is indistinguishable from a fresh one.
    pub fn evict(&self) {
        self.store.evict();
    }

    /// How many callers are tracked now (0 for a store that does not count them).
    pub fn tracked_callers(&self) -> usize {
        self.store.tracked("per-caller").unwrap_or(0)
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
/// GCRA cell, in this process's memory or in the shared store beside the callers' cells.
pub struct SourceLimit {
    store: Arc<dyn RateStore>,
    key: String,
    rate: Rate,
    policies: Arc<str>,
    on_failure: OnStoreFailure,
    metrics: LimitMetrics,
}

impl SourceLimit {
    /// `per_minute` with bursts of `burst`, in this process's memory.
    pub fn new(rate: Rate) -> Self {
        Self::with_store(
            "source",
            rate,
            Arc::new(GovernorStore::new(&[("per-source", rate)])),
            FailMode::Closed,
        )
    }

    /// The source `name`'s allowance kept in `store` (shared by the replicas), doing what
    /// `on_unavailable` says when the store cannot answer.
    pub fn with_store(
        name: &str,
        rate: Rate,
        store: Arc<dyn RateStore>,
        on_unavailable: FailMode,
    ) -> Self {
        SourceLimit {
            store,
            key: format!("{{hook:{name}}}"),
            rate,
            policies: format!("\"per-source\";q={};w=60", rate.per_minute).into(),
            on_failure: OnStoreFailure::new(on_unavailable),
            metrics: LimitMetrics::default(),
        }
    }

    /// Takes one request from the source's allowance; `None` as in [`Limits::check`].
    pub async fn check(&self) -> Result<Option<RateLimitStatus>, GatewayError> {
        let cells = [Cell {
            policy: "per-source",
            key: &self.key,
            rate: self.rate,
        }];
        match self.store.take(&cells).await {
            Ok(taken) => match taken.first() {
                Some(&t) => status("per-source", self.rate, t, &self.policies).map(Some),
                None => Ok(None),
            },
            Err(e) => self.on_failure.decide(&e, "per-source", &self.metrics),
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

    #[test]
    fn a_scripts_flat_answer_reads_as_one_taken_per_cell_and_anything_else_is_refused() {
        assert_eq!(
            taken_from_flat(&[1, 3, 0, 1500]).unwrap(),
            [
                Taken::Allowed { remaining: 3 },
                Taken::Refused {
                    wait: Duration::from_micros(1500)
                }
            ]
        );
        // An odd length or an unknown verdict is not an answer to trust.
        assert!(taken_from_flat(&[1]).is_err());
        assert!(taken_from_flat(&[2, 0]).is_err());
    }

    #[test]
    fn only_the_shared_store_lets_another_script_take_a_check() {
        let memory = limits(10, 5, 100);
        assert!(!memory.takes_in_scripts());
        let pending = memory.prepare("t", "o").unwrap();
        assert!(memory.script_cells(&pending).is_none());
    }

    /// [`Limits::check`] on a runtime of its own (the memory store never waits).
    fn check(l: &Limits, t: &str, o: &str) -> Result<RateLimitStatus, GatewayError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(l.check(t, o))
            .map(|s| s.expect("the memory store always answers"))
    }

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
            assert_eq!(check(&l, "t", "u").unwrap().remaining, expected_remaining);
        }
        match check(&l, "t", "u") {
            Err(GatewayError::RateLimited(s)) => {
                assert_eq!(s.policy, "per-caller");
                assert!((1..=6).contains(&s.reset_secs), "{}", s.reset_secs);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Another caller of the same tenant is unaffected.
        assert!(check(&l, "t", "v").is_ok());
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
        assert!(check(&l, "t", "a").is_ok());
        assert!(check(&l, "t", "b").is_ok());
        assert!(matches!(
            check(&l, "t", "c"),
            Err(GatewayError::RateLimited(RateLimitStatus {
                policy: "per-tenant",
                ..
            }))
        ));
        assert!(check(&l, "other", "c").is_ok());
    }

    #[test]
    fn tracked_callers_are_capped() {
        let l = limits(10, 3, 2);
        assert!(check(&l, "t", "a").is_ok());
        assert!(check(&l, "t", "b").is_ok());
        // Both keys are still recent (they used part of their burst), so eviction keeps them.
        assert!(matches!(
            check(&l, "t", "c"),
            Err(GatewayError::LimiterFull { .. })
        ));
        assert_eq!(l.tracked_callers(), 2);
    }
}

/// The Lua GCRA against governor on the same sequences (Redis at `REDIS_URL`; skipped with a
/// printed reason when it is unset). Rates of one request a minute leave nothing to refill
/// during a test, so Redis's clock and this process's agree on every decision.
#[cfg(test)]
mod redis_tests {
    use super::*;
    use crate::state::testing::{delete_prefix, redis};

    /// Same admits, refusals and remaining counts; waits within a second of each other.
    fn assert_same(memory: &[Taken], shared: &[Taken]) {
        assert_eq!(memory.len(), shared.len(), "{memory:?} vs {shared:?}");
        for (m, s) in memory.iter().zip(shared) {
            match (m, s) {
                (Taken::Allowed { remaining: a }, Taken::Allowed { remaining: b }) => {
                    assert_eq!(a, b, "{memory:?} vs {shared:?}")
                }
                (Taken::Refused { wait: a }, Taken::Refused { wait: b }) => {
                    assert!(a.abs_diff(*b) < Duration::from_secs(1), "{a:?} vs {b:?}")
                }
                _ => panic!("memory {m:?}, redis {s:?}"),
            }
        }
    }

    #[tokio::test]
    async fn the_lua_gcra_admits_refuses_and_counts_as_governor_does_on_one_and_two_cells() {
        let prefix = format!("sg-test:{}:", uuid::Uuid::new_v4().simple());
        let Some(r) = redis("the Redis GCRA", &prefix) else {
            return;
        };
        let caller = Rate {
            per_minute: 1,
            burst: 3,
        };
        let tenant = Rate {
            per_minute: 1,
            burst: 5,
        };
        let memory = GovernorStore::new(&[("per-caller", caller), ("per-tenant", tenant)]);
        let shared = RedisRates::new(r.clone());
        // Callers a, a, a, a (refused by its own cell), b, b, c (the tenant's burst is gone
        // after a's three and b's two), c.
        for who in ["a", "a", "a", "a", "b", "b", "c", "c"] {
            let cells = [
                Cell {
                    policy: "per-caller",
                    key: who,
                    rate: caller,
                },
                Cell {
                    policy: "per-tenant",
                    key: "t",
                    rate: tenant,
                },
            ];
            let m = memory.take_now(&cells).unwrap();
            let s = shared.take(&cells).await.unwrap();
            assert_same(&m, &s);
        }
        // One cell alone (a source's), past its burst.
        let source = Rate {
            per_minute: 2,
            burst: 2,
        };
        let memory = GovernorStore::new(&[("per-source", source)]);
        for _ in 0..4 {
            let cells = [Cell {
                policy: "per-source",
                key: "{hook:s}",
                rate: source,
            }];
            assert_same(
                &memory.take_now(&cells).unwrap(),
                &shared.take(&cells).await.unwrap(),
            );
        }
        delete_prefix(&r, &prefix).await;
    }

    #[tokio::test]
    async fn a_cell_left_alone_expires_when_it_is_whole_again() {
        let prefix = format!("sg-test:{}:", uuid::Uuid::new_v4().simple());
        let Some(r) = redis("the Redis GCRA", &prefix) else {
            return;
        };
        let shared = RedisRates::new(r.clone());
        let rate = Rate {
            per_minute: 60,
            burst: 2,
        };
        let cells = [Cell {
            policy: "per-caller",
            key: "x",
            rate,
        }];
        shared.take(&cells).await.unwrap();
        let mut conn = r.connection();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}rate:per-caller:x"))
            .query_async(&mut conn)
            .await
            .unwrap();
        // One request at 60 a minute is whole again after a second.
        assert!((1..=1000).contains(&ttl), "{ttl}");
        delete_prefix(&r, &prefix).await;
    }
}
