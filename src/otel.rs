//! OpenTelemetry trace export over OTLP/HTTP (protobuf), built only when
//! `telemetry.otlp_endpoint` is set: without it this module is never called and nothing of
//! OpenTelemetry runs.
//!
//! The gateway does not let the OpenTelemetry SDK make ids. `crate::trace` already made them
//! (continued from the caller's `traceparent`, put in the audit record and in the `traceparent`
//! of every call to Entra ID and Graph), so the spans are built from those ids as
//! [`SpanData`] and handed straight to a batch span processor: the exported trace is the one
//! the caller, the audit record and the downstream services name, with no second id space to
//! keep in step.
//!
//! Export never affects a request: [`Otel::record`] only enqueues (a full queue drops the
//! span), the processor exports from its own thread, each export is bounded by
//! `telemetry.otlp_timeout_seconds`, and failures are logged at most once a minute.

use crate::config::OtlpConfig;
use crate::trace::{AttributeValue, FinishedSpan, SpanKind, SpanSink};
use bytes::Bytes;
use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanExporter, SpanLinks,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spans waiting for export at most; beyond it new spans are dropped (bounded memory).
const MAX_QUEUE: usize = 4096;
/// Spans per export request.
const MAX_BATCH: usize = 512;
/// How long spans wait to be batched before an export.
const SCHEDULED_DELAY: Duration = Duration::from_secs(2);
/// Export failures are logged at most this often; the ones in between are counted in the next.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// A collector's answer body is read up to this much (it only says accepted or why not).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The OTLP exporter of one gateway: a [`SpanSink`] for `crate::trace`, and the flush at
/// shutdown.
#[derive(Debug)]
pub struct Otel {
    processor: Arc<BatchSpanProcessor>,
    scope: InstrumentationScope,
    timeout: Duration,
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint: cannot build the OTLP exporter: {0}")]
pub struct OtelError(String);

impl Otel {
    /// The exporter for `config`; its HTTP calls run on the current tokio runtime (the one that
    /// builds the gateway and lives until it stops).
    pub fn build(config: &OtlpConfig) -> Result<Otel, OtelError> {
        let timeout = Duration::from_secs(config.timeout_seconds);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // A collector has no reason to redirect spans elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OtelError(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| OtelError("no tokio runtime to send from".into()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OnRuntime {
                http,
                runtime,
                timeout,
            })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.traces_url.as_str())
            .with_timeout(timeout)
            .build()
            .map_err(|e| OtelError(e.to_string()))?;
        let mut processor = BatchSpanProcessor::builder(Logged {
            inner: exporter,
            failures: Mutex::new(Failures::default()),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUE)
                .with_max_export_batch_size(MAX_BATCH)
                .with_scheduled_delay(SCHEDULED_DELAY)
                .build(),
        )
        .build();
        processor.set_resource(
            &Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .build(),
        );
        tracing::info!(endpoint = %config.traces_url, "exporting traces over OTLP/HTTP");
        Ok(Otel {
            processor: Arc::new(processor),
            scope: InstrumentationScope::builder("sync-gateway")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            timeout,
        })
    }

    /// Exports what is queued now and waits for it, at most the export timeout and a second.
    pub async fn flush(&self) {
        let processor = self.processor.clone();
        // The processor blocks its caller until its thread has exported, and that export runs on
        // this runtime: block a pool thread, not this one.
        let flushed = tokio::task::spawn_blocking(move || processor.force_flush()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "spans could not be flushed to the OTLP collector");
        }
    }

    /// Exports what is queued and stops the exporter (graceful shutdown, after the runs).
    pub async fn shutdown(&self) {
        let processor = self.processor.clone();
        let bound = self.timeout + Duration::from_secs(1);
        let stopped =
            tokio::task::spawn_blocking(move || processor.shutdown_with_timeout(bound)).await;
        if let Ok(Err(e)) = stopped {
            tracing::warn!(error = %e, "the OTLP exporter did not shut down cleanly");
        }
    }
}

impl SpanSink for Otel {
    fn record(&self, span: FinishedSpan) {
        let FinishedSpan {
            trace_id,
            span_id,
            parent_span_id,
            parent_is_remote,
            kind,
            name,
            start,
            end,
            attributes,
            error,
        } = span;
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(trace_id),
                SpanId::from_bytes(span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: parent_span_id.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: parent_is_remote,
            span_kind: match kind {
                SpanKind::Server => opentelemetry::trace::SpanKind::Server,
                SpanKind::Client => opentelemetry::trace::SpanKind::Client,
            },
            name,
            start_time: start,
            end_time: end,
            attributes: attributes
                .into_iter()
                .map(|(k, v)| match v {
                    AttributeValue::Text(t) => KeyValue::new(k, t),
                    AttributeValue::Int(i) => KeyValue::new(k, i),
                })
                .collect(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if error {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: self.scope.clone(),
        });
    }
}

/// The gateway's reqwest (0.13, rustls) as the exporter's HTTP client: the processor exports
/// from a thread of its own with no runtime, so each call is run on the gateway's runtime.
#[derive(Debug)]
struct OnRuntime {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let call = self
            .http
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .timeout(self.timeout)
            .body(body);
        let answer = async move {
            let mut resp = call.send().await?;
            let mut answer = http::Response::builder().status(resp.status());
            if let Some(h) = answer.headers_mut() {
                *h = std::mem::take(resp.headers_mut());
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if room <= chunk.len() {
                    break;
                }
            }
            Ok::<_, HttpError>(answer.body(Bytes::from(body))?)
        };
        // A stopped runtime cancels the task: the export fails instead of hanging.
        self.runtime.spawn(answer).await?
    }
}

/// The OTLP exporter, with its failures logged at most once per [`LOG_EVERY`].
#[derive(Debug)]
struct Logged<E> {
    inner: E,
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            let mut f = self.failures.lock();
            f.unlogged += 1;
            if f.last_logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                tracing::warn!(error = %e, spans, failed_exports = f.unlogged,
                    "spans could not be exported to the OTLP collector (logged at most once a minute)");
                f.last_logged = Some(Instant::now());
                f.unlogged = 0;
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
