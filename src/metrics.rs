//! `/metrics`: one Prometheus registry per gateway process, exposed in the OpenMetrics text
//! format (which Prometheus scrapes natively).
//!
//! Each module keeps typed handles to its own metrics (cheap clones of atomics) and registers
//! them once at start with [`Metrics::register`]; nothing here is global, so tests running
//! several gateways in one process never share counters.

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// The `Content-Type` of the `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Run before every encoding, to bring gauges read from elsewhere up to date.
type ScrapeHook = Box<dyn Fn() + Send + Sync>;

/// The registry every module registers into; shared as `Arc<Metrics>`.
///
/// Each step's metrics are a struct here (like [`AuditMetrics`]), registered by
/// [`Metrics::new`] and handed to the step when `server.rs` builds it: one place lists every
/// metric and its labels, and each label set is bounded where it is declared.
pub struct Metrics {
    registry: RwLock<Registry>,
    on_scrape: RwLock<Vec<ScrapeHook>>,
    /// The audit trail's own metrics (registered by [`Metrics::new`]).
    pub audit: AuditMetrics,
    /// Service identities whose session cannot refresh (1) or is ready (0), by identity:
    /// `service_identity_login_required`. Bounded: identities come from configuration.
    pub identity_login_required: Family<IdentityLabels, Gauge>,
    /// Every audited request, by route and outcome (`pipeline`).
    pub requests: RequestMetrics,
    /// Token validation and signing keys (`caller`).
    pub callers: CallerMetrics,
    /// The exchange cache and Entra's refusals (`credentials`).
    pub credentials: CredentialMetrics,
    /// The rate limiter (`limits`).
    pub limits: LimitMetrics,
    /// Runs and their schedule (`runs`).
    pub runs: RunMetrics,
    /// Microsoft Graph's answers (`upstream`).
    pub graph: GraphMetrics,
    /// The shared-state backend (`state`).
    pub state: StateMetrics,
}

/// Which service identity (the `identity` label).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    /// The NAME of `[identities.NAME]`.
    pub identity: String,
}

impl Metrics {
    /// A registry with the audit metrics already registered.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("sync_gateway");
        let audit = AuditMetrics::default();
        audit.register_into(&mut registry);
        let identity_login_required = Family::<IdentityLabels, Gauge>::default();
        registry.register(
            "service_identity_login_required",
            "1 while a service identity has no session that can refresh: run `sync-gateway login`",
            identity_login_required.clone(),
        );
        let requests = RequestMetrics::default();
        requests.register_into(&mut registry);
        let callers = CallerMetrics::default();
        callers.register_into(&mut registry);
        let credentials = CredentialMetrics::default();
        credentials.register_into(&mut registry);
        let limits = LimitMetrics::default();
        limits.register_into(&mut registry);
        let runs = RunMetrics::default();
        runs.register_into(&mut registry);
        let state = StateMetrics::default();
        state.register_into(&mut registry);
        let graph = GraphMetrics::default();
        graph.register_into(&mut registry);
        Arc::new(Metrics {
            registry: RwLock::new(registry),
            on_scrape: RwLock::new(Vec::new()),
            audit,
            identity_login_required,
            requests,
            callers,
            credentials,
            limits,
            state,
            runs,
            graph,
        })
    }

    /// Runs `hook` before every [`Metrics::encode`]: for gauges that are cheaper to read when
    /// scraped than to keep current on every request (e.g. the limiter's tracked keys).
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.on_scrape.write().push(Box::new(hook));
    }

    /// Registers `metric` as `sync_gateway_<name>`; call once per metric, at start.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        // A poisoned lock only means another registration panicked; the registry is intact.
        let mut r = self.registry.write();
        r.register(name, help, metric);
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        for hook in self.on_scrape.read().iter() {
            hook();
        }
        let r = self.registry.read();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

/// Why an audit append was refused (the `reason` label).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `timeout`, `stalled`, `io`, `queue_full` or `stopped`.
    pub reason: &'static str,
}

/// The audit trail's counters and gauges.
#[derive(Clone)]
pub struct AuditMetrics {
    /// Records made durable (`audit_records_written_total`).
    pub records_written: Counter,
    /// Group commits (one write + one fsync, or one transaction) that succeeded.
    pub commits: Counter,
    /// Appends refused (the request was answered 503), by reason.
    pub append_failures: Family<FailureLabels, Counter>,
    /// Group commits that failed in the sink (write, fsync, transaction).
    pub commit_failures: Counter,
    /// Records dropped unwritten because their caller had already given up (timeout).
    pub abandoned: Counter,
    /// Signed checkpoints written.
    pub checkpoints: Counter,
    /// File rotations.
    pub rotations: Counter,
    /// Failed writes to the `stdout` copy (the durable sink is unaffected).
    pub copy_failures: Counter,
    /// 1 while the trail accepts records, 0 while it refuses them.
    pub healthy: Gauge,
    /// Outcome records waiting for the trail to recover, to be written marked `late`.
    pub late_pending: Gauge,
    /// Outcome records dropped because the late queue was full.
    pub late_dropped: Counter,
    /// Seconds one group commit took.
    pub commit_seconds: Histogram,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        AuditMetrics {
            records_written: Counter::default(),
            commits: Counter::default(),
            append_failures: Family::default(),
            commit_failures: Counter::default(),
            abandoned: Counter::default(),
            checkpoints: Counter::default(),
            rotations: Counter::default(),
            copy_failures: Counter::default(),
            healthy: Gauge::default(),
            late_pending: Gauge::default(),
            late_dropped: Counter::default(),
            // 50 µs .. ~3 s
            commit_seconds: Histogram::new(exponential_buckets(0.00005, 3.0, 11)),
        }
    }
}

impl AuditMetrics {
    fn register_into(&self, r: &mut Registry) {
        r.register(
            "audit_records_written",
            "Audit records made durable",
            self.records_written.clone(),
        );
        r.register(
            "audit_commits",
            "Audit group commits that succeeded",
            self.commits.clone(),
        );
        r.register(
            "audit_append_failures",
            "Audit appends refused, so the request was answered 503 (fail closed)",
            self.append_failures.clone(),
        );
        r.register(
            "audit_commit_failures",
            "Audit group commits the sink failed",
            self.commit_failures.clone(),
        );
        r.register(
            "audit_abandoned_records",
            "Audit records dropped unwritten because their request had already been answered 503",
            self.abandoned.clone(),
        );
        r.register(
            "audit_checkpoints",
            "Signed audit checkpoints written",
            self.checkpoints.clone(),
        );
        r.register(
            "audit_rotations",
            "Audit file rotations",
            self.rotations.clone(),
        );
        r.register(
            "audit_copy_failures",
            "Failed writes to the stdout copy of the audit trail",
            self.copy_failures.clone(),
        );
        r.register(
            "audit_healthy",
            "1 while the audit trail accepts records, 0 while requests are refused",
            self.healthy.clone(),
        );
        r.register(
            "audit_late_pending",
            "Outcome records (a run's finish, a joined request) waiting for the audit trail to recover",
            self.late_pending.clone(),
        );
        r.register(
            "audit_late_dropped",
            "Outcome records dropped because too many were waiting for the audit trail to recover",
            self.late_dropped.clone(),
        );
        r.register_with_unit(
            "audit_commit",
            "Duration of one audit group commit",
            Unit::Seconds,
            self.commit_seconds.clone(),
        );
    }

    /// Counts one refused append.
    pub fn refused(&self, reason: &'static str) {
        self.append_failures
            .get_or_create(&FailureLabels { reason })
            .inc();
    }
}

/// A histogram family keyed by `L`, all with the same buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets for latencies of network calls and whole requests: 5 ms .. ~40 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.5, 11))
}

/// The status class of an HTTP status (`2xx` .. `5xx`; anything else `other`).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// A request's route and outcome (the labels of `requests_total`).
///
/// Bounded: `route` is the route template the handler names (`/sync`, `/sync/runs/{id}`,
/// `unmatched` for every path the gateway does not serve), never the path a caller sent;
/// `status_class` is one of five; `kind` is a problem kind from `GatewayError::kind()` (a
/// fixed set) or `none` for a success.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template.
    pub route: &'static str,
    /// `2xx`, `4xx`, `5xx`, ...
    pub status_class: &'static str,
    /// The problem kind of a refusal, `none` for a success.
    pub kind: &'static str,
}

/// A route template (the label of `request_duration_seconds`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template, as in [`RequestLabels::route`].
    pub route: &'static str,
}

/// Every audited request (all routes except `/healthz`, `/readyz`, `/metrics` and
/// `/openapi.yaml`, which are not audited either).
#[derive(Clone)]
pub struct RequestMetrics {
    /// `requests_total{route, status_class, kind}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `request_duration_seconds{route}`: from the request's arrival to its answer (the audit
    /// record durable included).
    pub duration: HistogramFamily<RouteLabels>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl RequestMetrics {
    fn register_into(&self, r: &mut Registry) {
        r.register(
            "requests",
            "Audited requests by route template, status class and problem kind (none for a success)",
            self.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its answer, its audit record durable included",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    /// Counts one answered request.
    pub fn answered(
        &self,
        route: &'static str,
        status: u16,
        kind: Option<&'static str>,
        took: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                status_class: status_class(status),
                kind: kind.unwrap_or("none"),
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }
}

/// One label `result` from a fixed set of short words.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// e.g. `accepted` / `refused`.
    pub result: &'static str,
}

/// One issuer's key refresh (the labels of `jwks_refreshes_total`).
///
/// Bounded: `tenant` is one of `callers.allowed_tenants` (the key store has one issuer per
/// allowed tenant and token version, nothing else); the rest are fixed words.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksLabels {
    /// The issuer's tenant.
    pub tenant: String,
    /// `v1` or `v2`.
    pub version: &'static str,
    /// `scheduled` (the load at start and the timer) or `unknown_kid` (a token named a key
    /// the set lacked).
    pub trigger: &'static str,
    /// `ok` or `error` (the last good keys stay).
    pub result: &'static str,
}

/// Token validation and the signing keys behind it (`caller`). The refusals by cause are
/// `token_refusals_total{cause}`, registered in `server.rs` from the authenticator.
#[derive(Clone, Default)]
pub struct CallerMetrics {
    /// `token_validations_total{result="accepted|refused"}`: bearer tokens checked.
    pub validations: Family<ResultLabels, Counter>,
    /// Tokens found in the verified-token cache (no signature check).
    pub cache_hits: Counter,
    /// Tokens verified in full (their signature checked).
    pub cache_misses: Counter,
    /// `jwks_refreshes_total{tenant, version, trigger, result}`.
    pub jwks_refreshes: Family<JwksLabels, Counter>,
}

impl CallerMetrics {
    fn register_into(&self, r: &mut Registry) {
        r.register(
            "token_validations",
            "Caller bearer tokens validated, by result (accepted, refused; refusals by cause in token_refusals_total)",
            self.validations.clone(),
        );
        r.register(
            "verified_token_cache_hits",
            "Caller tokens accepted from the verified-token cache, without checking the signature again",
            self.cache_hits.clone(),
        );
        r.register(
            "verified_token_cache_misses",
            "Caller tokens not in the verified-token cache, so verified in full",
            self.cache_misses.clone(),
        );
        r.register(
            "jwks_refreshes",
            "Loads of an issuer's discovery document and signing keys, by tenant, token version, trigger and result",
            self.jwks_refreshes.clone(),
        );
    }

    /// Counts one validated token.
    pub fn validated(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        self.validations
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// The AADSTS codes named in `entra_errors_total{code}`; any other is `other`, so a caller
/// cannot grow the label set by provoking new codes. The client-credential codes (the ones an
/// alert watches), the application not found, consent, step-up and token refusals the
/// exchange maps, throttling and loop detection.
const KNOWN_AADSTS: [(i64, &str); 24] = [
    (7000215, "AADSTS7000215"),
    (7000222, "AADSTS7000222"),
    (700027, "AADSTS700027"),
    (700024, "AADSTS700024"),
    (700021, "AADSTS700021"),
    (700023, "AADSTS700023"),
    (70021, "AADSTS70021"),
    (700211, "AADSTS700211"),
    (700212, "AADSTS700212"),
    (700213, "AADSTS700213"),
    (7000218, "AADSTS7000218"),
    (700025, "AADSTS700025"),
    (700016, "AADSTS700016"),
    (65001, "AADSTS65001"),
    (50076, "AADSTS50076"),
    (50079, "AADSTS50079"),
    (53003, "AADSTS53003"),
    (50013, "AADSTS50013"),
    (500133, "AADSTS500133"),
    (50196, "AADSTS50196"),
    (70000, "AADSTS70000"),
    (70008, "AADSTS70008"),
    (700082, "AADSTS700082"),
    (70011, "AADSTS70011"),
];

/// The `code` label of an Entra error with `codes` (its first code): a known `AADSTS…`,
/// `other`, or `none` when Entra gave no code.
pub fn aadsts_label(codes: &[i64]) -> &'static str {
    match codes.first() {
        None => "none",
        Some(c) => KNOWN_AADSTS
            .iter()
            .find(|(k, _)| k == c)
            .map_or("other", |(_, label)| label),
    }
}

/// One refusal by Entra's token endpoint (the labels of `entra_errors_total`).
///
/// Bounded: `grant` and `cause` are fixed words, `code` comes from [`aadsts_label`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntraErrorLabels {
    /// `on_behalf_of`, `refresh_token`, `device_code` or `other`.
    pub grant: &'static str,
    /// `client_credential` (Entra refused the gateway's own credential), `grant` (it refused
    /// the grant: consent, step-up, an expired token), `throttled` (429), `server_error`
    /// (5xx) or `unreachable` (no answer).
    pub cause: &'static str,
    /// `AADSTS<n>` among a known set, `other` or `none`.
    pub code: &'static str,
}

/// The exchanged-token cache and Entra's answers (`credentials`).
#[derive(Clone)]
pub struct CredentialMetrics {
    /// Delegated tokens served from the exchange cache (a concurrent request waiting for the
    /// same exchange counts here too: it made none; one whose awaited exchange failed counts
    /// in neither, as it got no token and made no exchange).
    pub exchange_cache_hits: Counter,
    /// Exchanges made because the cache had no usable token.
    pub exchange_cache_misses: Counter,
    /// `exchange_duration_seconds`: one on-behalf-of exchange, its retry included.
    pub exchange_duration: Histogram,
    /// `entra_errors_total{grant, cause, code}`: every token-endpoint attempt that did not
    /// yield a token.
    pub entra_errors: Family<EntraErrorLabels, Counter>,
}

impl Default for CredentialMetrics {
    fn default() -> Self {
        CredentialMetrics {
            exchange_cache_hits: Counter::default(),
            exchange_cache_misses: Counter::default(),
            exchange_duration: latency_histogram(),
            entra_errors: Family::default(),
        }
    }
}

impl CredentialMetrics {
    fn register_into(&self, r: &mut Registry) {
        r.register(
            "exchange_cache_hits",
            "Delegated Graph tokens served from the exchange cache, no exchange made",
            self.exchange_cache_hits.clone(),
        );
        r.register(
            "exchange_cache_misses",
            "On-behalf-of exchanges made because the cache held no usable token",
            self.exchange_cache_misses.clone(),
        );
        r.register_with_unit(
            "exchange_duration",
            "Duration of one on-behalf-of exchange at Entra ID, its retry included",
            Unit::Seconds,
            self.exchange_duration.clone(),
        );
        r.register(
            "entra_errors",
            "Token-endpoint attempts that yielded no token, by grant, cause (client_credential: the gateway's own credential refused) and AADSTS code",
            self.entra_errors.clone(),
        );
    }

    /// Counts one attempt at the token endpoint that yielded no token.
    pub fn entra_error(&self, grant: &'static str, cause: &'static str, codes: &[i64]) {
        self.entra_errors
            .get_or_create(&EntraErrorLabels {
                grant,
                cause,
                code: aadsts_label(codes),
            })
            .inc();
    }
}

/// One limiter decision (the labels of `rate_limit_decisions_total`). Bounded: fixed words.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `per-caller` or `per-tenant` (the `RateLimit-Policy` names).
    pub policy: &'static str,
    /// `allowed`, `limited`, or `full` (the limiter tracks `limits.max_tracked_callers`
    /// already, so the caller was refused unchecked).
    pub decision: &'static str,
}

/// A limiter (the label of `rate_limit_tracked_keys`). Bounded: two values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `per-caller` or `per-tenant`.
    pub policy: &'static str,
}

/// The rate limiter (`limits`).
#[derive(Clone, Default)]
pub struct LimitMetrics {
    /// `rate_limit_decisions_total{policy, decision}`.
    pub decisions: Family<LimitLabels, Counter>,
    /// `rate_limit_tracked_keys{policy}`: keys each limiter holds (read when scraped).
    pub tracked_keys: Family<PolicyLabels, Gauge>,
}

impl LimitMetrics {
    fn register_into(&self, r: &mut Registry) {
        r.register(
            "rate_limit_decisions",
            "Rate-limit decisions by limiter (per-caller, per-tenant) and decision (allowed, limited, full)",
            self.decisions.clone(),
        );
        r.register(
            "rate_limit_tracked_keys",
            "Keys (callers, tenants) each rate limiter tracks now",
            self.tracked_keys.clone(),
        );
    }

    /// Counts one decision.
    pub fn decided(&self, policy: &'static str, decision: &'static str) {
        self.decisions
            .get_or_create(&LimitLabels { policy, decision })
            .inc();
    }
}

/// Which call to the shared-state backend (the label of `state_backend_failures_total`).
/// Bounded: fixed words (`rate_check`, `delivery_claim`, `delivery_keep`, `delivery_release`,
/// `ping`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateOperationLabels {
    /// The operation.
    pub operation: &'static str,
}

/// The shared-state backend (`state`): Redis calls that failed, and whether it is reachable.
#[derive(Clone, Default)]
pub struct StateMetrics {
    /// `state_backend_failures_total{operation}`: calls that failed or timed out.
    pub failures: Family<StateOperationLabels, Counter>,
    /// `state_backend_up`: 1 while the last call succeeded (always 1 for the memory backend).
    pub up: Gauge,
}

impl StateMetrics {
    fn register_into(&self, r: &mut Registry) {
        r.register(
            "state_backend_failures",
            "Calls to the shared-state backend (Redis) that failed or timed out, by operation",
            self.failures.clone(),
        );
        r.register(
            "state_backend_up",
            "1 while the shared-state backend answered its last call (the memory backend: always 1)",
            self.up.clone(),
        );
    }

    /// Counts one failed call of `operation` and marks the backend down.
    pub fn failed(&self, operation: &'static str) {
        self.failures
            .get_or_create(&StateOperationLabels { operation })
            .inc();
        self.up.set(0);
    }
}

/// One run's change of state (the labels of `run_transitions_total`). Bounded: fixed words.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// `new` (the run was created), `scheduled` or `running`.
    pub from: &'static str,
    /// `scheduled`, `running`, `succeeded`, `failed`, `abandoned`, or `merged` (its requests
    /// moved into the tenant's scheduled run after Graph's 409/429).
    pub to: &'static str,
}

/// A run state (the label of `runs`). Bounded: `scheduled` or `running`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state.
    pub state: &'static str,
}

/// A tenant (the label of `run_next_allowed_timestamp_seconds`). Bounded: runs exist only
/// for tenants of validated tokens (`callers.allowed_tenants`) and configured identities.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// The tenant id.
    pub tenant: String,
}

/// A gauge holding an `f64` (a timestamp with its milliseconds).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// Runs and their schedule (`runs`).
#[derive(Clone, Default)]
pub struct RunMetrics {
    /// `run_transitions_total{from, to}`.
    pub transitions: Family<TransitionLabels, Counter>,
    /// `runs{state}`: live runs scheduled or running.
    pub live: Family<StateLabels, Gauge>,
    /// `run_next_allowed_timestamp_seconds{tenant}`: the earliest time (Unix seconds, on the
    /// scheduler's clock) the tenant's next run may start.
    pub next_allowed: Family<TenantLabels, FloatGauge>,
}

impl RunMetrics {
    fn register_into(&self, r: &mut Registry) {
        r.register(
            "run_transitions",
            "Runs changing state, by from (new, scheduled, running) and to (scheduled, running, succeeded, failed, abandoned, merged)",
            self.transitions.clone(),
        );
        r.register(
            "runs",
            "Live runs by state (scheduled, running)",
            self.live.clone(),
        );
        r.register_with_unit(
            "run_next_allowed_timestamp",
            "When the tenant's next run may start at the earliest (Unix time; the cooldown after its last start, or learned from Graph)",
            Unit::Seconds,
            self.next_allowed.clone(),
        );
    }

    /// Counts a run moving `from` → `to` and keeps the live gauge in step.
    pub fn transition(&self, from: &'static str, to: &'static str) {
        self.transitions
            .get_or_create(&TransitionLabels { from, to })
            .inc();
        for (state, delta) in [(from, -1), (to, 1)] {
            if state == "scheduled" || state == "running" {
                self.live
                    .get_or_create(&StateLabels { state })
                    .inc_by(delta);
            }
        }
    }

    /// Sets when `tenant`'s next run may start.
    pub fn next_allowed(&self, tenant: &str, at: chrono::DateTime<chrono::Utc>) {
        self.next_allowed
            .get_or_create(&TenantLabels {
                tenant: tenant.to_string(),
            })
            .set(at.timestamp_millis() as f64 / 1000.0);
    }
}

/// One Graph answer (the labels of `graph_responses_total`).
///
/// Bounded: `operation` is `sync` or `read_settings`; `status` comes from [`graph_status`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GraphLabels {
    /// `sync` (the action) or `read_settings` (the Autopilot settings).
    pub operation: &'static str,
    /// The exact status among those Graph's contract names, else its class; `timeout` or
    /// `unreachable` when no answer came.
    pub status: &'static str,
}

/// A Graph call (the label of `graph_request_duration_seconds`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `sync` or `read_settings`.
    pub operation: &'static str,
}

/// The `status` label of a Graph answer: the statuses the executor tells apart exactly, any
/// other by class, so an unexpected status cannot grow the label set.
pub fn graph_status(status: u16) -> &'static str {
    match status {
        200 => "200",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => status_class(other),
    }
}

/// Microsoft Graph's answers (`upstream`).
#[derive(Clone)]
pub struct GraphMetrics {
    /// `graph_responses_total{operation, status}`.
    pub responses: Family<GraphLabels, Counter>,
    /// `graph_request_duration_seconds{operation}`: one call, until its answer's headers (or
    /// its failure).
    pub duration: HistogramFamily<OperationLabels>,
}

impl Default for GraphMetrics {
    fn default() -> Self {
        GraphMetrics {
            responses: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl GraphMetrics {
    fn register_into(&self, r: &mut Registry) {
        r.register(
            "graph_responses",
            "Microsoft Graph's answers by operation (sync, read_settings) and status (timeout, unreachable: none came)",
            self.responses.clone(),
        );
        r.register_with_unit(
            "graph_request_duration",
            "Duration of one call to Microsoft Graph",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    /// Counts one call's answer (`status` from [`graph_status`], or `timeout`/`unreachable`).
    pub fn answered(&self, operation: &'static str, status: &'static str, took: Duration) {
        self.responses
            .get_or_create(&GraphLabels { operation, status })
            .inc();
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_the_audit_counters_with_the_prefix() {
        let m = Metrics::new();
        m.audit.records_written.inc_by(3);
        m.audit.refused("timeout");
        let text = m.encode();
        assert!(
            text.contains("sync_gateway_audit_records_written_total 3"),
            "{text}"
        );
        assert!(
            text.contains("sync_gateway_audit_append_failures_total{reason=\"timeout\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn an_unknown_aadsts_code_or_graph_status_is_folded_into_a_bounded_label() {
        assert_eq!(aadsts_label(&[7000215, 50000]), "AADSTS7000215");
        assert_eq!(aadsts_label(&[123456789]), "other");
        assert_eq!(aadsts_label(&[]), "none");
        assert_eq!(graph_status(429), "429");
        assert_eq!(graph_status(418), "4xx");
        assert_eq!(graph_status(599), "5xx");
    }

    #[test]
    fn a_transition_moves_the_live_runs_gauge_between_states() {
        let m = Metrics::new();
        m.runs.transition("new", "scheduled");
        m.runs.transition("scheduled", "running");
        let text = m.encode();
        assert!(
            text.contains("sync_gateway_runs{state=\"scheduled\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sync_gateway_runs{state=\"running\"} 1"),
            "{text}"
        );
        m.runs.transition("running", "succeeded");
        let text = m.encode();
        assert!(
            text.contains("sync_gateway_runs{state=\"running\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "sync_gateway_run_transitions_total{from=\"running\",to=\"succeeded\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn scrape_hooks_run_before_every_encoding() {
        let m = Metrics::new();
        let g: Gauge = Gauge::default();
        m.register("probe", "A gauge set when scraped", g.clone());
        let n = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let (hook_n, hook_g) = (n.clone(), g.clone());
        m.on_scrape(move || {
            hook_g.set(hook_n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1);
        });
        assert!(m.encode().contains("sync_gateway_probe 1"));
        assert!(m.encode().contains("sync_gateway_probe 2"));
    }

    #[test]
    fn other_modules_can_register_their_own_metrics() {
        let m = Metrics::new();
        let c: Counter = Counter::default();
        m.register("identity_logins", "Service identity logins", c.clone());
        c.inc();
        assert!(m.encode().contains("sync_gateway_identity_logins_total 1"));
    }
}
