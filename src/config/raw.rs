//! The file's shape, as figment deserializes it from the TOML file and the environment.
//!
//! Every default lives here, in the `Default` impl of its section (serde fills a missing key
//! from it), so the documentation in `gateway.example.toml` has one place to agree with. Keys
//! without a default (required ones, and those whose default depends on another key) are
//! `Option`s that validation resolves. Field names are the configuration keys:
//! `helm/tests/test_rendered.py` reads them from this file.

use super::duration::{Millis, Seconds};
use super::model::DEFAULT_MAX_CONNECTIONS;
use super::model::{AppConfig, AuditSinkKind, FailMode, Rate, StateBackendKind};
use super::names::{DEFAULT_STATUS_PATH, DEFAULT_SYNC_PATH};
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The top-level tables, in the order `gateway.example.toml` has them.
pub(super) const SECTIONS: [&str; 11] = [
    "server",
    "entra",
    "callers",
    "graph",
    "limits",
    "audit",
    "actions",
    "identities",
    "hooks",
    "telemetry",
    "state",
];

/// Every section, each deserialized on its own so that one pass reports a bad value in each.
#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub server: RawServer,
    pub entra: RawEntra,
    pub callers: RawCallers,
    pub graph: RawGraph,
    pub limits: RawLimits,
    pub audit: RawAudit,
    pub actions: RawActions,
    pub identities: BTreeMap<String, RawIdentity>,
    pub hooks: BTreeMap<String, RawHook>,
    pub telemetry: RawTelemetry,
    pub state: RawState,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<String>,
    pub workers: Option<usize>,
    pub shutdown_timeout_seconds: Seconds,
    pub shutdown_grace_seconds: Seconds,
    pub request_timeout_seconds: Seconds,
    pub max_connections: usize,
    pub expose_openapi: bool,
    pub tls: Option<RawTls>,
    pub plaintext_behind_proxy: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub certificate_file: PathBuf,
    pub private_key_file: PathBuf,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: None,
            workers: None,
            shutdown_timeout_seconds: Seconds(30),
            shutdown_grace_seconds: Seconds(5),
            request_timeout_seconds: Seconds(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            expose_openapi: false,
            tls: None,
            plaintext_behind_proxy: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawEntra {
    pub authority_host: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub client_secret_file: Option<PathBuf>,
    pub certificate_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    pub assertion_alg: Option<String>,
    pub federated_token_file: Option<PathBuf>,
    pub cloud: Option<String>,
    pub allow_cloud_mismatch: bool,
    pub timeout_seconds: Seconds,
    pub token_cache_capacity: u64,
}

impl Default for RawEntra {
    fn default() -> Self {
        RawEntra {
            authority_host: None,
            tenant_id: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            certificate_file: None,
            private_key_file: None,
            assertion_alg: None,
            federated_token_file: None,
            cloud: None,
            allow_cloud_mismatch: false,
            timeout_seconds: Seconds(10),
            token_cache_capacity: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawCallers {
    pub audiences: Option<Vec<String>>,
    pub allowed_tenants: Option<Vec<String>>,
    pub required_scope: Option<String>,
    pub leeway_seconds: Seconds,
    pub verified_cache_capacity: u64,
    pub keys_refresh_seconds: Seconds,
    pub unknown_kid_cooldown_seconds: Seconds,
    /// Default: 30, or the cooldown when that is shorter (see `validate::callers`).
    pub new_kid_refresh_seconds: Option<Seconds>,
    pub required_app_role: Option<String>,
    pub apps: BTreeMap<String, AppConfig>,
}

impl Default for RawCallers {
    fn default() -> Self {
        RawCallers {
            audiences: None,
            allowed_tenants: None,
            required_scope: None,
            leeway_seconds: Seconds(60),
            verified_cache_capacity: 10_000,
            keys_refresh_seconds: Seconds(12 * 3600),
            unknown_kid_cooldown_seconds: Seconds(300),
            new_kid_refresh_seconds: None,
            required_app_role: None,
            apps: BTreeMap::new(),
        }
    }
}

/// `[identities.NAME]`: nothing has a default but the kind (`delegated`) and the scopes, which
/// follow the Graph host. `scopes` and the store keys belong to delegated identities only.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub kind: Option<String>,
    pub tenant_id: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub store_path: Option<PathBuf>,
    pub store_key: Option<Secret>,
    pub store_key_file: Option<PathBuf>,
}

/// `[hooks.NAME]`: a webhook or chat source. Which keys apply depends on `kind`; validation
/// refuses a key the kind does not use rather than ignoring it.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawHook {
    pub kind: Option<String>,
    /// Only ever from the environment (comma-separated): a value in the file is refused.
    pub secrets: Option<Secret>,
    pub secrets_file: Option<PathBuf>,
    pub public_key: Option<String>,
    pub run_as: Option<String>,
    pub tenant_id: Option<String>,
    pub limits: RawHookLimits,
    pub when: Option<RawHookFilter>,
    pub allow: Option<RawChatAllow>,
    /// Default: the sender's own hosts (`hooks.slack.com` for slack; mattermost has none).
    pub response_url_hosts: Option<Vec<String>>,
    /// Default (discord only): `DEFAULT_DISCORD_API_BASE_URL`.
    pub api_base_url: Option<String>,
    pub tolerance_seconds: Seconds,
    pub max_body_bytes: usize,
    pub replay_window_seconds: Seconds,
}

impl Default for RawHook {
    fn default() -> Self {
        RawHook {
            kind: None,
            secrets: None,
            secrets_file: None,
            public_key: None,
            run_as: None,
            tenant_id: None,
            limits: RawHookLimits::default(),
            when: None,
            allow: None,
            response_url_hosts: None,
            api_base_url: None,
            // The reference libraries' five minutes (Standard Webhooks, Slack).
            tolerance_seconds: Seconds(300),
            max_body_bytes: 64 * 1024,
            // PagerDuty retries for up to 48 h, the longest of the senders.
            replay_window_seconds: Seconds(48 * 3600),
        }
    }
}

/// `hooks.NAME.limits`: either key may be left out and keeps its default.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawHookLimits {
    pub per_minute: u32,
    pub burst: u32,
}

impl Default for RawHookLimits {
    fn default() -> Self {
        RawHookLimits {
            per_minute: 30,
            burst: 10,
        }
    }
}

/// `hooks.NAME.when`: a JSON pointer and exactly one test.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawHookFilter {
    pub pointer: Option<String>,
    pub equals: Option<serde_json::Value>,
    pub one_of: Option<Vec<serde_json::Value>>,
    pub exists: Option<bool>,
}

/// `hooks.NAME.allow`: an empty or absent list does not restrict its dimension.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawChatAllow {
    pub teams: Vec<String>,
    pub channels: Vec<String>,
    pub users: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawGraph {
    pub base_url: Option<String>,
    pub timeout_seconds: Seconds,
    pub status_permission: Option<String>,
}

impl Default for RawGraph {
    fn default() -> Self {
        RawGraph {
            base_url: None,
            timeout_seconds: Seconds(30),
            status_permission: None,
        }
    }
}

/// `[telemetry]`: OpenTelemetry trace export, off while `otlp_endpoint` is absent.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    pub otlp_timeout_seconds: Seconds,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            otlp_endpoint: None,
            service_name: "sync-gateway".into(),
            otlp_timeout_seconds: Seconds(10),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawLimits {
    pub per_caller: Rate,
    pub per_tenant: Rate,
    pub max_tracked_callers: usize,
    pub eviction_seconds: Seconds,
    pub max_in_flight_per_caller: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            per_caller: Rate {
                per_minute: 10,
                burst: 3,
            },
            per_tenant: Rate {
                per_minute: 120,
                burst: 30,
            },
            max_tracked_callers: 100_000,
            eviction_seconds: Seconds(60),
            max_in_flight_per_caller: 32,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAudit {
    pub path: Option<PathBuf>,
    pub write_timeout_ms: Millis,
    pub sinks: Vec<AuditSinkKind>,
    pub rotate_bytes: u64,
    pub rotate_seconds: Seconds,
    pub retain_files: usize,
    pub postgres_url: Option<Secret>,
    pub postgres_schema: String,
    pub signing_key_file: Option<PathBuf>,
    pub checkpoint_every_records: u64,
    pub checkpoint_every_seconds: Seconds,
    pub hmac_key: Option<Secret>,
    pub hmac_key_file: Option<PathBuf>,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            path: None,
            write_timeout_ms: Millis(2000),
            sinks: vec![AuditSinkKind::File],
            rotate_bytes: 64 * 1024 * 1024,
            rotate_seconds: Seconds(86_400),
            retain_files: 0,
            postgres_url: None,
            postgres_schema: "sync_gateway_audit".into(),
            signing_key_file: None,
            checkpoint_every_records: 1000,
            checkpoint_every_seconds: Seconds(60),
            hmac_key: None,
            hmac_key_file: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawActions {
    pub sync: RawSyncAction,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawSyncAction {
    pub upstream_path: String,
    pub status_path: String,
    pub cooldown_seconds: Seconds,
    pub retry_budget_seconds: Seconds,
    pub max_attempts: u32,
    pub retry_base_ms: Millis,
    pub status_poll_ms: Millis,
    pub status_poll_limit: u32,
    pub run_retention_seconds: Seconds,
    pub max_finished_runs: u64,
}

impl Default for RawSyncAction {
    fn default() -> Self {
        RawSyncAction {
            upstream_path: DEFAULT_SYNC_PATH.into(),
            status_path: DEFAULT_STATUS_PATH.into(),
            cooldown_seconds: Seconds(600),
            retry_budget_seconds: Seconds(120),
            max_attempts: 5,
            retry_base_ms: Millis(1000),
            status_poll_ms: Millis(10_000),
            status_poll_limit: 30,
            run_retention_seconds: Seconds(86_400),
            max_finished_runs: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawState {
    pub backend: StateBackendKind,
    pub redis_url: Option<Secret>,
    pub redis_url_file: Option<PathBuf>,
    pub key_prefix: String,
    pub timeout_ms: Millis,
    pub on_unavailable: RawOnUnavailable,
    pub encryption_key: Option<Secret>,
    pub encryption_key_file: Option<PathBuf>,
    /// Unset: `HOSTNAME`, else the machine's hostname (validation resolves it).
    pub replica_id: Option<String>,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            backend: StateBackendKind::Memory,
            redis_url: None,
            redis_url_file: None,
            key_prefix: "sync-gateway:".into(),
            timeout_ms: Millis(250),
            on_unavailable: RawOnUnavailable::default(),
            encryption_key: None,
            encryption_key_file: None,
            replica_id: None,
        }
    }
}

/// `state.on_unavailable`: what each kind of shared state does while Redis cannot be reached.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawOnUnavailable {
    pub limits: FailMode,
}
