//! Signing keys of the allowed tenants' token issuers (v1 and v2 per tenant), from OpenID
//! discovery and JWKS.
//!
//! - Loaded at start (readiness waits for them), refreshed in the background, and the last
//!   good keys keep serving while Entra ID is unreachable.
//! - An unknown `kid` triggers a refresh, single flight per issuer: concurrent requests wait for
//!   the one refresh instead of each fetching. A `kid` not yet checked against a fresh key set
//!   may refresh at most once per `new_kid_interval` (30 s); a `kid` a fresh key set already
//!   lacked, at most once per cooldown (300 s). So a storm of random `kid`s costs one fetch per
//!   interval, and a key Entra has just published is accepted within the interval, not the
//!   cooldown.
//! - The algorithm is pinned to RS256: Entra's keys carry no `alg`, and the token's own
//!   header is never trusted to choose it.

use crate::background::Background;
use crate::domain::TenantId;
use crate::metrics::{CallerMetrics, JwksLabels};
use crate::retry::Backoff;
use jsonwebtoken::DecodingKey;
use parking_lot::RwLock;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Until every issuer has keys: 500 ms, doubling up to 30 s.
const LOAD_RETRY: Backoff =
    Backoff::exponential(Duration::from_millis(500), Duration::from_secs(30));

/// At most this many keys are kept per issuer (Entra publishes a handful).
const MAX_KEYS_PER_ISSUER: usize = 64;

/// Which token format an issuer produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    /// `iss = https://sts.windows.net/{tid}/`
    V1,
    /// `iss = {authority}/{tid}/v2.0`
    V2,
}

/// A verification key and the issuer it is restricted to, if the JWKS says so.
pub struct VerificationKey {
    /// The RSA public key.
    pub key: DecodingKey,
    /// The key's `issuer` member with `{tenantid}` still templated.
    pub issuer_template: Option<String>,
}

/// What one issuer's discovery and JWKS said, as of the last successful load.
pub struct IssuerKeys {
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// Keys by `kid`.
    pub keys: HashMap<String, Arc<VerificationKey>>,
}

/// One issuer (tenant + version): where to discover it, and what was found.
struct Issuer {
    tenant_id: String,
    version: TokenVersion,
    discovery_url: String,
    current: RwLock<Option<Arc<IssuerKeys>>>,
    /// Held while an on-demand refresh runs; holds when the last one started.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
}

/// The signing keys of every allowed tenant.
pub struct KeyStore {
    http: reqwest::Client,
    issuers: Vec<Arc<Issuer>>,
    unknown_kid_cooldown: Duration,
    new_kid_interval: Duration,
    /// `kid`s (per issuer) that a fresh key set lacked, until the cooldown: bounded, so a storm
    /// of random ones only pushes older entries out.
    checked_unknown: moka::sync::Cache<(usize, String), ()>,
    refresh_period: Duration,
    metrics: CallerMetrics,
}

/// At most this many unknown `kid`s are remembered as checked.
const MAX_CHECKED_UNKNOWN: u64 = 10_000;

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    issuer: Option<String>,
}

impl KeyStore {
    /// A store for `tenants` under `authority_host`; nothing is fetched until [`KeyStore::load_all`].
    /// A `kid` never checked may refresh once per `new_kid_interval`, a checked one once per
    /// `unknown_kid_cooldown`.
    pub fn new(
        http: reqwest::Client,
        authority_host: &url::Url,
        tenants: &[TenantId],
        unknown_kid_cooldown: Duration,
        new_kid_interval: Duration,
        refresh_period: Duration,
    ) -> Self {
        let base = authority_host.as_str().trim_end_matches('/');
        let mut issuers = Vec::new();
        for t in tenants {
            for (version, suffix) in [
                (TokenVersion::V1, ".well-known/openid-configuration"),
                (TokenVersion::V2, "v2.0/.well-known/openid-configuration"),
            ] {
                issuers.push(Arc::new(Issuer {
                    tenant_id: t.to_string(),
                    version,
                    discovery_url: format!("{base}/{t}/{suffix}"),
                    current: RwLock::new(None),
                    on_demand: tokio::sync::Mutex::new(None),
                }));
            }
        }
        KeyStore {
            http,
            issuers,
            unknown_kid_cooldown,
            new_kid_interval: new_kid_interval.min(unknown_kid_cooldown),
            checked_unknown: moka::sync::Cache::builder()
                .max_capacity(MAX_CHECKED_UNKNOWN)
                .time_to_live(unknown_kid_cooldown.max(Duration::from_secs(1)))
                .build(),
            refresh_period,
            metrics: CallerMetrics::default(),
        }
    }

    /// The same, counting each issuer's refreshes into `metrics`.
    pub fn with_metrics(mut self, metrics: CallerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// True once every issuer has keys.
    pub fn is_ready(&self) -> bool {
        self.issuers.iter().all(|i| i.snapshot().is_some())
    }

    /// Loads every issuer once; returns how many failed (their last good keys stay).
    pub async fn load_all(&self) -> usize {
        let mut failed = 0;
        for i in &self.issuers {
            if let Err(e) = self.load(i, "scheduled").await {
                failed += 1;
                tracing::warn!(tenant = %i.tenant_id, version = ?i.version, error = %e,
                    "could not load signing keys; keeping the last good ones");
            }
        }
        failed
    }

    /// Loads until every issuer has keys (retrying with backoff), then refreshes on a timer.
    pub fn spawn_refresh(self: &Arc<Self>, background: &Background) {
        let me = Arc::downgrade(self);
        background.spawn(|stop| async move {
            let mut failures = 0;
            loop {
                let Some(store) = me.upgrade() else { return };
                store.load_all().await;
                let wait = if store.is_ready() {
                    failures = 0;
                    store.refresh_period
                } else {
                    failures += 1;
                    LOAD_RETRY.delay(failures)
                };
                drop(store);
                if !stop.sleep(wait).await {
                    return;
                }
            }
        });
    }

    /// The issuers of `tenant_id` that have keys, to match a token's `iss` against.
    pub fn issuers_of(&self, tenant_id: &str) -> Vec<(TokenVersion, Arc<IssuerKeys>)> {
        self.issuers
            .iter()
            .filter(|i| i.tenant_id == tenant_id)
            .filter_map(|i| i.snapshot().map(|k| (i.version, k)))
            .collect()
    }

    /// The key `kid` of the tenant's issuer `version`, refreshing once (per cooldown) if unknown.
    pub async fn key(
        &self,
        tenant_id: &str,
        version: TokenVersion,
        kid: &str,
    ) -> Option<Arc<VerificationKey>> {
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.tenant_id == tenant_id && i.version == version)?;
        if let Some(k) = issuer.find(kid) {
            return Some(k);
        }
        // Single flight: whoever holds the lock refreshes; the others wait and then look again.
        let mut last = issuer.on_demand.lock().await;
        if let Some(k) = issuer.find(kid) {
            return Some(k);
        }
        let checked = (index, kid.to_string());
        let wait = if self.checked_unknown.contains_key(&checked) {
            self.unknown_kid_cooldown
        } else {
            self.new_kid_interval
        };
        if last.is_some_and(|t| t.elapsed() < wait) {
            return None;
        }
        *last = Some(Instant::now());
        tracing::info!(tenant = %tenant_id, version = ?version, "unknown signing key id; refreshing keys");
        if let Err(e) = self.load(issuer, "unknown_kid").await {
            tracing::warn!(tenant = %tenant_id, error = %e, "key refresh failed; keeping the last good keys");
            return None;
        }
        let found = issuer.find(kid);
        if found.is_none() {
            // A fresh key set lacks it: asking again soon would only repeat the fetch.
            self.checked_unknown.insert(checked, ());
        }
        found
    }

    /// Loads `issuer`'s discovery and keys, counting the refresh by `trigger` and result.
    async fn load(&self, issuer: &Issuer, trigger: &'static str) -> Result<(), String> {
        let result = self.load_uncounted(issuer).await;
        self.metrics
            .jwks_refreshes
            .get_or_create(&JwksLabels {
                tenant: issuer.tenant_id.clone(),
                version: match issuer.version {
                    TokenVersion::V1 => "v1",
                    TokenVersion::V2 => "v2",
                },
                trigger,
                result: if result.is_ok() { "ok" } else { "error" },
            })
            .inc();
        result
    }

    async fn load_uncounted(&self, issuer: &Issuer) -> Result<(), String> {
        let d: Discovery = self.get_json(&issuer.discovery_url).await?;
        let jwks: Jwks = self.get_json(&d.jwks_uri).await?;
        let mut keys = HashMap::new();
        for k in jwks.keys {
            if k.kty.as_deref() != Some("RSA") || k.use_.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let (Some(kid), Some(n), Some(e)) = (k.kid, k.n, k.e) else {
                continue;
            };
            match DecodingKey::from_rsa_components(&n, &e) {
                Ok(key) => {
                    keys.insert(
                        kid,
                        Arc::new(VerificationKey {
                            key,
                            issuer_template: k.issuer,
                        }),
                    );
                }
                Err(err) => tracing::warn!(kid = %kid, error = %err, "skipping an unusable key"),
            }
            if keys.len() >= MAX_KEYS_PER_ISSUER {
                break;
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "{} published no usable RSA signing keys",
                d.jwks_uri
            ));
        }
        let issuer_name = d.issuer.replace("{tenantid}", &issuer.tenant_id);
        *issuer.current.write() = Some(Arc::new(IssuerKeys {
            issuer: issuer_name,
            keys,
        }));
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let resp = self
            .http
            .get(url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        resp.json::<T>()
            .await
            .map_err(|e| format!("GET {url}: unreadable JSON: {e}"))
    }
}

impl Issuer {
    fn snapshot(&self) -> Option<Arc<IssuerKeys>> {
        self.current.read().clone()
    }

    fn find(&self, kid: &str) -> Option<Arc<VerificationKey>> {
        self.snapshot().and_then(|k| k.keys.get(kid).cloned())
    }
}
