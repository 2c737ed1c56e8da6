//! W3C Trace Context (`traceparent`, `tracestate`): a caller's trace is continued, or a new one
//! started, and the trace id goes into the request's audit record, its log line, and the calls
//! the request makes to Entra ID and Graph (as a child span, beside Graph's `client-request-id`).
//!
//! The current request's context travels in a task-local ([`scope`], [`current_header`]) so the
//! HTTP clients of the steps add it without every signature carrying it; a run, which lives on
//! its own task, runs inside the context of the request that created it.

use crate::domain::hex;
use rand::Rng;
use std::future::Future;

/// One position in a trace: the trace, this hop's span, the flags, and the vendors' state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: Option<String>,
}

/// `tracestate` longer than this is dropped (W3C: at most 32 members, 512 characters is what
/// every peer must keep).
const MAX_STATE: usize = 512;

impl TraceContext {
    /// The caller's context (`traceparent`, `tracestate`) continued with a span of the gateway's
    /// own; a new trace when the caller sent none, or a `traceparent` that does not parse.
    pub fn continue_or_start(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        match traceparent.and_then(parse) {
            Some((trace_id, flags)) => TraceContext {
                trace_id,
                span_id: random_span(),
                flags,
                state: tracestate
                    .filter(|s| s.len() <= MAX_STATE && s.is_ascii())
                    .map(str::to_string),
            },
            None => TraceContext {
                trace_id: rand::rng().random(),
                span_id: random_span(),
                flags: 0,
                state: None,
            },
        }
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` for a call this hop makes: a new child span of this one.
    pub fn child_header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&random_span()),
            self.flags
        )
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

/// `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid (W3C Trace Context §3.2.2).
fn parse(v: &str) -> Option<([u8; 16], u8)> {
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
    Some((trace, flags[0]))
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
