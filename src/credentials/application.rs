//! Application identities (`[identities.NAME] kind = "application"`): the gateway's own
//! application acting in a tenant with an application permission, through the
//! client-credentials grant (`../shared/reference/graph-autopilot-sync.md`: the action accepts
//! the application permission `DeviceManagementServiceConfig.ReadWrite.All`).
//!
//! - No session, store or `login`: the token request authenticates with the gateway's client
//!   credential (secret, certificate or federated token) through [`EntraClient`], like every
//!   other grant, at the identity's tenant's token endpoint, for `{graph}/.default`.
//! - The token is cached per tenant until [`EXPIRY_BUFFER`] before it expires (the exchange
//!   cache's rule), and concurrent misses make one request: the others wait for it and share
//!   its token or its error.
//! - Nothing runs in the background: an app-only token needs no keep-alive.

use super::endpoint::{EntraClient, ErrorBody, Refusal, APP_NOT_FOUND, NO_SERVICE_PRINCIPAL};
use super::token::{DelegatedToken, UsableUntil, EXPIRY_BUFFER};
use crate::config::{Config, SYNC_PERMISSION};
use crate::domain::CallerSummary;
use crate::error::GatewayError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `grant_type` of the client-credentials grant (RFC 6749 §4.4).
pub const CLIENT_CREDENTIALS: &str = "client_credentials";

/// AADSTS65001: no consent for what was asked.
const CONSENT_MISSING: i64 = 65001;

/// Every configured application identity, and the one token cache they share.
pub struct ApplicationIdentities {
    /// Identity name → its tenant.
    tenants: BTreeMap<String, String>,
    /// `{graph resource}/.default`: every application permission consented on the cloud's
    /// Graph (the client-credentials grant takes no named permissions).
    scope: String,
    /// The permission the sync needs on that Graph, named in errors about consent.
    permission: String,
    entra: Arc<EntraClient>,
    /// By tenant: identities of one tenant are the same application there, so one token.
    cache: moka::future::Cache<String, Arc<DelegatedToken>>,
}

impl ApplicationIdentities {
    /// The `kind = "application"` identities of `config`, asking `entra` for tokens on the
    /// Graph host of the configured cloud (`graph.scope_resource`).
    pub fn from_config(config: &Config, entra: Arc<EntraClient>) -> ApplicationIdentities {
        let tenants: BTreeMap<String, String> = config
            .identities
            .iter()
            .filter(|(_, id)| id.delegated().is_none())
            .map(|(name, id)| (name.clone(), id.tenant_id.as_str().to_string()))
            .collect();
        ApplicationIdentities {
            cache: moka::future::Cache::builder()
                // One token per tenant an application identity names.
                .max_capacity(tenants.len().max(1) as u64)
                .expire_after(UsableUntil)
                .build(),
            tenants,
            scope: config.graph.scope(".default"),
            permission: config.graph.scope(SYNC_PERMISSION),
            entra,
        }
    }

    /// Whether `name` is an application identity.
    pub fn contains(&self, name: &str) -> bool {
        self.tenants.contains_key(name)
    }

    /// The `scope` the grant asks for, e.g. `https://graph.microsoft.us/.default`.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// What the audit trail records as having acted: the application, in the identity's tenant.
    pub fn summary(&self, name: &str, tenant_id: &str) -> CallerSummary {
        CallerSummary {
            kind: "application_identity",
            tenant_id: tenant_id.to_string(),
            object_id: None,
            upn: None,
            app_id: Some(self.entra.client_id().to_string()),
            identity: Some(name.to_string()),
        }
    }

    /// The app-only Graph token of identity `name`: cached, or one client-credentials request
    /// for all concurrent callers of its tenant.
    pub async fn token(&self, name: &str) -> Result<Arc<DelegatedToken>, GatewayError> {
        let Some(tenant) = self.tenants.get(name) else {
            // Configuration validation makes every `run_as` name an identity.
            tracing::error!(identity = %name, "no such application identity");
            return Err(GatewayError::Internal);
        };
        self.cache
            .try_get_with(tenant.clone(), self.request(name, tenant))
            .await
            .map_err(|e: Arc<GatewayError>| (*e).clone())
    }

    /// The app-only Graph token of identity `name` if one is cached and usable, with no call.
    pub async fn cached(&self, name: &str) -> Option<Arc<DelegatedToken>> {
        let tenant = self.tenants.get(name)?;
        self.cache.get(tenant).await
    }

    async fn request(&self, name: &str, tenant: &str) -> Result<Arc<DelegatedToken>, GatewayError> {
        let grant = [
            ("grant_type", CLIENT_CREDENTIALS),
            ("scope", self.scope.as_str()),
        ];
        match self.entra.request_for_application(tenant, &grant).await {
            Ok(answer) => Ok(Arc::new(DelegatedToken::application(
                answer.access_token,
                answer.expires_in.saturating_sub(EXPIRY_BUFFER),
            )?)),
            Err(Refusal::Failed(e)) => Err(e),
            Err(Refusal::Grant(e)) => Err(self.map_error(name, tenant, &e)),
        }
    }

    /// Entra's refusal of the client-credentials grant, for the caller and the operator.
    /// Branches on `error` and `error_codes`, never on the description text.
    fn map_error(&self, name: &str, tenant: &str, e: &ErrorBody) -> GatewayError {
        let code = e.aadsts();
        let (trace_id, correlation_id) = (
            e.trace_id.as_deref().unwrap_or(""),
            e.correlation_id.as_deref().unwrap_or(""),
        );
        let client_id = self.entra.client_id();
        if e.has(APP_NOT_FOUND)
            || e.has(NO_SERVICE_PRINCIPAL)
            || e.has(CONSENT_MISSING)
            || e.error == "consent_required"
        {
            tracing::error!(identity = %name, tenant, client_id, error = %e.error, code = %code, trace_id, correlation_id,
                "Entra ID does not let the gateway's application act in the application identity's tenant ({code}): \
                 an administrator of that tenant has not granted admin consent for the application permission {SYNC_PERMISSION} \
                 (or entra.client_id names another application)");
            return GatewayError::ConsentRequired {
                scope: format!(
                    "{} (application permission, admin consent)",
                    self.permission
                ),
            };
        }
        if e.error == "invalid_scope" || e.error == "invalid_resource" {
            tracing::error!(identity = %name, tenant, scope = %self.scope, error = %e.error, code = %code, trace_id, correlation_id,
                "Entra ID refused the client-credentials scope ({code}): check graph.base_url / entra.cloud name the tenant's cloud");
            return GatewayError::GatewayMisconfigured(e.error.clone());
        }
        tracing::warn!(identity = %name, tenant, error = %e.error, code = %code, trace_id, correlation_id,
            "Entra ID refused the application identity's token request");
        GatewayError::ExchangeFailed(format!(
            "Entra ID refused the token of application identity '{name}' ({}, {code})",
            if e.error.is_empty() {
                "no error code"
            } else {
                e.error.as_str()
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::client_auth::ClientAuth;
    use super::*;
    use std::time::Duration;

    fn identities() -> ApplicationIdentities {
        let entra = EntraClient::new(
            reqwest::Client::new(),
            &url::Url::parse("https://login.microsoftonline.us").unwrap(),
            "client-1".into(),
            ClientAuth::federated("client-1".into(), "/nonexistent".into(), Duration::ZERO),
        );
        ApplicationIdentities {
            tenants: BTreeMap::from([("app".into(), "t".into())]),
            scope: "https://graph.microsoft.us/.default".into(),
            permission: format!("https://graph.microsoft.us/{SYNC_PERMISSION}"),
            entra: Arc::new(entra),
            cache: moka::future::Cache::builder()
                .expire_after(UsableUntil)
                .build(),
        }
    }

    fn refused(error: &str, code: i64) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            error_codes: vec![code],
            ..ErrorBody::default()
        }
    }

    #[test]
    fn an_application_missing_from_the_tenant_is_consent_required_naming_the_clouds_permission() {
        for (error, code) in [
            ("unauthorized_client", APP_NOT_FOUND),
            ("invalid_client", NO_SERVICE_PRINCIPAL),
            ("invalid_grant", CONSENT_MISSING),
        ] {
            match identities().map_error("app", "t", &refused(error, code)) {
                GatewayError::ConsentRequired { scope } => {
                    assert!(
                        scope.starts_with("https://graph.microsoft.us/DeviceManagementServiceConfig.ReadWrite.All"),
                        "{scope}"
                    );
                    assert!(scope.contains("admin consent"), "{scope}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_refused_scope_is_the_gateways_misconfiguration_and_anything_else_names_the_code() {
        let ids = identities();
        assert!(matches!(
            ids.map_error("app", "t", &refused("invalid_scope", 1002012)),
            GatewayError::GatewayMisconfigured(_)
        ));
        match ids.map_error("app", "t", &refused("invalid_request", 90014)) {
            GatewayError::ExchangeFailed(d) => {
                assert!(d.contains("'app'") && d.contains("AADSTS90014"), "{d}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unknown_identity_is_an_internal_error_without_a_request() {
        assert!(matches!(
            identities().token("nobody").await,
            Err(GatewayError::Internal)
        ));
    }
}
