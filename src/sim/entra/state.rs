//! What every endpoint of the simulated Entra shares: the tenants and app registration it was
//! started with, the signing keys, request counters, injected failures and the log of issued
//! secrets ([`EntraState`]); and the helpers for time, issuers and random or derived ids.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::super::keys::KeyStore;
use super::super::options::{AppConsent, SimOptions};

/// A fault the token endpoint injects after it has validated a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Conditional Access step-up: 400 `invalid_grant`, error code 50076, `suberror:
    /// "basic_action"` and the given `claims` JSON string.
    StepUp {
        /// The claims challenge, e.g. `{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}`.
        claims: String,
    },
    /// 429 with `Retry-After: N` and a `temporarily_unavailable` error body.
    Throttle {
        /// Seconds to announce in `Retry-After`.
        retry_after_secs: u64,
    },
    /// 500 with a `server_error` body.
    ServerError,
    /// Sleeps this long, then answers normally.
    Slow(Duration),
    /// Consent missing: 400 `invalid_grant`, error code 65001, `suberror: "consent_required"`.
    ConsentRequired,
}

/// Whom a [`Failure`] applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailureScope {
    /// Every exchange without a user-specific failure.
    Global,
    /// Exchanges whose assertion carries this `oid`.
    User(String),
}

/// The state every endpoint shares; each endpoint's own state (credentials, sessions, the
/// token request log) lives beside it, in that endpoint's file.
pub(super) struct EntraState {
    /// `http://127.0.0.1:PORT`.
    pub(super) base: String,
    /// The Graph resource: `aud` of Graph tokens and prefix of valid scopes.
    pub(super) graph_resource: String,
    /// Tenant ids Entra knows.
    pub(super) tenants: Vec<String>,
    /// The gateway's client id.
    pub(super) client_id: String,
    /// The gateway's client secret.
    pub(super) client_secret: String,
    /// Audiences of the gateway's own API.
    pub(super) api_audiences: Vec<String>,
    /// Lifetime of issued Graph tokens.
    pub(super) graph_token_lifetime: Duration,
    /// Signing keys, shared with the simulated Graph.
    pub(super) keys: Arc<KeyStore>,
    failures: Mutex<Failures>,
    /// JWKS fetches.
    pub(super) jwks_requests: AtomicUsize,
    /// Discovery fetches.
    pub(super) discovery_requests: AtomicUsize,
    /// POSTs to the token endpoint.
    pub(super) token_requests: AtomicUsize,
    /// Successful on-behalf-of exchanges.
    pub(super) exchanges: AtomicUsize,
    /// Successful refresh-token grants.
    pub(super) refreshes: AtomicUsize,
    /// Device-code polls.
    pub(super) device_polls: AtomicUsize,
    /// Device-code flows completed with tokens.
    pub(super) device_logins: AtomicUsize,
    issued: Mutex<Vec<String>>,
    /// What discovery and keys report as `cloud_instance_name`.
    pub(super) cloud_instance_name: String,
    /// The polling interval the device authorization endpoint announces.
    pub(super) device_interval: Duration,
    /// Permissions the tenants consented to for the gateway.
    pub(super) consented: Vec<String>,
    /// Successful client-credentials grants.
    pub(super) app_tokens: AtomicUsize,
    app_consent: Mutex<AppConsents>,
}

/// What each tenant granted the gateway's application as itself: one answer for every
/// tenant, overridden per tenant.
struct AppConsents {
    every: AppConsent,
    tenants: HashMap<String, AppConsent>,
}

#[derive(Default)]
struct Failures {
    global: Option<Failure>,
    users: HashMap<String, Failure>,
}

impl EntraState {
    /// The state of an Entra at `base` issuing Graph tokens for `graph_resource`; the client
    /// secret counts as issued from the start.
    pub(super) fn new(
        opts: &SimOptions,
        base: String,
        graph_resource: String,
        keys: Arc<KeyStore>,
    ) -> EntraState {
        EntraState {
            base,
            graph_resource,
            tenants: opts.tenants.clone(),
            client_id: opts.client_id.clone(),
            client_secret: opts.client_secret.clone(),
            api_audiences: opts.api_audiences.clone(),
            graph_token_lifetime: opts.graph_token_lifetime,
            keys,
            failures: Mutex::new(Failures::default()),
            jwks_requests: AtomicUsize::new(0),
            discovery_requests: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            exchanges: AtomicUsize::new(0),
            refreshes: AtomicUsize::new(0),
            device_polls: AtomicUsize::new(0),
            device_logins: AtomicUsize::new(0),
            issued: Mutex::new(vec![opts.client_secret.clone()]),
            cloud_instance_name: opts.cloud_instance_name.clone(),
            device_interval: opts.device_interval,
            consented: opts.consented_permissions.clone(),
            app_tokens: AtomicUsize::new(0),
            app_consent: Mutex::new(AppConsents {
                every: opts.app_consent.clone(),
                tenants: HashMap::new(),
            }),
        }
    }

    /// What `tenant` granted the gateway's application as itself.
    pub(super) fn app_consent(&self, tenant: &str) -> AppConsent {
        let c = self.app_consent.lock().expect("app consent lock");
        c.tenants.get(tenant).unwrap_or(&c.every).clone()
    }

    /// Sets what `tenant` granted the gateway's application as itself.
    pub(super) fn set_app_consent(&self, tenant: &str, consent: AppConsent) {
        self.app_consent
            .lock()
            .expect("app consent lock")
            .tenants
            .insert(tenant.to_string(), consent);
    }

    /// Whether `tenant` is one of the known tenant ids (aliases are not).
    pub(super) fn knows_tenant(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t == tenant)
    }

    /// The v2 issuer of `tenant`: `{base}/{tenant}/v2.0`.
    pub(super) fn issuer_v2(&self, tenant: &str) -> String {
        format!("{}/{tenant}/v2.0", self.base)
    }

    /// Remembers a secret handed out or received, for [`EntraState::issued_secrets`].
    pub(super) fn record(&self, secret: &str) {
        self.issued
            .lock()
            .expect("issued lock")
            .push(secret.to_string());
    }

    /// Every secret recorded so far, oldest first.
    pub(super) fn issued_secrets(&self) -> Vec<String> {
        self.issued.lock().expect("issued lock").clone()
    }

    /// Signs `claims` with the active key (RS256, `kid`, `x5t`) and records the token.
    pub(super) fn sign_active(&self, claims: &Value) -> String {
        let key = self.keys.active();
        let token = jsonwebtoken::encode(&key.header(), claims, &key.encoding).expect("RS256");
        self.record(&token);
        token
    }

    /// Sets (or with `None` clears) the failure injected for `who`.
    pub(super) fn set_failure(&self, who: FailureScope, failure: Option<Failure>) {
        let mut f = self.failures.lock().expect("failures lock");
        match (who, failure) {
            (FailureScope::Global, failure) => f.global = failure,
            (FailureScope::User(oid), Some(failure)) => {
                f.users.insert(oid, failure);
            }
            (FailureScope::User(oid), None) => {
                f.users.remove(&oid);
            }
        }
    }

    /// The failure for the user `oid`, else the global one.
    pub(super) fn failure_for(&self, oid: Option<&str>) -> Option<Failure> {
        let f = self.failures.lock().expect("failures lock");
        oid.and_then(|o| f.users.get(o).cloned())
            .or_else(|| f.global.clone())
    }
}

/// The v1 issuer of `tenant`, host independent: Entra always names sts.windows.net.
pub(super) fn issuer_v1(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

/// Now, in Unix seconds.
pub(super) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Unix seconds as Entra's error descriptions print them (`MM/DD/YYYY HH:MM:SS`).
pub(super) fn fmt_unix(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%m/%d/%Y %H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// A GUID-shaped string derived from `input`, so derived ids are stable across runs.
pub(super) fn derived_guid(domain: &str, input: &str) -> String {
    let d = Sha256::digest(format!("{domain}:{input}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

/// `len` random bytes, base64url without padding.
pub(super) fn random_b64url(len: usize) -> String {
    let mut b = vec![0u8; len];
    rand::fill(&mut b[..]);
    URL_SAFE_NO_PAD.encode(b)
}
