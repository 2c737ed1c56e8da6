//! OpenID discovery (v1 `/.well-known/openid-configuration`, v2 `/v2.0/...`) and the JWKS
//! endpoints (`/discovery/keys`, `/discovery/v2.0/keys`), for known tenants and the
//! multi-tenant aliases.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::errors::{AadError, Ctx};
use super::state::{issuer_v1, EntraState};

/// Tenants Entra serves discovery for without being real tenants (multi-tenant metadata).
const MULTI_TENANT_ALIASES: [&str; 2] = ["common", "organizations"];

/// A metadata answer, cacheable for a day as Entra's are.
fn metadata_response(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("cache-control", "max-age=86400, private"))
        .insert_header(("access-control-allow-origin", "*"))
        .json(body)
}

/// Known tenants plus the multi-tenant aliases, whose metadata carries a `{tenantid}` template.
fn metadata_tenant(state: &EntraState, tenant: &str) -> Option<(String, bool)> {
    if state.knows_tenant(tenant) {
        Some((tenant.to_string(), false))
    } else if MULTI_TENANT_ALIASES.contains(&tenant) {
        Some(("{tenantid}".to_string(), true))
    } else {
        None
    }
}

/// The host of the Graph resource URI, as `msgraph_host` names it.
fn msgraph_host(graph_resource: &str) -> String {
    graph_resource
        .split_once("://")
        .map_or(graph_resource, |(_, rest)| rest)
        .to_string()
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub(super) async fn discovery_v2(
    state: web::Data<EntraState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    state.discovery_requests.fetch_add(1, Ordering::SeqCst);
    let tenant = path.into_inner();
    let ctx = Ctx::new(&req);
    let Some((iss_tenant, alias)) = metadata_tenant(&state, &tenant) else {
        return AadError::tenant_not_found("invalid_tenant", &tenant)
            .into_response(&ctx, &state.base);
    };
    let b = &state.base;
    metadata_response(json!({
        "token_endpoint": format!("{b}/{tenant}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{b}/{tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{b}/{iss_tenant}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": format!("{}/oidc/userinfo", state.graph_resource),
        "authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{b}/{tenant}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
            "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
            "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{b}/{tenant}/kerberos"),
        "tenant_region_scope": if alias { Value::Null } else { json!("NA") },
        "cloud_instance_name": state.cloud_instance_name,
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": msgraph_host(&state.graph_resource),
        "rbac_url": "https://pas.windows.net",
    }))
}

/// `GET /{tenant}/.well-known/openid-configuration`: v1 metadata, issuer on sts.windows.net.
pub(super) async fn discovery_v1(
    state: web::Data<EntraState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    state.discovery_requests.fetch_add(1, Ordering::SeqCst);
    let tenant = path.into_inner();
    let ctx = Ctx::new(&req);
    let Some((iss_tenant, alias)) = metadata_tenant(&state, &tenant) else {
        return AadError::tenant_not_found("invalid_tenant", &tenant)
            .into_response(&ctx, &state.base);
    };
    let b = &state.base;
    metadata_response(json!({
        "token_endpoint": format!("{b}/{tenant}/oauth2/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{b}/{tenant}/discovery/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "scopes_supported": ["openid"],
        // v1 issuer is host independent: Entra always names sts.windows.net.
        "issuer": issuer_v1(&iss_tenant),
        "microsoft_multi_refresh_token": true,
        "authorization_endpoint": format!("{b}/{tenant}/oauth2/authorize"),
        "device_authorization_endpoint": format!("{b}/{tenant}/oauth2/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{b}/{tenant}/oauth2/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
            "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
            "amr", "nonce", "email", "given_name", "family_name", "nickname"],
        "check_session_iframe": format!("{b}/{tenant}/oauth2/checksession"),
        "userinfo_endpoint": format!("{b}/{tenant}/openid/userinfo"),
        "kerberos_endpoint": format!("{b}/{tenant}/kerberos"),
        "tenant_region_scope": if alias { Value::Null } else { json!("NA") },
        "cloud_instance_name": state.cloud_instance_name,
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": msgraph_host(&state.graph_resource),
        "rbac_url": "https://pas.windows.net",
    }))
}

/// The JWKS; v2 keys carry an `issuer` with the literal `{tenantid}` template. Like Entra's,
/// no key has an `alg` member.
fn jwks(state: &EntraState, tenant: &str, req: &HttpRequest, v2: bool) -> HttpResponse {
    state.jwks_requests.fetch_add(1, Ordering::SeqCst);
    let ctx = Ctx::new(req);
    if metadata_tenant(state, tenant).is_none() {
        return AadError::tenant_not_found("invalid_tenant", tenant)
            .into_response(&ctx, &state.base);
    }
    let keys: Vec<Value> = state
        .keys
        .published()
        .iter()
        .map(|k| {
            let mut m = Map::new();
            m.insert("kty".into(), json!("RSA"));
            m.insert("use".into(), json!("sig"));
            m.insert("kid".into(), json!(k.kid));
            m.insert("x5t".into(), json!(k.x5t));
            m.insert("n".into(), json!(k.n));
            m.insert("e".into(), json!(k.e));
            m.insert("x5c".into(), json!([k.x5c]));
            if v2 {
                m.insert(
                    "cloud_instance_name".into(),
                    json!(state.cloud_instance_name),
                );
                m.insert(
                    "issuer".into(),
                    json!(format!("{}/{{tenantid}}/v2.0", state.base)),
                );
            }
            Value::Object(m)
        })
        .collect();
    metadata_response(json!({ "keys": keys }))
}

/// `GET /{tenant}/discovery/v2.0/keys`.
pub(super) async fn jwks_v2(
    state: web::Data<EntraState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    jwks(&state, &path.into_inner(), &req, true)
}

/// `GET /{tenant}/discovery/keys`.
pub(super) async fn jwks_v1(
    state: web::Data<EntraState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    jwks(&state, &path.into_inner(), &req, false)
}

#[cfg(test)]
mod tests {
    use super::super::mint::TokenSpec;
    use super::super::test_support::{error_code, sims, TENANT};
    use super::*;

    #[actix_rt::test]
    async fn discovery_and_jwks_shape() {
        let s = sims().await;
        let base = s.entra.base_url();
        let c = reqwest::Client::new();
        let v2: Value = c
            .get(format!(
                "{base}/{TENANT}/v2.0/.well-known/openid-configuration"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v2["issuer"], json!(format!("{base}/{TENANT}/v2.0")));
        assert_eq!(
            v2["jwks_uri"],
            json!(format!("{base}/{TENANT}/discovery/v2.0/keys"))
        );
        assert_eq!(
            v2["token_endpoint"],
            json!(format!("{base}/{TENANT}/oauth2/v2.0/token"))
        );
        assert_eq!(
            v2["id_token_signing_alg_values_supported"],
            json!(["RS256"])
        );
        let v1: Value = c
            .get(format!("{base}/{TENANT}/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            v1["issuer"],
            json!(format!("https://sts.windows.net/{TENANT}/"))
        );
        assert_eq!(
            v1["jwks_uri"],
            json!(format!("{base}/{TENANT}/discovery/keys"))
        );

        let unknown = c
            .get(format!(
                "{base}/not-a-tenant/v2.0/.well-known/openid-configuration"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status().as_u16(), 400);
        let body: Value = unknown.json().await.unwrap();
        assert_eq!(error_code(&body), 90002);

        let jwks: Value = c
            .get(v2["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let k = &keys[0];
        assert!(k.get("alg").is_none(), "Entra publishes no alg");
        assert_eq!(k["kty"], "RSA");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["kid"], json!(s.entra.active_kid()));
        assert!(k["x5t"].is_string() && k["n"].is_string() && k["e"] == "AQAB");
        assert_eq!(k["issuer"], json!(format!("{base}/{{tenantid}}/v2.0")));
        let v1keys: Value = c
            .get(v1["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v1keys["keys"][0].get("issuer").is_none());
        assert!(v1keys["keys"][0].get("alg").is_none());
        assert_eq!(s.entra.discovery_requests(), 3);
        assert_eq!(s.entra.jwks_requests(), 2);

        // Rotation keeps the old key published and signs with the new one.
        let old = s.entra.active_kid();
        let new = s.entra.rotate_keys();
        assert_ne!(old, new);
        let jwks: Value = c
            .get(v2["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, vec![old.as_str(), new.as_str()]);
        let t = s.entra.mint(&TokenSpec::user(TENANT, "u1"));
        assert_eq!(
            jsonwebtoken::decode_header(&t).unwrap().kid.as_deref(),
            Some(new.as_str())
        );
    }
}
