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
mod error;
mod load;
mod model;
mod names;
mod origin;
mod raw;
mod validate;

// Shared with `preflight`'s tests, which load the same fixtures.
#[cfg(test)]
pub(crate) mod tests;

pub use cloud::Cloud;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use names::*;
pub use validate::{
    is_loopback_host, parse_service_url, valid_schema_name, MAX_HOOK_BODY_BYTES, MAX_HOOK_SECRETS,
    MIN_HMAC_KEY_BYTES,
};

use std::path::Path;
use std::time::Duration;

/// How errors name configuration text that has no file (`Config::from_toml_and_env`).
const UNNAMED_FILE: &str = "the file";

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
