//! Typed configuration: a TOML file plus `SYNC_GATEWAY__SECTION__KEY` environment overrides,
//! parsed once at start into values that cannot be invalid.
//!
//! Loading goes through two shapes: [`RawConfig`] mirrors the file with every key optional, so
//! that validation can report *every* problem at once with the key's full name; [`Config`] is
//! the result, which the rest of the gateway uses without re-checking anything.

use crate::credentials::client_auth::{self, AssertionAlg};
use crate::credentials::store::StoreKey;
use crate::secret::Secret;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// The prefix of environment overrides; levels are separated by a double underscore.
pub const ENV_PREFIX: &str = "SYNC_GATEWAY__";

/// The default upstream path of the sync action (a beta endpoint, hence configuration).
pub const DEFAULT_SYNC_PATH: &str = "/beta/deviceManagement/windowsAutopilotSettings/sync";

/// The default path of the Autopilot settings, read for the sync status and the last trigger.
pub const DEFAULT_STATUS_PATH: &str = "/beta/deviceManagement/windowsAutopilotSettings";

/// The narrower Graph delegated permission that reads the settings, for operators who name it in
/// `graph.status_permission`; by default `GET /sync/status` reads with [`SYNC_PERMISSION`].
pub const STATUS_PERMISSION: &str = "DeviceManagementServiceConfig.Read.All";

/// The Graph delegated permission the sync action needs.
pub const SYNC_PERMISSION: &str = "DeviceManagementServiceConfig.ReadWrite.All";

/// Environment variables the Azure Workload Identity webhook injects into a pod
/// (`Azure/azure-workload-identity`, `pkg/webhook/consts.go`).
pub const AZURE_ENV: [&str; 4] = [
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
];

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
    /// `[identities.NAME]`: service identities whose delegated sessions the gateway holds.
    pub identities: BTreeMap<String, IdentityConfig>,
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
    /// `server.request_timeout_seconds`: a request's body must have arrived this long after its
    /// headers, or the answer is 408 (the headers themselves are bounded by actix: 5 s).
    pub request_timeout_seconds: u64,
    /// `server.max_connections`: open client connections at most, all workers together; more
    /// wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// `server.expose_openapi`: serve the OpenAPI document at `GET /openapi.yaml` (default off;
    /// `dev` turns it on).
    pub expose_openapi: bool,
}

/// The default of `server.max_connections`: well below the common soft limit of 1024 open
/// files, leaving room for the audit files, the upstream connections and the runtime's own.
pub const DEFAULT_MAX_CONNECTIONS: usize = 768;

/// Open files the gateway keeps for itself beside client connections (audit files, upstream
/// connections, the runtime): the start-up warns when the open-file limit leaves less.
pub const RESERVED_FILES: u64 = 256;

/// `[entra]`
#[derive(Debug, Clone, Serialize)]
pub struct EntraConfig {
    /// `entra.cloud`, when set: the national cloud the hosts below were derived from.
    pub cloud: Option<Cloud>,
    /// `entra.authority_host`, e.g. `https://login.microsoftonline.com`.
    pub authority_host: Url,
    /// `entra.tenant_id`: the gateway application's home tenant.
    pub tenant_id: String,
    /// `entra.client_id`: the gateway application's client id.
    pub client_id: String,
    /// How the gateway proves itself to Entra ID: exactly one of secret, certificate, federated token.
    pub client_auth: ClientAuthConfig,
    /// Keys filled from the platform's environment (`AZURE_*`), for `check-config`.
    #[serde(skip)]
    pub filled_from_environment: Vec<String>,
    /// `entra.timeout_seconds`: timeout of each call to Entra ID (discovery, keys, token).
    pub timeout_seconds: u64,
    /// `entra.token_cache_capacity`: cap on cached exchanged tokens.
    pub token_cache_capacity: u64,
}

/// `[callers]`
#[derive(Debug, Clone, Serialize)]
pub struct CallersConfig {
    /// `callers.required_app_role`: the app role an app-only token must carry in `roles` to act
    /// as a service identity (required when `callers.apps` maps any application).
    pub required_app_role: Option<String>,
    /// `[callers.apps."<app id>"]`: app-only callers (by client id, lower case) and the service
    /// identity each acts as.
    pub apps: BTreeMap<String, AppConfig>,
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
    /// `callers.unknown_kid_cooldown_seconds`: at most one refresh per this period for a `kid`
    /// that a freshly fetched key set already lacked.
    pub unknown_kid_cooldown_seconds: u64,
    /// `callers.new_kid_refresh_seconds`: at most one refresh per this period for a `kid` not
    /// yet checked against a fresh key set (default 30), so a storm of random `kid`s cannot keep
    /// a key Entra has just published refused for the whole cooldown.
    pub new_kid_refresh_seconds: u64,
}

/// `[graph]`
#[derive(Debug, Clone, Serialize)]
pub struct GraphConfig {
    /// `graph.base_url`, e.g. `https://graph.microsoft.com`.
    pub base_url: Url,
    /// `graph.timeout_seconds`: timeout of each upstream call.
    pub timeout_seconds: u64,
    /// The Graph resource named in exchanged scopes: `entra.cloud`'s Graph host when a cloud is
    /// set (so a proxy or simulator in `base_url` does not change the resource), else the origin
    /// of `base_url`.
    pub scope_resource: String,
    /// `graph.status_permission`: the delegated permission `GET /sync/status` asks for. `None`
    /// (the default) reuses the sync's own permission, whose token the gateway already holds and
    /// which Graph accepts for the read, so a tenant that consented only to the sync can read.
    pub status_permission: Option<String>,
}

impl GraphConfig {
    /// The Graph resource identifier (no trailing slash), e.g. `https://graph.microsoft.us`.
    pub fn resource(&self) -> String {
        self.scope_resource.clone()
    }

    /// The delegated scope to request for `permission`, e.g.
    /// `https://graph.microsoft.com/DeviceManagementServiceConfig.ReadWrite.All`.
    pub fn scope(&self, permission: &str) -> String {
        format!("{}/{}", self.resource(), permission)
    }

    /// The scope `GET /sync/status` reads with: `graph.status_permission`, else the sync's.
    pub fn status_scope(&self) -> String {
        self.scope(self.status_permission.as_deref().unwrap_or(SYNC_PERMISSION))
    }
}

/// `[callers.apps."<app id>"]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// `run_as`: the name of the `[identities.NAME]` the application acts as.
    pub run_as: String,
}

/// `[identities.NAME]`: a dedicated user account whose delegated session the gateway holds, for
/// callers that are not users (reference §5).
#[derive(Debug, Clone, Serialize)]
pub struct IdentityConfig {
    /// The table's name: what `run_as` and `login --identity` refer to.
    pub name: String,
    /// `tenant_id`: the account's tenant (one of `callers.allowed_tenants`).
    pub tenant_id: String,
    /// `scopes`: the delegated Graph scopes of the session (default: the sync action's scope).
    pub scopes: Vec<String>,
    /// `store_path`: the encrypted session file.
    pub store_path: PathBuf,
    /// `store_key` (environment only) or the contents of `store_key_file`: 32 bytes, base64.
    pub store_key: StoreKey,
    /// Where the key came from, for `check-config`.
    pub store_key_source: String,
}

/// A national cloud (reference §6): one login host and one Graph host that belong together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// Microsoft's global cloud (also GCC moderate).
    Global,
    /// US Government L4 (GCC High).
    Usgov,
    /// US Government L5 (DoD).
    UsgovDod,
    /// China, operated by 21Vianet.
    China,
}

impl Cloud {
    /// Every cloud, in configuration order.
    pub const ALL: [Cloud; 4] = [Cloud::Global, Cloud::Usgov, Cloud::UsgovDod, Cloud::China];

    /// The value of `entra.cloud` naming this cloud.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::Usgov => "usgov",
            Cloud::UsgovDod => "usgov-dod",
            Cloud::China => "china",
        }
    }

    /// The login host Entra ID serves this cloud from.
    pub fn authority_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov | Cloud::UsgovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.partner.microsoftonline.cn",
        }
    }

    /// The cloud's Microsoft Graph: its base URL and the resource of its scopes.
    pub fn graph_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::UsgovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// The clouds whose login host `host` is (US Gov L4 and L5 share one); empty when the host
    /// is no cloud's (a simulator, a proxy).
    pub fn of_login_host(host: &str) -> Vec<Cloud> {
        let host = host.to_ascii_lowercase();
        // China also answers on its older name.
        if host == "login.chinacloudapi.cn" {
            return vec![Cloud::China];
        }
        Cloud::ALL
            .into_iter()
            .filter(|c| c.authority_host().trim_start_matches("https://") == host)
            .collect()
    }

    /// The cloud whose Graph host `host` is, if any.
    pub fn of_graph_host(host: &str) -> Option<Cloud> {
        let host = host.to_ascii_lowercase();
        Cloud::ALL
            .into_iter()
            .find(|c| c.graph_host().trim_start_matches("https://") == host)
    }
}

/// How the gateway authenticates to Entra ID's token endpoint (reference §3).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClientAuthConfig {
    /// `client_secret`: the secret from the environment or `entra.client_secret_file`.
    Secret {
        /// The secret.
        secret: Secret,
        /// Where it came from.
        source: String,
    },
    /// A client assertion signed with the certificate's private key on every token request.
    Certificate {
        /// `entra.certificate_file`: the PEM certificate registered on the app.
        certificate_file: PathBuf,
        /// `entra.private_key_file`: its PEM RSA private key.
        private_key_file: PathBuf,
        /// `entra.assertion_alg`: `PS256` (with `x5t#S256`, default) or `RS256` (with `x5t`).
        assertion_alg: AssertionAlg,
        /// The certificate's SHA-256 thumbprint at load time (`x5t#S256`), for the operator.
        thumbprint_sha256: String,
    },
    /// A workload identity federation token (e.g. a projected Kubernetes service account token).
    Federated {
        /// `entra.federated_token_file`, or `AZURE_FEDERATED_TOKEN_FILE`.
        token_file: PathBuf,
        /// Which of the two it came from.
        source: String,
    },
}

impl ClientAuthConfig {
    /// One line for `check-config`: which kind is in use and where it comes from.
    pub fn describe(&self) -> String {
        match self {
            ClientAuthConfig::Secret { source, .. } => format!("client secret from {source}"),
            ClientAuthConfig::Certificate {
                certificate_file,
                assertion_alg,
                thumbprint_sha256,
                ..
            } => format!(
                "certificate {} (x5t#S256 {thumbprint_sha256}), client assertions signed {}",
                certificate_file.display(),
                assertion_alg.name()
            ),
            ClientAuthConfig::Federated { token_file, source } => format!(
                "workload identity federation: token file {} (from {source})",
                token_file.display()
            ),
        }
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
    /// `limits.max_in_flight_per_caller`: `POST /sync` requests one caller (`tid` + `oid`) may
    /// have in progress at once, body read included; below `server.max_connections`.
    pub max_in_flight_per_caller: usize,
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
    /// `actions.sync.status_path`: the Graph path of the Autopilot settings (last sync, status).
    pub status_path: String,
    /// `actions.sync.cooldown_seconds`: runs of one tenant start at least this far apart
    /// (Intune's rule: one manual sync per 10 minutes).
    pub cooldown_seconds: u64,
    /// `actions.sync.retry_budget_seconds`: how long one run may keep retrying 503/504/connection failures.
    pub retry_budget_seconds: u64,
    /// `actions.sync.max_attempts`: upstream attempts per run at most.
    pub max_attempts: u32,
    /// `actions.sync.retry_base_ms`: the first backoff step (doubled per retry, full jitter).
    pub retry_base_ms: u64,
    /// `actions.sync.status_poll_ms`: after a 409, how often `syncStatus` is polled.
    pub status_poll_ms: u64,
    /// `actions.sync.status_poll_limit`: after a 409, how many polls at most before rescheduling anyway.
    pub status_poll_limit: u32,
    /// `actions.sync.run_retention_seconds`: how long finished runs stay readable.
    pub run_retention_seconds: u64,
    /// `actions.sync.max_finished_runs`: how many finished runs stay readable at most.
    pub max_finished_runs: u64,
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
    #[serde(default)]
    identities: BTreeMap<String, RawIdentity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    workers: Option<usize>,
    shutdown_timeout_seconds: Option<u64>,
    request_timeout_seconds: Option<u64>,
    max_connections: Option<usize>,
    expose_openapi: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntra {
    authority_host: Option<String>,
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    client_secret_file: Option<PathBuf>,
    certificate_file: Option<PathBuf>,
    private_key_file: Option<PathBuf>,
    assertion_alg: Option<String>,
    federated_token_file: Option<PathBuf>,
    cloud: Option<String>,
    allow_cloud_mismatch: Option<bool>,
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
    new_kid_refresh_seconds: Option<u64>,
    required_app_role: Option<String>,
    apps: Option<BTreeMap<String, AppConfig>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    tenant_id: Option<String>,
    scopes: Option<Vec<String>>,
    store_path: Option<PathBuf>,
    store_key: Option<Secret>,
    store_key_file: Option<PathBuf>,
}

/// The platform's `AZURE_*` variables (see [`AZURE_ENV`]) present at load.
#[derive(Debug, Default)]
struct AzureEnv(BTreeMap<String, String>);

impl AzureEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.trim().is_empty()).cloned()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGraph {
    base_url: Option<String>,
    timeout_seconds: Option<u64>,
    status_permission: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    per_caller: Option<Rate>,
    per_tenant: Option<Rate>,
    max_tracked_callers: Option<usize>,
    eviction_seconds: Option<u64>,
    max_in_flight_per_caller: Option<usize>,
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
    status_path: Option<String>,
    cooldown_seconds: Option<u64>,
    retry_budget_seconds: Option<u64>,
    max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    status_poll_ms: Option<u64>,
    status_poll_limit: Option<u32>,
    run_retention_seconds: Option<u64>,
    max_finished_runs: Option<u64>,
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
        if let Some(ids) = file.get("identities").and_then(|i| i.as_table()) {
            for (name, id) in ids {
                if id.get("store_key").is_some() {
                    early.push(ConfigError {
                        key: format!("identities.{name}.store_key"),
                        message: format!(
                            "must not be written in the configuration file; set {ENV_PREFIX}IDENTITIES__{}__STORE_KEY or identities.{name}.store_key_file",
                            name.to_ascii_uppercase()
                        ),
                    });
                }
            }
        }
        let mut azure = AzureEnv::default();
        let mut prefixed = Vec::new();
        for (k, v) in env {
            if k.starts_with(ENV_PREFIX) {
                prefixed.push((k, v));
            } else if AZURE_ENV.contains(&k.as_str()) {
                azure.0.insert(k, v);
            }
        }
        let env = prefixed;
        // Which keys the environment set, so an error can say where a value came from.
        let from_env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, _)| {
                (
                    k[ENV_PREFIX.len()..]
                        .to_ascii_lowercase()
                        .replace("__", "."),
                    k.clone(),
                )
            })
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
        raw.validate(early, azure, from_env)
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
    /// Dotted key → the environment variable that set it.
    from_env: BTreeMap<String, String>,
}

impl Check {
    /// Where `key`'s value came from, for an error message: the environment variable, the
    /// file, or the default.
    fn origin(&self, key: &str, set: bool) -> String {
        match self.from_env.get(key) {
            Some(var) => format!("from the environment, {var}"),
            None if set => "from the file".into(),
            None => "the default".into(),
        }
    }

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

/// The `[entra]` keys that choose the client credential.
struct RawCredentials {
    client_secret: Option<Secret>,
    client_secret_file: Option<PathBuf>,
    certificate_file: Option<PathBuf>,
    private_key_file: Option<PathBuf>,
    assertion_alg: Option<String>,
    federated_token_file: Option<PathBuf>,
}

impl Check {
    /// Exactly one client credential (reference §3), loaded once so a broken file is reported
    /// here, with its key, rather than at the first token request.
    fn client_auth(&mut self, raw: RawCredentials, azure: &AzureEnv) -> Option<ClientAuthConfig> {
        let (federated, federated_source) = match raw.federated_token_file {
            Some(p) => (Some(p), "entra.federated_token_file"),
            None => (
                azure.get("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
                "AZURE_FEDERATED_TOKEN_FILE",
            ),
        };
        let secret = raw.client_secret.is_some() || raw.client_secret_file.is_some();
        let certificate = raw.certificate_file.is_some() || raw.private_key_file.is_some();
        let mut configured = Vec::new();
        if secret {
            configured.push(
                "a client secret (entra.client_secret / entra.client_secret_file)".to_string(),
            );
        }
        if certificate {
            configured.push(
                "a certificate (entra.certificate_file / entra.private_key_file)".to_string(),
            );
        }
        if federated.is_some() {
            configured.push(format!("a federated token file ({federated_source})"));
        }
        if raw.assertion_alg.is_some() && !certificate {
            self.err(
                "entra.assertion_alg",
                "applies only to a certificate credential (entra.certificate_file)",
            );
        }
        if configured.len() > 1 {
            self.err(
                "entra",
                format!(
                    "configure exactly one client credential; found {}",
                    configured.join(" and ")
                ),
            );
            return None;
        }
        if secret {
            return self.client_secret(raw.client_secret, raw.client_secret_file);
        }
        if certificate {
            let cert = raw.certificate_file;
            let key = raw.private_key_file;
            if cert.is_none() {
                self.err(
                    "entra.certificate_file",
                    "is required with entra.private_key_file",
                );
            }
            if key.is_none() {
                self.err(
                    "entra.private_key_file",
                    "is required with entra.certificate_file",
                );
            }
            let alg = match raw.assertion_alg.as_deref() {
                None | Some("PS256") => Some(AssertionAlg::Ps256),
                Some("RS256") => Some(AssertionAlg::Rs256),
                Some(other) => {
                    self.err(
                        "entra.assertion_alg",
                        format!("must be PS256 (default) or RS256, got {other:?}"),
                    );
                    None
                }
            };
            let (cert, key, alg) = (cert?, key?, alg?);
            return match client_auth::CertificateFiles::load(&cert, &key) {
                Ok(loaded) => Some(ClientAuthConfig::Certificate {
                    thumbprint_sha256: loaded.x5t_s256().to_string(),
                    certificate_file: cert,
                    private_key_file: key,
                    assertion_alg: alg,
                }),
                Err(e) => {
                    self.err(e.key(), e.to_string());
                    None
                }
            };
        }
        if let Some(token_file) = federated {
            return match client_auth::read_federated_token(&token_file) {
                Ok(_) => Some(ClientAuthConfig::Federated {
                    token_file,
                    source: federated_source.to_string(),
                }),
                Err(e) => {
                    self.err(
                        "entra.federated_token_file",
                        format!("{e} (from {federated_source})"),
                    );
                    None
                }
            };
        }
        self.err(
            "entra.client_secret",
            format!(
                "is required: configure exactly one client credential: {ENV_PREFIX}ENTRA__CLIENT_SECRET or entra.client_secret_file (secret), entra.certificate_file with entra.private_key_file (certificate), or entra.federated_token_file / AZURE_FEDERATED_TOKEN_FILE (workload identity federation)"
            ),
        );
        None
    }

    fn client_secret(
        &mut self,
        secret: Option<Secret>,
        file: Option<PathBuf>,
    ) -> Option<ClientAuthConfig> {
        let (secret, source) = match (secret, file) {
            (Some(_), Some(_)) => {
                self.err(
                    "entra.client_secret",
                    "set either entra.client_secret or entra.client_secret_file, not both",
                );
                return None;
            }
            (Some(s), None) if s.expose().is_empty() => {
                self.err("entra.client_secret", "is empty");
                return None;
            }
            (Some(s), None) => (s, format!("environment ({ENV_PREFIX}ENTRA__CLIENT_SECRET)")),
            (None, Some(p)) => (
                self.secret_file("entra.client_secret_file", &p)?,
                format!("file {}", p.display()),
            ),
            (None, None) => return None,
        };
        Some(ClientAuthConfig::Secret { secret, source })
    }

    /// The trimmed contents of a file holding a secret.
    fn secret_file(&mut self, key: &str, path: &Path) -> Option<Secret> {
        match std::fs::read_to_string(path) {
            Ok(s) if s.trim().is_empty() => {
                self.err(key, format!("{} is empty", path.display()));
                None
            }
            Ok(s) => Some(Secret::new(s.trim().to_string())),
            Err(e) => {
                self.err(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    /// One `[identities.NAME]` table.
    fn identity(
        &mut self,
        name: &str,
        raw: RawIdentity,
        allowed_tenants: Option<&[String]>,
        sync_scope: Option<&str>,
    ) -> Option<IdentityConfig> {
        let key = |k: &str| format!("identities.{name}.{k}");
        if !valid_identity_name(name) {
            self.err(
                &format!("identities.{name}"),
                "a name is 1 to 64 characters: lower-case letters, digits, '-' and '_', starting with a letter or digit",
            );
            return None;
        }
        let tenant_id = self.guid(&key("tenant_id"), raw.tenant_id);
        if let (Some(t), Some(allowed)) = (&tenant_id, allowed_tenants) {
            if !allowed.contains(t) {
                self.err(
                    &key("tenant_id"),
                    "must be one of callers.allowed_tenants (only callers of the account's own tenant act as it)",
                );
            }
        }
        let scopes = match raw.scopes {
            None => sync_scope.map(|s| vec![s.to_string()]),
            Some(v) if v.is_empty() || v.iter().any(|s| s.is_empty() || s.contains(' ')) => {
                self.err(&key("scopes"), "must list scopes, each without spaces");
                None
            }
            Some(v) => Some(v),
        };
        if let (Some(scopes), Some(sync)) = (&scopes, sync_scope) {
            if !scopes.iter().any(|s| s == sync) {
                self.err(
                    &key("scopes"),
                    format!("must include {sync}: the sync action needs it"),
                );
            }
        }
        let store_path = self.required(&key("store_path"), raw.store_path);
        if let Some(p) = &store_path {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                self.err(
                    &key("store_path"),
                    format!("the directory {} does not exist", dir.display()),
                );
            }
        }
        let env_name = format!(
            "{ENV_PREFIX}IDENTITIES__{}__STORE_KEY",
            name.to_ascii_uppercase()
        );
        let (encoded, store_key_source) = match (raw.store_key, raw.store_key_file) {
            (Some(_), Some(_)) => {
                self.err(
                    &key("store_key"),
                    format!("set either {env_name} or identities.{name}.store_key_file, not both"),
                );
                (None, String::new())
            }
            (Some(s), None) => (Some(s), format!("environment ({env_name})")),
            (None, Some(p)) => (
                self.secret_file(&key("store_key_file"), &p),
                format!("file {}", p.display()),
            ),
            (None, None) => {
                self.err(
                    &key("store_key"),
                    format!("is required: set {env_name} or identities.{name}.store_key_file (32 random bytes, base64, e.g. `openssl rand -base64 32`)"),
                );
                (None, String::new())
            }
        };
        let store_key = encoded.and_then(|s| match StoreKey::from_base64(s.expose()) {
            Ok(k) => Some(k),
            Err(e) => {
                self.err(&key("store_key"), format!("{e} (from {store_key_source})"));
                None
            }
        });
        Some(IdentityConfig {
            name: name.to_string(),
            tenant_id: tenant_id?,
            scopes: scopes?,
            store_path: store_path?,
            store_key: store_key?,
            store_key_source,
        })
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

/// Identity names appear in commands, file names and environment variable names.
fn valid_identity_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Why `authority` and `graph` do not belong to one cloud (or to `cloud`), if they do not.
/// Hosts that are no cloud's (a simulator, a proxy) never mismatch.
fn cloud_mismatch(cloud: Option<Cloud>, authority: &Url, graph: &Url) -> Option<String> {
    let login = Cloud::of_login_host(authority.host_str().unwrap_or(""));
    let graph_cloud = Cloud::of_graph_host(graph.host_str().unwrap_or(""));
    let names = |cs: &[Cloud]| cs.iter().map(|c| c.name()).collect::<Vec<_>>().join("/");
    match cloud {
        Some(k) if !login.is_empty() && !login.contains(&k) => Some(format!(
            "entra.authority_host {authority} belongs to {} but entra.cloud is {}",
            names(&login),
            k.name()
        )),
        Some(k) => graph_cloud.filter(|g| *g != k).map(|g| {
            format!(
                "graph.base_url {graph} belongs to {} but entra.cloud is {}",
                g.name(),
                k.name()
            )
        }),
        None => graph_cloud
            .filter(|g| !login.is_empty() && !login.contains(g))
            .map(|g| {
                format!(
                "entra.authority_host {authority} belongs to {} but graph.base_url {graph} to {}",
                names(&login),
                g.name()
            )
            }),
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
    fn validate(
        self,
        early: Vec<ConfigError>,
        azure: AzureEnv,
        from_env: BTreeMap<String, String>,
    ) -> Result<Config, ConfigErrors> {
        let mut c = Check {
            errors: early,
            from_env,
        };

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
        let request_timeout = self.server.request_timeout_seconds.unwrap_or(10);
        if request_timeout == 0 {
            let origin = c.origin("server.request_timeout_seconds", true);
            c.err(
                "server.request_timeout_seconds",
                format!("must be greater than 0 (0, {origin})"),
            );
        }
        let max_connections = self
            .server
            .max_connections
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let connections_origin = c.origin(
            "server.max_connections",
            self.server.max_connections.is_some(),
        );
        match self.server.workers {
            // Each worker takes an equal share (actix counts connections per worker).
            Some(w) if w > 0 && max_connections < w => c.err(
                "server.max_connections",
                format!(
                    "must be at least server.workers ({w}): each worker serves an equal share \
                     ({max_connections}, {connections_origin})"
                ),
            ),
            _ if max_connections == 0 => c.err(
                "server.max_connections",
                format!("must be greater than 0 (0, {connections_origin})"),
            ),
            _ => {}
        }
        let max_in_flight = self.limits.max_in_flight_per_caller.unwrap_or(32);
        let in_flight_origin = c.origin(
            "limits.max_in_flight_per_caller",
            self.limits.max_in_flight_per_caller.is_some(),
        );
        if max_in_flight == 0 {
            c.err(
                "limits.max_in_flight_per_caller",
                format!("must be greater than 0 (0, {in_flight_origin})"),
            );
        } else if max_in_flight >= max_connections {
            c.err(
                "limits.max_in_flight_per_caller",
                format!(
                    "must be below server.max_connections ({max_connections}, \
                     {connections_origin}), or one caller could hold every connection \
                     ({max_in_flight}, {in_flight_origin})"
                ),
            );
        }

        let RawEntra {
            authority_host,
            tenant_id,
            client_id,
            client_secret,
            client_secret_file,
            certificate_file,
            private_key_file,
            assertion_alg,
            federated_token_file,
            cloud,
            allow_cloud_mismatch,
            timeout_seconds,
            token_cache_capacity,
        } = self.entra;
        let cloud = cloud.and_then(|v| {
            let found = Cloud::ALL.into_iter().find(|k| k.name() == v);
            if found.is_none() {
                c.err(
                    "entra.cloud",
                    format!("must be one of global, usgov, usgov-dod, china; got {v:?}"),
                );
            }
            found
        });
        let client_auth = c.client_auth(
            RawCredentials {
                client_secret,
                client_secret_file,
                certificate_file,
                private_key_file,
                assertion_alg,
                federated_token_file,
            },
            &azure,
        );
        // The platform's variables describe the federated identity: they fill only its keys.
        let mut filled_from_environment = Vec::new();
        let mut fill = |key: &str, raw: Option<String>, var: &str| match raw {
            Some(v) => Some(v),
            None if matches!(client_auth, Some(ClientAuthConfig::Federated { .. })) => {
                let v = azure.get(var);
                if v.is_some() {
                    filled_from_environment.push(format!("{key} from {var}"));
                }
                v
            }
            None => None,
        };
        let tenant_id = fill("entra.tenant_id", tenant_id, "AZURE_TENANT_ID");
        let client_id = fill("entra.client_id", client_id, "AZURE_CLIENT_ID");
        let authority_host = fill(
            "entra.authority_host",
            authority_host,
            "AZURE_AUTHORITY_HOST",
        )
        .or_else(|| cloud.map(|k| k.authority_host().to_string()));
        if authority_host.is_none() {
            c.err("entra.authority_host", "is required (or set entra.cloud)");
        }
        let authority_host = authority_host.and_then(|v| c.url("entra.authority_host", Some(v)));
        let tenant_id = c.guid("entra.tenant_id", tenant_id);
        let client_id = c.guid("entra.client_id", client_id);
        let entra_timeout = c.positive("entra.timeout_seconds", timeout_seconds.unwrap_or(10));

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

        let base_url = self
            .graph
            .base_url
            .or_else(|| cloud.map(|k| k.graph_host().into()));
        if base_url.is_none() {
            c.err("graph.base_url", "is required (or set entra.cloud)");
        }
        let base_url = base_url.and_then(|v| c.url("graph.base_url", Some(v)));
        if let (Some(a), Some(g)) = (&authority_host, &base_url) {
            if let Some(problem) = cloud_mismatch(cloud, a, g) {
                if allow_cloud_mismatch != Some(true) {
                    c.err(
                        if cloud.is_some() { "entra.cloud" } else { "graph.base_url" },
                        format!(
                            "{problem}; tokens of one cloud are not accepted by another. Correct the keys, or set entra.allow_cloud_mismatch = true to force this combination"
                        ),
                    );
                }
            }
        }
        let scope_resource = match (cloud, &base_url) {
            (Some(k), _) => Some(k.graph_host().to_string()),
            (None, Some(u)) => Some(u.origin().ascii_serialization()),
            (None, None) => None,
        };
        let kid_cooldown = self.callers.unknown_kid_cooldown_seconds.unwrap_or(300);
        let new_kid_refresh = c.positive(
            "callers.new_kid_refresh_seconds",
            // The default never exceeds a shorter configured cooldown.
            self.callers
                .new_kid_refresh_seconds
                .unwrap_or_else(|| 30.min(kid_cooldown.max(1))),
        );
        if new_kid_refresh > kid_cooldown {
            c.err(
                "callers.new_kid_refresh_seconds",
                format!("must not exceed callers.unknown_kid_cooldown_seconds ({kid_cooldown})"),
            );
        }
        let graph_timeout = c.positive(
            "graph.timeout_seconds",
            self.graph.timeout_seconds.unwrap_or(30),
        );
        let status_permission = self.graph.status_permission.filter(|p| {
            let ok = !p.is_empty() && p.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '.');
            if !ok {
                c.err(
                    "graph.status_permission",
                    "must be one Graph permission name, e.g. DeviceManagementServiceConfig.Read.All",
                );
            }
            ok
        });

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
            .clone()
            .unwrap_or_else(|| DEFAULT_SYNC_PATH.to_string());
        if !upstream_path.starts_with('/') || upstream_path.contains("..") {
            c.err(
                "actions.sync.upstream_path",
                "must be an absolute path starting with '/'",
            );
        }

        let a = &self.actions.sync;
        let max_attempts = a.max_attempts.unwrap_or(5);
        if max_attempts == 0 {
            c.err("actions.sync.max_attempts", "must be at least 1");
        }
        let status_path = a
            .status_path
            .clone()
            .unwrap_or_else(|| DEFAULT_STATUS_PATH.to_string());
        if !status_path.starts_with('/') || status_path.contains("..") {
            c.err(
                "actions.sync.status_path",
                "must be an absolute path starting with '/'",
            );
        }
        let sync_action = SyncActionConfig {
            upstream_path,
            status_path,
            cooldown_seconds: a.cooldown_seconds.unwrap_or(600),
            retry_budget_seconds: a.retry_budget_seconds.unwrap_or(120),
            max_attempts,
            retry_base_ms: c.positive(
                "actions.sync.retry_base_ms",
                a.retry_base_ms.unwrap_or(1000),
            ),
            status_poll_ms: c.positive(
                "actions.sync.status_poll_ms",
                a.status_poll_ms.unwrap_or(10_000),
            ),
            status_poll_limit: a.status_poll_limit.unwrap_or(30),
            run_retention_seconds: c.positive(
                "actions.sync.run_retention_seconds",
                a.run_retention_seconds.unwrap_or(86_400),
            ),
            max_finished_runs: c.positive(
                "actions.sync.max_finished_runs",
                a.max_finished_runs.unwrap_or(10_000),
            ),
        };

        let max_tracked = self.limits.max_tracked_callers.unwrap_or(100_000);
        if max_tracked == 0 {
            c.err("limits.max_tracked_callers", "must be greater than 0");
        }
        let eviction = c.positive(
            "limits.eviction_seconds",
            self.limits.eviction_seconds.unwrap_or(60),
        );
        let verified_cap = self.callers.verified_cache_capacity.unwrap_or(10_000);
        let token_cap = token_cache_capacity.unwrap_or(10_000);
        let keys_refresh = c.positive(
            "callers.keys_refresh_seconds",
            self.callers.keys_refresh_seconds.unwrap_or(12 * 3600),
        );

        let sync_scope = scope_resource
            .as_ref()
            .map(|r| format!("{r}/{SYNC_PERMISSION}"));
        let identity_names: Vec<String> = self.identities.keys().cloned().collect();
        let mut identities = BTreeMap::new();
        for (name, raw) in self.identities {
            if let Some(id) = c.identity(
                &name,
                raw,
                allowed_tenants.as_deref(),
                sync_scope.as_deref(),
            ) {
                identities.insert(name, id);
            }
        }
        let mut apps = BTreeMap::new();
        for (app_id, app) in self.callers.apps.unwrap_or_default() {
            let key = format!("callers.apps.\"{app_id}\".run_as");
            if uuid::Uuid::parse_str(&app_id).is_err() {
                c.err(
                    &format!("callers.apps.\"{app_id}\""),
                    "must be an application (client) id (GUID)",
                );
                continue;
            }
            if !identity_names.contains(&app.run_as) {
                c.err(
                    &key,
                    format!(
                        "names no configured identity: add [identities.{}]",
                        app.run_as
                    ),
                );
            }
            apps.insert(app_id.to_ascii_lowercase(), app);
        }
        let required_app_role = self.callers.required_app_role;
        match &required_app_role {
            Some(r) if r.is_empty() || r.contains(' ') => {
                c.err("callers.required_app_role", "must be one app role name without spaces")
            }
            None if !apps.is_empty() => c.err(
                "callers.required_app_role",
                "is required when callers.apps maps applications: the app role their tokens must carry in `roles` (e.g. Sync.Trigger.All)",
            ),
            _ => {}
        }

        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        // Every `None` above pushed an error, so these unwraps cannot fail.
        Ok(Config {
            server: ServerConfig {
                listen: listen.unwrap(),
                workers: self.server.workers,
                shutdown_timeout_seconds: self.server.shutdown_timeout_seconds.unwrap_or(30),
                request_timeout_seconds: request_timeout,
                max_connections,
                expose_openapi: self.server.expose_openapi.unwrap_or(false),
            },
            entra: EntraConfig {
                cloud,
                authority_host: authority_host.unwrap(),
                tenant_id: tenant_id.unwrap(),
                client_id: client_id.unwrap(),
                client_auth: client_auth.unwrap(),
                filled_from_environment,
                timeout_seconds: entra_timeout,
                token_cache_capacity: token_cap,
            },
            callers: CallersConfig {
                required_app_role,
                apps,
                audiences: audiences.unwrap(),
                allowed_tenants: allowed_tenants.unwrap(),
                required_scope: required_scope.unwrap(),
                leeway_seconds: self.callers.leeway_seconds.unwrap_or(60),
                verified_cache_capacity: verified_cap,
                keys_refresh_seconds: keys_refresh,
                unknown_kid_cooldown_seconds: kid_cooldown,
                new_kid_refresh_seconds: new_kid_refresh,
            },
            graph: GraphConfig {
                base_url: base_url.unwrap(),
                timeout_seconds: graph_timeout,
                scope_resource: scope_resource.unwrap(),
                status_permission,
            },
            limits: LimitsConfig {
                per_caller,
                per_tenant,
                max_tracked_callers: max_tracked,
                eviction_seconds: eviction,
                max_in_flight_per_caller: max_in_flight,
            },
            audit: audit.unwrap(),
            actions: ActionsConfig { sync: sync_action },
            identities,
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
        match &c.entra.client_auth {
            ClientAuthConfig::Secret { secret, .. } => assert_eq!(secret.expose(), "s3cret-value"),
            other => panic!("{other:?}"),
        }
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
    fn the_connection_limits_have_defaults_below_a_1024_file_limit() {
        let c = Config::from_toml_and_env(&full_toml(), secret_env()).unwrap();
        assert_eq!(c.server.request_timeout_seconds, 10);
        assert_eq!(c.server.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(c.server.max_connections as u64 + RESERVED_FILES <= 1024);
        assert_eq!(c.limits.max_in_flight_per_caller, 32);
    }

    #[test]
    fn an_in_flight_cap_not_below_the_connection_cap_is_refused_saying_where_each_came_from() {
        let text = full_toml().replace(
            "[audit]",
            "[limits]\nmax_in_flight_per_caller = 10\n[audit]",
        );
        let mut env = secret_env();
        env.push(("SYNC_GATEWAY__SERVER__MAX_CONNECTIONS".into(), "10".into()));
        let errs = errors(&text, env);
        assert!(
            has_error(
                &errs,
                "limits.max_in_flight_per_caller",
                "must be below server.max_connections (10, from the environment, SYNC_GATEWAY__SERVER__MAX_CONNECTIONS)"
            ),
            "{errs:?}"
        );
        assert!(
            has_error(
                &errs,
                "limits.max_in_flight_per_caller",
                "(10, from the file)"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn fewer_connections_than_workers_are_refused() {
        let text = full_toml().replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nworkers = 4\nmax_connections = 3",
        );
        let errs = errors(&text, secret_env());
        assert!(
            has_error(
                &errs,
                "server.max_connections",
                "at least server.workers (4): each worker serves an equal share (3, from the file)"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn a_zero_request_timeout_is_refused_saying_where_it_came_from() {
        let mut env = secret_env();
        env.push((
            "SYNC_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS".into(),
            "0".into(),
        ));
        let errs = errors(&full_toml(), env);
        assert!(
            has_error(
                &errs,
                "server.request_timeout_seconds",
                "greater than 0 (0, from the environment, SYNC_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS)"
            ),
            "{errs:?}"
        );
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

    fn without_secret_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn errors(text: &str, env: Vec<(String, String)>) -> Vec<ConfigError> {
        Config::from_toml_and_env(text, env).unwrap_err().0
    }

    fn has_error(errs: &[ConfigError], key: &str, text: &str) -> bool {
        errs.iter()
            .any(|e| e.key == key && e.message.contains(text))
    }

    #[test]
    fn no_client_credential_is_refused_naming_all_three_kinds() {
        let errs = errors(&full_toml(), without_secret_env());
        assert!(
            has_error(
                &errs,
                "entra.client_secret",
                "entra.certificate_file with entra.private_key_file"
            ),
            "{errs:?}"
        );
        assert!(
            has_error(&errs, "entra.client_secret", "AZURE_FEDERATED_TOKEN_FILE"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_certificate_needs_both_files() {
        let text = full_toml().replace(
            "[callers]",
            "certificate_file = \"/nonexistent.crt\"\n[callers]",
        );
        let errs = errors(&text, without_secret_env());
        assert!(
            has_error(&errs, "entra.private_key_file", "is required"),
            "{errs:?}"
        );
    }

    #[test]
    fn an_unreadable_certificate_is_reported_with_its_key() {
        let text = full_toml().replace(
            "[callers]",
            "certificate_file = \"/nonexistent.crt\"\nprivate_key_file = \"/nonexistent.key\"\n[callers]",
        );
        let errs = errors(&text, without_secret_env());
        assert!(
            has_error(
                &errs,
                "entra.certificate_file",
                "cannot read /nonexistent.crt"
            ),
            "{errs:?}"
        );
    }

    fn token_file() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "a.b.c").unwrap();
        let s = p.display().to_string();
        (dir, s)
    }

    #[test]
    fn workload_identity_environment_fills_unset_entra_keys_only() {
        let (_dir, token) = token_file();
        let text = full_toml()
            .replace(
                "authority_host = \"https://login.microsoftonline.com\"\n",
                "",
            )
            .replace(&format!("client_id = \"{CLIENT}\"\n"), "");
        let env = vec![
            ("AZURE_FEDERATED_TOKEN_FILE".to_string(), token.clone()),
            (
                "AZURE_CLIENT_ID".to_string(),
                "33333333-3333-3333-3333-333333333333".to_string(),
            ),
            (
                "AZURE_TENANT_ID".to_string(),
                "44444444-4444-4444-4444-444444444444".to_string(),
            ),
            (
                "AZURE_AUTHORITY_HOST".to_string(),
                "https://login.microsoftonline.com/".to_string(),
            ),
        ];
        let c = Config::from_toml_and_env(&text, env).unwrap();
        assert_eq!(c.entra.client_id, "33333333-3333-3333-3333-333333333333");
        // Set in the file: the file wins.
        assert_eq!(c.entra.tenant_id, TENANT);
        assert_eq!(
            c.entra.authority_host.as_str(),
            "https://login.microsoftonline.com/"
        );
        assert!(
            matches!(c.entra.client_auth, ClientAuthConfig::Federated { ref source, .. } if source == "AZURE_FEDERATED_TOKEN_FILE")
        );
        assert_eq!(
            c.entra.filled_from_environment,
            vec![
                "entra.client_id from AZURE_CLIENT_ID",
                "entra.authority_host from AZURE_AUTHORITY_HOST"
            ]
        );
    }

    #[test]
    fn azure_variables_do_not_fill_keys_for_a_secret_credential() {
        let text = full_toml().replace(&format!("client_id = \"{CLIENT}\"\n"), "");
        let mut env = secret_env();
        env.push((
            "AZURE_CLIENT_ID".into(),
            "33333333-3333-3333-3333-333333333333".into(),
        ));
        let errs = errors(&text, env);
        assert!(
            has_error(&errs, "entra.client_id", "is required"),
            "{errs:?}"
        );
    }

    #[test]
    fn the_federated_token_file_key_wins_over_the_environment() {
        let (_dir, token) = token_file();
        let (_dir2, other) = token_file();
        let text = full_toml().replace(
            "[callers]",
            &format!(
                "federated_token_file = {}\n[callers]",
                toml::Value::String(token.clone())
            ),
        );
        let c =
            Config::from_toml_and_env(&text, vec![("AZURE_FEDERATED_TOKEN_FILE".into(), other)])
                .unwrap();
        match c.entra.client_auth {
            ClientAuthConfig::Federated { token_file, source } => {
                assert_eq!(token_file.display().to_string(), token);
                assert_eq!(source, "entra.federated_token_file");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cloud_sets_authority_graph_and_scope_together() {
        let text = full_toml()
            .replace(
                "authority_host = \"https://login.microsoftonline.com\"\n",
                "cloud = \"china\"\n",
            )
            .replace("base_url = \"https://graph.microsoft.com\"\n", "");
        let c = Config::from_toml_and_env(&text, secret_env()).unwrap();
        assert_eq!(
            c.entra.authority_host.as_str(),
            "https://login.partner.microsoftonline.cn/"
        );
        assert_eq!(
            c.graph.base_url.as_str(),
            "https://microsoftgraph.chinacloudapi.cn/"
        );
        assert_eq!(
            c.graph.scope(SYNC_PERMISSION),
            "https://microsoftgraph.chinacloudapi.cn/DeviceManagementServiceConfig.ReadWrite.All"
        );
    }

    #[test]
    fn an_explicit_proxy_host_overrides_the_cloud_but_not_the_scope() {
        let text = full_toml()
            .replace(
                "authority_host = \"https://login.microsoftonline.com\"\n",
                "cloud = \"usgov\"\n",
            )
            .replace(
                "https://graph.microsoft.com",
                "https://graph-proxy.internal.example",
            );
        let c = Config::from_toml_and_env(&text, secret_env()).unwrap();
        assert_eq!(
            c.graph.base_url.as_str(),
            "https://graph-proxy.internal.example/"
        );
        assert_eq!(c.graph.resource(), "https://graph.microsoft.us");
    }

    #[test]
    fn hosts_of_two_clouds_are_refused_unless_forced() {
        let text = full_toml().replace("https://graph.microsoft.com", "https://graph.microsoft.us");
        let errs = errors(&text, secret_env());
        assert!(
            has_error(
                &errs,
                "graph.base_url",
                "belongs to global but graph.base_url https://graph.microsoft.us/ to usgov"
            ),
            "{errs:?}"
        );
        let forced = text.replace("[callers]", "allow_cloud_mismatch = true\n[callers]");
        assert!(Config::from_toml_and_env(&forced, secret_env()).is_ok());
        let unknown = full_toml()
            .replace("cloud", "x")
            .replace("[callers]", "cloud = \"mars\"\n[callers]");
        assert!(has_error(
            &errors(&unknown, secret_env()),
            "entra.cloud",
            "must be one of"
        ));
    }

    fn identity_toml(dir: &Path, extra: &str) -> String {
        format!(
            "{}\n[identities.bot]\ntenant_id = \"{TENANT}\"\nstore_path = {}\n{extra}",
            full_toml(),
            toml::Value::String(dir.join("bot.session").display().to_string())
        )
    }

    fn store_key_env() -> Vec<(String, String)> {
        let mut env = secret_env();
        env.push((
            "SYNC_GATEWAY__IDENTITIES__BOT__STORE_KEY".into(),
            "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".into(),
        ));
        env
    }

    #[test]
    fn an_identity_defaults_to_the_sync_scope_and_takes_its_key_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::from_toml_and_env(&identity_toml(dir.path(), ""), store_key_env()).unwrap();
        let id = &c.identities["bot"];
        assert_eq!(id.scopes, vec![c.graph.scope(SYNC_PERMISSION)]);
        assert!(id
            .store_key_source
            .contains("SYNC_GATEWAY__IDENTITIES__BOT__STORE_KEY"));
        assert!(!c.to_masked_toml().contains("KioqKioq"));
    }

    #[test]
    fn an_identity_is_checked_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = identity_toml(
            dir.path(),
            "scopes = [\"https://graph.microsoft.com/User.Read\"]",
        )
        .replace(
            &format!("tenant_id = \"{TENANT}\"\nstore_path"),
            "tenant_id = \"55555555-5555-5555-5555-555555555555\"\nstore_path",
        );
        let errs = errors(&text, secret_env());
        assert!(
            has_error(&errs, "identities.bot.tenant_id", "callers.allowed_tenants"),
            "{errs:?}"
        );
        assert!(
            has_error(
                &errs,
                "identities.bot.scopes",
                "DeviceManagementServiceConfig.ReadWrite.All"
            ),
            "{errs:?}"
        );
        assert!(
            has_error(&errs, "identities.bot.store_key", "is required"),
            "{errs:?}"
        );
        let mut short = secret_env();
        short.push((
            "SYNC_GATEWAY__IDENTITIES__BOT__STORE_KEY".into(),
            "c2hvcnQ=".into(),
        ));
        assert!(has_error(
            &errors(&identity_toml(dir.path(), ""), short),
            "identities.bot.store_key",
            "32 bytes"
        ));
        let bad_name =
            identity_toml(dir.path(), "").replace("[identities.bot]", "[identities.Bot]");
        assert!(has_error(
            &errors(&bad_name, store_key_env()),
            "identities.Bot",
            "lower-case"
        ));
    }

    #[test]
    fn a_store_key_written_in_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = identity_toml(
            dir.path(),
            "store_key = \"KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=\"",
        );
        assert!(has_error(
            &errors(&text, secret_env()),
            "identities.bot.store_key",
            "must not be written"
        ));
    }

    #[test]
    fn an_app_mapping_names_an_identity_and_needs_the_app_role() {
        let dir = tempfile::tempdir().unwrap();
        let text = identity_toml(dir.path(), "")
            .replace("[identities.bot]", "[callers.apps.\"66666666-6666-6666-6666-666666666666\"]\nrun_as = \"nobody\"\n[identities.bot]");
        let errs = errors(&text, store_key_env());
        assert!(
            has_error(
                &errs,
                "callers.apps.\"66666666-6666-6666-6666-666666666666\".run_as",
                "[identities.nobody]"
            ),
            "{errs:?}"
        );
        assert!(
            has_error(&errs, "callers.required_app_role", "is required"),
            "{errs:?}"
        );
        let good = text
            .replace("run_as = \"nobody\"", "run_as = \"bot\"")
            .replace(
                "required_scope = \"Sync.Trigger\"",
                "required_scope = \"Sync.Trigger\"\nrequired_app_role = \"Sync.Trigger.All\"",
            );
        let c = Config::from_toml_and_env(&good, store_key_env()).unwrap();
        assert_eq!(
            c.callers.apps["66666666-6666-6666-6666-666666666666"].run_as,
            "bot"
        );
    }
}
