//! Step 4 of the lifecycle: the call to Microsoft Graph.
//!
//! One `POST {graph.base_url}{upstream_path}` with the delegated token, no body, a fresh
//! `client-request-id`, and the configured timeout. Graph's answer becomes an
//! [`UpstreamOutcome`]; only 2xx is success.

use crate::credentials::DelegatedToken;
use crate::problem::GatewayError;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The Graph client.
pub struct Graph {
    http: reqwest::Client,
    base_url: String,
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
    /// How long it took.
    pub duration: Duration,
    /// `Ok` for 2xx, else the error the caller gets.
    pub result: Result<(), GatewayError>,
}

/// The fresh correlation id for one upstream call.
pub fn new_client_request_id() -> String {
    Uuid::new_v4().to_string()
}

impl Graph {
    /// A client for `base_url` whose calls give up after `timeout`.
    pub fn new(base_url: &url::Url, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Graph {
            http,
            base_url: base_url.as_str().trim_end_matches('/').to_string(),
        })
    }

    /// The URL called for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Triggers the action at `path` with `token`, sending `client_request_id`.
    pub async fn trigger(
        &self,
        path: &str,
        token: &DelegatedToken,
        client_request_id: String,
    ) -> UpstreamOutcome {
        let started = Instant::now();
        let sent = self
            .http
            .post(self.url(path))
            .header("Authorization", token.authorization())
            .header("Accept", "application/json")
            .header("client-request-id", &client_request_id)
            .header("Content-Length", "0")
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let result = Err(if e.is_timeout() {
                    GatewayError::UpstreamTimeout
                } else {
                    GatewayError::UpstreamFailed {
                        detail: "Microsoft Graph is unreachable".into(),
                        request_id: None,
                    }
                });
                tracing::warn!(error = %e, "Graph call failed without an answer");
                return UpstreamOutcome {
                    status: None,
                    request_id: None,
                    client_request_id,
                    duration: started.elapsed(),
                    result,
                };
            }
        };
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header("request-id");
        let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v));
        // Read (a bounded amount of) the body for Graph's error code; a hang here is still
        // bounded by the client's timeout.
        let body = if (200..300).contains(&status) {
            Default::default()
        } else {
            resp.bytes().await.unwrap_or_default()
        };
        let code = graph_error_code(&body);
        let result = match status {
            200..=299 => Ok(()),
            409 | 429 => Err(GatewayError::UpstreamBusy {
                status,
                retry_after_secs: retry_after,
                request_id: request_id.clone(),
            }),
            401 | 403 => Err(GatewayError::UpstreamForbidden {
                status,
                code,
                request_id: request_id.clone(),
            }),
            _ => Err(GatewayError::UpstreamFailed {
                detail: format!(
                    "Microsoft Graph answered {status}{}",
                    code.map(|c| format!(" ({c})")).unwrap_or_default()
                ),
                request_id: request_id.clone(),
            }),
        };
        UpstreamOutcome {
            status: Some(status),
            request_id,
            client_request_id,
            duration: started.elapsed(),
            result,
        }
    }
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

/// `Retry-After` as whole seconds from now: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .map(|d| d.as_secs_f64().ceil() as u64)
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("120"), Some(120));
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(61);
        let secs = parse_retry_after(&httpdate::fmt_http_date(in_a_minute)).unwrap();
        assert!((59..=62).contains(&secs), "{secs}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn only_well_formed_graph_error_codes_are_repeated() {
        assert_eq!(
            graph_error_code(br#"{"error":{"code":"TooManyRequests","message":"x"}}"#).as_deref(),
            Some("TooManyRequests")
        );
        assert_eq!(graph_error_code(br#"{"error":{"code":"<script>"}}"#), None);
        assert_eq!(graph_error_code(b"not json"), None);
    }
}
