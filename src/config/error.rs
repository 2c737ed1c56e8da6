//! [`ConfigError`]: one problem with the configuration, naming its key and where its value
//! came from; [`ConfigErrors`]: all of them.

use super::origin::Origins;
use std::fmt;

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
    pub(super) fn at(key: &str, message: impl Into<String>, origins: &Origins) -> ConfigError {
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
