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
use super::store::{Account, SessionStore, StoredSession};
use super::token::{DelegatedToken, EXPIRY_BUFFER};
use crate::background::Background;
use crate::config::{Config, DelegatedIdentity, IdentityConfig};
use crate::domain::CallerSummary;
use crate::error::GatewayError;
use crate::secret::Secret;
use parking_lot::RwLock;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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
    /// The delegated identity `cfg` describes (its session settings in `session`), with its
    /// session loaded from its store.
    pub fn new(
        cfg: &IdentityConfig,
        session: &DelegatedIdentity,
        entra: Arc<EntraClient>,
    ) -> ServiceIdentity {
        let store = SessionStore::new(
            session.store_path.clone(),
            &session.store_key,
            &cfg.name,
            &cfg.tenant_id,
        );
        let stamp = store.stamp();
        let mut id = ServiceIdentity {
            name: cfg.name.as_str().into(),
            tenant_id: cfg.tenant_id.to_string(),
            scopes: session.scopes.clone(),
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

/// Every configured delegated service identity, by name (application identities hold no
/// session: they are [`super::application::ApplicationIdentities`]).
#[derive(Default)]
pub struct ServiceIdentities(BTreeMap<String, Arc<ServiceIdentity>>);

impl ServiceIdentities {
    /// The delegated identities of `config`, their sessions loaded.
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
                .filter_map(|(name, cfg)| {
                    let mut identity = ServiceIdentity::new(cfg, cfg.delegated()?, entra.clone());
                    identity.audit = audit.clone();
                    Some((name.clone(), Arc::new(identity)))
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
