//! Step 3 of the lifecycle: a Graph delegated token for the caller.
//!
//! [`Credentials::delegated_token`] exchanges the caller's token on-behalf-of
//! ([`obo`]), caching the result by SHA-256 of the inbound token plus tenant and scope (as MSAL
//! does) until 5 minutes before it expires and never past the inbound token's own `exp`.
//! Concurrent misses for one key make one exchange: the others wait for it.

pub mod obo;

use crate::caller::UserCaller;
use crate::problem::GatewayError;
use crate::secret::Secret;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cached token counts as expired this long before its real expiry (MSAL's buffer).
pub const EXPIRY_BUFFER: Duration = Duration::from_secs(300);

/// A Graph access token acting for a user. Opaque: never parsed, never logged.
#[derive(Clone)]
pub struct DelegatedToken {
    secret: Secret,
    /// Until when the gateway may use it (already shortened by the buffer and the inbound `exp`).
    usable_until: Instant,
}

impl DelegatedToken {
    /// The `Authorization` header value for Graph.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.secret.expose())
    }

    /// True if the token stays usable for at least `margin` from now.
    pub fn usable_for(&self, margin: Duration) -> bool {
        self.usable_until > Instant::now() + margin
    }
}

impl fmt::Debug for DelegatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DelegatedToken(********)")
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
        }
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
        self.cache
            .try_get_with(key, async {
                let issued = self.exchange.exchange(user, scope).await?;
                // Never outlive the inbound token: a caller whose token expired must not keep
                // acting through the cache.
                let inbound_left = (user.expires_at - chrono::Utc::now().timestamp()).max(0);
                let lifetime = issued
                    .expires_in
                    .saturating_sub(EXPIRY_BUFFER)
                    .min(Duration::from_secs(inbound_left as u64));
                Ok::<_, GatewayError>(Arc::new(DelegatedToken {
                    secret: issued.access_token,
                    usable_until: Instant::now() + lifetime,
                }))
            })
            .await
            .map_err(|e: Arc<GatewayError>| (*e).clone())
    }
}
