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
use std::sync::Arc;

/// The `Content-Type` of the `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry every module registers into; shared as `Arc<Metrics>`.
pub struct Metrics {
    registry: RwLock<Registry>,
    /// The audit trail's own metrics (registered by [`Metrics::new`]).
    pub audit: AuditMetrics,
    /// Service identities whose session cannot refresh (1) or is ready (0), by identity:
    /// `service_identity_login_required`. Bounded: identities come from configuration.
    pub identity_login_required: Family<IdentityLabels, Gauge>,
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
        Arc::new(Metrics {
            registry: RwLock::new(registry),
            audit,
            identity_login_required,
        })
    }

    /// Registers `metric` as `sync_gateway_<name>`; call once per metric, at start.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        // A poisoned lock only means another registration panicked; the registry is intact.
        let mut r = self.registry.write();
        r.register(name, help, metric);
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
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
    fn other_modules_can_register_their_own_metrics() {
        let m = Metrics::new();
        let c: Counter = Counter::default();
        m.register("identity_logins", "Service identity logins", c.clone());
        c.inc();
        assert!(m.encode().contains("sync_gateway_identity_logins_total 1"));
    }
}
