//! Simulated Microsoft Graph: the Windows Autopilot settings entity and its `sync` action, with
//! Intune's cooldown and in-progress rules, Graph's error bodies and correlation headers, and
//! scripted answers for tests.

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::{json, Value};

use super::entra::{PERMISSION_READ, PERMISSION_READ_WRITE};
use super::keys::{unverified_claims, KeyStore, VerifyError};
use super::options::SimOptions;
use super::server::{refuse_when_stopped, ServerSlot, StopFlag};
use crate::clock::Clock;

/// The sync action's path below the Graph base URL.
pub const SYNC_PATH: &str = "/beta/deviceManagement/windowsAutopilotSettings/sync";
/// The Autopilot settings entity's path below the Graph base URL.
pub const SETTINGS_PATH: &str = "/beta/deviceManagement/windowsAutopilotSettings";

/// One answer to an authenticated sync call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphResponse {
    /// 204 No Content: sync triggered. Counts as a sync (updates the tenant's state).
    Accept,
    /// 409 Conflict: a sync is already in progress.
    Conflict,
    /// 429 Too Many Requests, with `Retry-After` when given.
    TooMany {
        /// Seconds for `Retry-After`; `None` omits the header (Graph does not document it).
        retry_after_secs: Option<u64>,
    },
    /// Any status with Graph's error body (e.g. 500, 503, 504). A 2xx gets no body and does
    /// not count as a sync; an invalid code answers 500.
    Status(u16),
    /// A status with Graph's error body and `Retry-After: N` (e.g. a 503 asking for a pause).
    StatusRetryAfter(u16, u64),
    /// 307 Temporary Redirect to this URL (Graph does not redirect the action; a client that
    /// followed would send the token on).
    Redirect(String),
    /// Never answers (sleeps a day): for client timeouts.
    Hang,
}

/// How sync calls are answered once the scripted queue is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphMode {
    /// Intune's rules: 429 within the cooldown of the last manual sync, 409 while a sync is in
    /// progress, else 204.
    Normal,
    /// Always this answer (an `Accept` still updates the tenant's state).
    Always(GraphResponse),
}

/// A POST to the sync path, as the simulated Graph saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedCall {
    /// The token's `tid` (read without verification when the token was refused).
    pub tenant_id: Option<String>,
    /// The token's `oid` (read without verification when the token was refused): a user, or
    /// for an app-only token the application's service principal.
    pub object_id: Option<String>,
    /// The token's `appid` (read without verification when the token was refused).
    pub app_id: Option<String>,
    /// Whether the token is app-only (`idtyp: app`): the application acting as itself.
    pub app_only: bool,
    /// The `client-request-id` header, if sent.
    pub client_request_id: Option<String>,
    /// The `Retry-Attempt` header (the Graph SDKs' retry count), if sent.
    pub retry_attempt: Option<u32>,
    /// The W3C `traceparent` header, if sent.
    pub traceparent: Option<String>,
    /// Whether the bearer token was accepted (signature, audience, lifetime, permission).
    pub authorization_ok: bool,
    /// The status answered; 0 for a `Hang` (no answer).
    pub status: u16,
    /// When the call arrived, by the simulator's clock ([`SimOptions::clock`]).
    pub at: DateTime<Utc>,
}

/// Handle to a running simulated Graph. Cheap to clone; the server stops when the last clone
/// is dropped or on [`SimGraph::stop`].
#[derive(Clone)]
pub struct SimGraph {
    state: Arc<GraphState>,
    server: Arc<ServerSlot>,
}

struct GraphState {
    base: String,
    /// The token audience this Graph accepts (its base URL, or a national cloud's name).
    resource: String,
    entra_base: String,
    keys: Arc<KeyStore>,
    cooldown: chrono::Duration,
    /// Intune's cooldown and sync progress run on this clock: the gateway's scheduler is given
    /// the same one, so in virtual time both sides agree when the cooldown is over.
    clock: Arc<dyn Clock>,
    inner: Mutex<GraphInner>,
    sync_calls: AtomicUsize,
    accepted: AtomicUsize,
    settings_reads: AtomicUsize,
    /// True while sync calls are held before they are answered ([`SimGraph::hold_answers`]).
    held: tokio::sync::watch::Sender<bool>,
}

struct GraphInner {
    queue: VecDeque<GraphResponse>,
    mode: GraphMode,
    sync_duration: chrono::Duration,
    tenants: HashMap<String, TenantState>,
    calls: Vec<ReceivedCall>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncStatus {
    Unknown,
    InProgress,
    Completed,
}

impl SyncStatus {
    fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Unknown => "unknown",
            SyncStatus::InProgress => "inProgress",
            SyncStatus::Completed => "completed",
        }
    }
}

struct TenantState {
    last_manual: Option<DateTime<Utc>>,
    last_sync: Option<DateTime<Utc>>,
    status: SyncStatus,
    completes_at: Option<DateTime<Utc>>,
}

impl TenantState {
    fn new() -> TenantState {
        TenantState {
            last_manual: None,
            last_sync: None,
            status: SyncStatus::Unknown,
            completes_at: None,
        }
    }

    /// A sync in progress completes on its own once its duration has passed.
    fn refresh(&mut self, now: DateTime<Utc>) {
        if self.status == SyncStatus::InProgress {
            if let Some(done) = self.completes_at.filter(|d| *d <= now) {
                self.status = SyncStatus::Completed;
                self.last_sync = Some(done);
                self.completes_at = None;
            }
        }
    }

    fn start_sync(&mut self, at: DateTime<Utc>, duration: chrono::Duration, now: DateTime<Utc>) {
        self.last_manual = Some(at);
        self.status = SyncStatus::InProgress;
        self.completes_at = Some(at + duration);
        self.refresh(now);
    }
}

fn graph_time(t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        // Graph's "never" value for DateTimeOffset properties.
        None => "0001-01-01T00:00:00Z".to_string(),
    }
}

impl SimGraph {
    pub(crate) fn start(
        opts: &SimOptions,
        base: String,
        entra_base: String,
        keys: Arc<KeyStore>,
        listener: TcpListener,
    ) -> std::io::Result<SimGraph> {
        let state = Arc::new(GraphState {
            resource: opts.graph_resource.clone().unwrap_or_else(|| base.clone()),
            base,
            entra_base,
            keys,
            cooldown: chrono::Duration::from_std(opts.graph_cooldown)
                .unwrap_or(chrono::Duration::MAX),
            clock: opts.clock.clone(),
            inner: Mutex::new(GraphInner {
                queue: VecDeque::new(),
                mode: GraphMode::Normal,
                sync_duration: chrono::Duration::zero(),
                tenants: HashMap::new(),
                calls: Vec::new(),
            }),
            sync_calls: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            settings_reads: AtomicUsize::new(0),
            held: tokio::sync::watch::channel(false).0,
        });
        let data = web::Data::from(Arc::clone(&state));
        let stopped = StopFlag::default();
        let gate = stopped.clone();
        let server = HttpServer::new(move || {
            let gate = gate.clone();
            App::new()
                .wrap_fn(move |req, srv| refuse_when_stopped(&gate, req, srv))
                .app_data(data.clone())
                .route(SYNC_PATH, web::post().to(sync))
                .route(SETTINGS_PATH, web::get().to(settings))
                .default_service(web::to(not_found))
        })
        .workers(2)
        // The embedding process (tests, `dev`) owns signal handling.
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        Ok(SimGraph {
            state,
            server: Arc::new(ServerSlot::spawn(server, stopped)),
        })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash): Graph's base URL and token audience.
    pub fn base_url(&self) -> String {
        self.state.base.clone()
    }

    /// Queues answers for the next authenticated sync calls, consumed in order before the mode
    /// applies.
    pub fn push_responses(&self, r: impl IntoIterator<Item = GraphResponse>) {
        self.state.lock().queue.extend(r);
    }

    /// Sets how sync calls are answered once the queue is empty.
    pub fn set_mode(&self, m: GraphMode) {
        self.state.lock().mode = m;
    }

    /// How long an accepted sync stays `inProgress` (default zero: completed at once).
    pub fn set_sync_duration(&self, d: Duration) {
        self.state.lock().sync_duration =
            chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    }

    /// As if someone pressed Sync in the Intune portal at `at`: sets the tenant's
    /// `lastManualSyncTriggerDateTime` and starts a sync of the configured duration.
    pub fn set_external_sync(&self, tenant: &str, at: DateTime<Utc>) {
        let mut g = self.state.lock();
        let duration = g.sync_duration;
        g.tenants
            .entry(tenant.to_string())
            .or_insert_with(TenantState::new)
            .start_sync(at.trunc_subsecs(3), duration, self.state.now_ms());
    }

    /// Holds every sync call, once counted in [`SimGraph::sync_calls`], until
    /// [`SimGraph::release_answers`]: a test can act while Graph is answering (e.g. break the
    /// audit trail after the call was sent, before its answer) without racing it.
    pub fn hold_answers(&self) {
        self.state.held.send_replace(true);
    }

    /// Lets held and later sync calls be answered.
    pub fn release_answers(&self) {
        self.state.held.send_replace(false);
    }

    /// Every POST to the sync path, authenticated or not.
    pub fn sync_calls(&self) -> usize {
        self.state.sync_calls.load(Ordering::SeqCst)
    }

    /// Sync calls answered 204.
    pub fn accepted_syncs(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// GETs of the Autopilot settings entity, authenticated or not.
    pub fn settings_reads(&self) -> usize {
        self.state.settings_reads.load(Ordering::SeqCst)
    }

    /// Every POST to the sync path, oldest first (reads of the settings are not recorded).
    pub fn calls(&self) -> Vec<ReceivedCall> {
        self.state.lock().calls.clone()
    }

    /// Stops the server (connections refused afterwards); hanging answers are dropped.
    pub async fn stop(&self) {
        self.server.stop().await;
    }
}

impl GraphState {
    /// Graph's timestamps here have millisecond precision; stored times are truncated the same
    /// way so `lastManualSyncTriggerDateTime + cooldown` computed by a client is never early.
    fn now_ms(&self) -> DateTime<Utc> {
        self.clock.now().trunc_subsecs(3)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GraphInner> {
        self.inner.lock().expect("graph state lock")
    }

    /// Picks the answer for an authenticated sync call and applies its effect on the tenant.
    fn decide(&self, tenant: &str) -> GraphResponse {
        let now = self.now_ms();
        let mut g = self.lock();
        let answer = match g.queue.pop_front() {
            Some(r) => r,
            None => match g.mode.clone() {
                GraphMode::Always(r) => r,
                GraphMode::Normal => {
                    let t = g
                        .tenants
                        .entry(tenant.to_string())
                        .or_insert_with(TenantState::new);
                    t.refresh(now);
                    if t.last_manual.is_some_and(|last| now < last + self.cooldown) {
                        GraphResponse::TooMany {
                            retry_after_secs: None,
                        }
                    } else if t.status == SyncStatus::InProgress {
                        GraphResponse::Conflict
                    } else {
                        GraphResponse::Accept
                    }
                }
            },
        };
        if answer == GraphResponse::Accept {
            let duration = g.sync_duration;
            g.tenants
                .entry(tenant.to_string())
                .or_insert_with(TenantState::new)
                .start_sync(now, duration, now);
            self.accepted.fetch_add(1, Ordering::SeqCst);
        }
        answer
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Per-request correlation: a fresh `request-id`, and the caller's `client-request-id` echoed.
struct Ctx {
    request_id: String,
    client_request_id: Option<String>,
}

impl Ctx {
    fn new(req: &HttpRequest) -> Ctx {
        Ctx {
            request_id: uuid::Uuid::new_v4().to_string(),
            client_request_id: req
                .headers()
                .get("client-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }

    /// Every answer carries these; actix adds `Date` itself.
    fn response(&self, status: StatusCode) -> actix_web::HttpResponseBuilder {
        let mut b = HttpResponse::build(status);
        b.insert_header(("request-id", self.request_id.clone()));
        if let Some(c) = &self.client_request_id {
            b.insert_header(("client-request-id", c.clone()));
        }
        b.insert_header((
            "x-ms-ags-diagnostic",
            r#"{"ServerInfo":{"DataCenter":"Simulated","Slice":"E","Ring":"0","ScaleUnit":"000","RoleInstance":"sim-graph","ADSiteName":"SIM"}}"#,
        ));
        b
    }

    /// Graph's error body: `{"error":{"code","message","innerError":{...}}}`.
    fn error(&self, status: u16, code: &str, message: &str) -> HttpResponse {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.response(status).json(json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                    "request-id": self.request_id,
                    "client-request-id": self.client_request_id.clone()
                        .unwrap_or_else(|| self.request_id.clone()),
                }
            }
        }))
    }

    /// Intune wraps its own errors as a JSON document inside `message`; clients must treat the
    /// message as opaque text.
    fn intune_error(&self, status: u16, code: &str, retry_after: Option<u64>) -> HttpResponse {
        let message = json!({
            "_version": 3,
            "Message": format!(
                "An error has occurred - Operation ID (for customer support): 00000000-0000-0000-0000-000000000000 - Activity ID: {} - Url: {SYNC_PATH}",
                self.request_id
            ),
            "CustomApiErrorPhrase": "",
            "RetryAfter": retry_after,
            "ErrorSourceService": "",
            "HttpHeaders": "{}",
        })
        .to_string();
        let mut r = self.error(status, code, &message);
        if let Some(s) = retry_after {
            r.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(s),
            );
        }
        r
    }
}

fn status_code_name(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        401 => "InvalidAuthenticationToken",
        403 => "Forbidden",
        404 => "ResourceNotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "UnknownError",
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication

struct Caller {
    tenant_id: Option<String>,
    object_id: Option<String>,
    app_id: Option<String>,
    app_only: bool,
}

/// Why a call was refused: 401 (token) or 403 (permission).
struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn token(message: impl Into<String>) -> Refusal {
        Refusal {
            status: 401,
            code: "InvalidAuthenticationToken",
            message: message.into(),
        }
    }
}

fn claim_str(claims: &Value, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_string)
}

/// Checks `Authorization: Bearer`: signature by a shared key, audience = this Graph, issuer,
/// lifetime (no leeway) and one of `permissions` in `scp` (a user's token) or `roles` (an
/// app-only token).
fn authenticate(
    state: &GraphState,
    req: &HttpRequest,
    permissions: &[&str],
) -> (Caller, Result<(), Refusal>) {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        let caller = Caller {
            tenant_id: None,
            object_id: None,
            app_id: None,
            app_only: false,
        };
        return (caller, Err(Refusal::token("Access token is empty.")));
    };
    let (claims, verified) = match state.keys.verify(token) {
        Ok((_, claims)) => (Some(claims), Ok(())),
        Err(e) => (
            unverified_claims(token),
            Err(Refusal::token(match e {
                VerifyError::Malformed => "IDX14100: JWT is not well formed.",
                VerifyError::Algorithm | VerifyError::UnknownKey | VerifyError::Signature => {
                    "Access token validation failure. Invalid signature."
                }
            })),
        ),
    };
    let caller = Caller {
        tenant_id: claims.as_ref().and_then(|c| claim_str(c, "tid")),
        object_id: claims.as_ref().and_then(|c| claim_str(c, "oid")),
        app_id: claims.as_ref().and_then(|c| claim_str(c, "appid")),
        app_only: claims
            .as_ref()
            .and_then(|c| claim_str(c, "idtyp"))
            .is_some_and(|t| t == "app"),
    };
    let result = verified.and_then(|()| {
        let claims = claims.as_ref().expect("verified tokens have claims");
        check_claims(state, claims, permissions)
    });
    (caller, result)
}

fn check_claims(state: &GraphState, claims: &Value, permissions: &[&str]) -> Result<(), Refusal> {
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => *a == state.resource,
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str() == Some(state.resource.as_str())),
        _ => false,
    };
    if !aud_ok {
        return Err(Refusal::token(
            "Access token validation failure. Invalid audience.",
        ));
    }
    let tid = claim_str(claims, "tid").unwrap_or_default();
    if tid.is_empty() || claim_str(claims, "iss") != Some(format!("https://sts.windows.net/{tid}/"))
    {
        return Err(Refusal::token(
            "Access token validation failure. Invalid issuer.",
        ));
    }
    // Token lifetimes are real time (Entra issues them by the real clock), not the cooldown's.
    let now = Utc::now().timestamp();
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if now < exp => {}
        _ => {
            return Err(Refusal::token(
                "Lifetime validation failed, the token is expired.",
            ))
        }
    }
    if claims
        .get("nbf")
        .and_then(Value::as_i64)
        .is_some_and(|nbf| nbf > now)
    {
        return Err(Refusal::token(
            "Lifetime validation failed, the token is not yet valid.",
        ));
    }
    // A user's token grants delegated permissions in `scp`; an app-only token application
    // permissions in `roles`. Graph refuses a token with neither as invalid (401).
    let scp = claims.get("scp").and_then(Value::as_str);
    let roles: Vec<&str> = claims
        .get("roles")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let granted: Vec<&str> = match scp.filter(|s| !s.trim().is_empty()) {
        Some(scp) => scp.split(' ').collect(),
        None if !roles.is_empty() => roles,
        None => {
            return Err(Refusal::token(
                "Either scp or roles claim need to be present in the token.",
            ))
        }
    };
    if !granted.iter().any(|s| permissions.contains(s)) {
        return Err(Refusal {
            status: 403,
            code: "Forbidden",
            message: format!(
                "Application is not authorized to perform this operation. Application must have \
                 one of the following scopes: {}",
                permissions.join(", ")
            ),
        });
    }
    Ok(())
}

fn refusal_response(state: &GraphState, ctx: &Ctx, r: &Refusal) -> HttpResponse {
    let mut resp = ctx.error(r.status, r.code, &r.message);
    if r.status == 401 {
        let challenge = format!(
            "Bearer realm=\"\", authorization_uri=\"{}/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
            state.entra_base
        );
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&challenge) {
            resp.headers_mut()
                .insert(actix_web::http::header::WWW_AUTHENTICATE, v);
        }
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn sync(state: web::Data<GraphState>, req: HttpRequest) -> HttpResponse {
    state.sync_calls.fetch_add(1, Ordering::SeqCst);
    let _ = state.held.subscribe().wait_for(|held| !*held).await;
    let at = state.clock.now();
    let ctx = Ctx::new(&req);
    let (caller, auth) = authenticate(&state, &req, &[PERMISSION_READ_WRITE]);
    let record = |authorization_ok: bool, status: u16| {
        state.lock().calls.push(ReceivedCall {
            tenant_id: caller.tenant_id.clone(),
            object_id: caller.object_id.clone(),
            app_id: caller.app_id.clone(),
            app_only: caller.app_only,
            client_request_id: ctx.client_request_id.clone(),
            traceparent: req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            retry_attempt: req
                .headers()
                .get("retry-attempt")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            authorization_ok,
            status,
            at,
        });
    };
    if let Err(r) = auth {
        record(false, r.status);
        return refusal_response(&state, &ctx, &r);
    }
    let tenant = caller.tenant_id.clone().unwrap_or_default();
    match state.decide(&tenant) {
        GraphResponse::Accept => {
            record(true, 204);
            ctx.response(StatusCode::NO_CONTENT).finish()
        }
        GraphResponse::Conflict => {
            record(true, 409);
            ctx.intune_error(409, status_code_name(409), None)
        }
        GraphResponse::TooMany { retry_after_secs } => {
            record(true, 429);
            ctx.intune_error(429, status_code_name(429), retry_after_secs)
        }
        GraphResponse::Status(s) => {
            let s = if StatusCode::from_u16(s).is_ok() {
                s
            } else {
                500
            };
            record(true, s);
            if (200..300).contains(&s) {
                ctx.response(StatusCode::from_u16(s).unwrap_or(StatusCode::OK))
                    .finish()
            } else {
                ctx.intune_error(s, status_code_name(s), None)
            }
        }
        GraphResponse::StatusRetryAfter(s, secs) => {
            record(true, s);
            ctx.intune_error(s, status_code_name(s), Some(secs))
        }
        GraphResponse::Redirect(location) => {
            record(true, 307);
            ctx.response(StatusCode::TEMPORARY_REDIRECT)
                .insert_header(("Location", location))
                .finish()
        }
        GraphResponse::Hang => {
            record(true, 0);
            // Dropped when the client gives up or the server stops.
            tokio::time::sleep(Duration::from_secs(86_400)).await;
            ctx.error(504, "GatewayTimeout", "The request timed out.")
        }
    }
}

async fn settings(state: web::Data<GraphState>, req: HttpRequest) -> HttpResponse {
    state.settings_reads.fetch_add(1, Ordering::SeqCst);
    let ctx = Ctx::new(&req);
    let (caller, auth) = authenticate(&state, &req, &[PERMISSION_READ, PERMISSION_READ_WRITE]);
    if let Err(r) = auth {
        return refusal_response(&state, &ctx, &r);
    }
    let tenant = caller.tenant_id.unwrap_or_default();
    let body = {
        let mut g = state.lock();
        let t = g
            .tenants
            .entry(tenant.clone())
            .or_insert_with(TenantState::new);
        t.refresh(state.now_ms());
        json!({
            "@odata.context": format!("{}/beta/$metadata#deviceManagement/windowsAutopilotSettings/$entity", state.base),
            "@odata.type": "#microsoft.graph.windowsAutopilotSettings",
            "id": settings_id(&tenant),
            "lastSyncDateTime": graph_time(t.last_sync),
            "lastManualSyncTriggerDateTime": graph_time(t.last_manual),
            "syncStatus": t.status.as_str(),
        })
    };
    ctx.response(StatusCode::OK).json(body)
}

/// A stable per-tenant entity id.
fn settings_id(tenant: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(format!("autopilot-settings:{tenant}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    let ctx = Ctx::new(&req);
    let segment = req
        .path()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    ctx.error(
        400,
        "BadRequest",
        &format!("Resource not found for the segment '{segment}'."),
    )
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::super::entra::TokenSpec;
    use super::super::{SimOptions, Simulators};
    use super::*;

    const TENANT: &str = "11111111-2222-3333-4444-555555555555";

    async fn sims() -> Simulators {
        Simulators::start(SimOptions::new(
            vec![TENANT.to_string()],
            "gw-client-id",
            "gw-secret-value",
            vec!["gw-client-id".to_string()],
        ))
        .await
        .unwrap()
    }

    async fn graph_token(s: &Simulators, oid: &str, scope: &str) -> String {
        let assertion = s.entra.mint(&TokenSpec::user(TENANT, oid));
        let r: Value = reqwest::Client::new()
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", s.entra.base_url()))
            .form(&[
                ("grant_type", super::super::entra::GRANT_JWT_BEARER),
                ("client_id", "gw-client-id"),
                ("client_secret", "gw-secret-value"),
                ("assertion", assertion.as_str()),
                (
                    "scope",
                    &format!("{}/{scope} offline_access", s.graph.base_url()),
                ),
                ("requested_token_use", "on_behalf_of"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["token_type"], "Bearer", "{r}");
        assert_eq!(r["scope"], json!(format!("{}/{scope}", s.graph.base_url())));
        assert_eq!(r["expires_in"], 3600);
        assert!(r["refresh_token"].is_string());
        r["access_token"].as_str().unwrap().to_string()
    }

    /// The gateway application's own token from the client-credentials grant.
    async fn app_token(s: &Simulators) -> String {
        let r: Value = reqwest::Client::new()
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", s.entra.base_url()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "gw-client-id"),
                ("client_secret", "gw-secret-value"),
                ("scope", &format!("{}/.default", s.graph.base_url())),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["access_token"]
            .as_str()
            .expect("an app-only token")
            .to_string()
    }

    async fn post_sync(s: &Simulators, token: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{SYNC_PATH}", s.graph.base_url()))
            .bearer_auth(token)
            .header("client-request-id", "abc-123")
            .send()
            .await
            .unwrap()
    }

    async fn get_settings(s: &Simulators, token: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}{SETTINGS_PATH}", s.graph.base_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    #[actix_rt::test]
    async fn obo_token_syncs_then_cooldown() {
        let s = sims().await;
        let token = graph_token(&s, "u1", PERMISSION_READ_WRITE).await;
        assert_eq!(s.entra.exchanges(), 1);
        assert!(s.entra.issued_secrets().contains(&token));

        let before = get_settings(&s, &token).await;
        assert_eq!(before["syncStatus"], "unknown");
        assert_eq!(
            before["lastManualSyncTriggerDateTime"],
            "0001-01-01T00:00:00Z"
        );

        let r = post_sync(&s, &token).await;
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(r.headers()["client-request-id"], "abc-123");
        assert!(uuid::Uuid::parse_str(r.headers()["request-id"].to_str().unwrap()).is_ok());
        assert!(r.headers().contains_key("date"));

        let after = get_settings(&s, &token).await;
        assert_eq!(after["syncStatus"], "completed");
        assert_ne!(
            after["lastManualSyncTriggerDateTime"],
            "0001-01-01T00:00:00Z"
        );
        assert_eq!(
            after["lastSyncDateTime"],
            after["lastManualSyncTriggerDateTime"]
        );

        let r = post_sync(&s, &token).await;
        assert_eq!(r.status().as_u16(), 429);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["innerError"]["client-request-id"], "abc-123");

        assert_eq!(s.graph.sync_calls(), 2);
        assert_eq!(s.graph.accepted_syncs(), 1);
        let calls = s.graph.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].tenant_id.as_deref(), Some(TENANT));
        assert_eq!(calls[0].object_id.as_deref(), Some("u1"));
        assert_eq!(calls[0].client_request_id.as_deref(), Some("abc-123"));
        assert!(calls[0].authorization_ok);
        assert_eq!((calls[0].status, calls[1].status), (204, 429));
    }

    #[actix_rt::test]
    async fn in_progress_and_external_sync() {
        let s = sims().await;
        let token = graph_token(&s, "u1", PERMISSION_READ_WRITE).await;
        s.graph.set_sync_duration(Duration::from_secs(3600));
        // Pressed in the portal long ago, but still running: 409.
        s.graph
            .set_external_sync(TENANT, Utc::now() - chrono::Duration::minutes(30));
        assert_eq!(get_settings(&s, &token).await["syncStatus"], "inProgress");
        assert_eq!(post_sync(&s, &token).await.status().as_u16(), 409);
        // Pressed a minute ago and already done: 429.
        s.graph.set_sync_duration(Duration::ZERO);
        s.graph
            .set_external_sync(TENANT, Utc::now() - chrono::Duration::minutes(1));
        assert_eq!(post_sync(&s, &token).await.status().as_u16(), 429);
        s.graph
            .set_external_sync(TENANT, Utc::now() - chrono::Duration::minutes(11));
        assert_eq!(post_sync(&s, &token).await.status().as_u16(), 204);
    }

    #[actix_rt::test]
    async fn scripted_queue_in_order_then_mode() {
        let s = sims().await;
        let token = graph_token(&s, "u1", PERMISSION_READ_WRITE).await;
        s.graph.push_responses([
            GraphResponse::Status(503),
            GraphResponse::TooMany {
                retry_after_secs: Some(30),
            },
            GraphResponse::Conflict,
            GraphResponse::Accept,
        ]);
        let r = post_sync(&s, &token).await;
        assert_eq!(r.status().as_u16(), 503);
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string());
        let r = post_sync(&s, &token).await;
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(r.headers()["retry-after"], "30");
        assert_eq!(post_sync(&s, &token).await.status().as_u16(), 409);
        assert_eq!(post_sync(&s, &token).await.status().as_u16(), 204);
        // Queue empty: Normal mode sees the scripted Accept's cooldown.
        assert_eq!(post_sync(&s, &token).await.status().as_u16(), 429);
        s.graph.set_mode(GraphMode::Always(GraphResponse::Accept));
        assert_eq!(post_sync(&s, &token).await.status().as_u16(), 204);
        assert_eq!(s.graph.accepted_syncs(), 2);

        // A hanging answer times the client out; stop still works promptly.
        s.graph.push_responses([GraphResponse::Hang]);
        let err = reqwest::Client::new()
            .post(format!("{}{SYNC_PATH}", s.graph.base_url()))
            .bearer_auth(&token)
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(s.graph.calls().last().unwrap().status, 0);
        s.graph.stop().await;
        let err = reqwest::Client::new()
            .post(format!("{}{SYNC_PATH}", s.graph.base_url()))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }

    #[actix_rt::test]
    async fn an_app_only_token_syncs_with_the_application_permission_in_its_roles() {
        let s = sims().await;
        let token = app_token(&s).await;
        assert_eq!(post_sync(&s, &token).await.status().as_u16(), 204);
        let call = s.graph.calls().pop().unwrap();
        assert!(call.app_only && call.authorization_ok);
        assert_eq!(call.app_id.as_deref(), Some("gw-client-id"));
    }

    #[actix_rt::test]
    async fn an_app_only_token_without_the_application_permission_is_refused_403() {
        let s = sims().await;
        s.entra.set_app_consent(
            TENANT,
            super::super::AppConsent::Granted(vec![PERMISSION_READ.into()]),
        );
        let read_only = app_token(&s).await;
        let r = post_sync(&s, &read_only).await;
        assert_eq!(r.status().as_u16(), 403);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "Forbidden");
        // It may still read the settings.
        assert_eq!(get_settings(&s, &read_only).await["syncStatus"], "unknown");
    }

    #[actix_rt::test]
    async fn an_app_only_token_with_no_roles_at_all_is_refused_401_as_invalid() {
        let s = sims().await;
        s.entra
            .set_app_consent(TENANT, super::super::AppConsent::Granted(Vec::new()));
        let r = post_sync(&s, &app_token(&s).await).await;
        assert_eq!(r.status().as_u16(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Either scp or roles claim"));
    }

    #[actix_rt::test]
    async fn refuses_bad_tokens() {
        let s = sims().await;
        let status = |r: reqwest::Response| r.status().as_u16();
        // No token.
        let r = reqwest::Client::new()
            .post(format!("{}{SYNC_PATH}", s.graph.base_url()))
            .send()
            .await
            .unwrap();
        assert!(r.headers().contains_key("www-authenticate"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
        // The caller's own token (wrong audience) is not a Graph token.
        let caller = s.entra.mint(&TokenSpec::user(TENANT, "u1"));
        assert_eq!(status(post_sync(&s, &caller).await), 401);
        // Read-only permission cannot sync, but can read.
        let read = graph_token(&s, "u1", PERMISSION_READ).await;
        let r = post_sync(&s, &read).await;
        assert_eq!(r.status().as_u16(), 403);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "Forbidden");
        assert_eq!(get_settings(&s, &read).await["syncStatus"], "unknown");
        // Expired Graph token.
        let mut claims = unverified_claims(&read).unwrap();
        claims["exp"] = json!(Utc::now().timestamp() - 1);
        let expired = s.entra.sign(&s.entra.header(), &claims);
        assert_eq!(status(post_sync(&s, &expired).await), 401);
        // Forged with an unpublished key.
        let forged = s
            .entra
            .sign_with_unpublished_key(&unverified_claims(&read).unwrap());
        assert_eq!(status(post_sync(&s, &forged).await), 401);
        assert_eq!(s.graph.sync_calls(), 5);
        assert_eq!(s.graph.accepted_syncs(), 0);
        assert!(s.graph.calls().iter().all(|c| !c.authorization_ok));
    }
}
