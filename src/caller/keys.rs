//! Signing keys of the allowed tenants' token issuers (v1 and v2 per tenant), from OpenID
//! discovery and JWKS.
//!
//! - Loaded at start (readiness waits for them), refreshed in the background, and the last
//!   good keys keep serving while Entra ID is unreachable.
//! - An unknown `kid` triggers at most one refresh per cooldown per issuer, single flight:
//!   concurrent requests wait for the one refresh instead of each fetching.
//! - The algorithm is pinned to RS256: Entra's keys carry no `alg`, and the token's own
//!   header is never trusted to choose it.

use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

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
    refresh_period: Duration,
}

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
    pub fn new(
        http: reqwest::Client,
        authority_host: &url::Url,
        tenants: &[String],
        unknown_kid_cooldown: Duration,
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
                    tenant_id: t.clone(),
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
            refresh_period,
        }
    }

    /// True once every issuer has keys.
    pub fn is_ready(&self) -> bool {
        self.issuers.iter().all(|i| i.snapshot().is_some())
    }

    /// Loads every issuer once; returns how many failed (their last good keys stay).
    pub async fn load_all(&self) -> usize {
        let mut failed = 0;
        for i in &self.issuers {
            if let Err(e) = self.load(i).await {
                failed += 1;
                tracing::warn!(tenant = %i.tenant_id, version = ?i.version, error = %e,
                    "could not load signing keys; keeping the last good ones");
            }
        }
        failed
    }

    /// Loads until every issuer has keys (retrying with backoff), then refreshes on a timer.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let Some(store) = me.upgrade() else { return };
                store.load_all().await;
                let wait = if store.is_ready() {
                    backoff = Duration::from_millis(250);
                    store.refresh_period
                } else {
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    backoff
                };
                drop(store);
                tokio::time::sleep(wait).await;
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
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.tenant_id == tenant_id && i.version == version)?;
        if let Some(k) = issuer.find(kid) {
            return Some(k);
        }
        // Single flight: whoever holds the lock refreshes; the others wait and then look again.
        let mut last = issuer.on_demand.lock().await;
        if let Some(k) = issuer.find(kid) {
            return Some(k);
        }
        let cooling = last.is_some_and(|t| t.elapsed() < self.unknown_kid_cooldown);
        if cooling {
            return None;
        }
        *last = Some(Instant::now());
        tracing::info!(tenant = %tenant_id, version = ?version, "unknown signing key id; refreshing keys");
        if let Err(e) = self.load(issuer).await {
            tracing::warn!(tenant = %tenant_id, error = %e, "key refresh failed; keeping the last good keys");
        }
        issuer.find(kid)
    }

    async fn load(&self, issuer: &Issuer) -> Result<(), String> {
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
        *issuer.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(IssuerKeys {
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
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn find(&self, kid: &str) -> Option<Arc<VerificationKey>> {
        self.snapshot().and_then(|k| k.keys.get(kid).cloned())
    }
}
