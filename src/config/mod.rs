//! Typed configuration: a TOML file plus `SYNC_GATEWAY__SECTION__KEY` environment overrides,
//! parsed once at start into values that cannot be invalid.
//!
//! Three steps: `load.rs` reads the file and the environment through figment into the `Raw*`
//! shapes of `raw.rs` (where every default lives); `validate/` checks each section and builds
//! the [`Config`] of `model.rs`, which the rest of the gateway uses without re-checking
//! anything. Every error names its key and where the value came from (the
//! file and line, or the environment variable), and one pass reports every problem.
//!
//! `config` reads data only: it never loads a key or a certificate. The steps that use them
//! load the files the configuration names when the gateway is built, and `check-config` runs the
//! same loading through [`crate::preflight`].

mod cloud;
mod duration;
mod load;
mod model;
mod origin;
mod raw;
mod validate;

// Shared with `preflight`'s tests, which load the same fixtures.
#[cfg(test)]
pub(crate) mod tests;

pub use cloud::Cloud;
pub use model::*;
pub use validate::{parse_service_url, valid_schema_name, MIN_HMAC_KEY_BYTES};

use std::fmt;
use std::path::Path;
use std::time::Duration;

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

/// How errors name configuration text that has no file (`Config::from_toml_and_env`).
const UNNAMED_FILE: &str = "the file";

/// One problem with the configuration, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The full key, e.g. `entra.client_id` (for a file that does not parse: the file and line).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
    /// Where the value came from: `FILE, line N` or `environment variable NAME`; `None` for a
    /// missing key or a default.
    pub origin: Option<String>,
}

impl ConfigError {
    /// A problem with `key` that no single value's origin explains.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
            origin: None,
        }
    }

    /// A problem with `key`'s value, which `origins` locates.
    fn at(key: &str, message: impl Into<String>, origins: &origin::Origins) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
            origin: origins.describe(key),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        match &self.origin {
            Some(origin) => write!(f, " ({origin})"),
            None => Ok(()),
        }
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
            ConfigErrors(vec![ConfigError::new(
                "--config",
                format!("cannot read {}: {e}", path.display()),
            )])
        })?;
        Self::parse(&path.display().to_string(), &text, env)
    }

    /// Parses TOML text plus environment overrides, then validates; errors call the text
    /// "the file".
    pub fn from_toml_and_env(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        Self::parse(UNNAMED_FILE, toml_text, env)
    }

    fn parse(
        file: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let loaded = load::load(file, text, env).map_err(ConfigErrors)?;
        validate::validate(loaded).map_err(ConfigErrors)
    }

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
