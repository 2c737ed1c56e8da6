//! The on-behalf-of token request to Entra ID (`../shared/reference/entra-obo.md` §2) and the
//! mapping of Entra's answers to gateway errors. Branches on `error` and `error_codes`, never
//! on the description text.

use crate::caller::UserCaller;
use crate::problem::GatewayError;
use crate::secret::Secret;
use serde::Deserialize;
use std::time::Duration;

/// `grant_type` of the on-behalf-of exchange.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How long to wait before the single retry of a failed exchange (MSAL: once, after 1 s).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Default wait for callers when Entra gives no `Retry-After`.
const DEFAULT_RETRY_AFTER: u64 = 5;

/// What a successful exchange returns.
pub struct IssuedToken {
    /// The Graph token.
    pub access_token: Secret,
    /// Its lifetime from now.
    pub expires_in: Duration,
}

/// The gateway as an Entra ID confidential client.
pub struct OboClient {
    http: reqwest::Client,
    authority_host: String,
    client_id: String,
    client_secret: Secret,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_codes: Vec<i64>,
    #[serde(default)]
    claims: Option<String>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
}

enum Attempt {
    Done(Result<IssuedToken, GatewayError>),
    /// A 5xx or a timeout: worth one more try.
    Transient(GatewayError),
}

impl OboClient {
    /// A client for `authority_host` (e.g. `https://login.microsoftonline.com`).
    pub fn new(
        http: reqwest::Client,
        authority_host: &url::Url,
        client_id: String,
        client_secret: Secret,
    ) -> Self {
        OboClient {
            http,
            authority_host: authority_host.as_str().trim_end_matches('/').to_string(),
            client_id,
            client_secret,
        }
    }

    /// The token endpoint of `tenant`: always tenant-specific, never `/common`.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.authority_host)
    }

    /// Where a user goes to satisfy a claims challenge.
    pub fn authorize_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/authorize", self.authority_host)
    }

    /// Exchanges `user`'s token for a Graph token with `scope`; retries once on 5xx or timeout.
    pub async fn exchange(
        &self,
        user: &UserCaller,
        scope: &str,
    ) -> Result<IssuedToken, GatewayError> {
        match self.attempt(user, scope).await {
            Attempt::Done(r) => r,
            Attempt::Transient(_) => {
                tokio::time::sleep(RETRY_DELAY).await;
                match self.attempt(user, scope).await {
                    Attempt::Done(r) => r,
                    Attempt::Transient(e) => Err(e),
                }
            }
        }
    }

    async fn attempt(&self, user: &UserCaller, scope: &str) -> Attempt {
        let form = [
            ("grant_type", JWT_BEARER),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("assertion", user.token.expose()),
            ("scope", scope),
            ("requested_token_use", "on_behalf_of"),
        ];
        let sent = self
            .http
            .post(self.token_endpoint(&user.tenant_id))
            .header("Accept", "application/json")
            .form(&form)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // reqwest's error text names the URL, never the form body.
                tracing::warn!(error = %e, "token endpoint unreachable");
                return Attempt::Transient(unavailable(
                    DEFAULT_RETRY_AFTER,
                    if e.is_timeout() {
                        "the token endpoint timed out"
                    } else {
                        "the token endpoint is unreachable"
                    },
                ));
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::upstream::parse_retry_after);
        let body = resp.bytes().await.unwrap_or_default();
        if status == 200 {
            return Attempt::Done(parse_success(&body));
        }
        if status == 429 {
            tracing::warn!(status, "token endpoint throttled the exchange");
            return Attempt::Done(Err(unavailable(
                retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                "Entra ID is throttling token requests",
            )));
        }
        if status >= 500 {
            tracing::warn!(status, "token endpoint failed");
            return Attempt::Transient(unavailable(
                retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                "Entra ID answered with a server error",
            ));
        }
        let err: ErrorResponse = serde_json::from_slice(&body).unwrap_or_default();
        Attempt::Done(Err(self.map_error(status, err, user, scope)))
    }

    fn map_error(
        &self,
        status: u16,
        e: ErrorResponse,
        user: &UserCaller,
        scope: &str,
    ) -> GatewayError {
        let has = |code: i64| e.error_codes.contains(&code);
        let claims = e.claims.as_deref().filter(|c| !c.trim().is_empty());
        tracing::info!(status, error = %e.error, codes = ?e.error_codes,
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
            return crate::problem::GatewayError::InvalidToken(crate::problem::TokenRejection(
                "the token expired before it could be exchanged".into(),
            ));
        }
        if e.error == "consent_required" || has(65001) {
            return GatewayError::ConsentRequired {
                scope: scope.to_string(),
            };
        }
        if matches!(e.error.as_str(), "invalid_client" | "unauthorized_client")
            || has(7000215)
            || has(700016)
            || has(7000222)
        {
            tracing::error!(error = %e.error, codes = ?e.error_codes,
                "Entra ID rejected the gateway's own client credentials: check entra.client_id and the client secret");
            return GatewayError::GatewayMisconfigured(e.error);
        }
        if has(50196) {
            tracing::error!(
                "Entra ID detected a request loop (AADSTS50196): the exchange cache is not working"
            );
            return unavailable(DEFAULT_RETRY_AFTER, "Entra ID detected a request loop");
        }
        if e.error == "invalid_grant" || has(50013) {
            return crate::problem::GatewayError::InvalidToken(crate::problem::TokenRejection(
                "the identity provider refused the token for the exchange".into(),
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

fn unavailable(retry_after_secs: u64, detail: &str) -> GatewayError {
    GatewayError::IdentityProviderUnavailable {
        retry_after_secs,
        detail: detail.into(),
    }
}

fn parse_success(body: &[u8]) -> Result<IssuedToken, GatewayError> {
    let t: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| GatewayError::ExchangeFailed("Entra ID's token answer is not JSON".into()))?;
    let access_token = t.access_token.filter(|t| !t.is_empty()).ok_or_else(|| {
        GatewayError::ExchangeFailed("Entra ID's token answer has no access_token".into())
    })?;
    // `expires_in` is a number, though some Entra endpoints send it as a string.
    let secs = match t.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(0);
    Ok(IssuedToken {
        access_token: Secret::new(access_token),
        expires_in: Duration::from_secs(secs),
    })
}

/// Entra's `claims` is JSON text; the challenge carries its minified form.
fn minify(claims: &str) -> String {
    serde_json::from_str::<serde_json::Value>(claims)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| claims.to_string())
}
