//! Step 1 of the lifecycle: prove who is calling.
//!
//! [`Authenticator::authenticate`] turns an `Authorization: Bearer` token into a [`Caller`],
//! following Entra ID's rules (`../shared/reference/entra-obo.md` §1): v1 and v2 issuers from
//! discovery per allowed tenant, RS256 only, the key chosen by `kid` from the tenant's JWKS, `aud`,
//! `iss`, `tid`, `exp`/`nbf` with leeway. Tokens already verified are remembered (keyed by the
//! SHA-256 of the token, until their `exp`) so repeated callers skip the RSA verification.

pub mod keys;

use crate::domain::{CallerSummary, TenantId};
use crate::error::{GatewayError, TokenRejection};
use crate::metrics::CallerMetrics;
use crate::secret::BearerToken;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use keys::KeyStore;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A user calling with a delegated token.
#[derive(Debug, Clone)]
pub struct UserCaller {
    /// `tid`
    pub tenant_id: String,
    /// `oid`: stable per tenant (unlike `sub`, which is pairwise per app).
    pub object_id: String,
    /// `upn` / `preferred_username` / `unique_name`, for people reading the audit trail.
    pub upn: Option<String>,
    /// The client application that obtained the token (`azp` in v2, `appid` in v1).
    pub client_app_id: Option<String>,
    /// `scp`, split.
    pub scopes: Vec<String>,
    /// The token itself: it leaves the gateway only as the on-behalf-of assertion.
    pub token: BearerToken,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

impl UserCaller {
    /// What the audit trail records about the user.
    pub fn summary(&self) -> CallerSummary {
        CallerSummary {
            kind: "user",
            tenant_id: self.tenant_id.clone(),
            object_id: Some(self.object_id.clone()),
            upn: self.upn.clone(),
            app_id: self.client_app_id.clone(),
            identity: None,
        }
    }
}

/// An application calling with an app-only token.
#[derive(Debug, Clone)]
pub struct AppCaller {
    /// `tid`
    pub tenant_id: String,
    /// The calling application (`azp` / `appid`).
    pub app_id: Option<String>,
    /// The service principal's `oid`.
    pub object_id: Option<String>,
    /// `roles`
    pub roles: Vec<String>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

/// Who is calling, with the evidence.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A user (delegated token). Shared: the acting identity and a trailing run hold it too.
    User(Arc<UserCaller>),
    /// An application (app-only token).
    App(AppCaller),
    /// A webhook source whose signature checked (`POST /hooks/{source}`).
    Hook(HookCaller),
}

/// A webhook source that proved a delivery with its signature: the sender is the caller, and
/// its run acts as the source's `run_as` identity.
#[derive(Debug, Clone)]
pub struct HookCaller {
    /// The NAME of `[hooks.NAME]`.
    pub source: Arc<str>,
    /// The tenant its runs act in.
    pub tenant_id: String,
    /// The `[identities.NAME]` its runs act as.
    pub run_as: Arc<str>,
}

impl Caller {
    /// What the audit trail records about the caller.
    pub fn summary(&self) -> CallerSummary {
        match self {
            Caller::User(u) => u.summary(),
            Caller::App(a) => CallerSummary {
                kind: "app",
                tenant_id: a.tenant_id.clone(),
                object_id: a.object_id.clone(),
                upn: None,
                app_id: a.app_id.clone(),
                identity: None,
            },
            Caller::Hook(h) => CallerSummary {
                kind: "hook",
                tenant_id: h.tenant_id.clone(),
                object_id: None,
                upn: None,
                app_id: None,
                identity: None,
            },
        }
    }

    /// The tenant and the per-caller rate-limit key: a user's `oid`, an application's
    /// service-principal `oid` (else its app id), so each app has its own allowance.
    pub fn limit_key(&self) -> (&str, String) {
        match self {
            Caller::User(u) => (&u.tenant_id, u.object_id.clone()),
            Caller::App(a) => (
                &a.tenant_id,
                a.object_id
                    .clone()
                    .or_else(|| a.app_id.as_ref().map(|id| format!("app:{id}")))
                    .unwrap_or_else(|| "app".into()),
            ),
            // A source name cannot collide with an `oid` (a GUID) or an `app:` key.
            Caller::Hook(h) => (&h.tenant_id, format!("hook:{}", h.source)),
        }
    }

    fn expires_at(&self) -> i64 {
        match self {
            Caller::User(u) => u.expires_at,
            Caller::App(a) => a.expires_at,
            // Never cached: a signature proves one delivery only.
            Caller::Hook(_) => 0,
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    tid: String,
    #[serde(default)]
    oid: Option<String>,
    exp: i64,
    #[serde(default)]
    scp: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    idtyp: Option<String>,
    #[serde(default)]
    upn: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    unique_name: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    ver: Option<String>,
}

/// The claims read before verification, only to pick the tenant's issuer and key.
#[derive(Deserialize)]
struct Peek {
    tid: Option<String>,
    iss: Option<String>,
}

/// A remembered verification, valid until the token expires.
#[derive(Clone)]
struct Verified {
    caller: Arc<Caller>,
    valid_until: Instant,
}

struct VerifiedExpiry;

impl moka::Expiry<[u8; 32], Verified> for VerifiedExpiry {
    fn expire_after_create(&self, _: &[u8; 32], v: &Verified, now: Instant) -> Option<Duration> {
        Some(v.valid_until.saturating_duration_since(now))
    }
}

/// Validates inbound bearer tokens.
pub struct Authenticator {
    keys: Arc<KeyStore>,
    audiences: Vec<String>,
    allowed_tenants: HashSet<String>,
    leeway: u64,
    verified: moka::sync::Cache<[u8; 32], Verified>,
    refusals: Family<RefusalLabels, Counter>,
    metrics: CallerMetrics,
}

/// Why a token was refused (the `cause` label): one of a fixed set of short words.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `expired`, `unknown_key`, `signature`, `version_mismatch`, `keys_unavailable`, ...
    pub cause: &'static str,
}

/// A refusal of the token: `cause` is the bounded metric label, `why` the caller's explanation.
fn reject(cause: &'static str, why: impl Into<String>) -> GatewayError {
    GatewayError::InvalidToken(TokenRejection::new(cause, why))
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Authenticator {
    /// An authenticator over `keys` with the `[callers]` settings.
    pub fn new(
        keys: Arc<KeyStore>,
        audiences: Vec<String>,
        allowed_tenants: &[TenantId],
        leeway_seconds: u64,
        cache_capacity: u64,
    ) -> Self {
        Authenticator {
            keys,
            audiences,
            allowed_tenants: allowed_tenants.iter().map(|t| t.to_string()).collect(),
            leeway: leeway_seconds,
            verified: moka::sync::Cache::builder()
                .max_capacity(cache_capacity)
                .expire_after(VerifiedExpiry)
                .build(),
            refusals: Family::default(),
            metrics: CallerMetrics::default(),
        }
    }

    /// The same, counting validations and verified-token cache hits into `metrics`.
    pub fn with_metrics(mut self, metrics: CallerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The `Authorization` header's bearer token, or why there is none usable.
    pub fn bearer(header: Option<&str>) -> Result<&str, GatewayError> {
        let Some(h) = header else {
            return Err(GatewayError::MissingCredentials);
        };
        let mut parts = h.trim().splitn(2, ' ');
        let scheme = parts.next().unwrap_or_default();
        let token = parts.next().unwrap_or_default().trim();
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(GatewayError::MissingCredentials);
        }
        if token.is_empty() {
            return Err(reject("empty", "the bearer token is empty"));
        }
        Ok(token)
    }

    /// Refused tokens by cause, for `/metrics` (`sync_gateway_token_refusals_total{cause}`).
    pub fn refusals(&self) -> Family<RefusalLabels, Counter> {
        self.refusals.clone()
    }

    /// Verifies `token` and says who is calling; a refusal is counted by its cause.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Caller>, GatewayError> {
        let result = self.authenticate_uncounted(token).await;
        self.metrics.validated(result.is_ok());
        match &result {
            Err(GatewayError::InvalidToken(r)) => {
                self.refusals
                    .get_or_create(&RefusalLabels { cause: r.cause })
                    .inc();
            }
            Err(GatewayError::KeysUnavailable) => {
                self.refusals
                    .get_or_create(&RefusalLabels {
                        cause: "keys_unavailable",
                    })
                    .inc();
            }
            _ => {}
        }
        result
    }

    async fn authenticate_uncounted(&self, token: &str) -> Result<Arc<Caller>, GatewayError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(reject("too_large", "the token is too large"));
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(v) = self.verified.get(&hash) {
            // The cache expires entries at `exp + leeway`; check again in case of a race.
            if v.caller.expires_at() + self.leeway as i64 >= now_unix() {
                self.metrics.cache_hits.inc();
                return Ok(v.caller);
            }
        }
        self.metrics.cache_misses.inc();
        let caller = Arc::new(self.verify(token).await?);
        let remaining = caller.expires_at() + self.leeway as i64 - now_unix();
        if remaining > 0 {
            self.verified.insert(
                hash,
                Verified {
                    caller: caller.clone(),
                    valid_until: Instant::now() + Duration::from_secs(remaining as u64),
                },
            );
        }
        Ok(caller)
    }

    async fn verify(&self, token: &str) -> Result<Caller, GatewayError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(reject(
                "malformed",
                "the token is not a signed JWT (header.payload.signature)",
            ));
        };
        let kid = check_header(h)?;
        let peek: Peek =
            decode_part(p).ok_or_else(|| reject("malformed", "the token's payload is not JSON"))?;
        let tid = peek
            .tid
            .ok_or_else(|| reject("missing_claim", "the token has no tid claim"))?;
        let iss = peek
            .iss
            .ok_or_else(|| reject("missing_claim", "the token has no iss claim"))?;
        if !self.allowed_tenants.contains(&tid) {
            return Err(reject("tenant", "the token's tenant is not allowed"));
        }
        let issuers = self.keys.issuers_of(&tid);
        if issuers.is_empty() {
            return Err(GatewayError::KeysUnavailable);
        }
        let Some((version, issuer)) = issuers.into_iter().find(|(_, i)| i.issuer == iss) else {
            return Err(reject("issuer", "the token's issuer is not accepted"));
        };
        let key = self
            .keys
            .key(&tid, version, &kid)
            .await
            .ok_or_else(|| reject("unknown_key", "the token is signed with an unknown key"))?;
        if let Some(t) = &key.issuer_template {
            if t.replace("{tenantid}", &tid) != issuer.issuer {
                return Err(reject(
                    "issuer",
                    "the signing key is not valid for the token's issuer",
                ));
            }
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_audience(&self.audiences);
        v.set_issuer(&[issuer.issuer.as_str()]);
        v.set_required_spec_claims(&["exp", "aud", "iss"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| {
            let (cause, why) = match e.kind() {
                ErrorKind::ExpiredSignature => ("expired", "the token has expired"),
                ErrorKind::ImmatureSignature => {
                    ("not_yet_valid", "the token is not valid yet (nbf)")
                }
                ErrorKind::InvalidAudience => ("audience", "the token's audience is not accepted"),
                ErrorKind::InvalidIssuer => ("issuer", "the token's issuer is not accepted"),
                ErrorKind::InvalidSignature => ("signature", "the token's signature is invalid"),
                ErrorKind::InvalidAlgorithm => {
                    ("algorithm", "the token's algorithm is not accepted")
                }
                ErrorKind::MissingRequiredClaim(_) => {
                    ("missing_claim", "the token lacks a required claim")
                }
                _ => ("malformed", "the token is malformed"),
            };
            reject(cause, why)
        })?;
        let c = data.claims;
        if c.tid != tid {
            return Err(reject("tenant", "the token's tenant is not allowed"));
        }
        // Each issuer issues one format: a v1 issuer's token says `ver` 1.0, a v2 issuer's
        // 2.0 (Microsoft.Identity.Web's issuer validation picks the issuer by `ver`).
        let expected_ver = match version {
            keys::TokenVersion::V1 => "1.0",
            keys::TokenVersion::V2 => "2.0",
        };
        if c.ver.as_deref() != Some(expected_ver) {
            return Err(reject(
                "version_mismatch",
                "the token's version (ver) does not match its issuer",
            ));
        }
        let app_id = c.azp.or(c.appid);
        let is_app = c.idtyp.as_deref() == Some("app") || (c.scp.is_none() && c.roles.is_some());
        if is_app {
            return Ok(Caller::App(AppCaller {
                tenant_id: c.tid,
                app_id,
                object_id: c.oid,
                roles: c.roles.unwrap_or_default(),
                expires_at: c.exp,
            }));
        }
        let object_id = c
            .oid
            .ok_or_else(|| reject("missing_claim", "the token has no oid claim"))?;
        Ok(Caller::User(Arc::new(UserCaller {
            tenant_id: c.tid,
            object_id,
            upn: c.upn.or(c.preferred_username).or(c.unique_name),
            client_app_id: app_id,
            scopes: c
                .scp
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            token: BearerToken::new(token),
            expires_at: c.exp,
        })))
    }
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Refuses every header that would let the token choose its own key or algorithm; returns `kid`.
fn check_header(h: &str) -> Result<String, GatewayError> {
    let header: serde_json::Map<String, serde_json::Value> =
        decode_part(h).ok_or_else(|| reject("malformed", "the token's header is not JSON"))?;
    match header.get("alg").and_then(|a| a.as_str()) {
        Some("RS256") => {}
        Some(_) => {
            return Err(reject(
                "algorithm",
                "the token's algorithm is not accepted (RS256 only)",
            ))
        }
        None => return Err(reject("algorithm", "the token's header has no alg")),
    }
    for field in ["jku", "x5u", "jwk", "x5c"] {
        if header.contains_key(field) {
            return Err(reject(
                "key_in_header",
                format!(
                    "the token's header carries '{field}'; keys are never taken from the token"
                ),
            ));
        }
    }
    match header.get("kid").and_then(|k| k.as_str()) {
        Some(kid) if !kid.is_empty() && kid.len() <= 256 => Ok(kid.to_string()),
        _ => Err(reject("malformed", "the token's header has no kid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn headers_that_choose_their_own_key_are_refused() {
        for h in [
            r#"{"alg":"none","kid":"k"}"#,
            r#"{"alg":"HS256","kid":"k"}"#,
            r#"{"alg":"RS256","kid":"k","jku":"https://evil/keys"}"#,
            r#"{"alg":"RS256","kid":"k","x5u":"https://evil/cert"}"#,
            r#"{"alg":"RS256","kid":"k","jwk":{"kty":"RSA"}}"#,
            r#"{"alg":"RS256"}"#,
        ] {
            assert!(check_header(&b64(h)).is_err(), "{h} was accepted");
        }
        assert_eq!(
            check_header(&b64(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#)).unwrap(),
            "k1"
        );
    }

    #[test]
    fn the_bearer_scheme_is_required_and_case_insensitive() {
        assert!(matches!(
            Authenticator::bearer(None),
            Err(GatewayError::MissingCredentials)
        ));
        assert!(matches!(
            Authenticator::bearer(Some("Basic abc")),
            Err(GatewayError::MissingCredentials)
        ));
        assert!(matches!(
            Authenticator::bearer(Some("Bearer ")),
            Err(GatewayError::InvalidToken(_))
        ));
        assert_eq!(Authenticator::bearer(Some("bearer abc")).unwrap(), "abc");
    }
}
