//! What `check-config` checks beyond the configuration's data: that the files it names load,
//! the same way the steps that use them load them when the gateway is built (the client
//! credential, the federated token, the audit signing key). `config` itself reads no key or
//! certificate, so it imports neither `credentials` nor `audit`.

use crate::config::{AuditSinkKind, ClientAuthConfig, Config, ConfigError, ConfigErrors};
use crate::credentials::client_auth::{self, ClientAuth};
use std::path::Path;

/// What the loaded files say, for the operator.
#[derive(Debug)]
pub struct Preflight {
    /// The client credential in use, with the certificate's thumbprint when it is one.
    pub client_auth: String,
    /// What will stop `serve` on this machine but may be right where the gateway runs (a
    /// directory the deployment creates): said, not refused.
    pub notes: Vec<String>,
}

/// Loads every file `config` names that the gateway loads at start; errors name the key.
pub fn check(config: &Config) -> Result<Preflight, ConfigErrors> {
    let mut errors = Vec::new();
    let mut client = config.entra.client_auth.describe();
    match ClientAuth::from_config(&config.entra) {
        Ok(auth) => {
            if let ClientAuthConfig::Certificate { assertion_alg, .. } = &config.entra.client_auth {
                client = format!(
                    "{}, client assertions signed {}",
                    auth.describe(),
                    assertion_alg.name()
                );
            }
        }
        Err(e) => errors.push(ConfigError::new(e.key(), e.to_string())),
    }
    // The credential reads the token lazily (it is renewed on disk); a missing or malformed
    // file is still worth knowing before the first token request.
    if let ClientAuthConfig::Federated { token_file, source } = &config.entra.client_auth {
        if let Err(e) = client_auth::read_federated_token(token_file) {
            errors.push(ConfigError::new(
                "entra.federated_token_file",
                format!("{e} (from {source})"),
            ));
        }
    }
    if let Some(p) = &config.audit.signing_key_file {
        if let Err(e) = crate::audit::CheckpointSigner::from_pem_file(p) {
            errors.push(ConfigError::new("audit.signing_key_file", e.to_string()));
        }
    }
    let mut notes = Vec::new();
    if config.audit.durable_sink() == AuditSinkKind::File {
        let dir = config.audit.path.as_deref().and_then(Path::parent);
        if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
            notes.push(format!(
                "audit.path's directory {} does not exist here: create it (e.g. `mkdir -p {}`) before `serve`",
                dir.display(),
                dir.display()
            ));
        }
    }
    if errors.is_empty() {
        Ok(Preflight {
            client_auth: client,
            notes,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{full_toml, secret_env};

    fn errors(text: &str, env: Vec<(String, String)>) -> Vec<ConfigError> {
        let config = Config::from_toml_and_env(text, env).unwrap();
        check(&config).unwrap_err().0
    }

    fn has_error(errs: &[ConfigError], key: &str, text: &str) -> bool {
        errs.iter()
            .any(|e| e.key == key && e.message.contains(text))
    }

    #[test]
    fn an_unreadable_certificate_is_reported_with_its_key() {
        let text = full_toml().replace(
            "[callers]",
            "certificate_file = \"/nonexistent.crt\"\nprivate_key_file = \"/nonexistent.key\"\n[callers]",
        );
        let errs = errors(&text, Vec::new());
        assert!(
            has_error(
                &errs,
                "entra.certificate_file",
                "cannot read /nonexistent.crt"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn an_unreadable_signing_key_is_named() {
        let text = full_toml().replace(
            "[audit]\n",
            "[audit]\nsigning_key_file = \"/nonexistent/key.pem\"\n",
        );
        let e = ConfigErrors(errors(&text, secret_env())).to_string();
        assert!(e.contains("audit.signing_key_file: cannot read"), "{e}");
    }

    #[test]
    fn a_missing_federated_token_file_is_named_with_where_its_path_came_from() {
        let env = vec![(
            "AZURE_FEDERATED_TOKEN_FILE".to_string(),
            "/nonexistent/token".to_string(),
        )];
        let errs = errors(&full_toml(), env);
        assert!(
            has_error(
                &errs,
                "entra.federated_token_file",
                "cannot read /nonexistent/token"
            ) && has_error(
                &errs,
                "entra.federated_token_file",
                "AZURE_FEDERATED_TOKEN_FILE"
            ),
            "{errs:?}"
        );
    }
}
