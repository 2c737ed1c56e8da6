//! The client-credentials grant (`grant_type=client_credentials`, RFC 6749 §4.4): the gateway's
//! application asking for its own app-only Graph token. Entra's rules: the only scope is a
//! resource's `/.default` (AADSTS1002012 otherwise, AADSTS500011 for a resource the tenant
//! does not have); the token carries the application permissions an administrator of the
//! tenant consented to, in `roles` (none consented: no `roles` claim), and no `scp`. Whether
//! the application is in the tenant at all is the client check's (`token.rs`), as for every
//! grant.

use std::sync::atomic::Ordering;

use serde_json::{json, Map, Value};

use super::super::options::AppConsent;
use super::errors::AadError;
use super::form::Form;
use super::grant::injected_failure;
use super::state::{derived_guid, issuer_v1, now_unix, random_b64url, EntraState};

/// The client-credentials grant type.
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";

/// `grant_type=client_credentials` at `tenant`'s token endpoint, the client already
/// authenticated; `assertion` says whether it did so with a client assertion (certificate or
/// federated token) rather than a secret, which the token's `appidacr` records.
pub(super) async fn client_credentials_grant(
    state: &EntraState,
    tenant: &str,
    form: &Form,
    assertion: bool,
) -> Result<Value, AadError> {
    let scope = form
        .get("scope")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| AadError::missing("scope"))?;
    let resource = match scope.split_whitespace().collect::<Vec<_>>().as_slice() {
        [one] => one.strip_suffix("/.default"),
        _ => None,
    }
    .ok_or_else(|| {
        AadError::new(
            400,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows \
                 must have a scope value with /.default suffixed to the resource identifier \
                 (application ID URI)."
            ),
        )
    })?;
    if resource != state.graph_resource {
        return Err(AadError::new(
            400,
            "invalid_resource",
            500011,
            format!(
                "The resource principal named {resource} was not found in the tenant named \
                 {tenant}. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant. You \
                 might have sent your authentication request to the wrong tenant."
            ),
        ));
    }
    // The client check already refused an application that is not in the tenant.
    let roles = match state.app_consent(tenant) {
        AppConsent::Granted(roles) => roles,
        AppConsent::NotInTenant => Vec::new(),
    };
    injected_failure(state, None).await?;
    let body = app_token_response(state, tenant, &roles, assertion);
    state.app_tokens.fetch_add(1, Ordering::SeqCst);
    Ok(body)
}

/// A v1 app-only Graph token for the gateway's application in `tenant` (`idtyp: app`, the
/// service principal as `oid` and `sub`, `roles` when any were consented) and its response.
fn app_token_response(
    state: &EntraState,
    tenant: &str,
    roles: &[String],
    assertion: bool,
) -> Value {
    let now = now_unix();
    let lifetime = i64::try_from(state.graph_token_lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    // The application's service principal in this tenant: stable per tenant and application.
    let sp = derived_guid(
        "service-principal",
        &format!("{tenant}:{}", state.client_id),
    );
    let mut c = Map::new();
    c.insert("aud".into(), json!(state.graph_resource));
    c.insert("iss".into(), json!(issuer_v1(tenant)));
    c.insert("iat".into(), json!(now));
    c.insert("nbf".into(), json!(now));
    c.insert("exp".into(), json!(now.saturating_add(lifetime)));
    c.insert("appid".into(), json!(state.client_id));
    // 1: a secret; 2: a certificate or federated assertion.
    c.insert("appidacr".into(), json!(if assertion { "2" } else { "1" }));
    c.insert("idp".into(), json!(issuer_v1(tenant)));
    c.insert("idtyp".into(), json!("app"));
    c.insert("oid".into(), json!(sp));
    if !roles.is_empty() {
        c.insert("roles".into(), json!(roles));
    }
    c.insert("sub".into(), json!(sp));
    c.insert("tid".into(), json!(tenant));
    c.insert("uti".into(), json!(random_b64url(16)));
    c.insert("ver".into(), json!("1.0"));
    let access_token = state.sign_active(&Value::Object(c));
    // Entra's answer to this grant names no scope and carries no refresh or ID token.
    json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    })
}

#[cfg(test)]
mod tests {
    use super::super::super::keys::unverified_claims;
    use super::super::test_support::{error_code, post_token, sims, TENANT};
    use super::*;
    use crate::sim::{PERMISSION_READ, PERMISSION_READ_WRITE};

    fn form(scope: &str) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", GRANT_CLIENT_CREDENTIALS.to_string()),
            ("client_id", "gw-client-id".to_string()),
            ("client_secret", "gw-secret-value".to_string()),
            ("scope", scope.to_string()),
        ]
    }

    #[actix_rt::test]
    async fn issues_an_app_only_token_carrying_the_consented_application_permission() {
        let s = sims().await;
        let (status, _, body) =
            post_token(&s, &form(&format!("{}/.default", s.entra.graph_resource()))).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("refresh_token").is_none() && body.get("scope").is_none());
        let claims = unverified_claims(body["access_token"].as_str().unwrap()).unwrap();
        assert_eq!(claims["idtyp"], "app");
        assert_eq!(claims["appid"], "gw-client-id");
        assert_eq!(claims["appidacr"], "1");
        assert_eq!(claims["roles"], json!([PERMISSION_READ_WRITE]));
        assert!(claims.get("scp").is_none());
        assert_eq!(s.entra.app_tokens(), 1);
        let seen = s.entra.token_request_log().pop().unwrap();
        assert_eq!(
            (seen.grant_type.as_str(), seen.status),
            ("client_credentials", 200)
        );
    }

    #[actix_rt::test]
    async fn a_scope_other_than_the_graph_resources_default_is_refused_as_entra_does() {
        let s = sims().await;
        let named = format!("{}/{PERMISSION_READ_WRITE}", s.entra.graph_resource());
        let (status, _, body) = post_token(&s, &form(&named)).await;
        assert_eq!((status, error_code(&body)), (400, 1002012));
        assert_eq!(body["error"], "invalid_scope");
        let (status, _, body) = post_token(&s, &form("https://graph.microsoft.us/.default")).await;
        assert_eq!((status, error_code(&body)), (400, 500011));
        assert_eq!(s.entra.app_tokens(), 0);
    }

    #[actix_rt::test]
    async fn an_application_not_consented_in_the_tenant_is_refused_700016() {
        let s = sims().await;
        s.entra.set_app_consent(TENANT, AppConsent::NotInTenant);
        let (status, _, body) =
            post_token(&s, &form(&format!("{}/.default", s.entra.graph_resource()))).await;
        assert_eq!((status, error_code(&body)), (400, 700016));
        assert_eq!(body["error"], "unauthorized_client");
        assert_eq!(s.entra.app_tokens(), 0);
    }

    #[actix_rt::test]
    async fn the_token_carries_only_what_the_tenant_consented() {
        let s = sims().await;
        let scope = format!("{}/.default", s.entra.graph_resource());
        s.entra
            .set_app_consent(TENANT, AppConsent::Granted(vec![PERMISSION_READ.into()]));
        let (_, _, body) = post_token(&s, &form(&scope)).await;
        let claims = unverified_claims(body["access_token"].as_str().unwrap()).unwrap();
        assert_eq!(claims["roles"], json!([PERMISSION_READ]));
        s.entra
            .set_app_consent(TENANT, AppConsent::Granted(Vec::new()));
        let (status, _, body) = post_token(&s, &form(&scope)).await;
        assert_eq!(status, 200);
        let claims = unverified_claims(body["access_token"].as_str().unwrap()).unwrap();
        assert!(claims.get("roles").is_none());
    }
}
