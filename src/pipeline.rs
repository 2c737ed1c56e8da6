//! The request lifecycle of `POST /sync`, top to bottom. Each step is one module with one job:
//!
//! 1. authenticate  ([`crate::caller`])      bearer token → [`Caller`]
//! 2. authorize     ([`crate::policy`])      scope / app role → who acts: [`ActingIdentity`]
//! 3. read the body (here)                   optional `{"reason": "..."}`
//! 4. limit         ([`crate::limits`])      per caller, per tenant → headers or 429
//! 5. credentials   ([`crate::credentials`]) on-behalf-of or service identity → [`DelegatedToken`]
//! 6. record intent ([`crate::audit`])       durable before Graph is called
//! 7. upstream      ([`crate::upstream`])    the Graph call
//! 8. record outcome and respond             durable before the caller is answered
//!
//! The caller's own token leaves the gateway only in step 5, as the assertion to Entra ID.
//!
//! [`Caller`]: crate::caller::Caller
//! [`ActingIdentity`]: crate::credentials::ActingIdentity
//! [`DelegatedToken`]: crate::credentials::DelegatedToken

use crate::audit::{AuditEvent, AuditLog, IntentRecord, RequestRecord, UpstreamSummary};
use crate::caller::Authenticator;
use crate::credentials::Credentials;
use crate::limits::{Limits, RateLimitStatus};
use crate::policy::CallerPolicy;
use crate::problem::{self, GatewayError};
use crate::upstream::{new_client_request_id, Graph, UpstreamOutcome};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// The largest request body read; a `reason` is at most 500 characters.
pub const MAX_BODY_BYTES: usize = 4096;

/// The longest `reason` accepted, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// One configured upstream action.
#[derive(Debug, Clone)]
pub struct Action {
    /// The action's name, as recorded (`sync`).
    pub name: &'static str,
    /// The Graph path it calls.
    pub upstream_path: String,
    /// The delegated Graph scope it needs, with the Graph resource prefix.
    pub graph_scope: String,
    /// Who may call it.
    pub policy: CallerPolicy,
}

/// Everything the lifecycle needs, shared by all workers.
pub struct Gateway {
    /// Step 1.
    pub authenticator: Authenticator,
    /// Step 4.
    pub limits: Arc<Limits>,
    /// Step 5.
    pub credentials: Credentials,
    /// Steps 6 and 8.
    pub audit: AuditLog,
    /// Step 7.
    pub graph: Graph,
    /// The sync action.
    pub sync: Action,
}

/// The optional JSON body of `POST /sync`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// One upstream execution of an action, as answered to the caller.
#[derive(Debug, Serialize)]
pub struct RunView {
    /// The run's id (UUID v7).
    pub id: Uuid,
    /// The action.
    pub action: &'static str,
    /// `succeeded` here; later states come with scheduling.
    pub state: &'static str,
    /// What Graph answered.
    pub upstream: UpstreamView,
}

/// Graph's answer in a [`RunView`].
#[derive(Debug, Serialize)]
pub struct UpstreamView {
    /// Graph's status.
    pub status: Option<u16>,
    /// Graph's `request-id`.
    pub request_id: Option<String>,
    /// The `client-request-id` sent.
    pub client_request_id: String,
}

struct Accepted {
    run: RunView,
    limit: RateLimitStatus,
}

/// `POST /sync`: the whole lifecycle, ending with the request's audit record.
pub async fn post_sync(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Gateway>,
) -> HttpResponse {
    let started = Instant::now();
    let mut record = RequestRecord::new(
        Uuid::now_v7(),
        Utc::now(),
        gw.sync.name,
        req.peer_addr().map(|a| a.ip()),
    );
    let outcome = sync(&gw, &req, body, &mut record).await;
    let response = match &outcome {
        Ok(accepted) => {
            let mut r = HttpResponse::Accepted();
            r.insert_header((header::CACHE_CONTROL, "no-store"));
            crate::limits::insert_headers(&mut r, &accepted.limit);
            r.json(&accepted.run)
        }
        Err(e) => problem::respond(e, Some(record.id)),
    };
    record.status = response.status().as_u16();
    record.code = outcome.as_ref().err().map(GatewayError::kind);
    record.duration_ms = started.elapsed().as_millis() as u64;
    // Invariant: the caller's record is durable before the caller gets an answer.
    if let Err(e) = gw.audit.append(&AuditEvent::Request(record.clone())).await {
        let called = record.upstream.is_some();
        tracing::error!(audit_id = %record.id, error = %e, graph_called = called,
            "the request's audit record could not be made durable");
        let detail = if called {
            "Microsoft Graph was called but the outcome could not be recorded durably; check the sync status before retrying"
        } else {
            "the request could not be recorded durably, so it was not carried out"
        };
        return problem::respond(
            &GatewayError::AuditUnavailable(detail.into()),
            Some(record.id),
        );
    }
    tracing::info!(audit_id = %record.id, status = record.status, code = record.code.unwrap_or(""),
        duration_ms = record.duration_ms, "sync request");
    response
}

async fn sync(
    gw: &Gateway,
    req: &HttpRequest,
    body: web::Payload,
    record: &mut RequestRecord,
) -> Result<Accepted, GatewayError> {
    let action = &gw.sync;

    // 1. Authenticate.
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().map_err(|_| GatewayError::MissingCredentials))
        .transpose()?;
    let token = Authenticator::bearer(authorization)?;
    let caller = gw.authenticator.authenticate(token).await?;
    record.caller = Some(caller.summary());

    // 2. Authorize: who acts (the user themself, or the service identity an app is mapped to).
    let actor = action.policy.authorize(&caller)?;

    // 3. The body, read only now that the caller is known.
    record.reason = read_reason(req, body).await?;

    // 4. Limits, per initiating caller and per tenant.
    let (tenant_id, caller_key) = caller.limit_key();
    let limit = gw.limits.check(tenant_id, &caller_key)?;
    record.decision = "allowed";

    // 5. Credentials: a Graph token for whoever acts. Recorded after the attempt: a service
    // identity's account is known once its session has been read.
    let token = gw.credentials.token_for(&actor, &action.graph_scope).await;
    let acting_as = gw.credentials.acting_summary(&actor);
    record.acting_as = Some(Box::new(acting_as.clone()));
    let token = token?;

    // 6. Record the intent, durably, before anything reaches Graph.
    let run_id = Uuid::now_v7();
    let client_request_id = new_client_request_id();
    let intent = IntentRecord {
        v: crate::audit::event_format_version(),
        id: Uuid::now_v7(),
        time: Utc::now(),
        request_id: record.id,
        run_id,
        action: action.name,
        tenant_id: actor.tenant_id().to_string(),
        acting_as,
        client_request_id: client_request_id.clone(),
    };
    gw.audit
        .append(&AuditEvent::Intent(intent))
        .await
        .map_err(|e| {
            tracing::error!(audit_id = %record.id, error = %e, "intent record could not be made durable; Graph not called");
            GatewayError::AuditUnavailable(
                "the request could not be recorded durably, so it was not carried out".into(),
            )
        })?;
    record.run_id = Some(run_id);

    // 7. Upstream.
    let outcome: UpstreamOutcome = gw
        .graph
        .trigger(&action.upstream_path, &token, client_request_id)
        .await;
    record.upstream = Some(UpstreamSummary {
        status: outcome.status,
        request_id: outcome.request_id.clone(),
        client_request_id: outcome.client_request_id.clone(),
        duration_ms: outcome.duration.as_millis() as u64,
    });
    outcome.result?;

    Ok(Accepted {
        run: RunView {
            id: run_id,
            action: action.name,
            state: "succeeded",
            upstream: UpstreamView {
                status: outcome.status,
                request_id: outcome.request_id,
                client_request_id: outcome.client_request_id,
            },
        },
        limit,
    })
}

/// The optional `reason`: an empty body is fine; anything else must be the JSON object.
async fn read_reason(
    req: &HttpRequest,
    body: web::Payload,
) -> Result<Option<String>, GatewayError> {
    // The outer error is the size limit; the inner one a broken stream.
    let bytes = match body.to_bytes_limited(MAX_BODY_BYTES).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Err(GatewayError::BadRequest(
                "the request body could not be read".into(),
            ))
        }
        Err(_) => {
            return Err(GatewayError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            })
        }
    };
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
    let parsed: SyncRequest = serde_json::from_slice(&bytes).map_err(|e| {
        GatewayError::BadRequest(format!(
            "the body must be a JSON object like {{\"reason\": \"...\"}}: {}",
            e.classify_message()
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

trait ClassifyMessage {
    fn classify_message(&self) -> &'static str;
}

impl ClassifyMessage for serde_json::Error {
    // serde's own message may quote the input; answer with its category only.
    fn classify_message(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "not valid JSON"
            }
            serde_json::error::Category::Data => "unexpected fields or types",
            serde_json::error::Category::Io => "unreadable",
        }
    }
}
