//! The calls to Microsoft Graph: the sync action and a read of the Autopilot settings.
//!
//! One `POST {graph.base_url}{upstream_path}` per attempt with the delegated token, no body, a
//! fresh `client-request-id`, `Retry-Attempt` on retries, and a timeout. Graph's answer becomes
//! an [`UpstreamOutcome`]; only 2xx is success. What to do about a failure (retry, reschedule,
//! give up) is the run executor's decision, not this module's.

use crate::credentials::DelegatedToken;
use crate::error::GatewayError;
use crate::metrics::{graph_status, GraphMetrics};
use chrono::{DateTime, Datelike, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// For the gateway application's own token, the application permission a refusal names: the
/// sync's, which Graph accepts for the settings read too.
fn application_permission(token: &DelegatedToken) -> Option<String> {
    token
        .is_application()
        .then(|| crate::config::SYNC_PERMISSION.to_string())
}

/// The Graph client.
pub struct Graph {
    http: reqwest::Client,
    base_url: String,
    /// Request URLs parsed once per path. Parsing the whole URL again on every call was about
    /// 5% of a proxied request's instructions (bench/README.md). Bounded: every path comes from
    /// the configuration.
    endpoints: RwLock<HashMap<String, reqwest::Url>>,
    metrics: GraphMetrics,
}

/// How one attempt ended, for the executor's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptClass {
    /// 2xx.
    Succeeded,
    /// 503, 504 or no connection: worth another attempt within the budget.
    Transient,
    /// 429: Intune's cooldown (or throttling).
    TooMany,
    /// 409: a sync is already in progress.
    Conflict,
    /// No answer in time: the sync may or may not have been triggered, so it is not retried.
    TimedOut,
    /// Anything else: the run fails.
    Failed,
}

/// What one upstream call produced, whatever the status.
#[derive(Debug, Clone)]
pub struct UpstreamOutcome {
    /// Graph's status; `None` when no answer came.
    pub status: Option<u16>,
    /// Graph's `request-id` header.
    pub request_id: Option<String>,
    /// The `client-request-id` sent.
    pub client_request_id: String,
    /// Graph's `Retry-After`, in seconds.
    pub retry_after_secs: Option<u64>,
    /// How long it took.
    pub duration: Duration,
    /// The class of the outcome.
    pub class: AttemptClass,
    /// `Ok` for 2xx, else the error a caller would get.
    pub result: Result<(), GatewayError>,
}

/// Graph's view of the Autopilot sync for a tenant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AutopilotSettings {
    /// When the last sync finished (`lastSyncDateTime`); `None` when never.
    #[serde(rename = "lastSyncDateTime")]
    pub last_sync: Option<DateTime<Utc>>,
    /// When the last manual sync was triggered (`lastManualSyncTriggerDateTime`); `None` when never.
    #[serde(rename = "lastManualSyncTriggerDateTime")]
    pub last_manual_sync_trigger: Option<DateTime<Utc>>,
    /// `unknown`, `inProgress`, `completed` or `failed`.
    #[serde(rename = "syncStatus")]
    pub sync_status: GraphSyncStatus,
}

/// Graph's `windowsAutopilotSyncStatus`. A value Graph adds later (its `unknownFutureValue`
/// convention) reads as `unknown`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum GraphSyncStatus {
    /// A sync is running: a new one answers 409.
    InProgress,
    /// The last sync completed.
    Completed,
    /// The last sync failed.
    Failed,
    /// Graph does not say (also any value this gateway does not know).
    #[default]
    #[serde(other)]
    Unknown,
}

impl AutopilotSettings {
    /// True while Graph reports a sync in progress.
    pub fn in_progress(&self) -> bool {
        self.sync_status == GraphSyncStatus::InProgress
    }
}

#[derive(Deserialize)]
struct RawSettings {
    #[serde(rename = "lastSyncDateTime", default)]
    last_sync: Option<DateTime<Utc>>,
    #[serde(rename = "lastManualSyncTriggerDateTime", default)]
    last_manual: Option<DateTime<Utc>>,
    #[serde(rename = "syncStatus", default)]
    sync_status: Option<GraphSyncStatus>,
}

/// The fresh correlation id for one upstream call.
pub fn new_client_request_id() -> String {
    Uuid::new_v4().to_string()
}

/// Graph writes `0001-01-01T00:00:00Z` for "never".
fn never_as_none(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    t.filter(|t| t.year() > 1)
}

impl Graph {
    /// A client for `base_url` whose calls give up after `timeout`.
    pub fn new(base_url: &url::Url, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            // A redirect from Graph is an unexpected answer, not a place to send the token to.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Graph {
            http,
            base_url: base_url.as_str().trim_end_matches('/').to_string(),
            endpoints: RwLock::new(HashMap::new()),
            metrics: GraphMetrics::default(),
        })
    }

    /// The same, counting every answer (and every call that got none) into `metrics`.
    pub fn with_metrics(mut self, metrics: GraphMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The URL called for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// [`Graph::url`], parsed once per path; `Err` with the text when it does not parse, which
    /// the request then reports as it always did.
    fn endpoint(&self, path: &str) -> Result<reqwest::Url, String> {
        let cached = self.endpoints.read().get(path).cloned();
        if let Some(u) = cached {
            return Ok(u);
        }
        let text = self.url(path);
        let parsed = reqwest::Url::parse(&text).map_err(|_| text)?;
        self.endpoints
            .write()
            .insert(path.to_string(), parsed.clone());
        Ok(parsed)
    }

    /// A request to Graph at `path`, carrying the caller's trace a span further (beside Graph's
    /// own client-request-id), and that span, `name`d, to end with the answer.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        name: &'static str,
    ) -> (reqwest::RequestBuilder, crate::trace::ClientSpan) {
        let verb = if method == reqwest::Method::GET {
            "GET"
        } else {
            "POST"
        };
        let (request, host) = match self.endpoint(path) {
            Ok(u) => {
                let host = u.host_str().map(str::to_string);
                (self.http.request(method, u), host)
            }
            Err(text) => (self.http.request(method, text), None),
        };
        crate::trace::propagate_traced(request, name, verb, host.as_deref())
    }

    /// Triggers the action at `path` with `token`, sending `client_request_id`; `attempt`
    /// counts from 1 and is sent as `Retry-Attempt` from the second attempt on.
    pub async fn trigger(
        &self,
        path: &str,
        token: &DelegatedToken,
        client_request_id: String,
        attempt: u32,
    ) -> UpstreamOutcome {
        let started = Instant::now();
        let (req, span) = self.request(reqwest::Method::POST, path, "graph sync");
        let mut req = req
            .header("Authorization", token.authorization())
            .header("Accept", "application/json")
            .header("client-request-id", &client_request_id)
            .header("Content-Length", "0");
        if attempt > 1 {
            req = req.header("Retry-Attempt", (attempt - 1).to_string());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                span.finish(None);
                let no_answer = if e.is_timeout() {
                    "timeout"
                } else {
                    "unreachable"
                };
                self.metrics.answered("sync", no_answer, started.elapsed());
                let (class, result) = if e.is_timeout() {
                    (AttemptClass::TimedOut, Err(GatewayError::UpstreamTimeout))
                } else {
                    (
                        AttemptClass::Transient,
                        Err(GatewayError::UpstreamFailed {
                            detail: "Microsoft Graph is unreachable".into(),
                            request_id: None,
                        }),
                    )
                };
                tracing::warn!(error = %e, %client_request_id, "Graph call failed without an answer");
                return UpstreamOutcome {
                    status: None,
                    request_id: None,
                    client_request_id,
                    retry_after_secs: None,
                    duration: started.elapsed(),
                    class,
                    result,
                };
            }
        };
        let status = resp.status().as_u16();
        span.finish(Some(status));
        self.metrics
            .answered("sync", graph_status(status), started.elapsed());
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header("request-id");
        let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v));
        // Graph's error code helps the operator; the body read is still bounded by the timeout.
        let body = if (200..300).contains(&status) {
            Default::default()
        } else {
            resp.bytes().await.unwrap_or_default()
        };
        let code = graph_error_code(&body);
        let (class, result) = match status {
            200..=299 => (AttemptClass::Succeeded, Ok(())),
            409 | 429 => (
                if status == 409 {
                    AttemptClass::Conflict
                } else {
                    AttemptClass::TooMany
                },
                Err(GatewayError::UpstreamBusy {
                    status,
                    retry_after_secs: retry_after,
                    request_id: request_id.clone(),
                }),
            ),
            401 | 403 => (
                AttemptClass::Failed,
                Err(GatewayError::UpstreamForbidden {
                    status,
                    code,
                    request_id: request_id.clone(),
                    application_permission: application_permission(token),
                }),
            ),
            _ => (
                if status == 503 || status == 504 {
                    AttemptClass::Transient
                } else {
                    AttemptClass::Failed
                },
                Err(GatewayError::UpstreamFailed {
                    detail: format!(
                        "Microsoft Graph answered {status}{}",
                        code.map(|c| format!(" ({c})")).unwrap_or_default()
                    ),
                    request_id: request_id.clone(),
                }),
            ),
        };
        UpstreamOutcome {
            status: Some(status),
            request_id,
            client_request_id,
            retry_after_secs: retry_after,
            duration: started.elapsed(),
            class,
            result,
        }
    }

    /// Reads the Autopilot settings at `path` (both the plain entity and the older
    /// `{"value": {...}}` shape are accepted).
    pub async fn read_settings(
        &self,
        path: &str,
        token: &DelegatedToken,
    ) -> Result<AutopilotSettings, GatewayError> {
        let client_request_id = new_client_request_id();
        let started = Instant::now();
        let (req, span) = self.request(reqwest::Method::GET, path, "graph read settings");
        let sent = req
            .header("Authorization", token.authorization())
            .header("Accept", "application/json")
            .header("client-request-id", &client_request_id)
            .send()
            .await;
        span.finish(sent.as_ref().ok().map(|r| r.status().as_u16()));
        let resp = sent.map_err(|e| {
            let no_answer = if e.is_timeout() {
                "timeout"
            } else {
                "unreachable"
            };
            self.metrics
                .answered("read_settings", no_answer, started.elapsed());
            if e.is_timeout() {
                GatewayError::UpstreamTimeout
            } else {
                GatewayError::UpstreamFailed {
                    detail: "Microsoft Graph is unreachable".into(),
                    request_id: None,
                }
            }
        })?;
        let status = resp.status().as_u16();
        self.metrics
            .answered("read_settings", graph_status(status), started.elapsed());
        let request_id = resp
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            let code = graph_error_code(&body);
            return Err(if status == 401 || status == 403 {
                GatewayError::UpstreamForbidden {
                    status,
                    code,
                    request_id,
                    application_permission: application_permission(token),
                }
            } else {
                GatewayError::UpstreamFailed {
                    detail: format!(
                        "reading the Autopilot settings: Microsoft Graph answered {status}"
                    ),
                    request_id,
                }
            });
        }
        parse_settings(&body).ok_or_else(|| GatewayError::UpstreamFailed {
            detail: "Microsoft Graph's Autopilot settings are not in the documented shape".into(),
            request_id,
        })
    }
}

fn parse_settings(body: &[u8]) -> Option<AutopilotSettings> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let entity = match v.get("value") {
        Some(inner) if inner.is_object() => inner.clone(),
        _ => v,
    };
    if !entity.is_object() {
        return None;
    }
    let raw: RawSettings = serde_json::from_value(entity).ok()?;
    Some(AutopilotSettings {
        last_sync: never_as_none(raw.last_sync),
        last_manual_sync_trigger: never_as_none(raw.last_manual),
        sync_status: raw.sync_status.unwrap_or_default(),
    })
}

fn graph_error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("error")?.get("code")?.as_str()?;
    // Graph's codes are short identifiers; refuse anything that is not, rather than echo it.
    (code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'))
    .then(|| code.to_string())
}

use crate::retry::parse_retry_after;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_graph_error_codes_are_repeated() {
        assert_eq!(
            graph_error_code(br#"{"error":{"code":"TooManyRequests","message":"x"}}"#).as_deref(),
            Some("TooManyRequests")
        );
        assert_eq!(graph_error_code(br#"{"error":{"code":"<script>"}}"#), None);
        assert_eq!(graph_error_code(b"not json"), None);
    }

    #[test]
    fn settings_are_read_in_both_documented_shapes_and_never_is_none() {
        let plain = br#"{"id":"x","lastSyncDateTime":"0001-01-01T00:00:00Z","lastManualSyncTriggerDateTime":"2026-11-29T02:00:00.123Z","syncStatus":"inProgress"}"#;
        let s = parse_settings(plain).unwrap();
        assert_eq!(s.last_sync, None);
        assert_eq!(
            s.last_manual_sync_trigger.unwrap().to_rfc3339(),
            "2026-11-29T02:00:00.123+00:00"
        );
        assert!(s.in_progress());
        let wrapped = br#"{"value":{"id":"x","syncStatus":"completed"}}"#;
        assert_eq!(
            parse_settings(wrapped).unwrap().sync_status,
            GraphSyncStatus::Completed
        );
        let future = br#"{"syncStatus":"unknownFutureValue","lastSyncDateTime":null}"#;
        assert_eq!(
            parse_settings(future).unwrap().sync_status,
            GraphSyncStatus::Unknown
        );
        let null = br#"{"syncStatus":null}"#;
        assert_eq!(
            parse_settings(null).unwrap().sync_status,
            GraphSyncStatus::Unknown
        );
        assert!(parse_settings(b"[]").is_none());
    }
}
