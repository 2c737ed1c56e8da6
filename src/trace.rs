//! W3C Trace Context (`traceparent`, `tracestate`): a caller's trace is continued, or a new one
//! started, and the trace id goes into the request's audit record, its log line, and the calls
//! the request makes to Entra ID and Graph (as a child span, beside Graph's `client-request-id`).
//!
//! The current request's context travels in a task-local ([`scope`], [`current_header`]) so the
//! HTTP clients of the steps add it without every signature carrying it; a run, which lives on
//! its own task, runs inside the context of the request that created it.
//!
//! Spans are described here as plain data ([`FinishedSpan`]) and handed to a [`SpanSink`] the
//! context carries, when one is configured (OpenTelemetry export, `crate::otel`): the ids are
//! the ones this module made and put in the headers, so an exported trace is the trace the
//! caller, the audit record and the downstream calls name. Without a sink nothing is recorded.

use crate::domain::hex;
use rand::Rng;
use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

/// One position in a trace: the trace, this hop's span, the caller's span, the flags, the
/// vendors' state, and where finished spans go.
#[derive(Debug, Clone)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The caller's span (its `traceparent`'s parent id); `None` when this hop started the trace.
    parent: Option<[u8; 8]>,
    flags: u8,
    state: Option<String>,
    sink: Option<Arc<dyn SpanSink>>,
}

impl PartialEq for TraceContext {
    /// The sink is where spans go, not part of the position in the trace.
    fn eq(&self, other: &Self) -> bool {
        (
            self.trace_id,
            self.span_id,
            self.parent,
            self.flags,
            &self.state,
        ) == (
            other.trace_id,
            other.span_id,
            other.parent,
            other.flags,
            &other.state,
        )
    }
}

impl Eq for TraceContext {}

/// Where finished spans go (OpenTelemetry export). Recording must not block or fail the
/// request: an implementation queues and drops when full.
pub trait SpanSink: Send + Sync + std::fmt::Debug {
    /// Takes one finished span.
    fn record(&self, span: FinishedSpan);
}

/// What a span is, in OpenTelemetry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The gateway serving a request.
    Server,
    /// A call the gateway makes (Entra ID, Graph).
    Client,
}

/// A span attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    /// Text: a route template, a method, a problem kind, a host; never a token.
    Text(Cow<'static, str>),
    /// A number: a status code.
    Int(i64),
}

/// A span that has ended, as plain data, with the ids this module made.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// The span it is a child of; `None` for a trace's root.
    pub parent_span_id: Option<[u8; 8]>,
    /// Whether the parent is another process's (the caller's) span.
    pub parent_is_remote: bool,
    /// Server or client.
    pub kind: SpanKind,
    /// The span's name: `POST /sync`, `entra token`, `graph sync`.
    pub name: Cow<'static, str>,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// Whether it ended in an error (a 5xx, no answer).
    pub error: bool,
}

/// `tracestate` longer than this is dropped (W3C: at most 32 members, 512 characters is what
/// every peer must keep).
const MAX_STATE: usize = 512;

impl TraceContext {
    /// The caller's context (`traceparent`, `tracestate`) continued with a span of the gateway's
    /// own; a new trace when the caller sent none, or a `traceparent` that does not parse.
    pub fn continue_or_start(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        match traceparent.and_then(parse) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id: random_span(),
                parent: Some(parent),
                flags,
                state: tracestate
                    .filter(|s| s.len() <= MAX_STATE && s.is_ascii())
                    .map(str::to_string),
                sink: None,
            },
            None => TraceContext {
                trace_id: rand::rng().random(),
                span_id: random_span(),
                parent: None,
                flags: 0,
                state: None,
                sink: None,
            },
        }
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// This context, recording its finished spans into `sink` (`None`: recorded nowhere).
    pub fn with_sink(mut self, sink: Option<Arc<dyn SpanSink>>) -> Self {
        self.sink = sink;
        self
    }

    /// The `traceparent` for a call this hop makes: a new child span of this one.
    pub fn child_header(&self) -> String {
        self.child_header_for(random_span())
    }

    fn child_header_for(&self, span_id: [u8; 8]) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&span_id),
            self.flags
        )
    }

    /// Records this hop's own (server) span, begun at `start` and ending now, when a sink is
    /// configured: its id is the one every child call named as its parent, and its parent the
    /// caller's span.
    pub fn finish_server(
        &self,
        name: Cow<'static, str>,
        start: SystemTime,
        attributes: Vec<(&'static str, AttributeValue)>,
        error: bool,
    ) {
        if let Some(sink) = &self.sink {
            sink.record(FinishedSpan {
                trace_id: self.trace_id,
                span_id: self.span_id,
                parent_span_id: self.parent,
                parent_is_remote: self.parent.is_some(),
                kind: SpanKind::Server,
                name,
                start,
                end: SystemTime::now(),
                attributes,
                error,
            });
        }
    }

    /// The `tracestate` to pass on, if the caller sent one.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `f` with `context` as the current trace.
pub async fn scope<F: Future>(context: TraceContext, f: F) -> F::Output {
    CURRENT.scope(context, f).await
}

/// The current trace, when there is one.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// `traceparent` (and `tracestate`) for an outgoing call: a child span of the current trace.
pub fn current_headers() -> Option<(String, Option<String>)> {
    CURRENT
        .try_with(|c| (c.child_header(), c.state().map(str::to_string)))
        .ok()
}

/// `request` with the current trace's `traceparent` (a child span) and `tracestate`, if any.
pub fn propagate(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current_headers() {
        Some((parent, state)) => {
            let request = request.header("traceparent", parent);
            match state {
                Some(s) => request.header("tracestate", s),
                None => request,
            }
        }
        None => request,
    }
}

/// `request` with the current trace's `traceparent` and `tracestate`, like [`propagate`], and
/// the client span that `traceparent` names, to be ended with the call's answer
/// ([`ClientSpan::finish`]). The span records itself when dropped, so a call abandoned midway
/// (a deadline, a cancelled task) still shows, as an error.
pub fn propagate_traced(
    request: reqwest::RequestBuilder,
    name: &'static str,
    method: &'static str,
    host: Option<&str>,
) -> (reqwest::RequestBuilder, ClientSpan) {
    let Some(context) = current() else {
        return (request, ClientSpan::inert());
    };
    let span_id = random_span();
    let mut request = request.header("traceparent", context.child_header_for(span_id));
    if let Some(state) = context.state() {
        request = request.header("tracestate", state);
    }
    let span = match context.sink {
        Some(sink) => ClientSpan(Some(OpenClient {
            sink,
            trace_id: context.trace_id,
            span_id,
            parent: context.span_id,
            name,
            start: SystemTime::now(),
            attributes: vec![
                ("http.request.method", AttributeValue::Text(method.into())),
                (
                    "server.address",
                    AttributeValue::Text(host.unwrap_or("").to_string().into()),
                ),
            ],
            status: None,
        })),
        None => ClientSpan::inert(),
    };
    (request, span)
}

/// The span of one outgoing call (see [`propagate_traced`]); does nothing without a sink.
#[derive(Debug)]
pub struct ClientSpan(Option<OpenClient>);

#[derive(Debug)]
struct OpenClient {
    sink: Arc<dyn SpanSink>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: [u8; 8],
    name: &'static str,
    start: SystemTime,
    attributes: Vec<(&'static str, AttributeValue)>,
    status: Option<u16>,
}

impl ClientSpan {
    fn inert() -> Self {
        ClientSpan(None)
    }

    /// Adds an attribute (a fixed word, never a token).
    pub fn attribute(&mut self, key: &'static str, value: &'static str) {
        if let Some(open) = &mut self.0 {
            open.attributes
                .push((key, AttributeValue::Text(Cow::Borrowed(value))));
        }
    }

    /// Ends the span with the answer's status (`None`: no answer, an error).
    pub fn finish(mut self, status: Option<u16>) {
        if let Some(open) = &mut self.0 {
            open.status = status;
        }
    }
}

impl Drop for ClientSpan {
    fn drop(&mut self) {
        let Some(open) = self.0.take() else { return };
        let mut attributes = open.attributes;
        if let Some(s) = open.status {
            attributes.push(("http.response.status_code", AttributeValue::Int(s.into())));
        }
        open.sink.record(FinishedSpan {
            trace_id: open.trace_id,
            span_id: open.span_id,
            parent_span_id: Some(open.parent),
            parent_is_remote: false,
            kind: SpanKind::Client,
            name: open.name.into(),
            start: open.start,
            end: SystemTime::now(),
            attributes,
            error: open.status.is_none_or(|s| s >= 500),
        });
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid (W3C Trace Context §3.2.2).
fn parse(v: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; a later version may add fields after them.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace: [u8; 16] = unhex(trace)?.try_into().ok()?;
    let parent: [u8; 8] = unhex(parent)?.try_into().ok()?;
    let flags: [u8; 1] = unhex(flags)?.try_into().ok()?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0]))
}

fn random_span() -> [u8; 8] {
    loop {
        let s: [u8; 8] = rand::rng().random();
        if s != [0; 8] {
            return s;
        }
    }
}

/// Lower-case hex only, as the specification requires.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_callers_trace_is_continued_with_a_span_of_the_gateways_own() {
        let c = TraceContext::continue_or_start(Some(SPEC_EXAMPLE), Some("congo=t61rcWkgMzE"));
        assert_eq!(c.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = c.child_header();
        assert!(
            child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{child}"
        );
        assert!(child.ends_with("-01"), "{child}");
        assert_ne!(&child[36..52], "00f067aa0ba902b7");
        assert_eq!(c.state(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let c = TraceContext::continue_or_start(Some(bad), Some("a=b"));
            assert_ne!(c.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(c.trace_id().len(), 32);
            assert_eq!(c.state(), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_current_trace_is_seen_inside_its_scope_only() {
        assert!(current_headers().is_none());
        let c = TraceContext::continue_or_start(Some(SPEC_EXAMPLE), None);
        let inside = scope(c, async { current_headers() }).await;
        assert!(inside
            .unwrap()
            .0
            .contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(current().is_none());
    }
}
