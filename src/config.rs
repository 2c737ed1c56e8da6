//! Typed configuration: a TOML file plus `SYNC_GATEWAY__SECTION__KEY` environment overrides,
//! parsed once at start into values that cannot be invalid.
//!
//! Loading goes through two shapes: [`RawConfig`] mirrors the file with every key optional, so
//! that validation can report *every* problem at once with the key's full name; [`Config`] is
//! the result, which the rest of the gateway uses without re-checking anything.

use crate::secret::Secret;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// The prefix of environment overrides; levels are separated by a double underscore.
pub const ENV_PREFIX: &str = "SYNC_GATEWAY__";

/// The default upstream path of the sync action (a beta endpoint, hence configuration).
pub const DEFAULT_SYNC_PATH: &str = "/beta/deviceManagement/windowsAutopilotSettings/sync";

/// The Graph delegated permission the sync action needs.
pub const SYNC_PERMISSION: &str = "DeviceManagementServiceConfig.ReadWrite.All";

/// The validated configuration of one gateway process.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// HTTP listener settings.
    pub server: ServerConfig,
    /// The gateway's own application registration in Entra ID.
    pub entra: EntraConfig,
    /// Which inbound callers are accepted.
    pub callers: CallersConfig,
    /// Microsoft Graph.
    pub graph: GraphConfig,
    /// Rate limits.
    pub limits: LimitsConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// The upstream actions the gateway exposes.
    pub actions: ActionsConfig,
}

/// `[server]`
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// `server.listen`: address and port to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// `server.workers`: actix worker threads (default: number of cores).
    pub workers: Option<usize>,
    /// `server.shutdown_timeout_seconds`: how long in-flight requests may finish on SIGTERM.
    pub shutdown_timeout_seconds: u64,
}

/// `[entra]`
#[derive(Debug, Clone, Serialize)]
pub struct EntraConfig {
    /// `entra.authority_host`, e.g. `https://login.microsoftonline.com`.
    pub authority_host: Url,
    /// `entra.tenant_id`: the gateway application's home tenant.
    pub tenant_id: String,
    /// `entra.client_id`: the gateway application's client id.
    pub client_id: String,
    /// `entra.client_secret` (environment) or the contents of `entra.client_secret_file`.
    pub client_secret: Secret,
    /// Where the secret came from, for `check-config`.
    pub client_secret_source: String,
    /// `entra.timeout_seconds`: timeout of each call to Entra ID (discovery, keys, token).
    pub timeout_seconds: u64,
    /// `entra.token_cache_capacity`: cap on cached exchanged tokens.
    pub token_cache_capacity: u64,
}

/// `[callers]`
#[derive(Debug, Clone, Serialize)]
pub struct CallersConfig {
    /// `callers.audiences`: accepted `aud` values.
    pub audiences: Vec<String>,
    /// `callers.allowed_tenants`: accepted `tid` values.
    pub allowed_tenants: Vec<String>,
    /// `callers.required_scope`: the delegated scope a user token must carry.
    pub required_scope: String,
    /// `callers.leeway_seconds`: clock leeway for `exp` / `nbf`.
    pub leeway_seconds: u64,
    /// `callers.verified_cache_capacity`: cap on remembered verified tokens.
    pub verified_cache_capacity: u64,
    /// `callers.keys_refresh_seconds`: background refresh period of signing keys.
    pub keys_refresh_seconds: u64,
    /// `callers.unknown_kid_cooldown_seconds`: at most one refresh per this period for unknown `kid`s.
    pub unknown_kid_cooldown_seconds: u64,
}

/// `[graph]`
#[derive(Debug, Clone, Serialize)]
pub struct GraphConfig {
    /// `graph.base_url`, e.g. `https://graph.microsoft.com`.
    pub base_url: Url,
    /// `graph.timeout_seconds`: timeout of each upstream call.
    pub timeout_seconds: u64,
}

impl GraphConfig {
    /// The Graph resource identifier: scheme, host and port of `base_url`, no trailing slash.
    pub fn resource(&self) -> String {
        self.base_url.origin().ascii_serialization()
    }

    /// The delegated scope to request for `permission`, e.g.
    /// `https://graph.microsoft.com/DeviceManagementServiceConfig.ReadWrite.All`.
    pub fn scope(&self, permission: &str) -> String {
        format!("{}/{}", self.resource(), permission)
    }
}

/// A rate: sustained requests per minute and the burst allowed on top.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained requests per minute.
    pub per_minute: u32,
    /// Requests allowed at once.
    pub burst: u32,
}

/// `[limits]`
#[derive(Debug, Clone, Serialize)]
pub struct LimitsConfig {
    /// `limits.per_caller`: per user (`tid` + `oid`).
    pub per_caller: Rate,
    /// `limits.per_tenant`: per tenant, all callers together.
    pub per_tenant: Rate,
    /// `limits.max_tracked_callers`: cap on remembered callers.
    pub max_tracked_callers: usize,
    /// `limits.eviction_seconds`: how often idle limiter keys are dropped.
    pub eviction_seconds: u64,
}

/// `[audit]`
#[derive(Debug, Clone, Serialize)]
pub struct AuditConfig {
    /// `audit.path`: the active audit file (JSON lines); required with the `file` sink.
    pub path: Option<PathBuf>,
    /// `audit.write_timeout_ms`: a record not durable within this answers 503.
    pub write_timeout_ms: u64,
    /// `audit.sinks`: exactly one durable sink (`file` or `postgres`), plus `stdout` as a copy.
    pub sinks: Vec<AuditSinkKind>,
    /// `audit.rotate_bytes`: rotate the active file at this size (0: never by size).
    pub rotate_bytes: u64,
    /// `audit.rotate_seconds`: rotate the active file at this age (0: never by age).
    pub rotate_seconds: u64,
    /// `audit.retain_files`: rotated files kept, oldest deleted first (0: keep all).
    pub retain_files: usize,
    /// `audit.postgres_url` (environment `SYNC_GATEWAY__AUDIT__POSTGRES_URL`; may carry a password).
    pub postgres_url: Option<Secret>,
    /// `audit.postgres_schema`: the schema holding the `records` table.
    pub postgres_schema: String,
    /// `audit.signing_key_file`: Ed25519 PKCS#8 PEM that signs checkpoints (off when absent).
    pub signing_key_file: Option<PathBuf>,
    /// `audit.checkpoint_every_records`: a signed checkpoint after at most this many records...
    pub checkpoint_every_records: u64,
    /// `audit.checkpoint_every_seconds`: ...or this many seconds, whichever comes first.
    pub checkpoint_every_seconds: u64,
    /// The HMAC key from `audit.hmac_key_file` or `SYNC_GATEWAY__AUDIT__HMAC_KEY` (off when absent).
    pub hmac_key: Option<Secret>,
}

/// One entry of `audit.sinks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSinkKind {
    /// The rotated, fsynced files at `audit.path` (durable).
    File,
    /// A table in PostgreSQL at `audit.postgres_url` (durable).
    Postgres,
    /// A copy on standard output for log shippers (not durable: never alone).
    Stdout,
}

impl AuditConfig {
    /// The durable sink: `File` or `Postgres` (validation guarantees exactly one).
    pub fn durable_sink(&self) -> AuditSinkKind {
        if self.sinks.contains(&AuditSinkKind::Postgres) {
            AuditSinkKind::Postgres
        } else {
            AuditSinkKind::File
        }
    }

    /// True when committed records are also copied to stdout.
    pub fn stdout_copy(&self) -> bool {
        self.sinks.contains(&AuditSinkKind::Stdout)
    }
}

/// `[actions]`
#[derive(Debug, Clone, Serialize)]
pub struct ActionsConfig {
    /// `[actions.sync]`
    pub sync: SyncActionConfig,
}

/// `[actions.sync]`
#[derive(Debug, Clone, Serialize)]
pub struct SyncActionConfig {
    /// `actions.sync.upstream_path`: the Graph path of the sync action.
    pub upstream_path: String,
}

/// One problem with the configuration, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The full key, e.g. `entra.client_id`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found while loading, so an operator fixes them in one pass.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The file's shape with every key optional; see the module docs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    entra: RawEntra,
    #[serde(default)]
    callers: RawCallers,
    #[serde(default)]
    graph: RawGraph,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    actions: RawActions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    workers: Option<usize>,
    shutdown_timeout_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntra {
    authority_host: Option<String>,
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    client_secret_file: Option<PathBuf>,
    timeout_seconds: Option<u64>,
    token_cache_capacity: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallers {
    audiences: Option<Vec<String>>,
    allowed_tenants: Option<Vec<String>>,
    required_scope: Option<String>,
    leeway_seconds: Option<u64>,
    verified_cache_capacity: Option<u64>,
    keys_refresh_seconds: Option<u64>,
    unknown_kid_cooldown_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGraph {
    base_url: Option<String>,
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    per_caller: Option<Rate>,
    per_tenant: Option<Rate>,
    max_tracked_callers: Option<usize>,
    eviction_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<PathBuf>,
    write_timeout_ms: Option<u64>,
    sinks: Option<Vec<AuditSinkKind>>,
    rotate_bytes: Option<u64>,
    rotate_seconds: Option<u64>,
    retain_files: Option<usize>,
    postgres_url: Option<Secret>,
    postgres_schema: Option<String>,
    signing_key_file: Option<PathBuf>,
    checkpoint_every_records: Option<u64>,
    checkpoint_every_seconds: Option<u64>,
    hmac_key: Option<Secret>,
    hmac_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActions {
    #[serde(default)]
    sync: RawSyncAction,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyncAction {
    upstream_path: Option<String>,
}

impl Config {
    /// Loads `path` and the process environment, then validates.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Loads `path` with the given environment (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: "--config".into(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Self::from_toml_and_env(&text, env)
    }

    /// Parses TOML text plus environment overrides, then validates.
    pub fn from_toml_and_env(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let one = |key: &str, message: String| {
            ConfigErrors(vec![ConfigError {
                key: key.into(),
                message,
            }])
        };
        // Secrets must not live in the file itself: refuse them before merging.
        let file: toml::Table =
            toml::from_str(toml_text).map_err(|e| one("<file>", format!("not valid TOML: {e}")))?;
        let mut early = Vec::new();
        if file.get("audit").and_then(|e| e.get("hmac_key")).is_some() {
            early.push(ConfigError {
                key: "audit.hmac_key".into(),
                message: format!(
                    "must not be written in the configuration file; set {ENV_PREFIX}AUDIT__HMAC_KEY or audit.hmac_key_file"
                ),
            });
        }
        if file
            .get("entra")
            .and_then(|e| e.get("client_secret"))
            .is_some()
        {
            early.push(ConfigError {
                key: "entra.client_secret".into(),
                message: format!(
                    "must not be written in the configuration file; set {ENV_PREFIX}ENTRA__CLIENT_SECRET or entra.client_secret_file"
                ),
            });
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // figment's own `Env` provider reads the process environment; going through the
        // iterator instead lets tests pass their own environment.
        let mut figment = Figment::new().merge(Toml::string(toml_text));
        for (k, v) in env {
            let key = k[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            // Parse the value as TOML where it is one (numbers, arrays, inline tables), else as text.
            let value: figment::value::Value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|t| t.get("v").cloned())
                .and_then(|v| figment::value::Value::serialize(v).ok())
                .unwrap_or_else(|| figment::value::Value::from(v.clone()));
            figment = figment.merge(Serialized::default(&key, value));
        }
        let raw: RawConfig = figment
            .extract()
            .map_err(|e| one(&figment_key(&e), e.to_string()))?;
        raw.validate(early)
    }
}

fn figment_key(e: &figment::Error) -> String {
    if e.path.is_empty() {
        "<file>".into()
    } else {
        e.path.join(".")
    }
}

struct Check {
    errors: Vec<ConfigError>,
}

impl Check {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    fn required<T>(&mut self, key: &str, v: Option<T>) -> Option<T> {
        if v.is_none() {
            self.err(key, "is required");
        }
        v
    }

    fn guid(&mut self, key: &str, v: Option<String>) -> Option<String> {
        let v = self.required(key, v)?;
        if uuid::Uuid::parse_str(&v).is_err() {
            self.err(key, format!("must be a GUID, got {v:?}"));
            return None;
        }
        Some(v.to_ascii_lowercase())
    }

    fn url(&mut self, key: &str, v: Option<String>) -> Option<Url> {
        let v = self.required(key, v)?;
        match parse_service_url(&v) {
            Ok(u) => Some(u),
            Err(m) => {
                self.err(key, m);
                None
            }
        }
    }

    fn positive(&mut self, key: &str, v: u64) -> u64 {
        if v == 0 {
            self.err(key, "must be greater than 0");
        }
        v
    }
}

impl Check {
    /// `[audit]`: sinks, rotation, checkpoints and hashing; keys are loaded once here so that
    /// `check-config` reports an unreadable or malformed key by name.
    fn audit(&mut self, raw: RawAudit, write_timeout_ms: u64) -> Option<AuditConfig> {
        let sinks = raw.sinks.unwrap_or_else(|| vec![AuditSinkKind::File]);
        let durable = sinks
            .iter()
            .filter(|s| **s != AuditSinkKind::Stdout)
            .count();
        let mut ok = true;
        if durable != 1 {
            self.err(
                "audit.sinks",
                "must name exactly one durable sink, \"file\" or \"postgres\" (\"stdout\" is only a copy and never the only one)",
            );
            ok = false;
        }
        let path = if sinks.contains(&AuditSinkKind::File) {
            let p = self.required("audit.path", raw.path);
            ok &= p.is_some();
            p
        } else {
            raw.path
        };
        let postgres_schema = raw
            .postgres_schema
            .unwrap_or_else(|| "sync_gateway_audit".into());
        if !crate::audit::valid_schema_name(&postgres_schema) {
            self.err(
                "audit.postgres_schema",
                "must be lower-case letters, digits and _ (at most 63, not starting with a digit)",
            );
            ok = false;
        }
        if sinks.contains(&AuditSinkKind::Postgres) {
            match &raw.postgres_url {
                None => {
                    self.err(
                        "audit.postgres_url",
                        format!("is required with the postgres sink (or {ENV_PREFIX}AUDIT__POSTGRES_URL)"),
                    );
                    ok = false;
                }
                Some(u) if u.expose().parse::<tokio_postgres::Config>().is_err() => {
                    self.err("audit.postgres_url", "is not a PostgreSQL connection URL");
                    ok = false;
                }
                Some(_) => {}
            }
        }
        if let Some(p) = &raw.signing_key_file {
            if let Err(e) = crate::audit::CheckpointSigner::from_pem_file(p) {
                self.err("audit.signing_key_file", e.to_string());
                ok = false;
            }
        }
        let every_records = self.positive(
            "audit.checkpoint_every_records",
            raw.checkpoint_every_records.unwrap_or(1000),
        );
        let every_seconds = self.positive(
            "audit.checkpoint_every_seconds",
            raw.checkpoint_every_seconds.unwrap_or(60),
        );
        let hmac_key = match (raw.hmac_key, raw.hmac_key_file) {
            (Some(_), Some(_)) => {
                self.err(
                    "audit.hmac_key",
                    "set either the environment key or audit.hmac_key_file, not both",
                );
                None
            }
            (Some(k), None) => Some(k),
            (None, Some(p)) => match std::fs::read_to_string(&p) {
                Ok(k) => Some(Secret::new(k.trim().to_string())),
                Err(e) => {
                    self.err(
                        "audit.hmac_key_file",
                        format!("cannot read {}: {e}", p.display()),
                    );
                    ok = false;
                    None
                }
            },
            (None, None) => None,
        };
        if let Some(k) = &hmac_key {
            if k.expose().len() < crate::audit::MIN_HMAC_KEY_BYTES {
                self.err(
                    "audit.hmac_key_file",
                    format!(
                        "the key must be at least {} bytes",
                        crate::audit::MIN_HMAC_KEY_BYTES
                    ),
                );
                ok = false;
            }
        }
        ok.then_some(AuditConfig {
            path,
            write_timeout_ms,
            sinks,
            rotate_bytes: raw.rotate_bytes.unwrap_or(64 * 1024 * 1024),
            rotate_seconds: raw.rotate_seconds.unwrap_or(86_400),
            retain_files: raw.retain_files.unwrap_or(0),
            postgres_url: raw.postgres_url,
            postgres_schema,
            signing_key_file: raw.signing_key_file,
            checkpoint_every_records: every_records,
            checkpoint_every_seconds: every_seconds,
            hmac_key,
        })
    }
}

/// Parses a URL the gateway calls: `https://`, or `http://` only for loopback hosts.
pub fn parse_service_url(v: &str) -> Result<Url, String> {
    let u = Url::parse(v).map_err(|e| format!("not a URL ({e}): {v:?}"))?;
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => return Err(format!("has no host: {v:?}")),
    };
    match u.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "must use https:// (http:// is allowed only for loopback hosts): {v:?}"
            ))
        }
        s => return Err(format!("unsupported scheme {s:?}: {v:?}")),
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!("must not carry a query or fragment: {v:?}"));
    }
    Ok(u)
}

impl RawConfig {
    fn validate(self, early: Vec<ConfigError>) -> Result<Config, ConfigErrors> {
        let mut c = Check { errors: early };

        let listen = c
            .required("server.listen", self.server.listen)
            .and_then(|l| match l.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.err("server.listen", format!("must be address:port, got {l:?}"));
                    None
                }
            });
        if self.server.workers == Some(0) {
            c.err("server.workers", "must be greater than 0");
        }

        let authority_host = c.url("entra.authority_host", self.entra.authority_host);
        let tenant_id = c.guid("entra.tenant_id", self.entra.tenant_id);
        let client_id = c.guid("entra.client_id", self.entra.client_id);
        let (client_secret, client_secret_source) = match (
            self.entra.client_secret,
            self.entra.client_secret_file,
        ) {
            (Some(_), Some(_)) => {
                c.err(
                    "entra.client_secret",
                    "set either entra.client_secret or entra.client_secret_file, not both",
                );
                (None, String::new())
            }
            (Some(s), None) if s.expose().is_empty() => {
                c.err("entra.client_secret", "is empty");
                (None, String::new())
            }
            (Some(s), None) => (
                Some(s),
                format!("environment ({ENV_PREFIX}ENTRA__CLIENT_SECRET)"),
            ),
            (None, Some(p)) => match std::fs::read_to_string(&p) {
                Ok(s) if s.trim().is_empty() => {
                    c.err(
                        "entra.client_secret_file",
                        format!("{} is empty", p.display()),
                    );
                    (None, String::new())
                }
                Ok(s) => (
                    Some(Secret::new(s.trim().to_string())),
                    format!("file {}", p.display()),
                ),
                Err(e) => {
                    c.err(
                        "entra.client_secret_file",
                        format!("cannot read {}: {e}", p.display()),
                    );
                    (None, String::new())
                }
            },
            (None, None) => {
                c.err(
                        "entra.client_secret",
                        format!("is required: set {ENV_PREFIX}ENTRA__CLIENT_SECRET or entra.client_secret_file"),
                    );
                (None, String::new())
            }
        };
        let entra_timeout = c.positive(
            "entra.timeout_seconds",
            self.entra.timeout_seconds.unwrap_or(10),
        );

        let audiences = c
            .required("callers.audiences", self.callers.audiences)
            .filter(|a| {
                let ok = !a.is_empty() && a.iter().all(|s| !s.trim().is_empty());
                if !ok {
                    c.err(
                        "callers.audiences",
                        "must list at least one non-empty audience",
                    );
                }
                ok
            });
        let allowed_tenants = c
            .required("callers.allowed_tenants", self.callers.allowed_tenants)
            .and_then(|ts| {
                if ts.is_empty() {
                    c.err(
                        "callers.allowed_tenants",
                        "must list at least one tenant id",
                    );
                    return None;
                }
                let mut out = Vec::new();
                for t in ts {
                    match uuid::Uuid::parse_str(&t) {
                        Ok(_) => out.push(t.to_ascii_lowercase()),
                        Err(_) => {
                            c.err(
                                "callers.allowed_tenants",
                                format!("{t:?} is not a tenant id (GUID)"),
                            );
                            return None;
                        }
                    }
                }
                out.sort();
                out.dedup();
                Some(out)
            });
        let required_scope = c
            .required("callers.required_scope", self.callers.required_scope)
            .filter(|s| {
                let ok = !s.is_empty() && !s.contains(' ');
                if !ok {
                    c.err(
                        "callers.required_scope",
                        "must be one scope name without spaces",
                    );
                }
                ok
            });

        let base_url = c.url("graph.base_url", self.graph.base_url);
        let graph_timeout = c.positive(
            "graph.timeout_seconds",
            self.graph.timeout_seconds.unwrap_or(30),
        );

        let per_caller = self.limits.per_caller.unwrap_or(Rate {
            per_minute: 10,
            burst: 3,
        });
        let per_tenant = self.limits.per_tenant.unwrap_or(Rate {
            per_minute: 120,
            burst: 30,
        });
        for (key, r) in [
            ("limits.per_caller", per_caller),
            ("limits.per_tenant", per_tenant),
        ] {
            if r.per_minute == 0 || r.burst == 0 {
                c.err(key, "per_minute and burst must both be greater than 0");
            }
        }

        let write_timeout_ms = c.positive(
            "audit.write_timeout_ms",
            self.audit.write_timeout_ms.unwrap_or(2000),
        );
        let audit = c.audit(self.audit, write_timeout_ms);

        let upstream_path = self
            .actions
            .sync
            .upstream_path
            .unwrap_or_else(|| DEFAULT_SYNC_PATH.to_string());
        if !upstream_path.starts_with('/') || upstream_path.contains("..") {
            c.err(
                "actions.sync.upstream_path",
                "must be an absolute path starting with '/'",
            );
        }

        let max_tracked = self.limits.max_tracked_callers.unwrap_or(100_000);
        if max_tracked == 0 {
            c.err("limits.max_tracked_callers", "must be greater than 0");
        }
        let eviction = c.positive(
            "limits.eviction_seconds",
            self.limits.eviction_seconds.unwrap_or(60),
        );
        let verified_cap = self.callers.verified_cache_capacity.unwrap_or(10_000);
        let token_cap = self.entra.token_cache_capacity.unwrap_or(10_000);
        let keys_refresh = c.positive(
            "callers.keys_refresh_seconds",
            self.callers.keys_refresh_seconds.unwrap_or(12 * 3600),
        );

        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        // Every `None` above pushed an error, so these unwraps cannot fail.
        Ok(Config {
            server: ServerConfig {
                listen: listen.unwrap(),
                workers: self.server.workers,
                shutdown_timeout_seconds: self.server.shutdown_timeout_seconds.unwrap_or(30),
            },
            entra: EntraConfig {
                authority_host: authority_host.unwrap(),
                tenant_id: tenant_id.unwrap(),
                client_id: client_id.unwrap(),
                client_secret: client_secret.unwrap(),
                client_secret_source,
                timeout_seconds: entra_timeout,
                token_cache_capacity: token_cap,
            },
            callers: CallersConfig {
                audiences: audiences.unwrap(),
                allowed_tenants: allowed_tenants.unwrap(),
                required_scope: required_scope.unwrap(),
                leeway_seconds: self.callers.leeway_seconds.unwrap_or(60),
                verified_cache_capacity: verified_cap,
                keys_refresh_seconds: keys_refresh,
                unknown_kid_cooldown_seconds: self
                    .callers
                    .unknown_kid_cooldown_seconds
                    .unwrap_or(300),
            },
            graph: GraphConfig {
                base_url: base_url.unwrap(),
                timeout_seconds: graph_timeout,
            },
            limits: LimitsConfig {
                per_caller,
                per_tenant,
                max_tracked_callers: max_tracked,
                eviction_seconds: eviction,
            },
            audit: audit.unwrap(),
            actions: ActionsConfig {
                sync: SyncActionConfig { upstream_path },
            },
        })
    }
}

impl Config {
    /// The effective configuration as TOML, secrets masked (for `check-config`).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Timeout of each call to Entra ID.
    pub fn entra_timeout(&self) -> Duration {
        Duration::from_secs(self.entra.timeout_seconds)
    }

    /// Timeout of each call to Graph.
    pub fn graph_timeout(&self) -> Duration {
        Duration::from_secs(self.graph.timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "11111111-1111-1111-1111-111111111111";
    const CLIENT: &str = "22222222-2222-2222-2222-222222222222";

    fn full_toml() -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[entra]
authority_host = "https://login.microsoftonline.com"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
[callers]
audiences = ["{CLIENT}", "api://sync-gateway"]
allowed_tenants = ["{TENANT}"]
required_scope = "Sync.Trigger"
[graph]
base_url = "https://graph.microsoft.com"
[audit]
path = "/tmp/audit.jsonl"
"#
        )
    }

    fn secret_env() -> Vec<(String, String)> {
        vec![(
            "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".into(),
            "s3cret-value".into(),
        )]
    }

    #[test]
    fn a_complete_file_with_the_secret_in_the_environment_loads() {
        let c = Config::from_toml_and_env(&full_toml(), secret_env()).unwrap();
        assert_eq!(c.entra.client_secret.expose(), "s3cret-value");
        assert_eq!(c.callers.leeway_seconds, 60);
        assert_eq!(c.actions.sync.upstream_path, DEFAULT_SYNC_PATH);
        assert_eq!(
            c.graph.scope(SYNC_PERMISSION),
            "https://graph.microsoft.com/DeviceManagementServiceConfig.ReadWrite.All"
        );
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let mut env = secret_env();
        env.push(("SYNC_GATEWAY__CALLERS__LEEWAY_SECONDS".into(), "5".into()));
        env.push((
            "SYNC_GATEWAY__LIMITS__PER_CALLER".into(),
            "{ per_minute = 7, burst = 2 }".into(),
        ));
        env.push((
            "SYNC_GATEWAY__CALLERS__AUDIENCES".into(),
            "[\"api://other\"]".into(),
        ));
        let c = Config::from_toml_and_env(&full_toml(), env).unwrap();
        assert_eq!(c.callers.leeway_seconds, 5);
        assert_eq!(
            c.limits.per_caller,
            Rate {
                per_minute: 7,
                burst: 2
            }
        );
        assert_eq!(c.callers.audiences, vec!["api://other".to_string()]);
    }

    #[test]
    fn a_secret_written_in_the_file_is_refused() {
        let text = full_toml().replace("[callers]", "client_secret = \"x\"\n[callers]");
        let e = Config::from_toml_and_env(&text, vec![]).unwrap_err();
        assert!(e.0.iter().any(|e| e.key == "entra.client_secret"), "{e}");
    }

    #[test]
    fn every_missing_required_key_is_named() {
        let e = Config::from_toml_and_env("", vec![]).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "server.listen",
            "entra.authority_host",
            "entra.tenant_id",
            "entra.client_id",
            "entra.client_secret",
            "callers.audiences",
            "callers.allowed_tenants",
            "callers.required_scope",
            "graph.base_url",
            "audit.path",
        ] {
            assert!(keys.contains(&k), "{k} not reported in {keys:?}");
        }
    }

    #[test]
    fn plain_http_is_allowed_only_for_loopback() {
        assert!(parse_service_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_service_url("http://[::1]:8080").is_ok());
        assert!(parse_service_url("http://localhost:1").is_ok());
        assert!(parse_service_url("http://graph.microsoft.com").is_err());
        assert!(parse_service_url("https://graph.microsoft.com").is_ok());
        assert!(parse_service_url("ftp://127.0.0.1").is_err());
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name() {
        let text = full_toml().replace("[graph]", "[graph]\nbase_ur = \"x\"");
        let e = Config::from_toml_and_env(&text, secret_env()).unwrap_err();
        assert!(e.to_string().contains("base_ur"), "{e}");
    }

    fn with_audit(extra: &str) -> String {
        full_toml().replace("[audit]\n", &format!("[audit]\n{extra}\n"))
    }

    fn audit_error(extra: &str, env: Vec<(String, String)>) -> String {
        let e = Config::from_toml_and_env(&with_audit(extra), env).unwrap_err();
        e.to_string()
    }

    #[test]
    fn the_audit_defaults_are_one_file_sink_without_hashing_or_signing() {
        let c = Config::from_toml_and_env(&full_toml(), secret_env()).unwrap();
        assert_eq!(c.audit.sinks, vec![AuditSinkKind::File]);
        assert_eq!(c.audit.durable_sink(), AuditSinkKind::File);
        assert!(!c.audit.stdout_copy());
        assert!(c.audit.hmac_key.is_none() && c.audit.signing_key_file.is_none());
        assert_eq!(c.audit.rotate_bytes, 64 * 1024 * 1024);
        assert_eq!(c.audit.retain_files, 0);
    }

    #[test]
    fn stdout_alone_is_refused_as_an_audit_sink() {
        let e = audit_error("sinks = [\"stdout\"]", secret_env());
        assert!(
            e.contains("audit.sinks: must name exactly one durable sink"),
            "{e}"
        );
    }

    #[test]
    fn two_durable_audit_sinks_are_refused() {
        let e = audit_error(
            "sinks = [\"file\", \"postgres\"]\npostgres_url = \"postgres://h/d\"",
            secret_env(),
        );
        assert!(e.contains("audit.sinks"), "{e}");
    }

    #[test]
    fn the_postgres_sink_needs_a_url_and_takes_it_from_the_environment() {
        let e = audit_error("sinks = [\"postgres\"]", secret_env());
        assert!(e.contains("audit.postgres_url: is required"), "{e}");
        let mut env = secret_env();
        env.push((
            "SYNC_GATEWAY__AUDIT__POSTGRES_URL".into(),
            "postgres://u:pw@db.internal/gw".into(),
        ));
        let c = Config::from_toml_and_env(&with_audit("sinks = [\"postgres\", \"stdout\"]"), env)
            .unwrap();
        assert_eq!(c.audit.durable_sink(), AuditSinkKind::Postgres);
        assert!(c.audit.stdout_copy());
        assert!(!c.to_masked_toml().contains("pw@"));
    }

    #[test]
    fn an_hmac_key_written_in_the_file_is_refused() {
        let e = audit_error("hmac_key = \"0123456789abcdef0123\"", secret_env());
        assert!(e.contains("audit.hmac_key: must not be written"), "{e}");
    }

    #[test]
    fn a_short_hmac_key_is_refused() {
        let mut env = secret_env();
        env.push(("SYNC_GATEWAY__AUDIT__HMAC_KEY".into(), "short".into()));
        let e = Config::from_toml_and_env(&full_toml(), env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 16 bytes"), "{e}");
    }

    #[test]
    fn an_unreadable_signing_key_is_named() {
        let e = audit_error("signing_key_file = \"/nonexistent/key.pem\"", secret_env());
        assert!(e.contains("audit.signing_key_file: cannot read"), "{e}");
    }

    #[test]
    fn masked_output_hides_the_secret() {
        let c = Config::from_toml_and_env(&full_toml(), secret_env()).unwrap();
        let out = c.to_masked_toml();
        assert!(!out.contains("s3cret-value"));
        assert!(out.contains("********"));
    }
}
