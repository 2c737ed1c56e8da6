//! The credentials step of the lifecycle: a Graph delegated token for whoever acts.
//!
//! [`Credentials::token_for`] is the one entry point: given an [`ActingIdentity`] (the calling
//! user, or a configured service identity) it yields a [`DelegatedToken`].
//!
//! - A user: [`Credentials::delegated_token`] exchanges the caller's token on-behalf-of
//!   ([`obo`]), caching the result by SHA-256 of the inbound token plus tenant and scope (as
//!   MSAL does) until 5 minutes before it expires and never past the inbound token's own `exp`.
//!   Concurrent misses for one key make one exchange: the others wait for it.
//! - A service identity: [`service_identity`] refreshes the session it holds, one refresh in
//!   flight per identity, storing each rotated refresh token ([`store`]) before use.
//!
//! Every token request authenticates the gateway with its configured client credential
//! ([`client_auth`]) through one client of Entra's token endpoint ([`endpoint`]).

pub mod client_auth;
pub mod endpoint;
mod file_stamp;
pub mod login;
pub mod obo;
pub mod service_identity;
pub mod store;
mod token;

pub use file_stamp::FileStamp;
pub use token::{DelegatedToken, EXPIRY_BUFFER};

use crate::caller::UserCaller;
use crate::domain::CallerSummary;
use crate::error::GatewayError;
use crate::metrics::CredentialMetrics;
use service_identity::ServiceIdentities;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whose delegated identity a Graph call uses. Owned and cheap to clone, so work that happens
/// later (a scheduled or trailing run) can ask [`Credentials::token_for`] for a fresh token.
#[derive(Debug, Clone)]
pub enum ActingIdentity {
    /// The calling user, through the on-behalf-of exchange of their own token.
    User(Arc<UserCaller>),
    /// A configured service identity whose session the gateway holds.
    Service(ServiceIdentityRef),
}

/// A service identity, by name, and its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceIdentityRef {
    /// The name of `[identities.NAME]`.
    pub name: Arc<str>,
    /// The account's tenant.
    pub tenant_id: String,
}

impl ActingIdentity {
    /// True if both are the same identity: a user by tenant and object id, a service identity
    /// by name (whatever token each came with).
    pub fn same_as(&self, other: &ActingIdentity) -> bool {
        match (self, other) {
            (ActingIdentity::User(a), ActingIdentity::User(b)) => {
                a.tenant_id == b.tenant_id && a.object_id == b.object_id
            }
            (ActingIdentity::Service(a), ActingIdentity::Service(b)) => a.name == b.name,
            _ => false,
        }
    }

    /// The tenant whose Graph is called.
    pub fn tenant_id(&self) -> &str {
        match self {
            ActingIdentity::User(u) => &u.tenant_id,
            ActingIdentity::Service(s) => &s.tenant_id,
        }
    }
}

struct UsableUntil;

impl moka::Expiry<[u8; 32], Arc<DelegatedToken>> for UsableUntil {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &Arc<DelegatedToken>,
        now: Instant,
    ) -> Option<Duration> {
        Some(v.usable_until.saturating_duration_since(now))
    }
}

/// Turns callers into Graph delegated tokens.
pub struct Credentials {
    exchange: obo::OboClient,
    cache: moka::future::Cache<[u8; 32], Arc<DelegatedToken>>,
    identities: Arc<ServiceIdentities>,
    metrics: CredentialMetrics,
}

impl Credentials {
    /// Credentials exchanging through `exchange`, caching at most `capacity` tokens.
    pub fn new(exchange: obo::OboClient, capacity: u64) -> Self {
        Credentials {
            exchange,
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UsableUntil)
                .build(),
            identities: Arc::new(ServiceIdentities::default()),
            metrics: CredentialMetrics::default(),
        }
    }

    /// The same, counting exchange-cache hits and misses and timing exchanges into `metrics`.
    pub fn with_metrics(mut self, metrics: CredentialMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The same, with the service identities callers may act as.
    pub fn with_identities(mut self, identities: Arc<ServiceIdentities>) -> Self {
        self.identities = identities;
        self
    }

    /// The configured service identities (for `/readyz`, metrics and keep-alive).
    pub fn identities(&self) -> &Arc<ServiceIdentities> {
        &self.identities
    }

    /// A delegated Graph token with `scope` for whoever `actor` is: the one function the
    /// pipeline (and a scheduler acting later for the same actor) calls.
    pub async fn token_for(
        &self,
        actor: &ActingIdentity,
        scope: &str,
    ) -> Result<Arc<DelegatedToken>, GatewayError> {
        match actor {
            ActingIdentity::User(user) => self.delegated_token(user, scope).await,
            ActingIdentity::Service(s) => self.service_identity(s)?.token(scope).await,
        }
    }

    /// What the audit trail records as the identity acted as.
    pub fn acting_summary(&self, actor: &ActingIdentity) -> CallerSummary {
        match actor {
            ActingIdentity::User(u) => u.summary(),
            ActingIdentity::Service(s) => match self.identities.get(&s.name) {
                Some(id) => id.summary(),
                None => CallerSummary {
                    kind: "service_identity",
                    tenant_id: s.tenant_id.clone(),
                    identity: Some(s.name.to_string()),
                    ..CallerSummary::default()
                },
            },
        }
    }

    fn service_identity(
        &self,
        s: &ServiceIdentityRef,
    ) -> Result<&Arc<service_identity::ServiceIdentity>, GatewayError> {
        self.identities.get(&s.name).ok_or_else(|| {
            // Configuration validation makes every `run_as` name an identity.
            tracing::error!(identity = %s.name, "no such service identity");
            GatewayError::Internal
        })
    }

    /// A delegated token for `user` with `scope`, from the cache or one exchange.
    pub async fn delegated_token(
        &self,
        user: &UserCaller,
        scope: &str,
    ) -> Result<Arc<DelegatedToken>, GatewayError> {
        let mut h = Sha256::new();
        h.update(user.token.expose().as_bytes());
        h.update([0]);
        h.update(user.tenant_id.as_bytes());
        h.update([0]);
        h.update(scope.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        // Set only by the one request that runs the exchange; requests that found the token,
        // or waited for another's exchange of the same key, made none: a hit.
        let exchanged = std::sync::atomic::AtomicBool::new(false);
        let token = self
            .cache
            .try_get_with(key, async {
                exchanged.store(true, std::sync::atomic::Ordering::Relaxed);
                let started = Instant::now();
                let issued = self.exchange.exchange(user, scope).await;
                self.metrics
                    .exchange_duration
                    .observe(started.elapsed().as_secs_f64());
                let issued = issued?;
                // Never outlive the inbound token: a caller whose token expired must not keep
                // acting through the cache. Counted to the sub-second: whole seconds from a
                // truncated "now" let the entry outlive `exp` by up to a second.
                let inbound_left = chrono::DateTime::from_timestamp(user.expires_at, 0)
                    .and_then(|exp| (exp - chrono::Utc::now()).to_std().ok())
                    .unwrap_or(Duration::ZERO);
                let lifetime = issued
                    .expires_in
                    .saturating_sub(EXPIRY_BUFFER)
                    .min(inbound_left);
                Ok::<_, GatewayError>(Arc::new(DelegatedToken::new(
                    issued.access_token,
                    lifetime,
                )?))
            })
            .await
            .map_err(|e: Arc<GatewayError>| (*e).clone());
        if exchanged.load(std::sync::atomic::Ordering::Relaxed) {
            self.metrics.exchange_cache_misses.inc();
        } else if token.is_ok() {
            self.metrics.exchange_cache_hits.inc();
        }
        token
    }
}
