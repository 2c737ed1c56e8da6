//! Helpers the tests of the simulated Entra's files share: two tenants, simulators started for
//! them, and a token request (an on-behalf-of form, posted to the token endpoint).

use serde_json::Value;

use super::super::{SimOptions, Simulators};
use super::grant::PERMISSION_READ_WRITE;
use super::token::GRANT_JWT_BEARER;

/// The tenant the helpers post to.
pub(super) const TENANT: &str = "11111111-2222-3333-4444-555555555555";
/// A second known tenant.
pub(super) const OTHER_TENANT: &str = "99999999-2222-3333-4444-555555555555";

/// Simulators knowing both tenants, with the gateway registered as `gw-client-id`.
pub(super) async fn sims() -> Simulators {
    Simulators::start(SimOptions::new(
        vec![TENANT.to_string(), OTHER_TENANT.to_string()],
        "gw-client-id",
        "gw-secret-value",
        vec!["gw-client-id".to_string(), "api://sync-gateway".to_string()],
    ))
    .await
    .unwrap()
}

/// A valid on-behalf-of form for `assertion`, authenticated by the client secret.
pub(super) fn obo_form(sims: &Simulators, assertion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", GRANT_JWT_BEARER.to_string()),
        ("client_id", "gw-client-id".to_string()),
        ("client_secret", "gw-secret-value".to_string()),
        ("assertion", assertion.to_string()),
        (
            "scope",
            format!("{}/{PERMISSION_READ_WRITE}", sims.entra.graph_resource()),
        ),
        ("requested_token_use", "on_behalf_of".to_string()),
    ]
}

/// Posts `form` to [`TENANT`]'s token endpoint: status, headers, JSON body.
pub(super) async fn post_token(
    sims: &Simulators,
    form: &[(&'static str, String)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "{}/{TENANT}/oauth2/v2.0/token",
            sims.entra.base_url()
        ))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap())
}

/// The first AADSTS code of an error body.
pub(super) fn error_code(body: &Value) -> i64 {
    body["error_codes"][0].as_i64().unwrap()
}
