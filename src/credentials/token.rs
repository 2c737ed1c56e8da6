//! [`DelegatedToken`]: a Graph token the gateway may use, and the rule for how long
//! ([`UsableUntil`], the expiry every token cache keeps).

use crate::error::GatewayError;
use crate::secret::Secret;
use reqwest::header::HeaderValue;
use std::fmt;
use std::time::{Duration, Instant};

/// A cached token counts as expired this long before its real expiry (MSAL's buffer).
pub const EXPIRY_BUFFER: Duration = Duration::from_secs(300);

/// A Graph access token acting for a user, or, for an application identity, the gateway's
/// own app-only token. Opaque: never parsed, never logged.
#[derive(Clone)]
pub struct DelegatedToken {
    /// `Bearer <token>`, built once per token rather than on every call, and marked sensitive
    /// so that the HTTP stack never logs it nor puts it in an HTTP/2 header table.
    authorization: HeaderValue,
    /// Until when the gateway may use it (already shortened by the buffer and the inbound `exp`).
    pub(super) usable_until: Instant,
    /// An app-only token of the client-credentials grant: Graph's 401/403 to it means a
    /// missing application permission or admin consent, which failures then say.
    application: bool,
}

impl DelegatedToken {
    /// A token the gateway may use for `lifetime` from now. Refused if it cannot be sent in an
    /// HTTP header (Entra ID issues JWTs, which always can).
    pub(crate) fn new(secret: Secret, lifetime: Duration) -> Result<Self, GatewayError> {
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", secret.expose()))
            .map_err(|_| {
                GatewayError::ExchangeFailed(
                    "Entra ID issued an access token that cannot be sent in an HTTP header".into(),
                )
            })?;
        authorization.set_sensitive(true);
        Ok(DelegatedToken {
            authorization,
            usable_until: Instant::now() + lifetime,
            application: false,
        })
    }

    /// The gateway application's own app-only token (client-credentials grant), usable for
    /// `lifetime` from now.
    pub(crate) fn application(secret: Secret, lifetime: Duration) -> Result<Self, GatewayError> {
        let mut token = Self::new(secret, lifetime)?;
        token.application = true;
        Ok(token)
    }

    /// Whether this is the gateway application's app-only token rather than a user's.
    pub fn is_application(&self) -> bool {
        self.application
    }

    /// The `Authorization` header value for Graph.
    pub fn authorization(&self) -> HeaderValue {
        self.authorization.clone()
    }

    /// True if the token stays usable for at least `margin` from now.
    pub fn usable_for(&self, margin: Duration) -> bool {
        self.usable_until > Instant::now() + margin
    }

    /// The token itself and how much longer it is usable: only for a shared run's actor,
    /// which the scheduler keeps sealed in Redis for the replica that will act
    /// (`runs::shared`).
    pub(crate) fn for_sealing(&self) -> (Secret, Duration) {
        let text = self.authorization.to_str().unwrap_or_default();
        let token = text.strip_prefix("Bearer ").unwrap_or(text);
        (
            Secret::new(token),
            self.usable_until.saturating_duration_since(Instant::now()),
        )
    }

    /// A token read back from its sealed form ([`DelegatedToken::for_sealing`]).
    pub(crate) fn unsealed(
        secret: Secret,
        remaining: Duration,
        application: bool,
    ) -> Result<Self, GatewayError> {
        let mut token = Self::new(secret, remaining)?;
        token.application = application;
        Ok(token)
    }

    /// Whether the gateway may still use it (the expiry buffer already applied).
    pub fn is_usable(&self) -> bool {
        Instant::now() < self.usable_until
    }
}

impl fmt::Debug for DelegatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DelegatedToken(********)")
    }
}

/// A token cache entry lives until its token stops being usable ([`DelegatedToken`]'s
/// `usable_until`, already shortened by [`EXPIRY_BUFFER`]), whatever the cache's key.
pub(super) struct UsableUntil;

impl<K> moka::Expiry<K, std::sync::Arc<DelegatedToken>> for UsableUntil {
    fn expire_after_create(
        &self,
        _: &K,
        v: &std::sync::Arc<DelegatedToken>,
        now: Instant,
    ) -> Option<Duration> {
        Some(v.usable_until.saturating_duration_since(now))
    }
}
