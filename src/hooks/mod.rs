//! Webhook sources (`POST /hooks/{source}`): who sent a delivery and whether it is fresh
//! ([`verify`]), what it asks for ([`event`]), whether it was seen before ([`deliveries`]), and
//! the follow-up messages to chat senders ([`replies`]). The entrance itself, which runs the
//! same admission phases and joins the same runs as `POST /sync`, is `pipeline::post_hook`.

pub mod deliveries;
pub mod event;
pub mod replies;
pub mod verify;

use crate::audit::AuditLog;
use crate::config::{HookSourceConfig, Rate};
use crate::limits::SourceLimit;
use crate::metrics::Metrics;
use deliveries::{Deliveries, DeliveryStore, MAX_DELIVERIES_PER_SOURCE};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use replies::Replies;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// One configured source and its state.
pub struct Source {
    /// `[hooks.NAME]`, validated.
    pub config: HookSourceConfig,
    /// The delivery ids it sent within its replay window (this process's or shared).
    pub deliveries: Arc<dyn DeliveryStore>,
    /// Its own rate limit.
    pub limit: SourceLimit,
}

/// Labels of `hook_requests_total`: bounded by the configured sources and the outcomes of
/// [`crate::audit::HookDelivery`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// The source's NAME.
    pub source: String,
    /// `accepted`, `duplicate`, `filtered`, `ignored`, `help`, `not_allowed` or `refused`.
    pub outcome: &'static str,
}

/// Labels of `hook_deliveries_evicted_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// The source's NAME.
    pub source: String,
}

/// Builds a source's delivery-id store: its NAME, its replay window, the counter of ids
/// evicted by the cap (the memory store's).
pub type DeliveriesFactory<'a> = &'a dyn Fn(&str, Duration, Counter) -> Arc<dyn DeliveryStore>;

/// Builds a source's rate limit: its NAME and rate.
pub type SourceLimitFactory<'a> = &'a dyn Fn(&str, Rate) -> SourceLimit;

/// Where the sources keep their state; `server.rs` chooses (the one place that wires concrete
/// types). [`SourceState::memory`] is this process's memory.
pub struct SourceState<'a> {
    /// Delivery ids.
    pub deliveries: DeliveriesFactory<'a>,
    /// Rate limits.
    pub limit: SourceLimitFactory<'a>,
}

impl SourceState<'static> {
    /// Both in this process: moka for delivery ids, governor for limits.
    pub fn memory() -> Self {
        SourceState {
            deliveries: &|_, window, evicted| {
                Arc::new(Deliveries::new(window, MAX_DELIVERIES_PER_SOURCE, evicted))
            },
            limit: &|_, rate| SourceLimit::new(rate),
        }
    }
}

/// Every configured source, by name, and what they share.
pub struct Hooks {
    sources: HashMap<String, Arc<Source>>,
    /// Follow-up messages to chat senders.
    pub replies: Replies,
    /// `hook_requests_total{source, outcome}`.
    pub requests: Family<HookLabels, Counter>,
}

impl Hooks {
    /// The configured sources, their metrics registered in `metrics`.
    pub fn new(
        sources: &std::collections::BTreeMap<String, HookSourceConfig>,
        audit: AuditLog,
        metrics: &Metrics,
        state: &SourceState<'_>,
    ) -> Result<Self, reqwest::Error> {
        let evicted = Family::<SourceLabels, Counter>::default();
        let requests = Family::<HookLabels, Counter>::default();
        let replies = Replies::new(audit)?;
        metrics.register(
            "hook_requests",
            "Webhook deliveries by source and outcome",
            requests.clone(),
        );
        metrics.register(
            "hook_deliveries_evicted",
            "Delivery ids forgotten before their replay window ended because the source's cap was reached",
            evicted.clone(),
        );
        metrics.register(
            "hook_replies",
            "Follow-up messages to chat senders by source and outcome",
            replies.posted.clone(),
        );
        let sources = sources
            .iter()
            .map(|(name, config)| {
                let counter = evicted
                    .get_or_create(&SourceLabels {
                        source: name.clone(),
                    })
                    .clone();
                let source = Source {
                    deliveries: (state.deliveries)(
                        name,
                        Duration::from_secs(config.replay_window_seconds),
                        counter,
                    ),
                    limit: (state.limit)(
                        name,
                        Rate {
                            per_minute: config.limits.per_minute,
                            burst: config.limits.burst,
                        },
                    ),
                    config: config.clone(),
                };
                (name.clone(), Arc::new(source))
            })
            .collect();
        Ok(Hooks {
            sources,
            replies,
            requests,
        })
    }

    /// The source named `name`, if configured.
    pub fn get(&self, name: &str) -> Option<Arc<Source>> {
        self.sources.get(name).cloned()
    }

    /// Counts one delivery of `source` with `outcome`.
    pub fn count(&self, source: &str, outcome: &'static str) {
        self.requests
            .get_or_create(&HookLabels {
                source: source.to_string(),
                outcome,
            })
            .inc();
    }
}
