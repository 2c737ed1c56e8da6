//! `sync-gateway login`: signs a service identity in with the device-code flow (reference §5,
//! RFC 8628) and stores its session encrypted: in its file, or, with `[state] backend = "redis"`,
//! in Redis (where every replica takes it up). An interactive command of its own process; the
//! running gateway's refreshes of that session are `service_identity`'s.

use super::client_auth::ClientAuth;
use super::endpoint::{EntraClient, ErrorBody, Refusal};
use super::redis_store::RedisSessionStore;
use super::store::{Account, SessionStore, StoreError, StoredSession};
use crate::config::{Config, StateBackendKind};
use crate::error::GatewayError;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// `grant_type` of the device-code poll (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Scopes asked for besides the Graph ones: an ID token naming the account, and a refresh token.
const SESSION_SCOPES: &str = "openid profile offline_access";

/// RFC 8628 §3.5: after `slow_down` the interval grows by 5 seconds, for good.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// Waits between polls of the device-code flow. [`RealTime`] sleeps; tests substitute a pacer
/// that records the waits instead.
pub trait Pacer {
    /// Waits `d` before the next poll.
    fn pause(&mut self, d: Duration) -> impl Future<Output = ()> + Send;
}

/// Sleeps for real.
pub struct RealTime;

impl Pacer for RealTime {
    fn pause(&mut self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

/// Why `login` did not store a session. The text is for the operator at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// `--identity` names no `[identities.NAME]`.
    #[error("no identity {0:?} is configured: add [identities.{0}] to the configuration")]
    UnknownIdentity(String),
    /// `--identity` names an application identity, which acts with the gateway's own client
    /// credential: there is nobody to sign in.
    #[error("identity {0:?} is kind = \"application\": it acts as the gateway's own application with its client credential and the application permission {perm}, so there is nothing to sign in: grant that permission with admin consent on the app registration instead (`login` is for kind = \"delegated\" identities)", perm = crate::config::SYNC_PERMISSION)]
    ApplicationIdentity(String),
    /// The person at the browser declined.
    #[error("the sign-in was declined at the browser; nothing was stored")]
    Denied,
    /// Nobody signed in before the code expired.
    #[error("the code expired before the sign-in was completed; run login again")]
    Expired,
    /// The account that signed in is in another tenant than the identity's.
    #[error("the account signed in to tenant {got}, but identity '{identity}' is configured for tenant {want}; sign in with the service account of that tenant")]
    WrongTenant {
        /// The identity.
        identity: String,
        /// Its configured tenant.
        want: String,
        /// The account's tenant.
        got: String,
    },
    /// Entra refused the flow for another reason.
    #[error("Entra ID refused the sign-in: {0}")]
    Refused(String),
    /// The gateway's credential, Entra's availability, or a garbled answer.
    #[error("{0}")]
    Gateway(GatewayError),
    /// The certificate files of the client credential.
    #[error("the client credential cannot be loaded: {0}")]
    Credential(super::client_auth::CertificateError),
    /// The session could not be stored.
    #[error("{0}")]
    Store(StoreError),
    /// Redis (`[state] backend = "redis"`) could not be reached or did not answer in time;
    /// nothing was stored.
    #[error("the session could not be stored in Redis: {0}; run login again once Redis answers")]
    State(crate::state::Unavailable),
}

/// What a completed `login` stored: also the record an audit `admin` event should carry.
#[derive(Debug, Clone, Serialize)]
pub struct LoginOutcome {
    /// The identity signed in.
    pub identity: String,
    /// Its tenant.
    pub tenant_id: String,
    /// The account that signed in.
    pub account: Account,
    /// The encrypted session's file (memory mode; with Redis, the file the configuration
    /// names if it names one, not written).
    pub store_path: Option<PathBuf>,
    /// Where the encrypted session is, for the operator: the file, or the Redis key.
    pub stored_in: String,
}

#[derive(Deserialize)]
struct DeviceCodeResponse {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
    #[serde(default = "default_interval")]
    interval: u64,
}

fn default_expires_in() -> u64 {
    900
}

fn default_interval() -> u64 {
    5
}

/// The claims of an ID token the gateway reads: it came straight from the token endpoint over
/// TLS, which OpenID Connect Core §3.1.3.7 accepts in place of a signature check.
#[derive(Deserialize, Default)]
struct IdClaims {
    tid: Option<String>,
    oid: Option<String>,
    preferred_username: Option<String>,
    upn: Option<String>,
}

/// Runs the device-code flow for `identity` of `config`: prints the verification URL and code
/// to `out`, polls at the interval Entra gives (growing it on `slow_down`), and stores the
/// session encrypted. Uses the gateway's own client credential, as the gateway's refreshes do.
pub async fn login(
    config: &Config,
    identity: &str,
    http: reqwest::Client,
    pacer: &mut impl Pacer,
    out: &mut (dyn std::io::Write + Send),
) -> Result<LoginOutcome, LoginError> {
    let cfg = config
        .identities
        .get(identity)
        .ok_or_else(|| LoginError::UnknownIdentity(identity.to_string()))?;
    // Refused before anything is loaded or sent: an application identity has no session.
    let session = cfg
        .delegated()
        .ok_or_else(|| LoginError::ApplicationIdentity(identity.to_string()))?;
    let auth = ClientAuth::from_config(&config.entra).map_err(LoginError::Credential)?;
    let entra = EntraClient::new(
        http,
        &config.entra.authority_host,
        config.entra.client_id.clone(),
        auth,
    );
    let tenant = cfg.tenant_id.as_str();
    let scope = format!("{SESSION_SCOPES} {}", session.scopes.join(" "));
    let (status, retry_after, body) = entra
        .post_public(
            &entra.device_code_endpoint(tenant),
            &[("client_id", entra.client_id()), ("scope", &scope)],
        )
        .await
        .map_err(LoginError::Gateway)?;
    if status == 429 || status >= 500 {
        return Err(LoginError::Gateway(super::endpoint::unavailable(
            retry_after.unwrap_or(super::endpoint::DEFAULT_RETRY_AFTER),
            "Entra ID did not start the device-code flow",
        )));
    }
    if status != 200 {
        let e: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        return Err(LoginError::Refused(format!("{} ({})", e.error, e.aadsts())));
    }
    let code: DeviceCodeResponse = serde_json::from_slice(&body)
        .map_err(|_| LoginError::Refused("the device-code answer is not understood".into()))?;
    let device_code = Secret::new(code.device_code);
    let _ = writeln!(
        out,
        "To sign in the service identity '{identity}' (tenant {tenant}), use a web browser to open the page {} and enter the code {} to authenticate.\nSign in as the service account, not as yourself. Waiting for the sign-in (the code expires in {} minutes)...",
        code.verification_uri,
        code.user_code,
        code.expires_in.div_ceil(60)
    );
    let _ = out.flush();

    let mut interval = Duration::from_secs(code.interval.max(1));
    let expires = Duration::from_secs(code.expires_in);
    let mut waited = Duration::ZERO;
    let answer = loop {
        if waited >= expires {
            return Err(LoginError::Expired);
        }
        pacer.pause(interval).await;
        waited += interval;
        let grant = [
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", device_code.expose()),
        ];
        match entra.request(tenant, &grant).await {
            Ok(a) => break a,
            Err(Refusal::Failed(e)) => return Err(LoginError::Gateway(e)),
            Err(Refusal::Grant(e)) => match e.error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += SLOW_DOWN_STEP,
                "expired_token" => return Err(LoginError::Expired),
                "authorization_declined" | "access_denied" => return Err(LoginError::Denied),
                "bad_verification_code" => {
                    return Err(LoginError::Refused(format!(
                        "Entra ID does not know the device code ({})",
                        e.aadsts()
                    )))
                }
                _ => return Err(LoginError::Refused(format!("{} ({})", e.error, e.aadsts()))),
            },
        }
    };
    let refresh_token = answer.refresh_token.ok_or_else(|| {
        LoginError::Refused("no refresh token was issued (offline_access not granted)".into())
    })?;
    let claims: IdClaims = answer
        .id_token
        .as_ref()
        .and_then(|t| jsonwebtoken::dangerous::insecure_decode_claims::<IdClaims>(t.expose()).ok())
        .unwrap_or_default();
    let account = Account {
        tenant_id: claims.tid.unwrap_or_else(|| tenant.to_string()),
        object_id: claims.oid,
        upn: claims.preferred_username.or(claims.upn),
    };
    if account.tenant_id != tenant {
        return Err(LoginError::WrongTenant {
            identity: identity.to_string(),
            want: tenant.to_string(),
            got: account.tenant_id,
        });
    }
    let signed_in = StoredSession {
        refresh_token,
        account: account.clone(),
        signed_in_at: chrono::Utc::now(),
        refreshed_at: None,
    };
    let stored_in = match config.state.backend {
        StateBackendKind::Memory => {
            // Configuration validation requires `store_path` on the memory backend.
            let Some(path) = session.store_path.clone() else {
                return Err(LoginError::Gateway(GatewayError::Internal));
            };
            let shown = path.display().to_string();
            SessionStore::new(path, &session.store_key, identity, tenant)
                .save(&signed_in)
                .map_err(LoginError::Store)?;
            shown
        }
        StateBackendKind::Redis => {
            // The same connection, prefix and bound the gateway uses; a login wins over any
            // session there, and every replica takes it up at its next refresh.
            let redis =
                crate::state::Redis::new(&config.state, crate::metrics::StateMetrics::default())
                    .map_err(LoginError::State)?;
            let store = RedisSessionStore::new(
                redis,
                identity,
                tenant,
                &session.store_key,
                super::service_identity::refresh_lease(config),
            );
            store
                .write_login(&signed_in)
                .await
                .map_err(LoginError::State)?;
            format!("Redis (key {})", store.key())
        }
    };
    // `login` is its own process and cannot append to the gateway's chain: the gateway records
    // the `identity_login` admin record when it takes this session up.
    tracing::info!(event = "service_identity_login", identity, tenant,
        account_upn = account.upn.as_deref().unwrap_or(""), account_object_id = account.object_id.as_deref().unwrap_or(""),
        store = %stored_in, "service identity signed in");
    let _ = writeln!(
        out,
        "Signed in as {} for identity '{identity}'. The session is stored encrypted in {stored_in}; a running gateway uses it from its next request.",
        account.upn.as_deref().or(account.object_id.as_deref()).unwrap_or("the service account"),
    );
    Ok(LoginOutcome {
        identity: identity.to_string(),
        tenant_id: tenant.to_string(),
        account,
        store_path: session.store_path.clone(),
        stored_in,
    })
}
