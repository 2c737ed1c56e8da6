//! The Redis side of `[state] backend = "redis"`: one connection (the `redis` crate's tokio
//! `ConnectionManager`, which multiplexes and pipelines every caller's commands on it and
//! reconnects by itself), the key prefix, and the bound on every call.
//!
//! This module stores and answers; it decides nothing. The steps that own the state
//! (`limits` for rates, `hooks` for delivery ids) implement their narrow store traits on top
//! of it and decide what a failure means (fail open or closed).

use crate::config::StateConfig;
use crate::metrics::StateMetrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::time::Duration;

/// Redis could not be reached or did not answer within `state.timeout_ms`; the step that made
/// the call turns this into its own refusal (or an admission, for limits failing open).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the state backend did not answer {operation}: {reason}")]
pub struct Unavailable {
    /// The operation (a fixed word, also the metric's label).
    pub operation: &'static str,
    /// What went wrong, without the URL (it may carry a password).
    pub reason: String,
}

/// A Redis connection shared by every step of one gateway process (cheap to clone).
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    metrics: StateMetrics,
}

impl Redis {
    /// A lazily connecting handle: the gateway starts (and answers 503 `state-unavailable`, or
    /// admits when limits fail open) while Redis is down, and the first call connects. Each
    /// connection attempt and each command is bounded by `state.timeout_ms`; the manager
    /// retries a broken connection in the background.
    pub fn new(cfg: &StateConfig, metrics: StateMetrics) -> Result<Self, Unavailable> {
        let url = cfg.redis_url.as_ref().ok_or_else(|| Unavailable {
            operation: "connect",
            reason: "no state.redis_url".into(),
        })?;
        let client = redis::Client::open(url.expose()).map_err(|e| Unavailable {
            operation: "connect",
            reason: redacted_error(&e),
        })?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // A reconnection is retried a few times, quickly: a call waits at most `timeout`
            // anyway (the bound below), and the next call tries again.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| Unavailable {
                operation: "connect",
                reason: redacted_error(&e),
            })?;
        Ok(Redis {
            conn,
            prefix: cfg.key_prefix.clone(),
            timeout,
            metrics,
        })
    }

    /// `state.key_prefix` followed by `rest`: every key the gateway writes.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// A connection handle for one call (a clone of the multiplexed connection).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs one call under `state.timeout_ms`, counting a failure by `operation` and keeping
    /// `state_backend_up` current.
    pub async fn call<T, F>(&self, operation: &'static str, call: F) -> Result<T, Unavailable>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Unavailable {
                operation,
                reason: redacted_error(&e),
            }),
            Err(_) => Err(Unavailable {
                operation,
                reason: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        };
        match &outcome {
            Ok(_) => {
                self.metrics.up.set(1);
            }
            Err(_) => self.metrics.failed(operation),
        }
        outcome
    }

    /// `PING`, for `/readyz`.
    pub async fn ping(&self) -> Result<(), Unavailable> {
        let mut conn = self.connection();
        self.call("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(|_| ())
    }
}

/// A Redis error in words: its kind and detail, never the URL it was opened with.
fn redacted_error(e: &redis::RedisError) -> String {
    // The crate's messages name the kind and the server's words; a URL parse error could echo
    // the URL, so that kind is described without its detail.
    if e.kind() == redis::ErrorKind::InvalidClientConfig {
        return "invalid client configuration".into();
    }
    let text = e.to_string();
    if text.contains("://") {
        format!("{:?} error", e.kind())
    } else {
        text
    }
}
