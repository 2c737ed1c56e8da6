//! Caller tokens for the gateway's own API, as Entra would issue them to a client: their
//! description ([`TokenSpec`]), their claims (v1 or v2), and minting them, in process for tests
//! and over HTTP for a developer running `dev` (`POST /_sim/tokens`).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::errors::{AadError, Ctx};
use super::state::{derived_guid, issuer_v1, now_unix, random_b64url, EntraState};

/// The client application that `TokenSpec::user` tokens were issued to (any fixed GUID).
pub const DEFAULT_CLIENT_APP_ID: &str = "4e1c7b0a-8f6d-4c5e-9b2a-3d7f1e6a9c21";

/// Access-token format version; follows the API app's `accessTokenAcceptedVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    /// `iss = https://sts.windows.net/{tid}/`, `ver = "1.0"`, caller app in `appid`.
    V1,
    /// `iss = {base}/{tid}/v2.0`, `ver = "2.0"`, caller app in `azp`.
    V2,
}

/// Describes a caller token, as Entra would issue it to a client for the gateway's API.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// `tid`.
    pub tenant_id: String,
    /// `oid`: the user's (or service principal's) object id.
    pub object_id: String,
    /// `upn` (and `preferred_username` on v2, `unique_name` on v1); users only.
    pub upn: Option<String>,
    /// Delegated scopes (`scp`, space-separated); omitted for app-only tokens.
    pub scopes: Vec<String>,
    /// App roles (`roles`, an array); omitted when empty.
    pub roles: Vec<String>,
    /// App-only token: no `scp`, `idtyp = "app"`.
    pub app_only: bool,
    /// The client application the token was issued to (`appid` / `azp`).
    pub app_id: String,
    /// v1 or v2 token format.
    pub version: TokenVersion,
    /// `aud`; `None` means the first of `SimOptions::api_audiences`.
    pub audience: Option<String>,
    /// Lifetime from issuance (`exp - iat`).
    pub lifetime: Duration,
    /// `nbf` override (unix seconds); default is issuance time.
    pub not_before: Option<i64>,
    /// `exp` override (unix seconds); overrides `lifetime` and may be in the past.
    pub expires_at: Option<i64>,
}

impl TokenSpec {
    /// A v2 user token: scopes `["Sync.Trigger"]`, 1 h, upn `<oid>@example.test`, issued to a
    /// fixed client application.
    pub fn user(tenant_id: impl Into<String>, object_id: impl Into<String>) -> Self {
        let object_id = object_id.into();
        TokenSpec {
            tenant_id: tenant_id.into(),
            upn: Some(format!("{object_id}@example.test")),
            object_id,
            scopes: vec!["Sync.Trigger".to_string()],
            roles: Vec::new(),
            app_only: false,
            app_id: DEFAULT_CLIENT_APP_ID.to_string(),
            version: TokenVersion::V2,
            audience: None,
            lifetime: Duration::from_secs(3600),
            not_before: None,
            expires_at: None,
        }
    }

    /// A v2 app-only token (client credentials): no `scp`, no roles, `idtyp = "app"`, and `oid`
    /// = the app's service-principal id (a GUID derived from `app_id`, stable across runs).
    pub fn app(tenant_id: impl Into<String>, app_id: impl Into<String>) -> Self {
        let app_id = app_id.into();
        TokenSpec {
            tenant_id: tenant_id.into(),
            object_id: derived_guid("service-principal", &app_id),
            upn: None,
            scopes: Vec::new(),
            roles: Vec::new(),
            app_only: true,
            app_id,
            version: TokenVersion::V2,
            audience: None,
            lifetime: Duration::from_secs(3600),
            not_before: None,
            expires_at: None,
        }
    }
}

/// The claims a caller token of `spec` carries (v1: `iss` sts.windows.net, `ver` "1.0",
/// `appid`; v2: `iss` `{base}/{tid}/v2.0`, `ver` "2.0", `azp`).
pub(super) fn claims_for(state: &EntraState, spec: &TokenSpec) -> Value {
    let now = now_unix();
    let lifetime = i64::try_from(spec.lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    let exp = spec.expires_at.unwrap_or(now.saturating_add(lifetime));
    // A token that expired in the past was also issued in the past.
    let iat = now.min(exp.saturating_sub(lifetime));
    let nbf = spec.not_before.unwrap_or(iat);
    let aud = spec
        .audience
        .clone()
        .unwrap_or_else(|| state.api_audiences[0].clone());
    let mut c = Map::new();
    c.insert("aud".into(), json!(aud));
    match spec.version {
        TokenVersion::V1 => {
            c.insert("iss".into(), json!(issuer_v1(&spec.tenant_id)));
        }
        TokenVersion::V2 => {
            c.insert("iss".into(), json!(state.issuer_v2(&spec.tenant_id)));
        }
    }
    c.insert("iat".into(), json!(iat));
    c.insert("nbf".into(), json!(nbf));
    c.insert("exp".into(), json!(exp));
    match spec.version {
        TokenVersion::V1 => {
            c.insert("appid".into(), json!(spec.app_id));
            c.insert("appidacr".into(), json!("1"));
        }
        TokenVersion::V2 => {
            c.insert("azp".into(), json!(spec.app_id));
            c.insert("azpacr".into(), json!("1"));
        }
    }
    if spec.app_only {
        c.insert("idtyp".into(), json!("app"));
    }
    c.insert("oid".into(), json!(spec.object_id));
    if !spec.roles.is_empty() {
        c.insert("roles".into(), json!(spec.roles));
    }
    if !spec.app_only && !spec.scopes.is_empty() {
        c.insert("scp".into(), json!(spec.scopes.join(" ")));
    }
    // `sub` is pairwise: unique per user *and* app, so never a user id.
    let sub = URL_SAFE_NO_PAD.encode(Sha256::digest(
        format!("{}:{}", spec.object_id, spec.app_id).as_bytes(),
    ));
    c.insert("sub".into(), json!(sub));
    c.insert("tid".into(), json!(spec.tenant_id));
    if !spec.app_only {
        if let Some(upn) = &spec.upn {
            c.insert("upn".into(), json!(upn));
            match spec.version {
                TokenVersion::V1 => c.insert("unique_name".into(), json!(upn)),
                TokenVersion::V2 => c.insert("preferred_username".into(), json!(upn)),
            };
        }
    }
    c.insert("uti".into(), json!(random_b64url(16)));
    let ver = match spec.version {
        TokenVersion::V1 => "1.0",
        TokenVersion::V2 => "2.0",
    };
    c.insert("ver".into(), json!(ver));
    Value::Object(c)
}

/// A caller token of `spec`, signed with the active key.
pub(super) fn mint(state: &EntraState, spec: &TokenSpec) -> String {
    state.sign_active(&claims_for(state, spec))
}

/// The body of `POST /_sim/tokens`; what it leaves out is as in [`TokenSpec::user`].
#[derive(Deserialize)]
struct MintRequest {
    tenant_id: String,
    object_id: String,
    upn: Option<String>,
    scopes: Option<Vec<String>>,
    roles: Option<Vec<String>>,
    lifetime_seconds: Option<u64>,
    version: Option<String>,
    audience: Option<String>,
}

/// `POST /_sim/tokens`: lets a developer running `dev` mint caller tokens with curl.
pub(super) async fn sim_mint(
    state: web::Data<EntraState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let ctx = Ctx::new(&req);
    let bad = |msg: String| {
        ctx.response(StatusCode::BAD_REQUEST)
            .json(json!({"error": "invalid_request", "error_description": msg}))
    };
    let r: MintRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("invalid JSON body: {e}")),
    };
    if !state.knows_tenant(&r.tenant_id) {
        return AadError::tenant_not_found("invalid_tenant", &r.tenant_id)
            .into_response(&ctx, &state.base);
    }
    let mut spec = TokenSpec::user(r.tenant_id, r.object_id);
    if let Some(upn) = r.upn {
        spec.upn = Some(upn);
    }
    if let Some(scopes) = r.scopes {
        spec.scopes = scopes;
    }
    if let Some(roles) = r.roles {
        spec.roles = roles;
    }
    if let Some(s) = r.lifetime_seconds {
        spec.lifetime = Duration::from_secs(s);
    }
    spec.audience = r.audience;
    spec.version = match r.version.as_deref() {
        None | Some("v2") | Some("2.0") => TokenVersion::V2,
        Some("v1") | Some("1.0") => TokenVersion::V1,
        Some(other) => return bad(format!("unknown version '{other}', expected v1 or v2")),
    };
    let token = mint(&state, &spec);
    ctx.response(StatusCode::OK).json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": spec.lifetime.as_secs(),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{obo_form, post_token, sims, TENANT};
    use super::*;

    #[actix_rt::test]
    async fn claims_follow_token_version() {
        let s = sims().await;
        let v2 = s.entra.claims_for(&TokenSpec::user(TENANT, "u1"));
        assert_eq!(v2["ver"], "2.0");
        assert_eq!(v2["azp"], DEFAULT_CLIENT_APP_ID);
        assert_eq!(v2["aud"], "gw-client-id");
        assert_eq!(v2["scp"], "Sync.Trigger");
        assert_eq!(v2["preferred_username"], "u1@example.test");
        assert!(v2.get("xms_cc").is_none() && v2.get("idtyp").is_none());
        let mut spec = TokenSpec::user(TENANT, "u1");
        spec.version = TokenVersion::V1;
        let v1 = s.entra.claims_for(&spec);
        assert_eq!(
            v1["iss"],
            json!(format!("https://sts.windows.net/{TENANT}/"))
        );
        assert_eq!(v1["ver"], "1.0");
        assert_eq!(v1["appid"], DEFAULT_CLIENT_APP_ID);
        let app = s.entra.claims_for(&TokenSpec::app(TENANT, "some-app"));
        assert_eq!(app["idtyp"], "app");
        assert!(app.get("scp").is_none() && app.get("upn").is_none());
        let mut expired = TokenSpec::user(TENANT, "u1");
        expired.expires_at = Some(now_unix() - 60);
        let c = s.entra.claims_for(&expired);
        assert!(c["iat"].as_i64().unwrap() < c["exp"].as_i64().unwrap());
    }

    #[actix_rt::test]
    async fn mint_endpoint_and_stop() {
        let s = sims().await;
        let c = reqwest::Client::new();
        let r: Value = c
            .post(format!("{}/_sim/tokens", s.entra.base_url()))
            .json(&json!({"tenant_id": TENANT, "object_id": "u9", "version": "v1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let t = r["access_token"].as_str().unwrap();
        assert!(s.entra.issued_secrets().iter().any(|x| x == t));
        assert!(s
            .entra
            .issued_secrets()
            .iter()
            .any(|x| x == "gw-secret-value"));
        let (status, _, _) = post_token(&s, &obo_form(&s, t)).await;
        assert_eq!(status, 200);

        s.entra.stop().await;
        // A fresh client: pooled connections to a stopped server fail differently.
        let addr = s.entra.base_url().trim_start_matches("http://").to_string();
        assert!(std::net::TcpStream::connect(addr).is_err());
        let err = reqwest::Client::new()
            .get(format!(
                "{}/{TENANT}/v2.0/.well-known/openid-configuration",
                s.entra.base_url()
            ))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }
}
