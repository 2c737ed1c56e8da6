//! [`DelegatedToken`]: a Graph token the gateway may use, and the rule for how long.

use crate::error::GatewayError;
use crate::secret::Secret;
use reqwest::header::HeaderValue;
use std::fmt;
use std::time::{Duration, Instant};

/// A cached token counts as expired this long before its real expiry (MSAL's buffer).
pub const EXPIRY_BUFFER: Duration = Duration::from_secs(300);

/// A Graph access token acting for a user. Opaque: never parsed, never logged.
#[derive(Clone)]
pub struct DelegatedToken {
    /// `Bearer <token>`, built once per token rather than on every call, and marked sensitive
    /// so that the HTTP stack never logs it nor puts it in an HTTP/2 header table.
    authorization: HeaderValue,
    /// Until when the gateway may use it (already shortened by the buffer and the inbound `exp`).
    pub(super) usable_until: Instant,
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
        })
    }

    /// The `Authorization` header value for Graph.
    pub fn authorization(&self) -> HeaderValue {
        self.authorization.clone()
    }

    /// True if the token stays usable for at least `margin` from now.
    pub fn usable_for(&self, margin: Duration) -> bool {
        self.usable_until > Instant::now() + margin
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
