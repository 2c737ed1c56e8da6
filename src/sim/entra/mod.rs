//! Simulated Microsoft Entra ID: OpenID discovery (v1 and v2), JWKS, the v2 token endpoint with
//! the on-behalf-of, refresh-token and device-code grants and Entra's error bodies, client
//! authentication by secret, certificate assertion or federated token ([`credentials`]), the
//! device authorization endpoint ([`sessions`]), failure injection, and minting of caller
//! tokens for the gateway's own API.

mod credentials;
mod discovery;
mod errors;
mod form;
mod mint;
mod sessions;

pub use credentials::{ClientAuthSeen, FederatedTokenSpec, TOKEN_EXCHANGE_AUDIENCE};
pub use mint::{TokenSpec, TokenVersion, DEFAULT_CLIENT_APP_ID};
pub use sessions::{DeviceOutcome, DeviceScript, DeviceUser};

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use errors::{AadError, Ctx};
use form::{parse_form, Form};

use super::keys::{KeyStore, VerifyError};
use super::{ServerSlot, SimOptions};

/// The OBO grant type.
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The device-code grant type (RFC 8628).
pub const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The refresh-token grant type.
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
/// `client_assertion_type` of certificate and federated client assertions.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The Graph permission the sync action needs.
pub const PERMISSION_READ_WRITE: &str = "DeviceManagementServiceConfig.ReadWrite.All";
/// The Graph permission that allows reading the Autopilot settings.
pub const PERMISSION_READ: &str = "DeviceManagementServiceConfig.Read.All";
/// Permissions the gateway's app registration has been granted on the simulated Graph.
const PERMISSIONS: [&str; 2] = [PERMISSION_READ_WRITE, PERMISSION_READ];
/// Scopes that name no resource and are always allowed alongside a resource's scopes.
const OIDC_SCOPES: [&str; 4] = ["offline_access", "openid", "profile", "email"];

/// A fault the token endpoint injects after it has validated a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Conditional Access step-up: 400 `invalid_grant`, error code 50076, `suberror:
    /// "basic_action"` and the given `claims` JSON string.
    StepUp {
        /// The claims challenge, e.g. `{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}`.
        claims: String,
    },
    /// 429 with `Retry-After: N` and a `temporarily_unavailable` error body.
    Throttle {
        /// Seconds to announce in `Retry-After`.
        retry_after_secs: u64,
    },
    /// 500 with a `server_error` body.
    ServerError,
    /// Sleeps this long, then answers normally.
    Slow(Duration),
    /// Consent missing: 400 `invalid_grant`, error code 65001, `suberror: "consent_required"`.
    ConsentRequired,
}

/// Whom a [`Failure`] applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailureScope {
    /// Every exchange without a user-specific failure.
    Global,
    /// Exchanges whose assertion carries this `oid`.
    User(String),
}

/// One POST to a token endpoint, as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestSeen {
    /// The tenant in the path (`/{tenant}/oauth2/v2.0/token`).
    pub tenant: String,
    /// `grant_type`, empty when missing.
    pub grant_type: String,
    /// How the client tried to authenticate; `None` when it presented nothing recognisable.
    pub client_auth: Option<ClientAuthSeen>,
    /// The status answered.
    pub status: u16,
}

/// Token requests remembered at most (the oldest are dropped).
const MAX_TOKEN_LOG: usize = 10_000;

/// Handle to a running simulated Entra. Cheap to clone; the server stops when the last clone is
/// dropped or on [`SimEntra::stop`].
#[derive(Clone)]
pub struct SimEntra {
    state: Arc<EntraState>,
    server: Arc<ServerSlot>,
}

struct EntraState {
    base: String,
    graph_resource: String,
    tenants: Vec<String>,
    client_id: String,
    client_secret: String,
    api_audiences: Vec<String>,
    graph_token_lifetime: Duration,
    keys: Arc<KeyStore>,
    failures: Mutex<Failures>,
    jwks_requests: AtomicUsize,
    discovery_requests: AtomicUsize,
    token_requests: AtomicUsize,
    exchanges: AtomicUsize,
    refreshes: AtomicUsize,
    device_polls: AtomicUsize,
    device_logins: AtomicUsize,
    issued: Mutex<Vec<String>>,
    cloud_instance_name: String,
    device_interval: Duration,
    consented: Vec<String>,
    credentials: Mutex<credentials::Credentials>,
    sessions: Mutex<sessions::Sessions>,
    token_log: Mutex<Vec<TokenRequestSeen>>,
}

#[derive(Default)]
struct Failures {
    global: Option<Failure>,
    users: HashMap<String, Failure>,
}

impl SimEntra {
    pub(crate) fn start(
        opts: &SimOptions,
        base: String,
        graph_resource: String,
        keys: Arc<KeyStore>,
        listener: TcpListener,
    ) -> std::io::Result<SimEntra> {
        let state = Arc::new(EntraState {
            base,
            graph_resource,
            tenants: opts.tenants.clone(),
            client_id: opts.client_id.clone(),
            client_secret: opts.client_secret.clone(),
            api_audiences: opts.api_audiences.clone(),
            graph_token_lifetime: opts.graph_token_lifetime,
            keys,
            failures: Mutex::new(Failures::default()),
            jwks_requests: AtomicUsize::new(0),
            discovery_requests: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            exchanges: AtomicUsize::new(0),
            refreshes: AtomicUsize::new(0),
            device_polls: AtomicUsize::new(0),
            device_logins: AtomicUsize::new(0),
            issued: Mutex::new(vec![opts.client_secret.clone()]),
            cloud_instance_name: opts.cloud_instance_name.clone(),
            device_interval: opts.device_interval,
            consented: opts.consented_permissions.clone(),
            credentials: Mutex::new(credentials::Credentials::default()),
            sessions: Mutex::new(sessions::Sessions::default()),
            token_log: Mutex::new(Vec::new()),
        });
        let data = web::Data::from(Arc::clone(&state));
        let stopped = super::StopFlag::default();
        let gate = stopped.clone();
        let server = HttpServer::new(move || {
            let gate = gate.clone();
            App::new()
                .wrap_fn(move |req, srv| super::refuse_when_stopped(&gate, req, srv))
                .app_data(data.clone())
                .route("/_sim/tokens", web::post().to(mint::sim_mint))
                .route(
                    "/{tenant}/v2.0/.well-known/openid-configuration",
                    web::get().to(discovery::discovery_v2),
                )
                .route(
                    "/{tenant}/.well-known/openid-configuration",
                    web::get().to(discovery::discovery_v1),
                )
                .route(
                    "/{tenant}/discovery/v2.0/keys",
                    web::get().to(discovery::jwks_v2),
                )
                .route(
                    "/{tenant}/discovery/keys",
                    web::get().to(discovery::jwks_v1),
                )
                .route("/{tenant}/oauth2/v2.0/token", web::post().to(token))
                .route(
                    "/{tenant}/oauth2/v2.0/devicecode",
                    web::post().to(sessions::device_authorization),
                )
                .route("/_sim/device", web::get().to(sessions::device_page))
                .route("/_sim/device", web::post().to(sessions::device_decision))
        })
        .workers(2)
        // The embedding process (tests, `dev`) owns signal handling.
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        Ok(SimEntra {
            state,
            server: Arc::new(ServerSlot::spawn(server, stopped)),
        })
    }

    /// `http://127.0.0.1:PORT`: what the gateway configures as `entra.authority_host`.
    pub fn base_url(&self) -> String {
        self.state.base.clone()
    }

    /// The simulated Graph's resource URI (its base URL): the `aud` of issued Graph tokens and
    /// the prefix of valid scopes.
    pub fn graph_resource(&self) -> String {
        self.state.graph_resource.clone()
    }

    /// The issuer a token of `version` from `tenant_id` carries.
    pub fn issuer(&self, tenant_id: &str, version: TokenVersion) -> String {
        match version {
            TokenVersion::V1 => issuer_v1(tenant_id),
            TokenVersion::V2 => self.state.issuer_v2(tenant_id),
        }
    }

    /// The claims a real caller token of that spec carries (v1: `iss` sts.windows.net, `ver`
    /// "1.0", `appid`; v2: `iss` `{base}/{tid}/v2.0`, `ver` "2.0", `azp`).
    pub fn claims_for(&self, spec: &TokenSpec) -> Value {
        mint::claims_for(&self.state, spec)
    }

    /// A signed caller token of that spec: header `{alg RS256, typ JWT, kid, x5t}`.
    pub fn mint(&self, spec: &TokenSpec) -> String {
        mint::mint(&self.state, spec)
    }

    /// The header Entra puts on tokens signed with the active key (`RS256`, `JWT`, `kid`,
    /// `x5t`): a starting point for crafting bad tokens with [`SimEntra::sign`].
    pub fn header(&self) -> Header {
        self.state.keys.active().header()
    }

    /// The active signing key's `kid`.
    pub fn active_kid(&self) -> String {
        self.state.keys.active().kid.clone()
    }

    /// Signs arbitrary claims with the active key and exactly the given header (tests use it to
    /// craft wrong `aud`/`iss`, `jku` headers, ...).
    ///
    /// # Panics
    /// If `header.alg` is not an RSA algorithm (RS*/PS*): craft `none`/HS* tokens by hand.
    pub fn sign(&self, header: &Header, claims: &Value) -> String {
        let key = self.state.keys.active();
        let token = jsonwebtoken::encode(header, claims, &key.encoding)
            .expect("SimEntra::sign needs an RSA algorithm in the header");
        self.state.record(&token);
        token
    }

    /// Signs with RS256 and a key that is never published, under a `kid` nobody knows.
    pub fn sign_with_unpublished_key(&self, claims: &Value) -> String {
        let key = self.state.keys.unpublished();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("unpublished-{}", uuid::Uuid::new_v4().simple()));
        let token = jsonwebtoken::encode(&header, claims, &key.encoding).expect("RS256 signing");
        self.state.record(&token);
        token
    }

    /// The active key's public key as a `PUBLIC KEY` PEM (SubjectPublicKeyInfo), e.g. for the
    /// HS256-with-public-key confusion attack.
    pub fn public_key_pem(&self) -> String {
        self.state.keys.active().public_pem.clone()
    }

    /// Generates a new key, publishes it and makes it the signing key; old keys stay published.
    /// Returns the new `kid`. Blocks for the RSA key generation (tens of milliseconds).
    pub fn rotate_keys(&self) -> String {
        self.state.keys.rotate()
    }

    /// Sets (or with `None` clears) the failure injected into token requests for `who`.
    /// A user-specific failure wins over the global one.
    pub fn set_failure(&self, who: FailureScope, failure: Option<Failure>) {
        let mut f = self.state.failures.lock().expect("failures lock");
        match (who, failure) {
            (FailureScope::Global, failure) => f.global = failure,
            (FailureScope::User(oid), Some(failure)) => {
                f.users.insert(oid, failure);
            }
            (FailureScope::User(oid), None) => {
                f.users.remove(&oid);
            }
        }
    }

    /// JWKS fetches (v1 and v2 endpoints, any tenant, including failed ones).
    pub fn jwks_requests(&self) -> usize {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    /// OpenID discovery fetches (v1 and v2, including failed ones).
    pub fn discovery_requests(&self) -> usize {
        self.state.discovery_requests.load(Ordering::SeqCst)
    }

    /// Every POST to a token endpoint, whatever its outcome.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Successful on-behalf-of exchanges.
    pub fn exchanges(&self) -> usize {
        self.state.exchanges.load(Ordering::SeqCst)
    }

    /// Every token minted, signed or issued so far (caller tokens, Graph tokens, refresh
    /// tokens, ID tokens, device codes, federated tokens), every client assertion received,
    /// plus the client secret: tests scan logs and audit files for these.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.state.issued.lock().expect("issued lock").clone()
    }

    /// Every token request so far, oldest first: tenant, grant, client authentication, status.
    pub fn token_request_log(&self) -> Vec<TokenRequestSeen> {
        self.state.token_log.lock().expect("token log lock").clone()
    }

    /// Successful refresh-token grants.
    pub fn refreshes(&self) -> usize {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// Device-code polls (every POST with the device-code grant that passed client
    /// authentication).
    pub fn device_polls(&self) -> usize {
        self.state.device_polls.load(Ordering::SeqCst)
    }

    /// Device-code flows completed with tokens.
    pub fn device_logins(&self) -> usize {
        self.state.device_logins.load(Ordering::SeqCst)
    }

    /// Registers an RSA certificate (PEM) on the gateway's app registration, as an
    /// administrator uploads one; returns its `x5t#S256`. Several may be registered (rotation).
    ///
    /// # Panics
    /// If `pem` is not an RSA certificate.
    pub fn register_certificate(&self, pem: &str) -> String {
        self.state.register_certificate(pem)
    }

    /// The simulated OIDC issuer (a Kubernetes service-account issuer) whose tokens the
    /// federated credentials trust.
    pub fn federated_issuer(&self) -> String {
        self.state.federated_issuer()
    }

    /// Adds a federated identity credential to the app registration: issuer = the simulated
    /// OIDC issuer, this `subject`, audience `api://AzureADTokenExchange`.
    pub fn add_federated_credential(&self, subject: &str) {
        self.state
            .credentials
            .lock()
            .expect("credentials lock")
            .federated
            .push((subject.to_string(), TOKEN_EXCHANGE_AUDIENCE.to_string()));
    }

    /// A token of the simulated OIDC issuer, as the platform projects into the pod.
    pub fn mint_federated_token(&self, spec: &FederatedTokenSpec) -> String {
        self.state.mint_federated(spec)
    }

    /// Time passes for the OIDC issuer: every federated token minted so far is now past its
    /// `exp` and refused with AADSTS700024.
    pub fn expire_federated_tokens(&self) {
        self.state.expire_federated_tokens();
    }

    /// How polls of device codes issued from now on are answered (`None`: pending until
    /// [`SimEntra::approve_device_code`] or [`SimEntra::deny_device_code`]).
    pub fn script_device_login(&self, script: Option<DeviceScript>) {
        self.state.set_device_script(script);
    }

    /// The person at the browser signs in as `user` for `user_code`; false for an unknown code.
    pub fn approve_device_code(&self, user_code: &str, user: DeviceUser) -> bool {
        self.state
            .decide_device_code(user_code, DeviceOutcome::Approve(user))
    }

    /// The person at the browser declines `user_code`; false for an unknown code.
    pub fn deny_device_code(&self, user_code: &str) -> bool {
        self.state
            .decide_device_code(user_code, DeviceOutcome::Deny)
    }

    /// The newest refresh token of the user `object_id` that has not been redeemed yet.
    pub fn current_refresh_token(&self, object_id: &str) -> Option<String> {
        self.state.newest_refresh_token(object_id)
    }

    /// Revokes every unredeemed refresh token of `object_id` (password reset, admin action).
    pub fn revoke_refresh_tokens(&self, object_id: &str) {
        self.state.revoke_sessions(object_id);
    }

    /// Ninety days pass without use: every unredeemed refresh token of `object_id` expires.
    pub fn expire_refresh_tokens(&self, object_id: &str) {
        self.state.expire_sessions(object_id);
    }

    /// Stops the server: the IdP becomes unreachable (connections refused).
    pub async fn stop(&self) {
        self.server.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// State helpers

fn issuer_v1(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A GUID-shaped string derived from `input`, so derived ids are stable across runs.
fn derived_guid(domain: &str, input: &str) -> String {
    let d = Sha256::digest(format!("{domain}:{input}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

fn random_b64url(len: usize) -> String {
    let mut b = vec![0u8; len];
    rand::fill(&mut b[..]);
    URL_SAFE_NO_PAD.encode(b)
}

impl EntraState {
    fn knows_tenant(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t == tenant)
    }

    fn issuer_v2(&self, tenant: &str) -> String {
        format!("{}/{tenant}/v2.0", self.base)
    }

    fn record(&self, secret: &str) {
        self.issued
            .lock()
            .expect("issued lock")
            .push(secret.to_string());
    }

    fn sign_active(&self, claims: &Value) -> String {
        let key = self.keys.active();
        let token = jsonwebtoken::encode(&key.header(), claims, &key.encoding).expect("RS256");
        self.record(&token);
        token
    }

    fn failure_for(&self, oid: Option<&str>) -> Option<Failure> {
        let f = self.failures.lock().expect("failures lock");
        oid.and_then(|o| f.users.get(o).cloned())
            .or_else(|| f.global.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

/// `Authorization: Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 section 2.3.1).
fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

async fn token(
    state: web::Data<EntraState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let ctx = Ctx::new(&req);
    let tenant = path.into_inner();
    let mut seen = TokenRequestSeen {
        tenant: tenant.clone(),
        grant_type: String::new(),
        client_auth: None,
        status: 0,
    };
    let resp = match token_inner(&state, &tenant, &req, &body, &mut seen).await {
        Ok(body) => ctx
            .response(StatusCode::OK)
            .insert_header(("cache-control", "no-store, no-cache"))
            .insert_header(("pragma", "no-cache"))
            .json(body),
        Err(e) => e.into_response(&ctx, &state.base),
    };
    seen.status = resp.status().as_u16();
    let mut log = state.token_log.lock().expect("token log lock");
    if log.len() >= MAX_TOKEN_LOG {
        log.remove(0);
    }
    log.push(seen);
    resp
}

async fn token_inner(
    state: &EntraState,
    tenant: &str,
    req: &HttpRequest,
    body: &[u8],
    seen: &mut TokenRequestSeen,
) -> Result<Value, AadError> {
    // 1. Tenant. Multi-tenant aliases are refused too: the gateway must use the caller's tenant.
    if !state.knows_tenant(tenant) {
        return Err(AadError::tenant_not_found("invalid_request", tenant));
    }
    let form = parse_form(req, body);
    seen.grant_type = form.get("grant_type").cloned().unwrap_or_default();
    // 2. Client authentication.
    seen.client_auth = presented_client_auth(state, req, &form);
    authenticate_client(state, tenant, req, &form)?;
    // 3. Grant dispatch.
    match form.get("grant_type").map(String::as_str) {
        None => Err(AadError::missing("grant_type")),
        Some(GRANT_JWT_BEARER) => on_behalf_of(state, tenant, &form).await,
        Some(GRANT_REFRESH_TOKEN) => sessions::refresh_token_grant(state, tenant, &form).await,
        Some(GRANT_DEVICE_CODE) => sessions::device_code_grant(state, tenant, &form).await,
        Some(other) => Err(AadError::new(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{other}'."),
        )),
    }
}

/// How the request tries to authenticate the client, before any check.
fn presented_client_auth(
    state: &EntraState,
    req: &HttpRequest,
    form: &Form,
) -> Option<ClientAuthSeen> {
    if basic_credentials(req).is_some() || form.contains_key("client_secret") {
        return Some(ClientAuthSeen::Secret);
    }
    form.get("client_assertion")
        .and_then(|a| state.presented(a))
}

fn authenticate_client(
    state: &EntraState,
    tenant: &str,
    req: &HttpRequest,
    form: &Form,
) -> Result<(), AadError> {
    let (client_id, secret) = match basic_credentials(req) {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (
            form.get("client_id").cloned(),
            form.get("client_secret").cloned(),
        ),
    };
    let Some(client_id) = client_id else {
        return Err(AadError::missing("client_id"));
    };
    if client_id != state.client_id {
        return Err(AadError::new(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{tenant}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant. You may \
                 have sent your authentication request to the wrong tenant."
            ),
        ));
    }
    match secret {
        Some(secret) => {
            // Constant time, as a real credential check would be.
            if bool::from(secret.as_bytes().ct_eq(state.client_secret.as_bytes())) {
                Ok(())
            } else {
                Err(AadError::new(
                    401,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the \
                         request is the client secret value, not the client secret ID, for a \
                         secret added to app '{}'.",
                        state.client_id
                    ),
                ))
            }
        }
        None if form.contains_key("client_assertion") => {
            if form.get("client_assertion_type").map(String::as_str) != Some(CLIENT_ASSERTION_TYPE)
            {
                return Err(AadError::new(
                    400,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'client_assertion_type'.",
                ));
            }
            state.check_client_assertion(tenant, &form["client_assertion"])
        }
        None => Err(AadError::new(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or \
             'client_secret'.",
        )),
    }
}

/// What a valid `scope` parameter asks for.
#[derive(Clone)]
struct Scopes {
    permissions: Vec<&'static str>,
    offline_access: bool,
    openid: bool,
}

fn parse_scopes(state: &EntraState, scope: &str) -> Result<Scopes, AadError> {
    let invalid = |s: &str| {
        AadError::new(
            400,
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope \
                 '{s}' is not valid."
            ),
        )
    };
    let prefix = format!("{}/", state.graph_resource);
    let mut out = Scopes {
        permissions: Vec::new(),
        offline_access: false,
        openid: false,
    };
    let mut default_scope = false;
    for s in scope.split_whitespace() {
        if OIDC_SCOPES.contains(&s) {
            out.offline_access |= s == "offline_access";
            out.openid |= s == "openid";
            continue;
        }
        let Some(perm) = s.strip_prefix(&prefix) else {
            return Err(invalid(s));
        };
        if perm == ".default" {
            // `.default` = every permission consented for the app on that resource.
            default_scope = true;
            continue;
        }
        match PERMISSIONS.iter().find(|p| **p == perm) {
            Some(p) if !out.permissions.contains(p) => out.permissions.push(p),
            Some(_) => {}
            None => return Err(invalid(s)),
        }
    }
    if default_scope {
        if !out.permissions.is_empty() {
            // Entra refuses `.default` mixed with named scopes of the same resource.
            return Err(invalid(scope));
        }
        out.permissions = PERMISSIONS
            .iter()
            .copied()
            .filter(|p| state.consented.iter().any(|c| c == p))
            .collect();
    }
    if out.permissions.is_empty() {
        return Err(invalid(scope));
    }
    Ok(out)
}

fn aud_matches(claims: &Value, audiences: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    }
}

fn invalid_assertion(message: impl Into<String>) -> AadError {
    AadError::new(400, "invalid_grant", 50013, message)
}

async fn on_behalf_of(state: &EntraState, tenant: &str, form: &Form) -> Result<Value, AadError> {
    // 4. requested_token_use.
    match form.get("requested_token_use").map(String::as_str) {
        Some("on_behalf_of") => {}
        Some(other) => {
            return Err(AadError::new(
                400,
                "invalid_request",
                90014,
                format!(
                    "The provided value '{other}' for the field 'requested_token_use' is not \
                     valid; expected 'on_behalf_of'."
                ),
            ))
        }
        None => {
            return Err(AadError::new(
                400,
                "invalid_request",
                90014,
                "The required field 'requested_token_use' is missing from the credential. \
                 Ensure that you have all the necessary parameters for the login request.",
            ))
        }
    }
    // 5. scope.
    let scope = form
        .get("scope")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| AadError::missing("scope"))?;
    let scopes = parse_scopes(state, scope)?;
    // 6. assertion.
    let assertion = form
        .get("assertion")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AadError::missing("assertion"))?;
    let user = validate_assertion(state, tenant, assertion)?;
    // 6b. Consent: every named permission must have been consented to for the app.
    if scopes
        .permissions
        .iter()
        .any(|p| !state.consented.iter().any(|c| c == p))
    {
        return Err(consent_required(state));
    }
    // 7. Failure injection.
    injected_failure(state, user.oid.as_deref()).await?;
    // 8. Issue the Graph token.
    let body = issue_tokens(state, tenant, &user, &scopes);
    state.exchanges.fetch_add(1, Ordering::SeqCst);
    Ok(body)
}

/// The user an OBO assertion (or a session) speaks for.
#[derive(Debug, Clone)]
struct AssertedUser {
    tid: String,
    oid: Option<String>,
    upn: Option<String>,
}

/// Entra's checks on the OBO assertion, in order: signature by a published key, audience,
/// lifetime, tenant, issuer, and that it is a delegated user token.
fn validate_assertion(
    state: &EntraState,
    tenant: &str,
    assertion: &str,
) -> Result<AssertedUser, AadError> {
    let (_header, claims) = state.keys.verify(assertion).map_err(|e| {
        invalid_assertion(match e {
            VerifyError::Malformed => "Assertion is not a well-formed JWT.".to_string(),
            VerifyError::Algorithm => format!(
                "Assertion uses an unsupported algorithm '{:?}'.",
                header_alg(assertion)
            ),
            VerifyError::UnknownKey | VerifyError::Signature => {
                "Assertion failed signature validation. [Reason - The key was not found.]"
                    .to_string()
            }
        })
    })?;
    if !aud_matches(&claims, &state.api_audiences) {
        return Err(invalid_assertion(format!(
            "Assertion audience does not match the Client app presenting the assertion. The \
             audience in the assertion was '{}' and the expected audience is '{}' or one of the \
             Application Id URIs of this application.",
            claims.get("aud").map(Value::to_string).unwrap_or_default(),
            state.client_id
        )));
    }
    let now = now_unix();
    let Some(exp) = claims.get("exp").and_then(Value::as_i64) else {
        return Err(invalid_assertion("Assertion has no expiry."));
    };
    let nbf = claims.get("nbf").and_then(Value::as_i64);
    // No clock-skew allowance: a gateway must not present tokens at the edge of expiry.
    if now >= exp || nbf.is_some_and(|n| n > now) {
        return Err(AadError::new(
            400,
            "invalid_grant",
            500133,
            format!(
                "Assertion is not within its valid time range. Ensure that the access token is \
                 not expired before using it for user assertion, or request a new token. Current \
                 time: {}, expiry time of assertion {}.",
                fmt_unix(now),
                fmt_unix(exp)
            ),
        ));
    }
    let claim = |name: &str| claims.get(name).and_then(Value::as_str);
    let tid = claim("tid").unwrap_or("");
    if tid != tenant {
        return Err(invalid_assertion(format!(
            "Assertion was issued for tenant '{tid}', not for the requested tenant '{tenant}'."
        )));
    }
    let iss = claim("iss").unwrap_or("");
    if iss != issuer_v1(tid) && iss != state.issuer_v2(tid) {
        return Err(invalid_assertion(format!(
            "Assertion contains an invalid issuer '{iss}'."
        )));
    }
    let is_app = claim("idtyp") == Some("app");
    let has_scp = claim("scp").is_some_and(|s| !s.trim().is_empty());
    if is_app || !has_scp {
        return Err(invalid_assertion(
            "Assertion is not a user token; the on-behalf-of flow requires a delegated user \
             token.",
        ));
    }
    Ok(AssertedUser {
        tid: tid.to_string(),
        oid: claim("oid").map(str::to_string),
        upn: ["upn", "preferred_username", "unique_name"]
            .into_iter()
            .find_map(claim)
            .map(str::to_string),
    })
}

/// AADSTS65001: the app has no consent for what it asked.
fn consent_required(state: &EntraState) -> AadError {
    AadError::new(
        400,
        "invalid_grant",
        65001,
        format!(
            "The user or administrator has not consented to use the application with ID \
             '{}'. Send an interactive authorization request for this user and resource.",
            state.client_id
        ),
    )
    .with("suberror", json!("consent_required"))
}

/// Applies the failure configured for `oid` (else the global one), if any.
async fn injected_failure(state: &EntraState, oid: Option<&str>) -> Result<(), AadError> {
    match state.failure_for(oid) {
        None => Ok(()),
        Some(Failure::Slow(d)) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Some(Failure::StepUp { claims }) => Err(AadError::new(
            400,
            "invalid_grant",
            50076,
            format!(
                "Due to a configuration change made by your administrator, or because you moved \
                 to a new location, you must use multi-factor authentication to access '{}'.",
                state.graph_resource
            ),
        )
        .with("suberror", json!("basic_action"))
        .with("claims", json!(claims))),
        Some(Failure::ConsentRequired) => Err(consent_required(state)),
        Some(Failure::Throttle { retry_after_secs }) => Err(AadError::new(
            429,
            "temporarily_unavailable",
            90055,
            "There are too many incoming requests. Please retry later.",
        )
        .retry_after(retry_after_secs)),
        Some(Failure::ServerError) => Err(AadError::new(
            500,
            "server_error",
            50000,
            "There was an error issuing a token or an issue with our sign-in service.",
        )),
    }
}

/// Signs a v1 Graph access token for `user` and builds the token response, with a refresh
/// token (redeemable once) when `offline_access` was asked and an ID token when `openid` was.
fn issue_tokens(state: &EntraState, tenant: &str, user: &AssertedUser, scopes: &Scopes) -> Value {
    let now = now_unix();
    let lifetime = i64::try_from(state.graph_token_lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    let oid = user.oid.clone().unwrap_or_default();
    let mut c = Map::new();
    c.insert("aud".into(), json!(state.graph_resource));
    c.insert("iss".into(), json!(issuer_v1(&user.tid)));
    c.insert("iat".into(), json!(now));
    c.insert("nbf".into(), json!(now));
    c.insert("exp".into(), json!(now.saturating_add(lifetime)));
    c.insert("appid".into(), json!(state.client_id));
    c.insert("appidacr".into(), json!("1"));
    c.insert("idtyp".into(), json!("user"));
    c.insert("oid".into(), json!(oid));
    // Graph tokens carry bare permission names, without the resource prefix.
    c.insert("scp".into(), json!(scopes.permissions.join(" ")));
    let sub = URL_SAFE_NO_PAD.encode(Sha256::digest(
        format!("{oid}:{}", state.graph_resource).as_bytes(),
    ));
    c.insert("sub".into(), json!(sub));
    c.insert("tid".into(), json!(user.tid));
    if let Some(upn) = &user.upn {
        c.insert("upn".into(), json!(upn));
        c.insert("unique_name".into(), json!(upn));
    }
    c.insert("uti".into(), json!(random_b64url(16)));
    c.insert("ver".into(), json!("1.0"));
    let access_token = state.sign_active(&Value::Object(c));
    let granted: Vec<String> = scopes
        .permissions
        .iter()
        .map(|p| format!("{}/{p}", state.graph_resource))
        .collect();
    let mut body = json!({
        "token_type": "Bearer",
        "scope": granted.join(" "),
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    });
    if scopes.offline_access {
        // Opaque, as Entra's are; recorded so leak scans find it.
        let rt = format!("1.SIM{}", random_b64url(96));
        state.record(&rt);
        state.register_refresh_token(&rt, tenant, user, scopes);
        body["refresh_token"] = json!(rt);
    }
    if scopes.openid {
        body["id_token"] = json!(id_token(state, user, now, lifetime));
    }
    body
}

/// A v2 ID token naming `user`, for the gateway's application.
fn id_token(state: &EntraState, user: &AssertedUser, now: i64, lifetime: i64) -> String {
    let oid = user.oid.clone().unwrap_or_default();
    let mut c = Map::new();
    c.insert("aud".into(), json!(state.client_id));
    c.insert("iss".into(), json!(state.issuer_v2(&user.tid)));
    c.insert("iat".into(), json!(now));
    c.insert("nbf".into(), json!(now));
    c.insert("exp".into(), json!(now.saturating_add(lifetime)));
    c.insert("oid".into(), json!(oid));
    c.insert("tid".into(), json!(user.tid));
    c.insert(
        "sub".into(),
        json!(URL_SAFE_NO_PAD.encode(Sha256::digest(
            format!("{oid}:{}", state.client_id).as_bytes()
        ))),
    );
    if let Some(upn) = &user.upn {
        c.insert("preferred_username".into(), json!(upn));
        c.insert("name".into(), json!(upn));
    }
    c.insert("ver".into(), json!("2.0"));
    state.sign_active(&Value::Object(c))
}

fn header_alg(token: &str) -> Option<Algorithm> {
    jsonwebtoken::decode_header(token).ok().map(|h| h.alg)
}

fn fmt_unix(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%m/%d/%Y %H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::super::{SimOptions, Simulators};
    use super::*;

    pub(crate) const TENANT: &str = "11111111-2222-3333-4444-555555555555";
    pub(crate) const OTHER_TENANT: &str = "99999999-2222-3333-4444-555555555555";

    pub(crate) async fn sims() -> Simulators {
        Simulators::start(SimOptions::new(
            vec![TENANT.to_string(), OTHER_TENANT.to_string()],
            "gw-client-id",
            "gw-secret-value",
            vec!["gw-client-id".to_string(), "api://sync-gateway".to_string()],
        ))
        .await
        .unwrap()
    }

    pub(crate) fn obo_form(sims: &Simulators, assertion: &str) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", GRANT_JWT_BEARER.to_string()),
            ("client_id", "gw-client-id".to_string()),
            ("client_secret", "gw-secret-value".to_string()),
            ("assertion", assertion.to_string()),
            (
                "scope",
                format!("{}/{PERMISSION_READ_WRITE}", sims.entra.graph_resource()),
            ),
            ("requested_token_use", "on_behalf_of".to_string()),
        ]
    }

    pub(crate) async fn post_token(
        sims: &Simulators,
        form: &[(&'static str, String)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/{TENANT}/oauth2/v2.0/token",
                sims.entra.base_url()
            ))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap())
    }

    fn error_code(body: &Value) -> i64 {
        body["error_codes"][0].as_i64().unwrap()
    }

    #[actix_rt::test]
    async fn discovery_and_jwks_shape() {
        let s = sims().await;
        let base = s.entra.base_url();
        let c = reqwest::Client::new();
        let v2: Value = c
            .get(format!(
                "{base}/{TENANT}/v2.0/.well-known/openid-configuration"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v2["issuer"], json!(format!("{base}/{TENANT}/v2.0")));
        assert_eq!(
            v2["jwks_uri"],
            json!(format!("{base}/{TENANT}/discovery/v2.0/keys"))
        );
        assert_eq!(
            v2["token_endpoint"],
            json!(format!("{base}/{TENANT}/oauth2/v2.0/token"))
        );
        assert_eq!(
            v2["id_token_signing_alg_values_supported"],
            json!(["RS256"])
        );
        let v1: Value = c
            .get(format!("{base}/{TENANT}/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            v1["issuer"],
            json!(format!("https://sts.windows.net/{TENANT}/"))
        );
        assert_eq!(
            v1["jwks_uri"],
            json!(format!("{base}/{TENANT}/discovery/keys"))
        );

        let unknown = c
            .get(format!(
                "{base}/not-a-tenant/v2.0/.well-known/openid-configuration"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status().as_u16(), 400);
        let body: Value = unknown.json().await.unwrap();
        assert_eq!(error_code(&body), 90002);

        let jwks: Value = c
            .get(v2["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let k = &keys[0];
        assert!(k.get("alg").is_none(), "Entra publishes no alg");
        assert_eq!(k["kty"], "RSA");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["kid"], json!(s.entra.active_kid()));
        assert!(k["x5t"].is_string() && k["n"].is_string() && k["e"] == "AQAB");
        assert_eq!(k["issuer"], json!(format!("{base}/{{tenantid}}/v2.0")));
        let v1keys: Value = c
            .get(v1["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v1keys["keys"][0].get("issuer").is_none());
        assert!(v1keys["keys"][0].get("alg").is_none());
        assert_eq!(s.entra.discovery_requests(), 3);
        assert_eq!(s.entra.jwks_requests(), 2);

        // Rotation keeps the old key published and signs with the new one.
        let old = s.entra.active_kid();
        let new = s.entra.rotate_keys();
        assert_ne!(old, new);
        let jwks: Value = c
            .get(v2["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, vec![old.as_str(), new.as_str()]);
        let t = s.entra.mint(&TokenSpec::user(TENANT, "u1"));
        assert_eq!(
            jsonwebtoken::decode_header(&t).unwrap().kid.as_deref(),
            Some(new.as_str())
        );
    }

    #[actix_rt::test]
    async fn claims_follow_token_version() {
        let s = sims().await;
        let v2 = s.entra.claims_for(&TokenSpec::user(TENANT, "u1"));
        assert_eq!(v2["ver"], "2.0");
        assert_eq!(v2["azp"], DEFAULT_CLIENT_APP_ID);
        assert_eq!(v2["aud"], "gw-client-id");
        assert_eq!(v2["scp"], "Sync.Trigger");
        assert_eq!(v2["preferred_username"], "u1@example.test");
        assert!(v2.get("xms_cc").is_none() && v2.get("idtyp").is_none());
        let mut spec = TokenSpec::user(TENANT, "u1");
        spec.version = TokenVersion::V1;
        let v1 = s.entra.claims_for(&spec);
        assert_eq!(
            v1["iss"],
            json!(format!("https://sts.windows.net/{TENANT}/"))
        );
        assert_eq!(v1["ver"], "1.0");
        assert_eq!(v1["appid"], DEFAULT_CLIENT_APP_ID);
        let app = s.entra.claims_for(&TokenSpec::app(TENANT, "some-app"));
        assert_eq!(app["idtyp"], "app");
        assert!(app.get("scp").is_none() && app.get("upn").is_none());
        let mut expired = TokenSpec::user(TENANT, "u1");
        expired.expires_at = Some(now_unix() - 60);
        let c = s.entra.claims_for(&expired);
        assert!(c["iat"].as_i64().unwrap() < c["exp"].as_i64().unwrap());
    }

    #[actix_rt::test]
    async fn wrong_secret_is_invalid_client() {
        let s = sims().await;
        let t = s.entra.mint(&TokenSpec::user(TENANT, "u1"));
        let mut form = obo_form(&s, &t);
        form[2].1 = "wrong".to_string();
        let (status, _, body) = post_token(&s, &form).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(error_code(&body), 7000215);
        for k in [
            "error_description",
            "timestamp",
            "trace_id",
            "correlation_id",
            "error_uri",
        ] {
            assert!(body[k].is_string(), "{k} missing");
        }
        form[1].1 = "someone-else".to_string();
        let (status, _, body) = post_token(&s, &form).await;
        assert_eq!((status, error_code(&body)), (400, 700016));
        assert_eq!(s.entra.token_requests(), 2);
        assert_eq!(s.entra.exchanges(), 0);
    }

    #[actix_rt::test]
    async fn basic_auth_and_checks_in_order() {
        let s = sims().await;
        let t = s.entra.mint(&TokenSpec::user(TENANT, "u1"));
        // HTTP Basic instead of form fields.
        let form: Vec<_> = obo_form(&s, &t)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("client_"))
            .collect();
        let r = reqwest::Client::new()
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", s.entra.base_url()))
            .basic_auth("gw-client-id", Some("gw-secret-value"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);

        let mut f = obo_form(&s, &t);
        f[0].1 = "client_credentials".into();
        let (st, _, b) = post_token(&s, &f).await;
        assert_eq!(
            (st, b["error"].as_str().unwrap(), error_code(&b)),
            (400, "unsupported_grant_type", 70003)
        );

        let mut f = obo_form(&s, &t);
        f.retain(|(k, _)| *k != "requested_token_use");
        let (st, _, b) = post_token(&s, &f).await;
        assert_eq!((st, b["error"].as_str().unwrap()), (400, "invalid_request"));

        let mut f = obo_form(&s, &t);
        f[4].1 = "https://graph.microsoft.com/DeviceManagementServiceConfig.ReadWrite.All".into();
        let (st, _, b) = post_token(&s, &f).await;
        assert_eq!((st, error_code(&b)), (400, 70011));

        // An app-only token cannot be exchanged.
        let app = s.entra.mint(&TokenSpec::app(TENANT, "some-app"));
        let (st, _, b) = post_token(&s, &obo_form(&s, &app)).await;
        assert_eq!(
            (st, b["error"].as_str().unwrap(), error_code(&b)),
            (400, "invalid_grant", 50013)
        );

        // Wrong audience and unpublished key are invalid assertions.
        let mut spec = TokenSpec::user(TENANT, "u1");
        spec.audience = Some("someone-else".into());
        let (st, _, b) = post_token(&s, &obo_form(&s, &s.entra.mint(&spec))).await;
        assert_eq!((st, error_code(&b)), (400, 50013));
        let forged = s
            .entra
            .sign_with_unpublished_key(&s.entra.claims_for(&TokenSpec::user(TENANT, "u1")));
        let (st, _, b) = post_token(&s, &obo_form(&s, &forged)).await;
        assert_eq!((st, error_code(&b)), (400, 50013));

        // Unknown tenant in the path.
        let r = reqwest::Client::new()
            .post(format!(
                "{}/other-tenant/oauth2/v2.0/token",
                s.entra.base_url()
            ))
            .form(&obo_form(&s, &t))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let b: Value = r.json().await.unwrap();
        assert_eq!(
            (b["error"].as_str().unwrap(), error_code(&b)),
            ("invalid_request", 90002)
        );
    }

    #[actix_rt::test]
    async fn expired_assertion_is_500133() {
        let s = sims().await;
        let mut spec = TokenSpec::user(TENANT, "u1");
        spec.expires_at = Some(now_unix() - 10);
        let t = s.entra.mint(&spec);
        let (status, _, body) = post_token(&s, &obo_form(&s, &t)).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(error_code(&body), 500133);
    }

    #[actix_rt::test]
    async fn injected_failures() {
        let s = sims().await;
        let t = s.entra.mint(&TokenSpec::user(TENANT, "u1"));
        let other = s.entra.mint(&TokenSpec::user(TENANT, "u2"));
        let challenge = r#"{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}"#;
        s.entra.set_failure(
            FailureScope::User("u1".into()),
            Some(Failure::StepUp {
                claims: challenge.into(),
            }),
        );
        let (status, _, body) = post_token(&s, &obo_form(&s, &t)).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(error_code(&body), 50076);
        assert_eq!(body["suberror"], "basic_action");
        assert_eq!(body["claims"], challenge);
        // Another user is unaffected.
        let (status, _, _) = post_token(&s, &obo_form(&s, &other)).await;
        assert_eq!(status, 200);

        s.entra.set_failure(
            FailureScope::Global,
            Some(Failure::Throttle {
                retry_after_secs: 7,
            }),
        );
        let (status, headers, body) = post_token(&s, &obo_form(&s, &other)).await;
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "7");
        assert_eq!(body["error"], "temporarily_unavailable");
        // The user-specific failure wins over the global one.
        let (_, _, body) = post_token(&s, &obo_form(&s, &t)).await;
        assert_eq!(error_code(&body), 50076);

        s.entra
            .set_failure(FailureScope::Global, Some(Failure::ServerError));
        let (status, _, body) = post_token(&s, &obo_form(&s, &other)).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (500, "server_error")
        );
        s.entra.set_failure(FailureScope::Global, None);
        s.entra.set_failure(FailureScope::User("u1".into()), None);
        let (status, _, _) = post_token(&s, &obo_form(&s, &t)).await;
        assert_eq!(status, 200);
        assert_eq!(s.entra.exchanges(), 2);
    }

    #[actix_rt::test]
    async fn mint_endpoint_and_stop() {
        let s = sims().await;
        let c = reqwest::Client::new();
        let r: Value = c
            .post(format!("{}/_sim/tokens", s.entra.base_url()))
            .json(&json!({"tenant_id": TENANT, "object_id": "u9", "version": "v1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let t = r["access_token"].as_str().unwrap();
        assert!(s.entra.issued_secrets().iter().any(|x| x == t));
        assert!(s
            .entra
            .issued_secrets()
            .iter()
            .any(|x| x == "gw-secret-value"));
        let (status, _, _) = post_token(&s, &obo_form(&s, t)).await;
        assert_eq!(status, 200);

        s.entra.stop().await;
        // A fresh client: pooled connections to a stopped server fail differently.
        let addr = s.entra.base_url().trim_start_matches("http://").to_string();
        assert!(std::net::TcpStream::connect(addr).is_err());
        let err = reqwest::Client::new()
            .get(format!(
                "{}/{TENANT}/v2.0/.well-known/openid-configuration",
                s.entra.base_url()
            ))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }
}
