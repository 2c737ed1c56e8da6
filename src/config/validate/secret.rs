//! The one rule for secrets (the client secret, store keys, the HMAC key, the PostgreSQL URL's
//! password): the value comes from the environment or from the file its `*_file` key names,
//! never from the configuration file itself, which is read by more people and tools than a
//! secret should be.

use super::check::Check;
use crate::config::names::ENV_PREFIX;
use crate::secret::Secret;
use std::path::PathBuf;

/// One secret key and how it may be given.
pub(super) struct SecretKey<'a> {
    /// The key, e.g. `entra.client_secret`.
    pub key: &'a str,
    /// The key naming a file that holds it, e.g. `entra.client_secret_file`, if there is one.
    pub file_key: Option<&'a str>,
    /// Whether this value may be written in the configuration file after all (a PostgreSQL
    /// URL without a password holds no secret).
    pub harmless: fn(&str) -> bool,
}

impl SecretKey<'_> {
    /// The environment variable that sets it.
    pub fn env_var(&self) -> String {
        format!(
            "{ENV_PREFIX}{}",
            self.key.to_ascii_uppercase().replace('.', "__")
        )
    }

    /// "SYNC_GATEWAY__X or x_file": where the value may come from.
    fn allowed(&self) -> String {
        match self.file_key {
            Some(f) => format!("set {} or {f}", self.env_var()),
            None => format!("set {}", self.env_var()),
        }
    }
}

impl Check {
    /// The secret `k` names: `Ok(None)` when neither the value nor its file is set,
    /// `Ok(Some((secret, where it came from)))`, or `Err(())` after pushing the problem.
    pub(super) fn secret(
        &mut self,
        k: &SecretKey<'_>,
        value: Option<Secret>,
        file: Option<PathBuf>,
    ) -> Result<Option<(Secret, String)>, ()> {
        let written = value
            .as_ref()
            .is_some_and(|v| self.origins.in_file(k.key) && !(k.harmless)(v.expose()));
        if written {
            self.err(
                k.key,
                format!(
                    "must not be written in the configuration file; {}",
                    k.allowed()
                ),
            );
            return Err(());
        }
        match (value, file) {
            (Some(_), Some(_)) => {
                self.err(
                    k.key,
                    format!(
                        "{}, not both",
                        k.allowed().replacen("set ", "set either ", 1)
                    ),
                );
                Err(())
            }
            (Some(s), None) if s.expose().trim().is_empty() => {
                self.err(k.key, "is empty");
                Err(())
            }
            (Some(s), None) => {
                let source = match self.origins.env_var(k.key) {
                    Some(var) => format!("environment ({var})"),
                    None => self.origins.file().to_string(),
                };
                Ok(Some((s, source)))
            }
            (None, Some(path)) => {
                let file_key = k.file_key.unwrap_or(k.key);
                match std::fs::read_to_string(&path) {
                    Ok(s) if s.trim().is_empty() => {
                        self.err(file_key, format!("{} is empty", path.display()));
                        Err(())
                    }
                    Ok(s) => Ok(Some((
                        Secret::new(s.trim().to_string()),
                        format!("file {}", path.display()),
                    ))),
                    Err(e) => {
                        self.err(file_key, format!("cannot read {}: {e}", path.display()));
                        Err(())
                    }
                }
            }
            (None, None) => Ok(None),
        }
    }
}
