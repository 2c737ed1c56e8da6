//! Step 2 of the lifecycle: may this caller ask for this action?

use crate::caller::{Caller, UserCaller};
use crate::problem::GatewayError;

/// Who may call the action.
#[derive(Debug, Clone)]
pub struct CallerPolicy {
    /// The delegated scope a user token must carry in `scp`.
    pub required_scope: String,
}

impl CallerPolicy {
    /// The user the action will act for, or why the caller may not ask.
    ///
    /// The sync action accepts only delegated permissions, so an app-only caller cannot be
    /// exchanged on behalf of: it is refused (403) rather than failing later at Entra.
    pub fn authorize<'a>(&self, caller: &'a Caller) -> Result<&'a UserCaller, GatewayError> {
        match caller {
            Caller::App(_) => Err(GatewayError::AppOnlyCaller),
            Caller::User(u) if u.scopes.contains(&self.required_scope) => Ok(u),
            Caller::User(_) => Err(GatewayError::InsufficientScope {
                required: self.required_scope.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::AppCaller;
    use crate::secret::BearerToken;

    fn user(scopes: &[&str]) -> Caller {
        Caller::User(UserCaller {
            tenant_id: "t".into(),
            object_id: "o".into(),
            upn: None,
            client_app_id: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            token: BearerToken::new("x"),
            expires_at: 0,
        })
    }

    fn policy() -> CallerPolicy {
        CallerPolicy {
            required_scope: "Sync.Trigger".into(),
        }
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
    fn an_app_only_caller_is_refused() {
        let app = Caller::App(AppCaller {
            tenant_id: "t".into(),
            app_id: None,
            object_id: None,
            roles: vec!["Sync.Trigger".into()],
            expires_at: 0,
        });
        assert!(matches!(
            policy().authorize(&app),
            Err(GatewayError::AppOnlyCaller)
        ));
    }
}
