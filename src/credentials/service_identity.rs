//! Service identities (reference §5): dedicated user accounts whose delegated sessions the
//! gateway holds, so callers that are not users (webhooks, bots, app-only tokens) can trigger
//! an action that accepts only delegated permissions.
//!
//! - [`login`] bootstraps a session with the device-code flow and stores its refresh token.
//! - [`ServiceIdentity::token`] turns the session into a Graph token: cached until 5 minutes
//!   before it expires, else one `refresh_token` grant, with one refresh in flight per identity
//!   (the others wait for it). Entra rotates the refresh token on every use, so the new one is
//!   stored durably *before* the access token is handed out.
//! - A session that can no longer refresh (revoked, expired after 90 days idle, already used)
//!   is marked [`SessionHealth::LoginRequired`]: callers get 503, `/readyz` says degraded, and
//!   the gateway stops asking Entra until the store file changes (a new `login`).

use super::endpoint::{EntraClient, ErrorBody, Refusal};
use super::file_stamp::FileStamp;
use super::store::{Account, SessionStore, StoreError, StoredSession};
use super::token::{DelegatedToken, EXPIRY_BUFFER};
use crate::background::Background;
use crate::config::{Config, IdentityConfig};
use crate::domain::CallerSummary;
use crate::error::GatewayError;
use crate::secret::Secret;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `grant_type` of the device-code poll (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Scopes asked for besides the Graph ones: an ID token naming the account, and a refresh token.
const SESSION_SCOPES: &str = "openid profile offline_access";

/// RFC 8628 §3.5: after `slow_down` the interval grows by 5 seconds, for good.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// How often an idle session is refreshed so it does not expire (Entra: 90 days of inactivity)
/// and a revoked one is noticed before a caller needs it.
pub const KEEPALIVE_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// The state of an identity's session, for `/readyz` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum SessionHealth {
    /// A session is stored and its last refresh, if any, succeeded.
    Ready,
    /// No usable session: an operator must run `sync-gateway login --identity NAME`.
    LoginRequired {
        /// Why, for the operator.
        reason: String,
    },
    /// The last rotated refresh token could not be stored; it lives only in memory.
    StoreUnavailable {
        /// Why, for the operator.
        reason: String,
    },
}

impl SessionHealth {
    /// `ready`, `login-required` or `store-unavailable`: what `/readyz` shows (the reason
    /// stays in the logs, off an unauthenticated endpoint).
    pub fn state(&self) -> &'static str {
        match self {
            SessionHealth::Ready => "ready",
            SessionHealth::LoginRequired { .. } => "login-required",
            SessionHealth::StoreUnavailable { .. } => "store-unavailable",
        }
    }
}

/// An identity's health and the account it acts as.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityStatus {
    /// The session's state.
    #[serde(flatten)]
    pub health: SessionHealth,
    /// The account, once a session was loaded.
    pub account: Option<Account>,
}

/// What the session mutex guards.
struct Session {
    /// The newest refresh token known; `None` when a login is required.
    stored: Option<StoredSession>,
    /// The store file as last read or written, to notice a replacement.
    stamp: Option<FileStamp>,
    /// The Graph token of the last refresh.
    access: Option<Arc<DelegatedToken>>,
}

/// One configured service identity.
pub struct ServiceIdentity {
    name: Arc<str>,
    tenant_id: String,
    scopes: Vec<String>,
    store: SessionStore,
    entra: Arc<EntraClient>,
    session: tokio::sync::Mutex<Session>,
    status: RwLock<IdentityStatus>,
    /// Where a session picked up from a `login` is recorded (an `identity_login` admin record).
    audit: Option<crate::audit::AuditLog>,
}

impl ServiceIdentity {
    /// The identity `cfg` describes, with its session loaded from its store.
    pub fn new(cfg: &IdentityConfig, entra: Arc<EntraClient>) -> ServiceIdentity {
        let store = SessionStore::new(
            cfg.store_path.clone(),
            &cfg.store_key,
            &cfg.name,
            &cfg.tenant_id,
        );
        let stamp = store.stamp();
        let mut id = ServiceIdentity {
            name: cfg.name.as_str().into(),
            tenant_id: cfg.tenant_id.clone(),
            scopes: cfg.scopes.clone(),
            store,
            entra,
            session: tokio::sync::Mutex::new(Session {
                stored: None,
                stamp,
                access: None,
            }),
            status: RwLock::new(IdentityStatus {
                health: SessionHealth::Ready,
                account: None,
            }),
            audit: None,
        };
        id.session.get_mut().stored = id.load();
        id
    }

    /// The name of `[identities.NAME]`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The account's tenant.
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// Health and account, without waiting for a refresh in flight.
    pub fn status(&self) -> IdentityStatus {
        self.status.read().clone()
    }

    /// What the audit trail records as the identity acted as.
    pub fn summary(&self) -> CallerSummary {
        let account = self.status().account.unwrap_or_default();
        CallerSummary {
            kind: "service_identity",
            tenant_id: self.tenant_id.clone(),
            object_id: account.object_id,
            upn: account.upn,
            app_id: None,
            identity: Some(self.name.to_string()),
        }
    }

    /// A Graph token acting as this identity, for `scope` (one of its configured scopes).
    pub async fn token(&self, scope: &str) -> Result<Arc<DelegatedToken>, GatewayError> {
        if !self.scopes.iter().any(|s| s == scope) {
            tracing::error!(identity = %self.name, scope, "the service identity's scopes do not include the action's scope");
            return Err(GatewayError::Internal);
        }
        // One refresh in flight per identity: concurrent callers queue here and then find the
        // token the first one obtained.
        let mut s = self.session.lock().await;
        if let Some(t) = s.access.as_ref().filter(|t| t.is_usable()) {
            return Ok(t.clone());
        }
        if self.pick_up_store_changes(&mut s) {
            self.record_login().await;
        }
        let Some(current) = s.stored.clone() else {
            return Err(self.login_required_error());
        };
        let scope = format!("{} offline_access", self.scopes.join(" "));
        let grant = [
            ("grant_type", "refresh_token"),
            ("refresh_token", current.refresh_token.expose()),
            ("scope", scope.as_str()),
        ];
        let answer = match self.entra.request(&self.tenant_id, &grant).await {
            Ok(a) => a,
            Err(Refusal::Failed(e)) => return Err(e),
            Err(Refusal::Grant(e)) => return Err(self.refresh_refused(&mut s, &e)),
        };
        let Some(rotated) = answer.refresh_token else {
            // Entra always rotates; without a new token the old one stays the newest.
            tracing::warn!(identity = %self.name, "Entra ID returned no new refresh token; keeping the current one");
            return self.hand_out(&mut s, answer.access_token, answer.expires_in);
        };
        let next = StoredSession {
            refresh_token: rotated,
            refreshed_at: Some(chrono::Utc::now()),
            ..current
        };
        // Durable before use: once rotated, the old token may no longer work at Entra.
        if let Err(e) = self.store.save(&next) {
            s.stored = Some(next);
            tracing::error!(identity = %self.name, error = %e,
                "the rotated refresh token could not be stored; the session lives only in memory until the store is writable");
            self.set_health(SessionHealth::StoreUnavailable {
                reason: e.to_string(),
            });
            return Err(GatewayError::SessionStoreUnavailable {
                identity: self.name.to_string(),
            });
        }
        s.stamp = self.store.stamp();
        s.stored = Some(next);
        self.set_health(SessionHealth::Ready);
        self.hand_out(&mut s, answer.access_token, answer.expires_in)
    }

    fn hand_out(
        &self,
        s: &mut Session,
        access_token: Secret,
        expires_in: Duration,
    ) -> Result<Arc<DelegatedToken>, GatewayError> {
        let token = Arc::new(DelegatedToken::new(
            access_token,
            expires_in.saturating_sub(EXPIRY_BUFFER),
        )?);
        s.access = Some(token.clone());
        Ok(token)
    }

    /// Loads the store, setting health and account; `None` when no session is usable.
    fn load(&self) -> Option<StoredSession> {
        match self.store.load() {
            Ok(Some(stored)) => {
                self.set_status(SessionHealth::Ready, Some(stored.account.clone()));
                Some(stored)
            }
            Ok(None) => {
                self.mark_login_required("no session is stored yet".into());
                None
            }
            Err(e) => {
                self.mark_login_required(e.to_string());
                None
            }
        }
    }

    /// A `login` (or another replica) replaced the store: its session wins over ours. True
    /// when a usable session was picked up that way.
    fn pick_up_store_changes(&self, s: &mut Session) -> bool {
        let stamp = self.store.stamp();
        if stamp == s.stamp {
            return false;
        }
        tracing::info!(identity = %self.name, store = %self.store.path().display(),
            "the session store changed on disk; reading it again");
        s.stamp = stamp;
        s.access = None;
        s.stored = self.load();
        s.stored.is_some()
    }

    /// Records, in the audit trail, that a session from a `login` is now in use. `login` runs
    /// as its own process and cannot append to the gateway's chain, so the gateway records it
    /// when it takes the new session up.
    async fn record_login(&self) {
        let Some(audit) = &self.audit else { return };
        let event = crate::audit::AdminEvent::IdentityLogin {
            identity: self.name.to_string(),
            tenant_id: self.tenant_id.clone(),
            method: "device_code".into(),
            outcome: "succeeded".into(),
        };
        if let Err(e) = audit.admin(event).await {
            tracing::error!(identity = %self.name, error = %e, "the service identity's login could not be recorded");
        }
    }

    fn refresh_refused(&self, s: &mut Session, e: &ErrorBody) -> GatewayError {
        let dead = matches!(
            e.error.as_str(),
            "invalid_grant" | "interaction_required" | "consent_required"
        );
        if !dead {
            tracing::error!(identity = %self.name, error = %e.error, code = %e.aadsts(),
                "Entra ID refused to refresh the service identity's session");
            return GatewayError::ExchangeFailed(format!(
                "Entra ID refused to refresh the session of service identity '{}' ({}, {})",
                self.name,
                e.error,
                e.aadsts()
            ));
        }
        s.stored = None;
        s.access = None;
        self.mark_login_required(format!(
            "Entra ID refused the refresh token ({}, {}): revoked, expired after 90 days idle, or already used",
            e.error,
            e.aadsts()
        ));
        self.login_required_error()
    }

    fn login_required_error(&self) -> GatewayError {
        GatewayError::ServiceIdentityLoginRequired {
            identity: self.name.to_string(),
        }
    }

    /// Marks the session unusable: one log line with `event = "service_identity_login_required"`
    /// per transition (for alerts on logs), and the state in [`ServiceIdentity::status`], which
    /// `/readyz` and the `service_identity_login_required` gauge read.
    fn mark_login_required(&self, reason: String) {
        let was = self.status().health;
        if !matches!(was, SessionHealth::LoginRequired { .. }) {
            tracing::error!(event = "service_identity_login_required", identity = %self.name, tenant = %self.tenant_id, reason = %reason,
                "service identity '{}' has no usable session: run `sync-gateway login --config <file> --identity {}`",
                self.name, self.name);
        }
        self.set_health(SessionHealth::LoginRequired { reason });
    }

    fn set_health(&self, health: SessionHealth) {
        let mut g = self.status.write();
        g.health = health;
    }

    fn set_status(&self, health: SessionHealth, account: Option<Account>) {
        let mut g = self.status.write();
        g.health = health;
        g.account = account;
    }
}

/// Every configured service identity, by name.
#[derive(Default)]
pub struct ServiceIdentities(BTreeMap<String, Arc<ServiceIdentity>>);

impl ServiceIdentities {
    /// The identities of `config`, their sessions loaded.
    pub fn from_config(config: &Config, entra: Arc<EntraClient>) -> ServiceIdentities {
        Self::with_audit(config, entra, None)
    }

    /// [`ServiceIdentities::from_config`], recording sessions picked up from a `login` in `audit`.
    pub fn with_audit(
        config: &Config,
        entra: Arc<EntraClient>,
        audit: Option<crate::audit::AuditLog>,
    ) -> ServiceIdentities {
        ServiceIdentities(
            config
                .identities
                .iter()
                .map(|(name, cfg)| {
                    let mut identity = ServiceIdentity::new(cfg, entra.clone());
                    identity.audit = audit.clone();
                    (name.clone(), Arc::new(identity))
                })
                .collect(),
        )
    }

    /// The identity named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ServiceIdentity>> {
        self.0.get(name)
    }

    /// Each identity's status, by name: what `/readyz` reports and a metrics registry reads
    /// (e.g. a gauge `service_identity_login_required{identity}`).
    pub fn statuses(&self) -> BTreeMap<String, IdentityStatus> {
        self.0
            .iter()
            .map(|(n, i)| (n.clone(), i.status()))
            .collect()
    }

    /// Refreshes every session once per [`KEEPALIVE_PERIOD`] (the first after one period), so
    /// rarely used sessions do not expire and revoked ones show in `/readyz` early.
    /// A refresh under way when the gateway stops is finished (its rotated token stored), never
    /// cut off.
    pub fn spawn_keepalive(self: &Arc<Self>, scope: String, background: &Background) {
        if self.0.is_empty() {
            return;
        }
        let ids = Arc::downgrade(self);
        background.spawn(|stop| async move {
            while stop.sleep(KEEPALIVE_PERIOD).await {
                let Some(ids) = ids.upgrade() else { return };
                for id in ids.0.values() {
                    if stop.is_stopping() {
                        return;
                    }
                    if let Err(e) = id.token(&scope).await {
                        tracing::warn!(identity = %id.name, error = %e, "keep-alive refresh failed");
                    }
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// `sync-gateway login`: the device-code flow (reference §5, RFC 8628)

/// Waits between polls of the device-code flow. [`RealTime`] sleeps; tests substitute a pacer
/// that records the waits instead.
pub trait Pacer {
    /// Waits `d` before the next poll.
    fn pause(&mut self, d: Duration) -> impl Future<Output = ()> + Send;
}

/// Sleeps for real.
pub struct RealTime;

impl Pacer for RealTime {
    fn pause(&mut self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

/// Why `login` did not store a session. The text is for the operator at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// `--identity` names no `[identities.NAME]`.
    #[error("no identity {0:?} is configured: add [identities.{0}] to the configuration")]
    UnknownIdentity(String),
    /// The person at the browser declined.
    #[error("the sign-in was declined at the browser; nothing was stored")]
    Denied,
    /// Nobody signed in before the code expired.
    #[error("the code expired before the sign-in was completed; run login again")]
    Expired,
    /// The account that signed in is in another tenant than the identity's.
    #[error("the account signed in to tenant {got}, but identity '{identity}' is configured for tenant {want}; sign in with the service account of that tenant")]
    WrongTenant {
        /// The identity.
        identity: String,
        /// Its configured tenant.
        want: String,
        /// The account's tenant.
        got: String,
    },
    /// Entra refused the flow for another reason.
    #[error("Entra ID refused the sign-in: {0}")]
    Refused(String),
    /// The gateway's credential, Entra's availability, or a garbled answer.
    #[error("{0}")]
    Gateway(GatewayError),
    /// The certificate files of the client credential.
    #[error("the client credential cannot be loaded: {0}")]
    Credential(super::client_auth::CertificateError),
    /// The session could not be stored.
    #[error("{0}")]
    Store(StoreError),
}

/// What a completed `login` stored: also the record an audit `admin` event should carry.
#[derive(Debug, Clone, Serialize)]
pub struct LoginOutcome {
    /// The identity signed in.
    pub identity: String,
    /// Its tenant.
    pub tenant_id: String,
    /// The account that signed in.
    pub account: Account,
    /// Where the encrypted session is.
    pub store_path: PathBuf,
}

#[derive(Deserialize)]
struct DeviceCodeResponse {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
    #[serde(default = "default_interval")]
    interval: u64,
}

fn default_expires_in() -> u64 {
    900
}

fn default_interval() -> u64 {
    5
}

/// The claims of an ID token the gateway reads: it came straight from the token endpoint over
/// TLS, which OpenID Connect Core §3.1.3.7 accepts in place of a signature check.
#[derive(Deserialize, Default)]
struct IdClaims {
    tid: Option<String>,
    oid: Option<String>,
    preferred_username: Option<String>,
    upn: Option<String>,
}

/// Runs the device-code flow for `identity` of `config`: prints the verification URL and code
/// to `out`, polls at the interval Entra gives (growing it on `slow_down`), and stores the
/// session encrypted. Uses the gateway's own client credential, as the gateway's refreshes do.
pub async fn login(
    config: &Config,
    identity: &str,
    http: reqwest::Client,
    pacer: &mut impl Pacer,
    out: &mut (dyn std::io::Write + Send),
) -> Result<LoginOutcome, LoginError> {
    let cfg = config
        .identities
        .get(identity)
        .ok_or_else(|| LoginError::UnknownIdentity(identity.to_string()))?;
    let auth = super::client_auth::ClientAuth::from_config(&config.entra)
        .map_err(LoginError::Credential)?;
    let entra = EntraClient::new(
        http,
        &config.entra.authority_host,
        config.entra.client_id.clone(),
        auth,
    );
    let tenant = cfg.tenant_id.as_str();
    let scope = format!("{SESSION_SCOPES} {}", cfg.scopes.join(" "));
    let (status, retry_after, body) = entra
        .post_public(
            &entra.device_code_endpoint(tenant),
            &[("client_id", entra.client_id()), ("scope", &scope)],
        )
        .await
        .map_err(LoginError::Gateway)?;
    if status == 429 || status >= 500 {
        return Err(LoginError::Gateway(super::endpoint::unavailable(
            retry_after.unwrap_or(super::endpoint::DEFAULT_RETRY_AFTER),
            "Entra ID did not start the device-code flow",
        )));
    }
    if status != 200 {
        let e: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        return Err(LoginError::Refused(format!("{} ({})", e.error, e.aadsts())));
    }
    let code: DeviceCodeResponse = serde_json::from_slice(&body)
        .map_err(|_| LoginError::Refused("the device-code answer is not understood".into()))?;
    let device_code = Secret::new(code.device_code);
    let _ = writeln!(
        out,
        "To sign in the service identity '{identity}' (tenant {tenant}), use a web browser to open the page {} and enter the code {} to authenticate.\nSign in as the service account, not as yourself. Waiting for the sign-in (the code expires in {} minutes)...",
        code.verification_uri,
        code.user_code,
        code.expires_in.div_ceil(60)
    );
    let _ = out.flush();

    let mut interval = Duration::from_secs(code.interval.max(1));
    let expires = Duration::from_secs(code.expires_in);
    let mut waited = Duration::ZERO;
    let answer = loop {
        if waited >= expires {
            return Err(LoginError::Expired);
        }
        pacer.pause(interval).await;
        waited += interval;
        let grant = [
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", device_code.expose()),
        ];
        match entra.request(tenant, &grant).await {
            Ok(a) => break a,
            Err(Refusal::Failed(e)) => return Err(LoginError::Gateway(e)),
            Err(Refusal::Grant(e)) => match e.error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += SLOW_DOWN_STEP,
                "expired_token" => return Err(LoginError::Expired),
                "authorization_declined" | "access_denied" => return Err(LoginError::Denied),
                "bad_verification_code" => {
                    return Err(LoginError::Refused(format!(
                        "Entra ID does not know the device code ({})",
                        e.aadsts()
                    )))
                }
                _ => return Err(LoginError::Refused(format!("{} ({})", e.error, e.aadsts()))),
            },
        }
    };
    let refresh_token = answer.refresh_token.ok_or_else(|| {
        LoginError::Refused("no refresh token was issued (offline_access not granted)".into())
    })?;
    let claims: IdClaims = answer
        .id_token
        .as_ref()
        .and_then(|t| jsonwebtoken::dangerous::insecure_decode_claims::<IdClaims>(t.expose()).ok())
        .unwrap_or_default();
    let account = Account {
        tenant_id: claims.tid.unwrap_or_else(|| tenant.to_string()),
        object_id: claims.oid,
        upn: claims.preferred_username.or(claims.upn),
    };
    if account.tenant_id != tenant {
        return Err(LoginError::WrongTenant {
            identity: identity.to_string(),
            want: tenant.to_string(),
            got: account.tenant_id,
        });
    }
    let store = SessionStore::new(cfg.store_path.clone(), &cfg.store_key, identity, tenant);
    store
        .save(&StoredSession {
            refresh_token,
            account: account.clone(),
            signed_in_at: chrono::Utc::now(),
            refreshed_at: None,
        })
        .map_err(LoginError::Store)?;
    // `login` is its own process and cannot append to the gateway's chain: the gateway records
    // the `identity_login` admin record when it takes this session up.
    tracing::info!(event = "service_identity_login", identity, tenant,
        account_upn = account.upn.as_deref().unwrap_or(""), account_object_id = account.object_id.as_deref().unwrap_or(""),
        store = %cfg.store_path.display(), "service identity signed in");
    let _ = writeln!(
        out,
        "Signed in as {} for identity '{identity}'. The session is stored encrypted in {}; a running gateway uses it from its next request.",
        account.upn.as_deref().or(account.object_id.as_deref()).unwrap_or("the service account"),
        cfg.store_path.display()
    );
    Ok(LoginOutcome {
        identity: identity.to_string(),
        tenant_id: tenant.to_string(),
        account,
        store_path: cfg.store_path.clone(),
    })
}
