//! The answer each webhook sender expects, in its own format, within its deadline: a
//! ticketing system gets `202` with the run (as `POST /sync` answers) or `200` saying why
//! nothing was joined; Slack and Mattermost a private (`ephemeral`) message; Teams the
//! synchronous `{"type": "message"}` reply; Discord `PONG`, a deferred answer, or a message.
//!
//! Status codes steer senders: `401` only for a bad or missing signature, `2xx` for duplicates
//! and filtered events, `429` with `Retry-After` for limits, `5xx` for problems on the gateway's
//! side (a `4xx` would make GitLab or PagerDuty disable the hook). A chat user is a person, so
//! a refusal after the signature checked is told to them as a private message instead.

use crate::config::HookKind;
use crate::domain::{RateLimitStatus, RunState};
use crate::error::GatewayError;
use crate::problem;
use crate::runs::Run;
use actix_web::http::header;
use actix_web::HttpResponse;
use serde_json::json;
use uuid::Uuid;

/// What became of a delivery that was not refused.
#[derive(Debug)]
pub enum HookOutcome {
    /// A run was joined, started or scheduled.
    Accepted {
        /// The run, as it was when the sender was answered.
        run: Box<Run>,
        /// The source's allowance, for the `RateLimit*` headers.
        limit: Option<RateLimitStatus>,
        /// The chat user's name, for "requested by".
        requested_by: Option<String>,
    },
    /// The delivery id was seen within the replay window: nothing joined.
    Duplicate {
        /// The run the first delivery joined, if it joined one.
        run: Option<Uuid>,
    },
    /// The source's `when` filter did not match.
    Filtered,
    /// Nothing to act on (a button, a message without a command).
    Ignored(&'static str),
    /// Discord's endpoint check.
    Pong,
    /// A message only the chat user sees (the usage, a refusal by `allow`).
    Private(String),
}

/// The answer to a delivery that was not refused.
pub fn answer(kind: HookKind, outcome: &HookOutcome) -> HttpResponse {
    match kind {
        HookKind::Slack | HookKind::Mattermost | HookKind::TeamsOutgoing => {
            chat(kind, &text(outcome))
        }
        HookKind::Discord => match outcome {
            HookOutcome::Pong => ok(json!({ "type": 1 })),
            // Deferred, private: the outcome edits it once the run is done.
            HookOutcome::Accepted { .. } => ok(json!({ "type": 5, "data": { "flags": 64 } })),
            other => chat(kind, &text(other)),
        },
        _ => ticketing(outcome),
    }
}

/// The answer to a refused delivery. The signature, the body's size and shape and the
/// request's own deadline are the sender's business and answered as problems; anything later
/// is told to a chat user in words.
pub fn refusal(kind: HookKind, e: &GatewayError, audit_id: Uuid) -> HttpResponse {
    let the_senders = matches!(
        e,
        GatewayError::InvalidSignature(_)
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::RequestTimeout { .. }
            | GatewayError::BadRequest(_)
            | GatewayError::NotFound
    );
    if kind.is_chat() && !the_senders {
        return chat(
            kind,
            &format!("The Autopilot sync was not requested: {}", e.detail()),
        );
    }
    problem::respond(e, audit_id)
}

fn ok(body: serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

/// A private message in the chat platform's own reply format.
fn chat(kind: HookKind, text: &str) -> HttpResponse {
    match kind {
        HookKind::TeamsOutgoing => ok(json!({ "type": "message", "text": text })),
        HookKind::Discord => ok(json!({ "type": 4, "data": { "content": text, "flags": 64 } })),
        _ => ok(json!({ "response_type": "ephemeral", "text": text })),
    }
}

/// What a chat user reads.
fn text(outcome: &HookOutcome) -> String {
    match outcome {
        HookOutcome::Accepted {
            run, requested_by, ..
        } => {
            let by = requested_by
                .as_deref()
                .map(|u| format!(" by @{u}"))
                .unwrap_or_default();
            let when = match (run.state, run.not_before) {
                (RunState::Scheduled, Some(t)) => format!(
                    "starts at {} (Intune allows one sync every 10 minutes)",
                    t.format("%H:%M UTC")
                ),
                _ => "has started".into(),
            };
            format!(
                "Sync requested{by}; run {} {when}. The outcome follows here.",
                run.id
            )
        }
        HookOutcome::Duplicate { run } => match run {
            Some(id) => format!("This command was already received; it joined run {id}."),
            None => "This command was already received.".into(),
        },
        HookOutcome::Filtered => "Nothing to do for this event.".into(),
        HookOutcome::Ignored(why) => format!("Nothing to do: {why}."),
        HookOutcome::Pong => String::new(),
        HookOutcome::Private(text) => text.clone(),
    }
}

/// A ticketing system's answer: `202` with the run, or `200` saying why nothing was joined.
fn ticketing(outcome: &HookOutcome) -> HttpResponse {
    match outcome {
        HookOutcome::Accepted { run, limit, .. } => {
            let mut r = HttpResponse::Accepted();
            r.insert_header((header::CACHE_CONTROL, "no-store"));
            r.insert_header((header::LOCATION, problem::run_location(run.id)));
            if let Some(limit) = limit {
                problem::insert_rate_limit_headers(&mut r, limit);
            }
            r.json(run)
        }
        HookOutcome::Duplicate { run } => ok(json!({
            "status": "duplicate",
            "detail": "this delivery id was received before; nothing was joined",
            "run_id": run,
        })),
        HookOutcome::Filtered => ok(json!({
            "status": "filtered",
            "detail": "the source's `when` filter did not match; nothing was joined",
        })),
        HookOutcome::Ignored(why) => ok(json!({ "status": "ignored", "detail": why })),
        HookOutcome::Pong => ok(json!({ "type": 1 })),
        HookOutcome::Private(text) => ok(json!({ "status": "ignored", "detail": text })),
    }
}
