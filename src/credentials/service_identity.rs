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
//!   the gateway stops asking Entra until the store changes (a new `login`).
//! - Where the session lives is a [`SessionBackend`]: the encrypted file ([`SessionStore`],
//!   memory mode), or Redis ([`RedisSessionStore`], `[state] backend = "redis"`), where a
//!   refresh is one replica's at a time (a lease), its rotated token written fenced by that
//!   lease, and its access token shared so the other replicas do not refresh again. Without
//!   Redis such a session fails closed (503 `state-unavailable`): never a refresh without the
//!   lease.

use super::endpoint::{EntraClient, ErrorBody, Refusal};
use super::file_stamp::FileStamp;
use super::redis_store::{Lease, RedisSessionStore, Snapshot};
use super::store::{Account, RefreshToken, SessionStore, StoredSession};
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
use std::time::{Duration, Instant};

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
    /// The last rotated refresh token could not be stored (it lives only in memory), or a
    /// session kept in Redis could not be read at start.
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

/// Where an identity's session lives.
pub enum SessionBackend {
    /// The encrypted file (memory mode): this process alone refreshes it.
    File(SessionStore),
    /// Redis, shared by every replica (`[state] backend = "redis"`).
    Redis(Box<RedisSessionStore>),
}

/// What the session mutex guards.
struct Session {
    /// The newest refresh token known; `None` when a login is required.
    stored: Option<StoredSession>,
    /// The store file as last read or written, to notice a replacement.
    stamp: Option<FileStamp>,
    /// Redis: the generation `stored` came from (or, for a rotated token Redis did not take,
    /// the one it will be written over).
    generation: u64,
    /// Redis: the `login` count last seen; `None` before the first read.
    logins: Option<u64>,
    /// The Graph token of the last refresh.
    access: Option<Arc<DelegatedToken>>,
}

/// What a refresh at Entra gave.
struct Redeemed {
    access_token: Secret,
    expires_in: Duration,
    /// The rotated refresh token (Entra always rotates; `None` keeps the current one).
    rotated: Option<RefreshToken>,
}

/// The first pause of a replica waiting for another's refresh; it doubles up to
/// [`MAX_LEASE_POLL`].
const FIRST_LEASE_POLL: Duration = Duration::from_millis(20);

/// The longest pause between two looks at a refresh another replica holds.
const MAX_LEASE_POLL: Duration = Duration::from_millis(250);

/// One configured service identity.
pub struct ServiceIdentity {
    name: Arc<str>,
    tenant_id: String,
    scopes: Vec<String>,
    store: SessionBackend,
    entra: Arc<EntraClient>,
    session: tokio::sync::Mutex<Session>,
    status: RwLock<IdentityStatus>,
    /// Where a session picked up from a `login` is recorded (an `identity_login` admin record).
    audit: Option<crate::audit::AuditLog>,
}

impl ServiceIdentity {
    /// The delegated identity `cfg` describes (its session settings in `session`), with its
    /// session loaded from its file `path` (the memory backend's `store_path`).
    pub fn new(
        cfg: &IdentityConfig,
        session: &DelegatedIdentity,
        path: std::path::PathBuf,
        entra: Arc<EntraClient>,
    ) -> ServiceIdentity {
        let store = SessionStore::new(path, &session.store_key, &cfg.name, &cfg.tenant_id);
        let stamp = store.stamp();
        let mut id = Self::with_backend(cfg, session, entra, SessionBackend::File(store));
        id.session.get_mut().stamp = stamp;
        id.session.get_mut().stored = id.load();
        id
    }

    /// The delegated identity `cfg` describes, its session in Redis (read by
    /// [`ServiceIdentity::load_shared`] or the first request).
    pub fn on_redis(
        cfg: &IdentityConfig,
        session: &DelegatedIdentity,
        entra: Arc<EntraClient>,
        store: RedisSessionStore,
    ) -> ServiceIdentity {
        Self::with_backend(cfg, session, entra, SessionBackend::Redis(Box::new(store)))
    }

    fn with_backend(
        cfg: &IdentityConfig,
        session: &DelegatedIdentity,
        entra: Arc<EntraClient>,
        store: SessionBackend,
    ) -> ServiceIdentity {
        ServiceIdentity {
            name: cfg.name.as_str().into(),
            tenant_id: cfg.tenant_id.to_string(),
            scopes: session.scopes.clone(),
            store,
            entra,
            session: tokio::sync::Mutex::new(Session {
                stored: None,
                stamp: None,
                generation: 0,
                logins: None,
                access: None,
            }),
            status: RwLock::new(IdentityStatus {
                health: SessionHealth::Ready,
                account: None,
            }),
            audit: None,
        }
    }

    /// Reads a Redis session once at start, so `/readyz` and the audit trail know its state
    /// and account before the first request (a file session is read by `new`). A Redis that
    /// does not answer is logged; the first request reads again.
    pub async fn load_shared(&self) {
        let SessionBackend::Redis(store) = &self.store else {
            return;
        };
        let mut s = self.session.lock().await;
        match store.read().await {
            Ok(snapshot) => {
                if let Err(e) = self.take_up(&mut s, snapshot).await {
                    tracing::warn!(identity = %self.name, error = %e, "the shared access token in Redis is not usable");
                }
            }
            Err(e) => {
                tracing::warn!(identity = %self.name, error = %e,
                    "the service identity's session could not be read from Redis at start; the first request reads it again");
                self.set_health(SessionHealth::StoreUnavailable {
                    reason: e.to_string(),
                });
            }
        }
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

    /// The Graph token of the last refresh if it is still usable for `scope`, with no call
    /// and no wait (`None` while a refresh holds the session).
    pub fn cached_token(&self, scope: &str) -> Option<Arc<DelegatedToken>> {
        if !self.scopes.iter().any(|s| s == scope) {
            return None;
        }
        let s = self.session.try_lock().ok()?;
        s.access.as_ref().filter(|t| t.is_usable()).cloned()
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
        match &self.store {
            SessionBackend::File(store) => self.refresh_from_file(&mut s, store).await,
            SessionBackend::Redis(store) => self.refresh_through_redis(&mut s, store).await,
        }
    }

    /// Memory mode: refreshes with the file's session and stores the rotated token in it.
    async fn refresh_from_file(
        &self,
        s: &mut Session,
        store: &SessionStore,
    ) -> Result<Arc<DelegatedToken>, GatewayError> {
        if self.pick_up_store_changes(s, store) {
            self.record_login().await;
        }
        let Some(current) = s.stored.clone() else {
            return Err(self.login_required_error());
        };
        let redeemed = self.redeem(s, &current).await?;
        let Some(rotated) = redeemed.rotated else {
            return self.hand_out(s, redeemed.access_token, redeemed.expires_in);
        };
        let next = StoredSession {
            refresh_token: rotated,
            refreshed_at: Some(chrono::Utc::now()),
            ..current
        };
        // Durable before use: once rotated, the old token may no longer work at Entra.
        if let Err(e) = store.save(&next) {
            s.stored = Some(next);
            return Err(self.store_failed(e.to_string()));
        }
        s.stamp = store.stamp();
        s.stored = Some(next);
        self.set_health(SessionHealth::Ready);
        self.hand_out(s, redeemed.access_token, redeemed.expires_in)
    }

    /// Redis: uses the access token another replica's refresh shared, or takes the refresh
    /// lease and refreshes; while another replica holds the lease, waits for its outcome
    /// (polling, at most the lease and a little more). Redis unreachable: 503
    /// `state-unavailable`, and no refresh.
    async fn refresh_through_redis(
        &self,
        s: &mut Session,
        store: &RedisSessionStore,
    ) -> Result<Arc<DelegatedToken>, GatewayError> {
        let deadline = Instant::now() + store.lease() + MAX_LEASE_POLL;
        let mut pause = FIRST_LEASE_POLL;
        loop {
            let snapshot = store.read().await.map_err(|e| self.state_unavailable(&e))?;
            if let Some(token) = self.take_up(s, snapshot).await? {
                return Ok(token);
            }
            let Some(current) = s.stored.clone() else {
                return Err(self.login_required_error());
            };
            if let Some(lease) = store.lock().await.map_err(|e| self.state_unavailable(&e))? {
                let outcome = self.refresh_under_lease(s, store, &lease, current).await;
                if let Err(e) = store.release(&lease).await {
                    // The lease expires by itself; the next refresh waits for that at most.
                    tracing::warn!(identity = %self.name, error = %e, "the refresh lease could not be released");
                }
                match outcome? {
                    Some(token) => return Ok(token),
                    // A newer session (a login, or another replica): read it and go on.
                    None if Instant::now() < deadline => continue,
                    None => {}
                }
            }
            if Instant::now() + pause > deadline {
                tracing::warn!(identity = %self.name,
                    "another replica's refresh of the service identity's session did not finish within its lease");
                return Err(GatewayError::StateUnavailable {
                    retry_after_secs: 1,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_LEASE_POLL);
        }
    }

    /// Under the lease: reads again (another replica may have refreshed between the first read
    /// and the lease), refreshes, and writes the rotated session fenced by the lease before
    /// its access token is used. `None` when a newer session was found or written meanwhile.
    async fn refresh_under_lease(
        &self,
        s: &mut Session,
        store: &RedisSessionStore,
        lease: &Lease,
        current: StoredSession,
    ) -> Result<Option<Arc<DelegatedToken>>, GatewayError> {
        let expected = s.generation;
        let snapshot = store.read().await.map_err(|e| self.state_unavailable(&e))?;
        if snapshot.generation != expected || snapshot.access.is_some() {
            return match self.take_up(s, snapshot).await? {
                Some(token) => Ok(Some(token)),
                None => Ok(None),
            };
        }
        let redeemed = match self.redeem(s, &current).await {
            Ok(r) => r,
            Err(e @ GatewayError::ServiceIdentityLoginRequired { .. }) => {
                // Refused for good; but a `login` during the refresh brings a new session:
                // that one is used, not the refusal.
                return match store.read().await {
                    Ok(snapshot) if snapshot.generation != expected => {
                        self.take_up(s, snapshot).await
                    }
                    _ => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let next = StoredSession {
            refresh_token: redeemed.rotated.unwrap_or(current.refresh_token.clone()),
            refreshed_at: Some(chrono::Utc::now()),
            ..current
        };
        let usable = redeemed.expires_in.saturating_sub(EXPIRY_BUFFER);
        let shared = Some((&redeemed.access_token, usable));
        match store.write_fenced(lease, expected, &next, shared).await {
            Ok(Some(generation)) => {
                s.generation = generation;
                s.stored = Some(next);
                self.set_health(SessionHealth::Ready);
                self.hand_out(s, redeemed.access_token, redeemed.expires_in)
                    .map(Some)
            }
            Ok(None) => {
                // A login (or a replica that took over an expired lease) wrote a newer
                // session: ours is not used, theirs is read next.
                tracing::warn!(identity = %self.name,
                    "the refreshed session was not written: a newer session is in Redis (a login, or a replica that took over an expired lease)");
                Ok(None)
            }
            Err(e) => {
                // Kept in memory over the generation it was redeemed from: the next refresh
                // here uses it (and writes it), unless Redis then holds a newer session.
                s.stored = Some(next);
                Err(self.store_failed(e.to_string()))
            }
        }
    }

    /// Takes up what Redis holds: a session of another generation replaces ours (a `login`
    /// is recorded), and a shared access token still usable is the answer.
    async fn take_up(
        &self,
        s: &mut Session,
        snapshot: Snapshot,
    ) -> Result<Option<Arc<DelegatedToken>>, GatewayError> {
        let login = s.logins.is_some_and(|seen| seen != snapshot.logins);
        let first = s.logins.is_none();
        s.logins = Some(snapshot.logins);
        if first || snapshot.generation != s.generation {
            s.generation = snapshot.generation;
            s.access = None;
            s.stored = self.usable(snapshot.session);
            if login && s.stored.is_some() {
                tracing::info!(identity = %self.name, "a new login's session is in Redis; using it");
                self.record_login().await;
            }
        }
        match snapshot.access {
            Some((token, usable)) if s.stored.is_some() && !usable.is_zero() => {
                let token = Arc::new(DelegatedToken::new(token, usable)?);
                s.access = Some(token.clone());
                Ok(Some(token))
            }
            _ => Ok(None),
        }
    }

    /// The refresh at Entra; a refusal that kills the session marks it login-required.
    async fn redeem(
        &self,
        s: &mut Session,
        current: &StoredSession,
    ) -> Result<Redeemed, GatewayError> {
        let scope = format!("{} offline_access", self.scopes.join(" "));
        let grant = [
            ("grant_type", "refresh_token"),
            ("refresh_token", current.refresh_token.expose()),
            ("scope", scope.as_str()),
        ];
        let answer = match self.entra.request(&self.tenant_id, &grant).await {
            Ok(a) => a,
            Err(Refusal::Failed(e)) => return Err(e),
            Err(Refusal::Grant(e)) => return Err(self.refresh_refused(s, &e)),
        };
        if answer.refresh_token.is_none() {
            // Entra always rotates; without a new token the old one stays the newest.
            tracing::warn!(identity = %self.name, "Entra ID returned no new refresh token; keeping the current one");
        }
        Ok(Redeemed {
            access_token: answer.access_token,
            expires_in: answer.expires_in,
            rotated: answer.refresh_token,
        })
    }

    /// The rotated refresh token could not be stored: it lives only in memory.
    fn store_failed(&self, reason: String) -> GatewayError {
        tracing::error!(identity = %self.name, error = %reason,
            "the rotated refresh token could not be stored; the session lives only in memory until the store is writable");
        self.set_health(SessionHealth::StoreUnavailable { reason });
        GatewayError::SessionStoreUnavailable {
            identity: self.name.to_string(),
        }
    }

    /// Redis did not answer: the session is not used without it (fail closed).
    fn state_unavailable(&self, e: &crate::state::Unavailable) -> GatewayError {
        tracing::warn!(identity = %self.name, error = %e,
            "the service identity's session could not be read or locked in Redis; refusing rather than refreshing without the lease");
        GatewayError::StateUnavailable {
            retry_after_secs: 1,
        }
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

    /// Loads the file, setting health and account; `None` when no session is usable.
    fn load(&self) -> Option<StoredSession> {
        let SessionBackend::File(store) = &self.store else {
            return None;
        };
        self.usable(store.load().map_err(|e| e.to_string()))
    }

    /// A session as a store read it (the file or Redis), setting health and account: `None`
    /// when none is stored or it does not open (then a login is required, and why).
    fn usable(&self, read: Result<Option<StoredSession>, String>) -> Option<StoredSession> {
        match read {
            Ok(Some(stored)) => {
                self.set_status(SessionHealth::Ready, Some(stored.account.clone()));
                Some(stored)
            }
            Ok(None) => {
                self.mark_login_required("no session is stored yet".into());
                None
            }
            Err(reason) => {
                self.mark_login_required(reason);
                None
            }
        }
    }

    /// A `login` (or another replica) replaced the store: its session wins over ours. True
    /// when a usable session was picked up that way.
    fn pick_up_store_changes(&self, s: &mut Session, store: &SessionStore) -> bool {
        let stamp = store.stamp();
        if stamp == s.stamp {
            return false;
        }
        tracing::info!(identity = %self.name, store = %store.path().display(),
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

/// How long a replica holds the lease on a refresh: longer than the refresh can take, which
/// is one attempt of `entra.timeout_seconds`, the 1 s pause and a retry ([`EntraClient`]'s
/// rule), plus a second of margin; a replica that died mid-refresh holds it no longer.
pub fn refresh_lease(config: &Config) -> Duration {
    let attempt = Duration::from_secs(config.entra.timeout_seconds);
    attempt * 2 + Duration::from_secs(2)
}

/// Every configured delegated service identity, by name (application identities hold no
/// session: they are [`super::application::ApplicationIdentities`]).
#[derive(Default)]
pub struct ServiceIdentities(BTreeMap<String, Arc<ServiceIdentity>>);

impl ServiceIdentities {
    /// The delegated identities of `config`, their sessions loaded from their files.
    pub fn from_config(config: &Config, entra: Arc<EntraClient>) -> ServiceIdentities {
        Self::with_audit(config, entra, None, None)
    }

    /// [`ServiceIdentities::from_config`], recording sessions picked up from a `login` in
    /// `audit`; with `redis` (`[state] backend = "redis"`) the sessions live there instead of
    /// in their files (read them with [`ServiceIdentities::load_shared`]).
    pub fn with_audit(
        config: &Config,
        entra: Arc<EntraClient>,
        audit: Option<crate::audit::AuditLog>,
        redis: Option<&crate::state::Redis>,
    ) -> ServiceIdentities {
        let lease = refresh_lease(config);
        ServiceIdentities(
            config
                .identities
                .iter()
                .filter_map(|(name, cfg)| {
                    let session = cfg.delegated()?;
                    let mut identity = match redis {
                        None => {
                            // Configuration validation requires `store_path` on the memory
                            // backend.
                            let Some(path) = session.store_path.clone() else {
                                tracing::error!(identity = %name, "a delegated identity without store_path on the memory backend");
                                return None;
                            };
                            ServiceIdentity::new(cfg, session, path, entra.clone())
                        }
                        Some(redis) => {
                            let store = RedisSessionStore::new(
                                redis.clone(),
                                &cfg.name,
                                &cfg.tenant_id,
                                &session.store_key,
                                lease,
                            );
                            ServiceIdentity::on_redis(cfg, session, entra.clone(), store)
                        }
                    };
                    identity.audit = audit.clone();
                    Some((name.clone(), Arc::new(identity)))
                })
                .collect(),
        )
    }

    /// Reads every session kept in Redis once (nothing for sessions in files).
    pub async fn load_shared(&self) {
        for identity in self.0.values() {
            identity.load_shared().await;
        }
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
