//! The request lifecycles, top to bottom. `POST /sync`:
//!
//! 0. declared size (here)                   a `Content-Length` over 4 KiB → 413 before anything
//! 1. authenticate  ([`crate::caller`])      bearer token → [`Caller`]; then the caller's
//!    in-flight slot ([`crate::limits::InFlight`]), held until the request is processed
//! 2. authorize     ([`crate::policy`])      scope / app role → who acts: [`ActingIdentity`]
//! 3. read the body (here)                   optional `{"reason": "..."}`, by
//!    `server.request_timeout_seconds` after the headers or 408
//! 4. limit         ([`crate::limits`])      per caller, per tenant → headers or 429
//! 5. credentials   ([`crate::credentials`]) on-behalf-of or service identity → [`DelegatedToken`]
//! 6. schedule      ([`crate::runs`])        join the scheduled run, start one now, or schedule one;
//!    a run records itself durably before every Graph call and retries or reschedules as Graph says
//! 7. wait          (here)                   for a run started now: its first outcome, at most
//!    `graph.timeout_seconds`
//! 8. record and respond                     the request's record is durable before the answer
//!
//! An answer given before the body was read to its end keeps the unread body attached, so actix
//! closes the connection after the answer instead of draining a body that may never end.
//!
//! `GET /sync/runs/{id}` and `GET /sync/status` share steps 1–2 (and 4–5 for the status, which
//! reads Graph). The caller's own token leaves the gateway only in step 5, as the assertion to
//! Entra ID.
//!
//! [`Caller`]: crate::caller::Caller
//! [`ActingIdentity`]: crate::credentials::ActingIdentity
//! [`DelegatedToken`]: crate::credentials::DelegatedToken

use crate::admit::{Admission, Entrance, Proof, RequestBody};
use crate::audit::{
    AuditEvent, AuditLog, HookDelivery, OutcomeWrite, RequestRecord, UpstreamSummary,
};
use crate::credentials::ActingIdentity;
use crate::credentials::Credentials;
use crate::domain::{Decision, RateLimitStatus};
use crate::hook_answer::HookOutcome;
use crate::hooks::deliveries::{Claim, Seen};
use crate::hooks::event::{self, HookEvent, Verb};
use crate::hooks::{Hooks, Source};
use crate::limits::PendingCheck;
use crate::problem::{self, GatewayError};
use crate::runs::schedule::{Scheduler, Submitted, TenantRuns};
use crate::runs::{Actor, Run, RunCell, RunState};
use crate::trace::TraceContext;
use crate::upstream::{AutopilotSettings, Graph};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The largest request body read; a `reason` is at most 500 characters.
pub const MAX_BODY_BYTES: usize = 4096;

pub use crate::domain::MAX_REASON_CHARS;

/// Everything the lifecycles need, shared by all workers.
pub struct Gateway {
    /// The admission phases every entrance runs first (size, authenticate, in-flight,
    /// authorize, body, limit).
    pub admission: Admission,
    /// Credentials: on-behalf-of or a service identity's token.
    pub credentials: Arc<Credentials>,
    /// The sync action's runs.
    pub runs: Scheduler,
    /// Graph, for the status read.
    pub graph: Arc<Graph>,
    /// Where every request is recorded.
    pub audit: AuditLog,
    /// How long a caller waits for a run started by its request.
    pub wait_for_run: Duration,
    /// The scope of the status read.
    pub status_scope: String,
    /// The webhook sources (`POST /hooks/{source}`).
    pub hooks: Arc<Hooks>,
    /// Requests by route and outcome, counted when their record is written.
    pub metrics: crate::metrics::RequestMetrics,
    /// Where finished spans go (`telemetry.otlp_endpoint`); `None`: spans are not recorded.
    pub spans: Option<Arc<dyn crate::trace::SpanSink>>,
}

/// `POST /sync`: a body of at most [`MAX_BODY_BYTES`], one in-flight slot, the rate limits.
const SYNC: Entrance<'static> = Entrance {
    body_limit: Some(MAX_BODY_BYTES),
    in_flight: true,
    limited: true,
    proof: Proof::Bearer,
    limit_with_join: true,
};

/// `GET /sync/status`: no body; it calls Graph (up to its timeout), so a slot and the limits.
const STATUS_READ: Entrance<'static> = Entrance {
    body_limit: None,
    in_flight: true,
    limited: true,
    proof: Proof::Bearer,
    limit_with_join: false,
};

/// `GET /sync/runs/{id}`: reads memory only: neither a slot nor the limits.
const RUN_READ: Entrance<'static> = Entrance {
    body_limit: None,
    in_flight: false,
    limited: false,
    proof: Proof::Bearer,
    limit_with_join: false,
};

/// The optional JSON body of `POST /sync`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    #[serde(default)]
    reason: Option<String>,
}

struct Accepted {
    run: Run,
    cell: Arc<RunCell>,
    limit: Option<RateLimitStatus>,
}

/// `POST /sync`: the whole lifecycle, ending with the request's audit record.
pub async fn post_sync(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Gateway>,
) -> HttpResponse {
    let trace = trace_of(&gw, &req);
    crate::trace::scope(trace, post_sync_in_trace(req, body, gw)).await
}

/// The handler, inside the request's trace.
async fn post_sync_in_trace(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Gateway>,
) -> HttpResponse {
    let started = Instant::now();
    let mut record = new_record(&gw, &req, "/sync");
    let mut body = RequestBody::new(body);
    let mut outcome = sync(&gw, &req, &mut body, started, &mut record).await;
    let status = match &outcome {
        Ok(_) => StatusCode::ACCEPTED,
        Err((e, _)) => e.status(),
    };
    record.code = outcome.as_ref().err().map(|(e, _)| e.kind());
    // The run this request joined, if Graph may have acted (or still may) for it: then the
    // request's record is an outcome that must reach the trail, late if need be.
    let acted = match &outcome {
        Ok(a) => Some(&a.run),
        Err((_, Some(run))) => Some(run),
        Err((_, None)) => None,
    }
    .filter(|run| run.may_have_acted());
    let id = record.id;
    if let Err(refusal) = record_durably(&gw, record, started, status, acted).await {
        return body.attach_unread(refusal);
    }
    // The run's own outcome record was written alongside this one: show where it stands now.
    match &mut outcome {
        Ok(a) => a.run.outcome_record = a.cell.outcome_record(),
        Err((_, Some(run))) => {
            if let Some(cell) = gw.runs.get(run.id) {
                run.outcome_record = cell.outcome_record();
            }
        }
        Err((_, None)) => {}
    }
    let response = match &outcome {
        Ok(accepted) => {
            let mut r = HttpResponse::Accepted();
            r.insert_header((header::CACHE_CONTROL, "no-store"));
            r.insert_header((header::LOCATION, problem::run_location(accepted.run.id)));
            if let Some(limit) = &accepted.limit {
                problem::insert_rate_limit_headers(&mut r, limit);
            }
            r.json(&accepted.run)
        }
        Err((e, Some(run))) => problem::respond_for_run(e, id, run),
        Err((e, None)) => problem::respond(e, id),
    };
    body.attach_unread(response)
}

/// A request's record as it arrives: id (the `instance` of any problem answer), time, method,
/// route and peer.
fn new_record(gw: &Gateway, req: &HttpRequest, route: &'static str) -> RequestRecord {
    let mut record = RequestRecord::new(
        Uuid::now_v7(),
        Utc::now(),
        gw.runs.policy().action,
        req.peer_addr().map(|a| a.ip()),
    );
    record.method = Some(method_name(req.method()));
    record.route = Some(route);
    record.trace_id = crate::trace::current().map(|t| t.trace_id());
    record
}

/// The caller's W3C trace (`traceparent`, `tracestate`), continued; a new one when there is
/// none, or when the request carries more than one `traceparent` (ambiguous, so not trusted).
fn trace_of(gw: &Gateway, req: &HttpRequest) -> TraceContext {
    let one = |name: &str| {
        let mut values = req.headers().get_all(name);
        let first = values.next().and_then(|v| v.to_str().ok());
        if values.next().is_some() {
            None
        } else {
            first
        }
    };
    TraceContext::continue_or_start(one("traceparent"), one("tracestate"))
        .with_sink(gw.spans.clone())
}

/// Ends the request's server span (when spans are exported): its route template, method,
/// status and problem kind, and the audit record's id; never a path, a header or a token.
fn end_server_span(
    (method, route, audit_id): (Option<&'static str>, Option<&'static str>, Uuid),
    started: Instant,
    status: StatusCode,
    code: Option<&'static str>,
) {
    let Some(trace) = crate::trace::current() else {
        return;
    };
    use crate::trace::AttributeValue::{Int, Text};
    let route = route.unwrap_or("unmatched");
    let method = method.unwrap_or("other");
    let mut attributes = vec![
        ("http.request.method", Text(method.into())),
        ("http.route", Text(route.into())),
        ("http.response.status_code", Int(status.as_u16().into())),
        ("sync_gateway.audit_id", Text(audit_id.to_string().into())),
    ];
    if let Some(kind) = code {
        attributes.push(("sync_gateway.problem", Text(kind.into())));
    }
    let start = std::time::SystemTime::now()
        .checked_sub(started.elapsed())
        .unwrap_or_else(std::time::SystemTime::now);
    trace.finish_server(
        format!("{method} {route}").into(),
        start,
        attributes,
        status.is_server_error(),
    );
}

/// The method as the audit trail names it: the standard ones by name, any extension method
/// (a client-chosen token) as `other`.
fn method_name(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The last step of the reads (`GET /sync/runs/{id}`, `GET /sync/status`) and of 404/405: the
/// record, completed from `response`, is written before `response` is answered. Unlike a sync
/// request, nothing was done, so when the record cannot be made durable the answer still goes
/// out (during an audit outage a caller most needs to check its run); the record is then lost,
/// which the log line and the audit failure counters say.
async fn record_and_answer(
    gw: &Gateway,
    record: RequestRecord,
    started: Instant,
    response: HttpResponse,
) -> HttpResponse {
    let (id, route, code) = (record.id, record.route.unwrap_or(""), record.code);
    end_server_span(
        (record.method, record.route, id),
        started,
        response.status(),
        code,
    );
    if write_record(gw, record, started, response.status(), None)
        .await
        .is_err()
    {
        tracing::warn!(audit_id = %id, "a read was answered although its audit record was lost");
    }
    // Counted as answered: a read goes out even when its record was lost.
    gw.metrics
        .answered(route, response.status().as_u16(), code, started.elapsed());
    response
}

/// Invariant 2: makes the request's record (answered with `status`) durable, or says with what
/// 503 the caller must be answered instead. `acted` is the run the request joined when Graph
/// may have acted for it: then the record is an outcome, kept and written late if the trail
/// cannot take it now, and the 503 names the run so the caller can check it. The request is
/// counted in `requests_total` as it is answered: with `status`, or the 503.
async fn record_durably(
    gw: &Gateway,
    record: RequestRecord,
    started: Instant,
    status: StatusCode,
    acted: Option<&Run>,
) -> Result<(), HttpResponse> {
    let (route, code) = (record.route.unwrap_or(""), record.code);
    let span = (record.method, record.route, record.id);
    let written = write_record(gw, record, started, status, acted).await;
    let (status, code) = match &written {
        Ok(()) => (status, code),
        Err(refusal) => (
            refusal.status(),
            Some(GatewayError::AuditUnavailable(String::new()).kind()),
        ),
    };
    end_server_span(span, started, status, code);
    gw.metrics
        .answered(route, status.as_u16(), code, started.elapsed());
    written
}

/// [`record_durably`]'s work, uncounted: the caller counts the answer it gives.
async fn write_record(
    gw: &Gateway,
    mut record: RequestRecord,
    started: Instant,
    status: StatusCode,
    acted: Option<&Run>,
) -> Result<(), HttpResponse> {
    record.status = status.as_u16();
    record.duration_ms = started.elapsed().as_millis() as u64;
    let (id, code, run_id, duration_ms, route) = (
        record.id,
        record.code,
        record.run_id,
        record.duration_ms,
        record.route.unwrap_or(""),
    );
    let trace_id = record.trace_id.clone();
    let status = record.status;
    let event = AuditEvent::Request(record);
    let refused = match acted {
        None => gw.audit.append(&event).await.err().map(|e| (e, None)),
        Some(run) => match gw.audit.append_outcome(&event).await {
            OutcomeWrite::Durable(_) => None,
            OutcomeWrite::Queued { error, .. } => Some((error, Some((run, true)))),
            OutcomeWrite::Lost(error) => Some((error, Some((run, false)))),
        },
    };
    if let Some((e, joined)) = refused {
        tracing::error!(audit_id = %id, error = %e, run = run_id.map(tracing::field::display), kept = joined.is_some_and(|(_, k)| k),
            "the request's audit record could not be made durable");
        return Err(match joined {
            // The run may have acted: the answer names it so the caller can check it.
            Some((run, kept)) => {
                let detail = if kept {
                    "the request joined a run that may have acted, but its record could not be made durable yet (it is written, marked late, once the audit trail recovers); check the run before retrying"
                } else {
                    "the request joined a run that may have acted, but its record could not be made durable; check the run before retrying"
                };
                let mut run = run.clone();
                if let Some(cell) = gw.runs.get(run.id) {
                    run.outcome_record = cell.outcome_record();
                }
                problem::respond_for_run(&GatewayError::AuditUnavailable(detail.into()), id, &run)
            }
            None => problem::respond(
                &GatewayError::AuditUnavailable(
                    "the request could not be recorded durably, so it was not carried out".into(),
                ),
                id,
            ),
        });
    }
    // The audit trail is the access log; a log line per accepted request would cost as much
    // CPU as validating its token. Refusals stay visible at `info`.
    if status < 400 {
        tracing::debug!(audit_id = %id, route, status, run = run_id.map(tracing::field::display),
            trace_id = trace_id.as_deref().unwrap_or(""), duration_ms, "sync request");
    } else {
        tracing::info!(audit_id = %id, route, status, code = code.unwrap_or(""), run = run_id.map(tracing::field::display),
            trace_id = trace_id.as_deref().unwrap_or(""), duration_ms, "sync request");
    }
    Ok(())
}

/// Answers a path the gateway does not serve: 404, audited.
pub async fn not_found(req: HttpRequest, gw: web::Data<Gateway>) -> HttpResponse {
    refuse(&gw, &req, "unmatched", GatewayError::NotFound).await
}

/// Answers a method a route does not accept: 405 with `Allow`, audited.
pub async fn method_not_allowed(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    route: &'static str,
    allow: &'static str,
) -> HttpResponse {
    refuse(&gw, &req, route, GatewayError::MethodNotAllowed { allow }).await
}

async fn refuse(
    gw: &Gateway,
    req: &HttpRequest,
    route: &'static str,
    e: GatewayError,
) -> HttpResponse {
    crate::trace::scope(trace_of(gw, req), refuse_in_trace(gw, req, route, e)).await
}

async fn refuse_in_trace(
    gw: &Gateway,
    req: &HttpRequest,
    route: &'static str,
    e: GatewayError,
) -> HttpResponse {
    let started = Instant::now();
    let mut record = new_record(gw, req, route);
    record.code = Some(e.kind());
    let response = problem::respond(&e, record.id);
    record_and_answer(gw, record, started, response).await
}

type Refusal = (GatewayError, Option<Run>);

async fn sync(
    gw: &Gateway,
    req: &HttpRequest,
    body: &mut RequestBody,
    started: Instant,
    record: &mut RequestRecord,
) -> Result<Accepted, Refusal> {
    let plain = |e: GatewayError| (e, None);

    // 1-6. Admission: size, authenticate, in-flight slot (held until the answer), authorize,
    //      the body by the request deadline, the limits.
    let admitted = gw
        .admission
        .admit(SYNC, req, Some(body), started, record)
        .await
        .map_err(plain)?;
    let reason = parse_reason(req, admitted.body.as_deref().unwrap_or_default());
    if let (Err(_), Some(pending)) = (&reason, &admitted.pending_limit) {
        // A refused body counts against the limits as anywhere else, and a caller over its
        // limit hears that first.
        gw.admission
            .take_limit(pending, record)
            .await
            .map_err(plain)?;
    }
    record.reason = reason.map_err(plain)?;
    let acting = admitted.acting.clone();

    // 7-8. Credentials, then schedule (and on the warm path of the shared backend, the
    //      limits left pending in the same Redis script).
    let (submitted, taken_with_join) =
        join_run(gw, acting, record, admitted.pending_limit.as_ref())
            .await
            .map_err(plain)?;
    let limit = admitted.limit.clone().or(taken_with_join);

    // 9. A run started now is waited for, at most the Graph timeout; a scheduled one is not.
    let cell = match submitted {
        Submitted::Started(cell) => cell.wait_while_running(gw.wait_for_run).await,
        Submitted::Scheduled(cell) => cell,
    };
    let run = cell.view();
    record.run_id = Some(run.id);
    record.run_state = Some(run.state);
    record.upstream = run.upstream.as_ref().map(|u| UpstreamSummary {
        status: u.status,
        request_id: u.request_id.clone(),
        client_request_id: u.client_request_id.clone(),
        duration_ms: run
            .finished_at
            .zip(run.started_at)
            .map(|(f, s)| (f - s).num_milliseconds().max(0) as u64)
            .unwrap_or(0),
    });
    if run.state == RunState::Failed {
        let failure = cell.failure().unwrap_or(GatewayError::Internal);
        return Err((failure, Some(run)));
    }
    Ok(Accepted { run, cell, limit })
}

/// Steps 7 and 8, shared by every entrance that triggers the action (`POST /sync`, a hook):
/// the credentials prove now that whoever acts can (step-up, consent, a live service session)
/// and give a trailing run the token to act with; then the run is joined, started or
/// scheduled. `acting_as` is recorded after the attempt: a service identity's account is known
/// once its session has been read.
///
/// A rate-limit check admission left `pending` is taken here: inside the join's own script
/// when the token is at hand and the tenant's shared schedule is known (the warm path: one
/// Redis round trip for both), otherwise first, before anything an over-limit caller could
/// cause (an exchange, a refresh, a read of Graph's settings). Returns the run and, for a
/// pending check, where the caller stands against its limits.
async fn join_run(
    gw: &Gateway,
    acting: ActingIdentity,
    record: &mut RequestRecord,
    pending: Option<&PendingCheck>,
) -> Result<(Submitted, Option<RateLimitStatus>), GatewayError> {
    let scope = &gw.runs.policy().graph_scope;
    let tenant = acting.tenant_id().to_string();
    let mut limit = None;
    if let Some(pending) = pending {
        if let Some(joined) = join_taking_limits(gw, &acting, &tenant, record, pending).await {
            return joined;
        }
        limit = gw.admission.take_limit(pending, record).await?;
    }
    let token = gw.credentials.token_for(&acting, scope).await;
    let acting_as = Arc::new(gw.credentials.acting_summary(&acting));
    record.acting_as = Some(acting_as.clone());
    let token = token?;
    let actor = Actor {
        summary: acting_as,
        identity: acting,
        token,
    };
    let submitted = gw.runs.submit(record.id, &tenant, actor).await?;
    Ok((submitted, limit))
}

/// The warm path of [`join_run`]: `None` when it does not apply (the token is not at hand,
/// the limits are not on the shared store, or this process does not know the tenant's
/// schedule yet), and the caller takes the check first.
async fn join_taking_limits(
    gw: &Gateway,
    acting: &ActingIdentity,
    tenant: &str,
    record: &mut RequestRecord,
    pending: &PendingCheck,
) -> Option<Result<(Submitted, Option<RateLimitStatus>), GatewayError>> {
    let limits = &gw.admission.limits;
    if !gw.runs.takes_limits_with_join(tenant) {
        return None;
    }
    let cells = limits.script_cells(pending)?;
    let token = gw
        .credentials
        .cached_token_for(acting, &gw.runs.policy().graph_scope)
        .await?;
    let acting_as = Arc::new(gw.credentials.acting_summary(acting));
    let actor = Actor {
        summary: acting_as.clone(),
        identity: acting.clone(),
        token,
    };
    let joined = match gw
        .runs
        .submit_taking(record.id, tenant, actor, &cells)
        .await
    {
        Ok(j) => j,
        Err(e) => return Some(Err(e)),
    };
    let limit = match limits.decide(pending, joined.taken) {
        Ok(l) => l,
        Err(refused) => return Some(Err(refused)),
    };
    record.decision = Decision::Allowed;
    record.acting_as = Some(acting_as);
    Some(match joined.submitted {
        Some(Ok(submitted)) => Ok((submitted, limit)),
        Some(Err(e)) => Err(e),
        // Every cell allowed, yet the script did not join: a malformed answer.
        None => Err(GatewayError::Internal),
    })
}

/// `POST /hooks/{source}`: a webhook delivery or a chat command. The same admission phases as
/// `POST /sync` (the source's signature instead of a bearer token, its own body limit and rate
/// limit), then what is the hook's own (what the body asks, the `when` filter, the chat `allow`
/// list, the delivery id claimed against replays), then the same [`join_run`], never waiting
/// for Graph: the sender is answered within its deadline and the run goes on alone.
pub async fn post_hook(
    req: HttpRequest,
    source: web::Path<String>,
    body: web::Payload,
    gw: web::Data<Gateway>,
) -> HttpResponse {
    let trace = trace_of(&gw, &req);
    crate::trace::scope(
        trace,
        post_hook_in_trace(req, source.into_inner(), body, gw),
    )
    .await
}

/// The handler, inside the request's trace.
async fn post_hook_in_trace(
    req: HttpRequest,
    name: String,
    body: web::Payload,
    gw: web::Data<Gateway>,
) -> HttpResponse {
    let started = Instant::now();
    let mut record = new_record(&gw, &req, "/hooks/{source}");
    record.entrance = Some("hook");
    let mut body = RequestBody::new(body);
    let Some(source) = gw.hooks.get(&name) else {
        let e = GatewayError::NotFound;
        record.code = Some(e.kind());
        let response = problem::respond(&e, record.id);
        return body.attach_unread(record_and_answer(&gw, record, started, response).await);
    };
    let kind = source.config.kind;
    let mut hook = HookDelivery {
        source: name.clone(),
        kind: kind.as_str(),
        outcome: "refused",
        ..HookDelivery::default()
    };
    let mut claimed = None;
    let outcome = hook_delivery(
        &gw,
        &req,
        &source,
        &mut body,
        started,
        &mut record,
        &mut hook,
        &mut claimed,
    )
    .await;
    // A delivery that was handled stays claimed (its retries are duplicates); one refused is
    // forgotten, so the sender's retry is served.
    // A shared store that fails here leaves the claim in progress until the replay window
    // ends: the sender's retries are answered 503 `delivery-in-progress` meanwhile, never run
    // twice (fail closed). The answer to this request stands: its work is done or refused.
    if let Some(id) = &claimed {
        let settled = match &outcome {
            Ok(HookOutcome::Accepted { run, .. }) => source.deliveries.keep(id, Some(run.id)).await,
            Ok(_) => source.deliveries.keep(id, None).await,
            Err(_) => source.deliveries.release(id).await,
        };
        if let Err(e) = settled {
            tracing::warn!(source = %name, error = %e, "a claimed delivery id could not be kept or released");
        }
    }
    gw.hooks.count(&name, hook.outcome);
    record.hook = Some(Box::new(hook));
    let id = record.id;
    let response = match &outcome {
        Ok(o) => crate::hook_answer::answer(kind, o),
        Err(e) => crate::hook_answer::refusal(kind, e, id),
    };
    record.code = outcome.as_ref().err().map(GatewayError::kind);
    let acted = match &outcome {
        Ok(HookOutcome::Accepted { run, .. }) if run.may_have_acted() => Some(&**run),
        _ => None,
    };
    if let Err(refusal) = record_durably(&gw, record, started, response.status(), acted).await {
        return body.attach_unread(refusal);
    }
    body.attach_unread(response)
}

/// The hook's steps after admission; `claimed` is the delivery id this request owns, if any.
#[allow(clippy::too_many_arguments)]
async fn hook_delivery(
    gw: &Gateway,
    req: &HttpRequest,
    source: &Source,
    body: &mut RequestBody,
    started: Instant,
    record: &mut RequestRecord,
    hook: &mut HookDelivery,
    claimed: &mut Option<String>,
) -> Result<HookOutcome, GatewayError> {
    let config = &source.config;
    // 1-6. Admission: size, the signature over the body, the source's in-flight slots,
    //      who acts (its run_as), the source's own limit.
    let entrance = Entrance {
        body_limit: Some(config.max_body_bytes),
        in_flight: true,
        limited: true,
        proof: Proof::Signature(source),
        limit_with_join: false,
    };
    // Admission notes the verified delivery id on the record's `hook`, refused later or not.
    record.hook = Some(Box::new(hook.clone()));
    let admitted = gw
        .admission
        .admit(entrance, req, Some(body), started, record)
        .await;
    hook.delivery_id = record.hook.take().and_then(|h| h.delivery_id);
    let admitted = admitted?;
    let bytes = admitted.body.clone().unwrap_or_default();

    // 7. What the body asks.
    let mut follow_up = None;
    let mut requested_by = None;
    match event::parse(config.kind, &bytes).map_err(|e| GatewayError::BadRequest(e.0.into()))? {
        HookEvent::Ping => {
            hook.outcome = "ignored";
            return Ok(HookOutcome::Pong);
        }
        HookEvent::Ignored(why) => {
            hook.outcome = "ignored";
            return Ok(HookOutcome::Ignored(why));
        }
        HookEvent::Delivery(delivery) => {
            hook.sender_user = delivery.sender_user.clone();
            if let Some(when) = &config.when {
                if !event::passes(when, &delivery.json) {
                    hook.outcome = "filtered";
                    return Ok(HookOutcome::Filtered);
                }
            }
        }
        HookEvent::Command(command) => {
            hook.sender_user = match (&command.user_id, &command.user_name) {
                (Some(id), Some(name)) => Some(format!("{id} ({name})")),
                (id, name) => id.clone().or_else(|| name.clone()),
            };
            requested_by = command.user_name.clone().or(command.user_id.clone());
            let reason = match &command.verb {
                Verb::Sync { reason } => reason.clone(),
                Verb::Help => {
                    hook.outcome = "help";
                    return Ok(HookOutcome::Private(event::usage("/autopilot-sync")));
                }
                Verb::Unknown(why) => {
                    hook.outcome = "help";
                    return Ok(HookOutcome::Private(format!(
                        "{why}. {}",
                        event::usage("/autopilot-sync")
                    )));
                }
            };
            if !event::allowed(&config.allow, &command) {
                hook.outcome = "not_allowed";
                return Ok(HookOutcome::Private(
                    "You are not allowed to trigger the Autopilot sync from here; ask the gateway's operator to add your team, channel or user to the source's `allow` list.".into(),
                ));
            }
            match gw.hooks.replies.target_of(config, &command).await {
                Ok(target) => follow_up = target,
                Err(why) => {
                    // Never fetched; recorded (a `hook_reply` record) and told to the user.
                    hook.outcome = "refused";
                    return Ok(HookOutcome::Private(format!(
                        "The Autopilot sync was not requested: {why}; ask the gateway's operator to check the source's response_url_hosts."
                    )));
                }
            }
            record.reason = reason;
        }
    }

    // 8. Replays: one delivery id, one run, whatever the sender retries.
    if let Some(id) = &hook.delivery_id {
        match source.deliveries.claim(id).await? {
            Claim::New => *claimed = Some(id.clone()),
            Claim::Duplicate(Seen::InProgress) => return Err(GatewayError::DeliveryInProgress),
            Claim::Duplicate(Seen::Done(run)) => {
                hook.outcome = "duplicate";
                record.run_id = run;
                return Ok(HookOutcome::Duplicate { run });
            }
        }
    }

    // 9-10. Credentials and schedule, as for `POST /sync`; Graph is never waited for.
    let (submitted, _) = join_run(gw, admitted.acting.clone(), record, None).await?;
    let cell = submitted.cell().clone();
    let run = cell.view();
    record.run_id = Some(run.id);
    record.run_state = Some(run.state);
    hook.outcome = "accepted";
    if let Some(target) = follow_up {
        gw.hooks.replies.follow(config, cell, target);
    }
    Ok(HookOutcome::Accepted {
        run: Box::new(run),
        limit: admitted.limit.clone(),
        requested_by,
    })
}

/// `GET /sync/runs/{id}`: a run of the caller's own tenant. Audited like every request.
pub async fn get_run(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Gateway>,
) -> HttpResponse {
    let trace = trace_of(&gw, &req);
    crate::trace::scope(trace, get_run_in_trace(req, id, gw)).await
}

/// The handler, inside the request's trace.
async fn get_run_in_trace(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Gateway>,
) -> HttpResponse {
    let started = Instant::now();
    let mut record = new_record(&gw, &req, "/sync/runs/{id}");
    let answer = async {
        let admitted = gw
            .admission
            .admit(RUN_READ, &req, None, started, &mut record)
            .await?;
        let acting = admitted.acting;
        let id = Uuid::parse_str(&id).map_err(|_| GatewayError::NotFound)?;
        let run = gw.runs.find(id).await?.ok_or(GatewayError::NotFound)?;
        // Another tenant's run is indistinguishable from a missing one.
        if run.tenant_id != acting.tenant_id() {
            return Err(GatewayError::NotFound);
        }
        Ok::<_, GatewayError>(run)
    }
    .await;
    let response = match answer {
        Ok(run) => {
            record.run_id = Some(run.id);
            record.run_state = Some(run.state);
            HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(run)
        }
        Err(e) => {
            record.code = Some(e.kind());
            problem::respond(&e, record.id)
        }
    };
    record_and_answer(&gw, record, started, response).await
}

/// The body of `GET /sync/status`.
#[derive(Debug, Serialize)]
pub struct SyncStatus {
    /// The caller's tenant.
    pub tenant_id: String,
    /// What Graph says.
    pub graph: AutopilotSettings,
    /// What the gateway has in hand.
    pub gateway: TenantRuns,
}

/// `GET /sync/status`: Graph's view of the tenant's Autopilot sync plus the gateway's runs.
pub async fn get_status(req: HttpRequest, gw: web::Data<Gateway>) -> HttpResponse {
    let trace = trace_of(&gw, &req);
    crate::trace::scope(trace, get_status_in_trace(req, gw)).await
}

/// The handler, inside the request's trace.
async fn get_status_in_trace(req: HttpRequest, gw: web::Data<Gateway>) -> HttpResponse {
    let started = Instant::now();
    let mut record = new_record(&gw, &req, "/sync/status");
    let answer = async {
        // It calls Graph, so it holds a slot and counts against the limits like a sync.
        let admitted = gw
            .admission
            .admit(STATUS_READ, &req, None, started, &mut record)
            .await?;
        let acting = admitted.acting.clone();
        // A user reads with `graph.status_permission`'s scope (by default the sync's own, so
        // the token the sync exchanged is reused from the cache); a service identity's
        // session holds the sync scope only, which reads too.
        let scope = match acting {
            ActingIdentity::User(_) => &gw.status_scope,
            ActingIdentity::Service(_) => &gw.runs.policy().graph_scope,
        };
        let token = gw.credentials.token_for(&acting, scope).await?;
        let graph = gw
            .graph
            .read_settings(&gw.runs.policy().status_path, &token)
            .await?;
        let tenant = acting.tenant_id().to_string();
        Ok::<_, GatewayError>(SyncStatus {
            gateway: gw.runs.tenant_runs(&tenant).await,
            tenant_id: tenant,
            graph,
        })
    }
    .await;
    let response = match answer {
        Ok(s) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(s),
        Err(e) => {
            record.code = Some(e.kind());
            problem::respond(&e, record.id)
        }
    };
    record_and_answer(&gw, record, started, response).await
}

/// The optional `reason`: an empty body is fine; anything else must be the JSON object.
fn parse_reason(req: &HttpRequest, bytes: &[u8]) -> Result<Option<String>, GatewayError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(GatewayError::BadRequest(
            "a request body must be JSON with Content-Type: application/json".into(),
        ));
    }
    // serde would read a JSON array into the struct by position; only an object is the contract.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(GatewayError::BadRequest(
            "the body must be a JSON object like {\"reason\": \"...\"}".into(),
        ));
    }
    let parsed: SyncRequest = serde_json::from_slice(bytes).map_err(|e| {
        GatewayError::BadRequest(format!(
            "the body must be a JSON object like {{\"reason\": \"...\"}}: {}",
            json_error_category(&e)
        ))
    })?;
    match parsed.reason {
        Some(r) if r.chars().count() > MAX_REASON_CHARS => Err(GatewayError::BadRequest(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        ))),
        Some(r) if r.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// serde's own message may quote the input; answer with its category only.
fn json_error_category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not valid JSON",
        serde_json::error::Category::Data => "unexpected fields or types",
        serde_json::error::Category::Io => "unreadable",
    }
}
