//! The on-behalf-of token request to Entra ID (`../shared/reference/entra-obo.md` §2) and the
//! mapping of Entra's answers to gateway errors. Branches on `error` and `error_codes`, never
//! on the description text.

use super::endpoint::{
    unavailable, EntraClient, ErrorBody, Refusal, TokenAnswer, DEFAULT_RETRY_AFTER,
};
use crate::caller::UserCaller;
use crate::error::GatewayError;
use crate::secret::Secret;
use std::sync::Arc;
use std::time::Duration;

/// `grant_type` of the on-behalf-of exchange.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// What a successful exchange returns.
pub struct IssuedToken {
    /// The Graph token.
    pub access_token: Secret,
    /// Its lifetime from now.
    pub expires_in: Duration,
}

/// The on-behalf-of grant of the gateway's application.
pub struct OboClient {
    entra: Arc<EntraClient>,
}

impl OboClient {
    /// Exchanges through `entra`, which carries the client credential and the retry rules.
    pub fn new(entra: Arc<EntraClient>) -> Self {
        OboClient { entra }
    }

    /// The token endpoint of `tenant`: always tenant-specific, never `/common`.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        self.entra.token_endpoint(tenant)
    }

    /// Where a user goes to satisfy a claims challenge.
    pub fn authorize_endpoint(&self, tenant: &str) -> String {
        self.entra.authorize_endpoint(tenant)
    }

    /// Exchanges `user`'s token for a Graph token with `scope` at the user's own tenant;
    /// retries once on 5xx or timeout.
    pub async fn exchange(
        &self,
        user: &UserCaller,
        scope: &str,
    ) -> Result<IssuedToken, GatewayError> {
        let grant = [
            ("grant_type", JWT_BEARER),
            ("assertion", user.token.expose()),
            ("scope", scope),
            ("requested_token_use", "on_behalf_of"),
        ];
        match self.entra.request(&user.tenant_id, &grant).await {
            Ok(TokenAnswer {
                access_token,
                expires_in,
                ..
            }) => Ok(IssuedToken {
                access_token,
                expires_in,
            }),
            Err(Refusal::Failed(e)) => Err(e),
            Err(Refusal::Grant(e)) => Err(self.map_error(e, user, scope)),
        }
    }

    fn map_error(&self, e: ErrorBody, user: &UserCaller, scope: &str) -> GatewayError {
        let has = |code: i64| e.has(code);
        let claims = e.claims.as_deref().filter(|c| !c.trim().is_empty());
        tracing::info!(error = %e.error, codes = ?e.error_codes,
            trace_id = e.trace_id.as_deref().unwrap_or(""), correlation_id = e.correlation_id.as_deref().unwrap_or(""),
            "token endpoint refused the on-behalf-of exchange");
        if let (Some(c), "interaction_required" | "invalid_grant") = (claims, e.error.as_str()) {
            return GatewayError::StepUpRequired {
                claims: minify(c),
                authorization_uri: self.authorize_endpoint(&user.tenant_id),
            };
        }
        if e.error == "interaction_required" {
            return GatewayError::StepUpRequired {
                claims: "{}".into(),
                authorization_uri: self.authorize_endpoint(&user.tenant_id),
            };
        }
        if has(500133) {
            return crate::error::GatewayError::InvalidToken(crate::error::TokenRejection::new(
                "expired",
                "the token expired before it could be exchanged",
            ));
        }
        if e.error == "consent_required" || has(65001) {
            return GatewayError::ConsentRequired {
                scope: scope.to_string(),
            };
        }
        if has(50196) {
            tracing::error!(
                "Entra ID detected a request loop (AADSTS50196): the exchange cache is not working"
            );
            return unavailable(DEFAULT_RETRY_AFTER, "Entra ID detected a request loop");
        }
        if e.error == "invalid_grant" || has(50013) {
            return crate::error::GatewayError::InvalidToken(crate::error::TokenRejection::new(
                "refused_by_entra",
                "the identity provider refused the token for the exchange",
            ));
        }
        GatewayError::ExchangeFailed(format!(
            "Entra ID refused the exchange ({}{})",
            if e.error.is_empty() {
                "no error code"
            } else {
                e.error.as_str()
            },
            e.error_codes
                .first()
                .map(|c| format!(", AADSTS{c}"))
                .unwrap_or_default()
        ))
    }
}

/// Entra's `claims` is JSON text; the challenge carries its minified form.
fn minify(claims: &str) -> String {
    serde_json::from_str::<serde_json::Value>(claims)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| claims.to_string())
}
