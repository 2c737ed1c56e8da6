//! [`SimOptions`]: what the simulators know about the world, and the Graph permissions the
//! simulated app registration has.

use std::sync::Arc;
use std::time::Duration;

/// The Graph permission the sync action needs.
pub const PERMISSION_READ_WRITE: &str = "DeviceManagementServiceConfig.ReadWrite.All";
/// The Graph permission that allows reading the Autopilot settings.
pub const PERMISSION_READ: &str = "DeviceManagementServiceConfig.Read.All";

/// What a tenant's administrator granted the gateway's application to use in its own name
/// (the client-credentials grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppConsent {
    /// Admin consent was given: the application is in the tenant and holds these Graph
    /// application permissions (app roles), which its app-only tokens carry in `roles` (none
    /// at all: a token without `roles`, as Entra issues it).
    Granted(Vec<String>),
    /// Nobody consented: the application is not in the tenant, and every token request there
    /// is refused with AADSTS700016 (`unauthorized_client`), as Entra does.
    NotInTenant,
}

/// What the simulators know about the world: tenants, the gateway's app registration, the
/// gateway's API audiences and Graph's timing rules.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Tenant ids the simulated Entra knows.
    pub tenants: Vec<String>,
    /// The gateway application's client id, registered in the simulated Entra.
    pub client_id: String,
    /// The gateway application's client secret.
    pub client_secret: String,
    /// Audiences of the gateway's own API (client id and App ID URI); minted caller tokens use
    /// the first by default.
    pub api_audiences: Vec<String>,
    /// Graph's "one manual sync per N" rule (Intune: 10 minutes).
    pub graph_cooldown: Duration,
    /// Lifetime of the Graph tokens the OBO exchange issues.
    pub graph_token_lifetime: Duration,
    /// The Graph resource (scope prefix and token `aud`) as a national cloud names it, e.g.
    /// `https://graph.microsoft.us`; `None` = the simulated Graph's own base URL.
    pub graph_resource: Option<String>,
    /// The `cloud_instance_name` discovery and keys report (e.g. `microsoftonline.us`).
    pub cloud_instance_name: String,
    /// The polling interval the device authorization endpoint announces.
    pub device_interval: Duration,
    /// The Graph permissions the tenants consented to for the gateway; asking for another
    /// fails as Entra does (AADSTS65001, `consent_required`). Default: every permission the
    /// app registration lists.
    pub consented_permissions: Vec<String>,
    /// What every tenant granted the gateway's application as itself (default: admin consent
    /// for the sync's application permission); [`crate::sim::entra::SimEntra::set_app_consent`]
    /// changes it per tenant.
    pub app_consent: AppConsent,
    /// The clock of Graph's cooldown and sync progress (default: the real one); a test gives
    /// the gateway the same [`crate::clock::ManualClock`] so both run in one virtual time.
    pub clock: Arc<dyn crate::clock::Clock>,
}

impl SimOptions {
    /// Options with Graph's documented defaults: 600 s cooldown, 3600 s Graph token lifetime.
    pub fn new(
        tenants: Vec<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        api_audiences: Vec<String>,
    ) -> Self {
        SimOptions {
            tenants,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            api_audiences,
            graph_cooldown: Duration::from_secs(600),
            graph_token_lifetime: Duration::from_secs(3600),
            graph_resource: None,
            cloud_instance_name: "microsoftonline.com".into(),
            device_interval: Duration::from_secs(5),
            consented_permissions: vec![PERMISSION_READ_WRITE.into(), PERMISSION_READ.into()],
            app_consent: AppConsent::Granted(vec![PERMISSION_READ_WRITE.into()]),
            clock: crate::clock::system(),
        }
    }
}
