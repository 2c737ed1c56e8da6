//! `[entra]`: the gateway's application, its cloud, and exactly one client credential.

use super::check::Check;
use super::secret::SecretKey;
use crate::config::cloud::Cloud;
use crate::config::load::AzureEnv;
use crate::config::model::{AssertionAlg, ClientAuthConfig, EntraConfig};
use crate::config::names::ENV_PREFIX;
use crate::config::raw::RawEntra;
use std::path::PathBuf;
use url::Url;

/// `[entra]` checked: the parts `[graph]` needs even when another key is wrong, and the
/// section itself when nothing is.
pub(super) struct Entra {
    pub cloud: Option<Cloud>,
    pub authority_host: Option<Url>,
    pub allow_cloud_mismatch: bool,
    pub config: Option<EntraConfig>,
}

const CLIENT_SECRET: SecretKey<'static> = SecretKey {
    key: "entra.client_secret",
    file_key: Some("entra.client_secret_file"),
    harmless: |_| false,
};

impl Check {
    pub(super) fn entra(&mut self, raw: RawEntra, azure: &AzureEnv) -> Entra {
        let cloud = raw.cloud.as_ref().and_then(|v| {
            let found = Cloud::ALL.into_iter().find(|k| k.name() == v);
            if found.is_none() {
                self.err(
                    "entra.cloud",
                    format!("must be one of global, usgov, usgov-dod, china; got {v:?}"),
                );
            }
            found
        });
        let client_auth = self.client_auth(&raw, azure);
        // The platform's variables describe the federated identity: they fill only its keys.
        let federated = matches!(client_auth, Some(ClientAuthConfig::Federated { .. }));
        let mut filled_from_environment = Vec::new();
        let mut fill = |key: &str, value: Option<String>, var: &str| match value {
            Some(v) => Some(v),
            None if federated => {
                let v = azure.get(var);
                if v.is_some() {
                    filled_from_environment.push(format!("{key} from {var}"));
                }
                v
            }
            None => None,
        };
        let tenant_id = fill("entra.tenant_id", raw.tenant_id, "AZURE_TENANT_ID");
        let client_id = fill("entra.client_id", raw.client_id, "AZURE_CLIENT_ID");
        let authority_host = fill(
            "entra.authority_host",
            raw.authority_host,
            "AZURE_AUTHORITY_HOST",
        )
        .or_else(|| cloud.map(|k| k.authority_host().to_string()));
        if authority_host.is_none() {
            self.err_plain("entra.authority_host", "is required (or set entra.cloud)");
        }
        let authority_host = authority_host.and_then(|v| self.url("entra.authority_host", Some(v)));
        let tenant_id = self.tenant("entra.tenant_id", tenant_id);
        let client_id = self.guid("entra.client_id", client_id);
        let timeout_seconds = self.positive("entra.timeout_seconds", raw.timeout_seconds.0);
        let config = (|| {
            Some(EntraConfig {
                cloud,
                authority_host: authority_host.clone()?,
                tenant_id: tenant_id?,
                client_id: client_id?,
                client_auth: client_auth?,
                filled_from_environment,
                timeout_seconds,
                token_cache_capacity: raw.token_cache_capacity,
            })
        })();
        Entra {
            cloud,
            authority_host,
            allow_cloud_mismatch: raw.allow_cloud_mismatch,
            config,
        }
    }

    /// Exactly one client credential (reference §3). Only paths here: the credential reads its
    /// files when the gateway is built (and `check-config` does the same, see `preflight`).
    fn client_auth(&mut self, raw: &RawEntra, azure: &AzureEnv) -> Option<ClientAuthConfig> {
        let (federated, federated_source) = match &raw.federated_token_file {
            Some(p) => (Some(p.clone()), "entra.federated_token_file"),
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
            self.err_plain(
                "entra",
                format!(
                    "configure exactly one client credential; found {}",
                    configured.join(" and ")
                ),
            );
            return None;
        }
        if secret {
            let found = self.secret(
                &CLIENT_SECRET,
                raw.client_secret.clone(),
                raw.client_secret_file.clone(),
            );
            return found
                .ok()
                .flatten()
                .map(|(secret, source)| ClientAuthConfig::Secret { secret, source });
        }
        if certificate {
            return self.certificate(raw);
        }
        if let Some(token_file) = federated {
            return Some(ClientAuthConfig::Federated {
                token_file,
                source: federated_source.to_string(),
            });
        }
        self.err_plain(
            "entra.client_secret",
            format!(
                "is required: configure exactly one client credential: {ENV_PREFIX}ENTRA__CLIENT_SECRET or entra.client_secret_file (secret), entra.certificate_file with entra.private_key_file (certificate), or entra.federated_token_file / AZURE_FEDERATED_TOKEN_FILE (workload identity federation)"
            ),
        );
        None
    }

    fn certificate(&mut self, raw: &RawEntra) -> Option<ClientAuthConfig> {
        if raw.certificate_file.is_none() {
            self.err_plain(
                "entra.certificate_file",
                "is required with entra.private_key_file",
            );
        }
        if raw.private_key_file.is_none() {
            self.err_plain(
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
        Some(ClientAuthConfig::Certificate {
            certificate_file: raw.certificate_file.clone()?,
            private_key_file: raw.private_key_file.clone()?,
            assertion_alg: alg?,
        })
    }
}
