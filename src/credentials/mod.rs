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
//!   flight per identity, storing each rotated refresh token ([`store`]) before use; with the
//!   redis state backend in Redis ([`redis_store`]), one refresh at a time across replicas.
//! - An application identity (`kind = "application"`): [`application`] asks for the gateway
//!   application's own app-only token (client credentials), cached and single flight like the
//!   exchange.
//!
//! Every token request authenticates the gateway with its configured client credential
//! ([`client_auth`]) through one client of Entra's token endpoint ([`endpoint`]).

pub mod application;
pub mod client_auth;
pub mod endpoint;
mod file_stamp;
pub mod login;
pub mod obo;
pub mod redis_store;
pub mod service_identity;
pub mod store;
mod token;

pub use file_stamp::FileStamp;
use token::UsableUntil;
pub use token::{DelegatedToken, EXPIRY_BUFFER};

use crate::caller::UserCaller;
use crate::domain::CallerSummary;
use crate::error::GatewayError;
use crate::metrics::CredentialMetrics;
use application::ApplicationIdentities;
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
    /// A configured identity (`[identities.NAME]`): a delegated service account whose session
    /// the gateway holds, or the gateway's own application (`kind = "application"`).
    Service(ServiceIdentityRef),
}

/// A configured identity, by name, and its tenant (its kind is [`Credentials`]' to know).
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

/// Turns callers into Graph delegated tokens.
pub struct Credentials {
    exchange: obo::OboClient,
    cache: moka::future::Cache<[u8; 32], Arc<DelegatedToken>>,
    identities: Arc<ServiceIdentities>,
    applications: Option<Arc<ApplicationIdentities>>,
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
            applications: None,
            metrics: CredentialMetrics::default(),
        }
    }

    /// The same, with the application identities callers may act as.
    pub fn with_applications(mut self, applications: Arc<ApplicationIdentities>) -> Self {
        self.applications = Some(applications);
        self
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

    /// A Graph token with `scope` for whoever `actor` is: the one function the pipeline (and
    /// a scheduler acting later for the same actor) calls. An application identity's app-only
    /// token carries every application permission consented in its tenant (`.default`),
    /// which covers `scope`.
    pub async fn token_for(
        &self,
        actor: &ActingIdentity,
        scope: &str,
    ) -> Result<Arc<DelegatedToken>, GatewayError> {
        match actor {
            ActingIdentity::User(user) => self.delegated_token(user, scope).await,
            ActingIdentity::Service(s) => match self.application(&s.name) {
                Some(apps) => apps.token(&s.name).await,
                None => self.service_identity(s)?.token(scope).await,
            },
        }
    }

    /// The token [`Credentials::token_for`] would give if it is at hand: cached and usable,
    /// so that no exchange, refresh or request is needed (`None` otherwise). The pipeline's
    /// warm path uses it to take the rate limits and join the run in one Redis round trip:
    /// only a call that costs nothing may come before the limits.
    pub async fn cached_token_for(
        &self,
        actor: &ActingIdentity,
        scope: &str,
    ) -> Option<Arc<DelegatedToken>> {
        match actor {
            ActingIdentity::User(user) => {
                let token = self.cache.get(&exchange_key(user, scope)).await;
                if token.is_some() {
                    self.metrics.exchange_cache_hits.inc();
                }
                token
            }
            ActingIdentity::Service(s) => match self.application(&s.name) {
                Some(apps) => apps.cached(&s.name).await,
                None => self.identities.get(&s.name)?.cached_token(scope),
            },
        }
    }

    /// The application identities, when `name` is one of them.
    fn application(&self, name: &str) -> Option<&Arc<ApplicationIdentities>> {
        self.applications.as_ref().filter(|a| a.contains(name))
    }

    /// What the audit trail records as the identity acted as.
    pub fn acting_summary(&self, actor: &ActingIdentity) -> CallerSummary {
        match actor {
            ActingIdentity::User(u) => u.summary(),
            ActingIdentity::Service(s) => match self.application(&s.name) {
                Some(apps) => apps.summary(&s.name, &s.tenant_id),
                None => self.service_summary(s),
            },
        }
    }

    fn service_summary(&self, s: &ServiceIdentityRef) -> CallerSummary {
        match self.identities.get(&s.name) {
            Some(id) => id.summary(),
            None => CallerSummary {
                kind: "service_identity",
                tenant_id: s.tenant_id.clone(),
                identity: Some(s.name.to_string()),
                ..CallerSummary::default()
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
        let key = exchange_key(user, scope);
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

/// The exchange cache's key: the inbound token (its digest), its tenant and the scope, hashed
/// (the cache holds no caller's token).
fn exchange_key(user: &UserCaller, scope: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.token.digest());
    h.update([0]);
    h.update(user.tenant_id.as_bytes());
    h.update([0]);
    h.update(scope.as_bytes());
    h.finalize().into()
}
