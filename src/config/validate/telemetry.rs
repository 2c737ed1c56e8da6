//! `[telemetry]`: the OTLP/HTTP collector spans are exported to, when one is configured. The
//! collector is a service the gateway calls, so its URL follows the same rule as Graph's:
//! `https://`, or `http://` only on loopback (a sidecar collector).

use super::check::{parse_service_url, Check};
use crate::config::model::{OtlpConfig, TelemetryConfig};
use crate::config::raw::RawTelemetry;

impl Check {
    pub(super) fn telemetry(&mut self, raw: RawTelemetry) -> Option<TelemetryConfig> {
        let timeout_seconds =
            self.positive("telemetry.otlp_timeout_seconds", raw.otlp_timeout_seconds.0);
        let service_name = raw.service_name.trim().to_string();
        if service_name.is_empty() || service_name.len() > 255 {
            self.err(
                "telemetry.service_name",
                "must be 1 to 255 characters (it becomes the service.name of every exported span)",
            );
        }
        let Some(endpoint) = raw.otlp_endpoint else {
            return Some(TelemetryConfig { otlp: None });
        };
        let endpoint = match parse_service_url(&endpoint) {
            Ok(u) => u,
            Err(m) => {
                self.err("telemetry.otlp_endpoint", m);
                return None;
            }
        };
        // A base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: `https://collector:4318` or a path prefix.
        let mut traces_url = endpoint.clone();
        let path = format!("{}/v1/traces", endpoint.path().trim_end_matches('/'));
        traces_url.set_path(&path);
        Some(TelemetryConfig {
            otlp: Some(OtlpConfig {
                endpoint,
                traces_url,
                service_name,
                timeout_seconds,
            }),
        })
    }
}
