//! The gateway as a confidential client of Entra ID's v2 token endpoint (reference §2, §3): one
//! place that sends a grant with the client credential, applies the retry rules, and turns
//! answers about the gateway's *own* credential into operator-readable log lines and errors.
//! Each grant (on-behalf-of, refresh token, device code, client credentials) maps the rest of
//! Entra's refusals itself. Branches on `error` and `error_codes`, never on the description text.

use super::client_auth::{ClientAuth, CredentialKind};
use super::store::RefreshToken;
use crate::error::GatewayError;
use crate::metrics::CredentialMetrics;
use crate::retry::Backoff;
use crate::secret::Secret;
use serde::Deserialize;
use std::time::Duration;

/// The single retry of a failed request (MSAL: once, after 1 s).
const RETRY: Backoff = Backoff::constant(Duration::from_secs(1));

/// Default wait for callers when Entra gives no `Retry-After`.
pub(crate) const DEFAULT_RETRY_AFTER: u64 = 5;

/// Wait announced to callers while the gateway's own credential is refused.
const CREDENTIAL_RETRY_AFTER: u64 = 30;

/// AADSTS codes about the client credential (reference-error-codes.md): secret invalid or
/// expired, assertion signature / key / lifetime / audience / issuer, federated credential
/// matching, credential missing.
const CLIENT_CREDENTIAL_CODES: [i64; 12] = [
    7000215, 7000222, 700027, 700024, 700021, 700023, 70021, 700211, 700212, 700213, 7000218,
    700025,
];

/// AADSTS700016: the application is not in the tenant (wrong client id, or not consented there).
pub(crate) const APP_NOT_FOUND: i64 = 700016;

/// AADSTS7000229: the application has no service principal in the tenant (never consented
/// there, or its enterprise application was deleted).
pub(crate) const NO_SERVICE_PRINCIPAL: i64 = 7000229;

/// AADSTS700024: the client assertion is outside its validity period.
const ASSERTION_EXPIRED: i64 = 700024;

/// AADSTS700025: the application is a public client, so Entra refuses any client credential.
const PUBLIC_CLIENT: i64 = 700025;

/// A successful token answer.
pub struct TokenAnswer {
    /// The access token (opaque: never parsed).
    pub access_token: Secret,
    /// Its lifetime from now.
    pub expires_in: Duration,
    /// A refresh token, when `offline_access` was granted.
    pub refresh_token: Option<RefreshToken>,
    /// An ID token, when `openid` was granted: the only token whose claims the gateway reads.
    pub id_token: Option<Secret>,
}

/// Entra's OAuth error body (the members the gateway branches on or logs).
#[derive(Debug, Deserialize, Default, Clone)]
pub struct ErrorBody {
    /// The OAuth `error`.
    #[serde(default)]
    pub error: String,
    /// The AADSTS codes.
    #[serde(default)]
    pub error_codes: Vec<i64>,
    /// A claims challenge (Conditional Access).
    #[serde(default)]
    pub claims: Option<String>,
    /// Entra's request id.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Entra's correlation id.
    #[serde(default)]
    pub correlation_id: Option<String>,
}

impl ErrorBody {
    /// Whether `code` is among the AADSTS codes.
    pub fn has(&self, code: i64) -> bool {
        self.error_codes.contains(&code)
    }

    /// `AADSTS<code>` of the first code, for log lines and details.
    pub fn aadsts(&self) -> String {
        self.error_codes
            .first()
            .map(|c| format!("AADSTS{c}"))
            .unwrap_or_else(|| "no AADSTS code".into())
    }
}

/// Why a grant did not produce a token.
#[derive(Debug)]
pub enum Refusal {
    /// Entra refused the grant itself (a 4xx OAuth error that is not about the gateway's own
    /// credential): the grant's caller decides what it means.
    Grant(ErrorBody),
    /// Already mapped: the gateway's credential refused, throttling, an outage, a garbled answer.
    Failed(GatewayError),
}

impl From<GatewayError> for Refusal {
    fn from(e: GatewayError) -> Self {
        Refusal::Failed(e)
    }
}

/// In whose name a grant asks: for a user or a session (on-behalf-of, refresh, device code),
/// or for the application itself (client credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    OnBehalf,
    Application,
}

enum Attempt {
    Done(Result<TokenAnswer, Refusal>),
    /// A 5xx or a timeout: worth one more try after [`RETRY`]'s delay.
    Transient(GatewayError),
    /// The client assertion expired: worth one more try with a freshly read federated token.
    AssertionExpired(ErrorBody),
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    id_token: Option<String>,
}

/// The gateway's application at Entra ID: where its token endpoints are and how it
/// authenticates there.
pub struct EntraClient {
    http: reqwest::Client,
    authority_host: String,
    client_id: String,
    auth: ClientAuth,
    metrics: CredentialMetrics,
}

impl EntraClient {
    /// A client for `authority_host` (e.g. `https://login.microsoftonline.com`); `http` must
    /// carry the `entra.timeout_seconds` timeouts.
    pub fn new(
        http: reqwest::Client,
        authority_host: &url::Url,
        client_id: String,
        auth: ClientAuth,
    ) -> Self {
        EntraClient {
            http,
            authority_host: authority_host.as_str().trim_end_matches('/').to_string(),
            client_id,
            auth,
            metrics: CredentialMetrics::default(),
        }
    }

    /// The same, counting every attempt that yields no token into `metrics`
    /// (`entra_errors_total`).
    pub fn with_metrics(mut self, metrics: CredentialMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The gateway application's client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client credential in use.
    pub fn client_auth(&self) -> &ClientAuth {
        &self.auth
    }

    /// The token endpoint of `tenant`: always tenant-specific, never `/common`.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.authority_host)
    }

    /// Where a user goes to satisfy a claims challenge.
    pub fn authorize_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/authorize", self.authority_host)
    }

    /// The device authorization endpoint of `tenant` (reference §5).
    pub fn device_code_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/devicecode", self.authority_host)
    }

    /// POSTs `grant` to `tenant`'s token endpoint with `client_id` and the client credential.
    /// Retries once after 1 s on a 5xx or a timeout (never on 429), and once at once when Entra
    /// says a federated token expired, after reading the token file again.
    pub async fn request(
        &self,
        tenant: &str,
        grant: &[(&str, &str)],
    ) -> Result<TokenAnswer, Refusal> {
        self.request_as(tenant, grant, Speaker::OnBehalf).await
    }

    /// [`EntraClient::request`] for a grant in the application's own name (client
    /// credentials). There, Entra saying the application is not in the tenant (AADSTS700016,
    /// 7000229) means the identity's tenant never gave admin consent: the grant's caller
    /// explains that as [`Refusal::Grant`], rather than it counting as a refusal of the
    /// gateway's credential.
    pub async fn request_for_application(
        &self,
        tenant: &str,
        grant: &[(&str, &str)],
    ) -> Result<TokenAnswer, Refusal> {
        self.request_as(tenant, grant, Speaker::Application).await
    }

    async fn request_as(
        &self,
        tenant: &str,
        grant: &[(&str, &str)],
        speaker: Speaker,
    ) -> Result<TokenAnswer, Refusal> {
        let mut waited = false;
        let mut reread = false;
        loop {
            match self.attempt(tenant, grant, speaker).await {
                Attempt::Done(r) => return r,
                Attempt::Transient(_) if !waited => {
                    waited = true;
                    tokio::time::sleep(RETRY.delay(1)).await;
                }
                Attempt::Transient(e) => return Err(Refusal::Failed(e)),
                Attempt::AssertionExpired(_)
                    if !reread && self.auth.kind() == CredentialKind::Federated =>
                {
                    reread = true;
                    tracing::info!(credential = %self.auth.describe(),
                        "Entra ID says the federated token expired; reading the token file again");
                    self.auth.assertion_expired();
                }
                Attempt::AssertionExpired(e) => {
                    return Err(Refusal::Failed(self.credential_refused(tenant, &e)))
                }
            }
        }
    }

    /// POSTs a form without the client credential (the device authorization request takes
    /// none); returns the status, `Retry-After` and body.
    pub async fn post_public(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<(u16, Option<u64>, Vec<u8>), GatewayError> {
        let resp = self
            .http
            .post(url)
            .header("Accept", "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| unreachable_error(&e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(&resp);
        let body = resp.bytes().await.unwrap_or_default();
        Ok((status, retry_after, body.to_vec()))
    }

    async fn attempt(&self, tenant: &str, grant: &[(&str, &str)], speaker: Speaker) -> Attempt {
        let grant_label = grant_label(grant);
        let count = |cause, codes: &[i64]| self.metrics.entra_error(grant_label, cause, codes);
        let endpoint = self.token_endpoint(tenant);
        let credential = match self.auth.form_fields(&endpoint) {
            Ok(c) => c,
            Err(e) => return Attempt::Done(Err(Refusal::Failed(e))),
        };
        let mut form: Vec<(&str, &str)> = grant.to_vec();
        form.push(("client_id", self.client_id.as_str()));
        form.extend(credential.iter().map(|(k, v)| (*k, v.expose())));
        let host = reqwest::Url::parse(&endpoint)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string));
        let (request, mut span) = crate::trace::propagate_traced(
            self.http.post(&endpoint),
            "entra token",
            "POST",
            host.as_deref(),
        );
        span.attribute("sync_gateway.grant", grant_label);
        let sent = request
            .header("Accept", "application/json")
            .form(&form)
            .send()
            .await;
        span.finish(sent.as_ref().ok().map(|r| r.status().as_u16()));
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                count("unreachable", &[]);
                return Attempt::Transient(unreachable_error(&e));
            }
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(&resp);
        let body = resp.bytes().await.unwrap_or_default();
        if status == 200 {
            return Attempt::Done(parse_success(&body).map_err(Refusal::Failed));
        }
        if status == 429 {
            count("throttled", &[]);
            tracing::warn!(status, "token endpoint throttled the request");
            return Attempt::Done(Err(Refusal::Failed(unavailable(
                retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                "Entra ID is throttling token requests",
            ))));
        }
        if status >= 500 {
            count("server_error", &[]);
            tracing::warn!(status, "token endpoint failed");
            return Attempt::Transient(unavailable(
                retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                "Entra ID answered with a server error",
            ));
        }
        let err: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        if speaker == Speaker::Application
            && (err.has(APP_NOT_FOUND) || err.has(NO_SERVICE_PRINCIPAL))
        {
            return Attempt::Done(Err(Refusal::Grant(err)));
        }
        let about_credential =
            matches!(err.error.as_str(), "invalid_client" | "unauthorized_client")
                || err
                    .error_codes
                    .iter()
                    .any(|c| CLIENT_CREDENTIAL_CODES.contains(c))
                || err.has(APP_NOT_FOUND);
        if !about_credential {
            count("grant", &err.error_codes);
            return Attempt::Done(Err(Refusal::Grant(err)));
        }
        count("client_credential", &err.error_codes);
        if err.has(ASSERTION_EXPIRED) {
            return Attempt::AssertionExpired(err);
        }
        Attempt::Done(Err(Refusal::Failed(self.credential_refused(tenant, &err))))
    }

    /// Logs, for the operator, why Entra refused the gateway's own credential, and the error
    /// callers get: 500 for a wrong secret or client id (a deployment must change), 503 for a
    /// refused certificate or federated token (a rotation in progress may fix it).
    fn credential_refused(&self, tenant: &str, e: &ErrorBody) -> GatewayError {
        let kind = self.auth.kind();
        let credential = self.auth.describe();
        let (trace_id, correlation_id) = (
            e.trace_id.as_deref().unwrap_or(""),
            e.correlation_id.as_deref().unwrap_or(""),
        );
        let code = e.aadsts();
        let credential_code = e
            .error_codes
            .iter()
            .any(|c| CLIENT_CREDENTIAL_CODES.contains(c));
        if e.has(APP_NOT_FOUND) || (e.error == "unauthorized_client" && !credential_code) {
            tracing::error!(error = %e.error, code = %code, tenant, client_id = %self.client_id, trace_id, correlation_id,
                "Entra ID does not let the gateway's application request tokens in this tenant: check entra.client_id, and that the application is consented in the tenant");
            return GatewayError::GatewayMisconfigured(e.error.clone());
        }
        if e.has(PUBLIC_CLIENT) {
            tracing::error!(error = %e.error, code = %code, client_id = %self.client_id, trace_id, correlation_id,
                "Entra ID treats the gateway's application as a public client and refuses its credential (AADSTS700025): turn 'Allow public client flows' off on the app registration");
            return GatewayError::GatewayMisconfigured(e.error.clone());
        }
        match kind {
            CredentialKind::Secret => {
                tracing::error!(error = %e.error, code = %code, trace_id, correlation_id,
                    "Entra ID rejected the gateway's own client credentials: check entra.client_id and the client secret");
                return GatewayError::GatewayMisconfigured(e.error.clone());
            }
            CredentialKind::Certificate => {
                let why = if e.has(ASSERTION_EXPIRED) {
                    "the client assertion is outside its validity period: check the gateway's clock"
                } else if e.has(700023) || e.has(700021) {
                    "the client assertion's audience or issuer was not accepted"
                } else {
                    "the certificate is not registered on the application, or its key does not match: upload the certificate to the app registration or fix entra.certificate_file"
                };
                tracing::error!(error = %e.error, code = %code, client_id = %self.client_id, credential = %credential, trace_id, correlation_id,
                    "Entra ID rejected the gateway's certificate ({code}): {why}");
            }
            CredentialKind::Federated => {
                let why = if e.has(ASSERTION_EXPIRED) {
                    "the token in the file has expired, also after reading the file again: the platform is not refreshing it (check the projected service account token and AZURE_FEDERATED_TOKEN_FILE)"
                } else if e
                    .error_codes
                    .iter()
                    .any(|c| [70021, 700211, 700212, 700213].contains(c))
                {
                    "no federated identity credential on the application matches the token's issuer, subject and audience (api://AzureADTokenExchange)"
                } else {
                    "the token was not accepted as a client assertion"
                };
                tracing::error!(error = %e.error, code = %code, client_id = %self.client_id, credential = %credential, trace_id, correlation_id,
                    "Entra ID rejected the gateway's federated token ({code}): {why}");
            }
        }
        GatewayError::ClientCredentialRejected {
            credential: kind.name(),
            retry_after_secs: CREDENTIAL_RETRY_AFTER,
        }
    }
}

/// The `grant` label of a token request: its `grant_type`, as one of a few fixed words.
fn grant_label(grant: &[(&str, &str)]) -> &'static str {
    match grant
        .iter()
        .find(|(k, _)| *k == "grant_type")
        .map(|(_, v)| *v)
    {
        // Literals, not the grants' constants: the grants import this file, not the reverse.
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => "on_behalf_of",
        Some("refresh_token") => "refresh_token",
        Some("urn:ietf:params:oauth:grant-type:device_code") => "device_code",
        Some("client_credentials") => "client_credentials",
        _ => "other",
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::retry::parse_retry_after)
}

fn unreachable_error(e: &reqwest::Error) -> GatewayError {
    // reqwest's error text names the URL, never the form body.
    tracing::warn!(error = %e, "token endpoint unreachable");
    unavailable(
        DEFAULT_RETRY_AFTER,
        if e.is_timeout() {
            "the token endpoint timed out"
        } else {
            "the token endpoint is unreachable"
        },
    )
}

/// Entra ID is not answering usefully: callers may retry after `retry_after_secs`.
pub(crate) fn unavailable(retry_after_secs: u64, detail: &str) -> GatewayError {
    GatewayError::IdentityProviderUnavailable {
        retry_after_secs,
        detail: detail.into(),
    }
}

fn parse_success(body: &[u8]) -> Result<TokenAnswer, GatewayError> {
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
    Ok(TokenAnswer {
        access_token: Secret::new(access_token),
        expires_in: Duration::from_secs(secs),
        refresh_token: t
            .refresh_token
            .filter(|r| !r.is_empty())
            .map(RefreshToken::new),
        id_token: t.id_token.filter(|r| !r.is_empty()).map(Secret::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(auth: ClientAuth) -> EntraClient {
        EntraClient::new(
            reqwest::Client::new(),
            &url::Url::parse("https://login.example").unwrap(),
            "client-1".into(),
            auth,
        )
    }

    fn refused(codes: &[i64]) -> ErrorBody {
        ErrorBody {
            error: "invalid_client".into(),
            error_codes: codes.to_vec(),
            ..ErrorBody::default()
        }
    }

    fn federated() -> ClientAuth {
        ClientAuth::federated("client-1".into(), "/nonexistent".into(), Duration::ZERO)
    }

    #[test]
    fn a_refused_federated_token_is_a_503_an_operator_can_fix_by_rotation() {
        let e = client(federated()).credential_refused("t", &refused(&[700213]));
        assert!(matches!(
            e,
            GatewayError::ClientCredentialRejected {
                credential: "federated token",
                ..
            }
        ));
    }

    #[test]
    fn an_unknown_application_or_a_public_client_is_a_misconfiguration_whatever_the_credential() {
        for codes in [[700016], [700025]] {
            let e = client(federated()).credential_refused("t", &refused(&codes));
            assert!(
                matches!(e, GatewayError::GatewayMisconfigured(_)),
                "{codes:?}"
            );
        }
    }
}
