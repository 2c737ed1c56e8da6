//! Step 2 of the lifecycle: may this caller ask for this action, and whose identity acts?

use crate::caller::Caller;
use crate::config::Config;
use crate::credentials::{ActingIdentity, ServiceIdentityRef};
use crate::error::GatewayError;
use std::collections::HashMap;

/// Who may call the action.
#[derive(Debug, Clone, Default)]
pub struct CallerPolicy {
    /// The delegated scope a user token must carry in `scp`.
    pub required_scope: String,
    /// The app role an app-only token must carry in `roles` to act as a service identity.
    pub required_app_role: Option<String>,
    /// App-only callers by application (client) id, lower case, and the identity each acts as.
    pub apps: HashMap<String, ServiceIdentityRef>,
}

impl CallerPolicy {
    /// The `[callers]` policy of `config`, each mapped application with its identity's tenant.
    pub fn from_config(config: &Config) -> Self {
        let apps = config
            .callers
            .apps
            .iter()
            .filter_map(|(app_id, app)| {
                // Validation makes every `run_as` name a configured identity.
                let id = config.identities.get(&app.run_as)?;
                let identity = ServiceIdentityRef {
                    name: id.name.as_str().into(),
                    tenant_id: id.tenant_id.to_string(),
                };
                Some((app_id.clone(), identity))
            })
            .collect();
        CallerPolicy {
            required_scope: config.callers.required_scope.clone(),
            required_app_role: config.callers.required_app_role.clone(),
            apps,
        }
    }

    /// Whose identity the action will act with, or why the caller may not ask.
    ///
    /// The sync action accepts only delegated permissions, so an app-only caller cannot be
    /// exchanged on behalf of. It may act as a service identity when its application is mapped
    /// to one (`callers.apps`), the identity is of the caller's own tenant (a multi-tenant app
    /// has one id in every tenant), and the token carries `callers.required_app_role`; any
    /// other app-only caller is refused (403) rather than failing later at Entra.
    pub fn authorize(&self, caller: &Caller) -> Result<ActingIdentity, GatewayError> {
        match caller {
            Caller::User(u) if u.scopes.contains(&self.required_scope) => {
                Ok(ActingIdentity::User(u.clone()))
            }
            Caller::User(_) => Err(GatewayError::InsufficientScope {
                required: self.required_scope.clone(),
            }),
            Caller::App(app) => {
                let mapped = app
                    .app_id
                    .as_deref()
                    .and_then(|id| self.apps.get(&id.to_ascii_lowercase()))
                    .filter(|identity| identity.tenant_id == app.tenant_id)
                    .ok_or(GatewayError::AppOnlyCaller)?;
                match &self.required_app_role {
                    Some(role) if app.roles.contains(role) => {
                        Ok(ActingIdentity::Service(mapped.clone()))
                    }
                    Some(role) => Err(GatewayError::InsufficientRole {
                        required: role.clone(),
                    }),
                    // Configuration requires a role whenever apps are mapped.
                    None => Err(GatewayError::AppOnlyCaller),
                }
            }
            // The source's signature is its authority; its configuration names who acts.
            Caller::Hook(h) => Ok(ActingIdentity::Service(ServiceIdentityRef {
                name: h.run_as.clone(),
                tenant_id: h.tenant_id.clone(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::{AppCaller, UserCaller};
    use crate::secret::BearerToken;
    use std::sync::Arc;

    fn user(scopes: &[&str]) -> Caller {
        Caller::User(Arc::new(UserCaller {
            tenant_id: "t".into(),
            object_id: "o".into(),
            upn: None,
            client_app_id: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            token: BearerToken::new("x"),
            expires_at: 0,
        }))
    }

    const MAPPED_APP: &str = "33333333-3333-3333-3333-333333333333";

    fn policy() -> CallerPolicy {
        CallerPolicy {
            required_scope: "Sync.Trigger".into(),
            required_app_role: Some("Sync.Trigger.All".into()),
            apps: HashMap::from([(
                MAPPED_APP.to_string(),
                ServiceIdentityRef {
                    name: "bot".into(),
                    tenant_id: "t".into(),
                },
            )]),
        }
    }

    fn app(tenant: &str, app_id: &str, roles: &[&str]) -> Caller {
        Caller::App(AppCaller {
            tenant_id: tenant.into(),
            app_id: Some(app_id.into()),
            object_id: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            expires_at: 0,
        })
    }

    #[test]
    fn a_user_with_the_scope_may_call() {
        assert!(policy()
            .authorize(&user(&["User.Read", "Sync.Trigger"]))
            .is_ok());
    }

    #[test]
    fn a_scope_is_matched_whole_not_as_a_prefix() {
        assert!(matches!(
            policy().authorize(&user(&["Sync.Trigger.Extra", "Sync"])),
            Err(GatewayError::InsufficientScope { .. })
        ));
    }

    #[test]
    fn an_unmapped_app_only_caller_is_refused() {
        let unmapped = app(
            "t",
            "44444444-4444-4444-4444-444444444444",
            &["Sync.Trigger.All"],
        );
        assert!(matches!(
            policy().authorize(&unmapped),
            Err(GatewayError::AppOnlyCaller)
        ));
    }

    #[test]
    fn a_mapped_app_with_the_role_acts_as_its_service_identity() {
        let caller = app("t", &MAPPED_APP.to_uppercase(), &["Sync.Trigger.All"]);
        match policy().authorize(&caller) {
            Ok(ActingIdentity::Service(s)) => assert_eq!(&*s.name, "bot"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_mapped_app_without_the_role_is_refused() {
        assert!(matches!(
            policy().authorize(&app("t", MAPPED_APP, &["Other.Role"])),
            Err(GatewayError::InsufficientRole { .. })
        ));
    }

    #[test]
    fn a_mapped_app_id_from_another_tenant_is_refused() {
        assert!(matches!(
            policy().authorize(&app("other-tenant", MAPPED_APP, &["Sync.Trigger.All"])),
            Err(GatewayError::AppOnlyCaller)
        ));
    }
}
