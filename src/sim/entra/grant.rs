//! What the grants of the token endpoint share: the scopes a request may name and the consent
//! they need ([`Scopes`]), the user a grant speaks for, the injected failures, and the token
//! response (a v1 Graph access token, an ID token on `openid`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::errors::AadError;
use super::state::{issuer_v1, now_unix, random_b64url, EntraState, Failure};

/// The Graph permission that allows reading the Autopilot settings.
pub use crate::sim::options::PERMISSION_READ;
/// The Graph permission the sync action needs.
pub use crate::sim::options::PERMISSION_READ_WRITE;
/// Permissions the gateway's app registration has been granted on the simulated Graph.
const PERMISSIONS: [&str; 2] = [PERMISSION_READ_WRITE, PERMISSION_READ];
/// Scopes that name no resource and are always allowed alongside a resource's scopes.
const OIDC_SCOPES: [&str; 4] = ["offline_access", "openid", "profile", "email"];

/// What a valid `scope` parameter asks for.
#[derive(Clone)]
pub(super) struct Scopes {
    /// The Graph permissions granted, bare (without the resource prefix).
    pub(super) permissions: Vec<&'static str>,
    /// `offline_access`: a refresh token is issued too.
    pub(super) offline_access: bool,
    /// `openid`: an ID token is issued too.
    pub(super) openid: bool,
}

/// The `scope` parameter checked: OIDC scopes, and permissions on the Graph resource named or
/// by `.default` (every consented one); AADSTS70011 otherwise.
pub(super) fn parse_scopes(state: &EntraState, scope: &str) -> Result<Scopes, AadError> {
    let invalid = |s: &str| {
        AadError::new(
            400,
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope \
                 '{s}' is not valid."
            ),
        )
    };
    let prefix = format!("{}/", state.graph_resource);
    let mut out = Scopes {
        permissions: Vec::new(),
        offline_access: false,
        openid: false,
    };
    let mut default_scope = false;
    for s in scope.split_whitespace() {
        if OIDC_SCOPES.contains(&s) {
            out.offline_access |= s == "offline_access";
            out.openid |= s == "openid";
            continue;
        }
        let Some(perm) = s.strip_prefix(&prefix) else {
            return Err(invalid(s));
        };
        if perm == ".default" {
            // `.default` = every permission consented for the app on that resource.
            default_scope = true;
            continue;
        }
        match PERMISSIONS.iter().find(|p| **p == perm) {
            Some(p) if !out.permissions.contains(p) => out.permissions.push(p),
            Some(_) => {}
            None => return Err(invalid(s)),
        }
    }
    if default_scope {
        if !out.permissions.is_empty() {
            // Entra refuses `.default` mixed with named scopes of the same resource.
            return Err(invalid(scope));
        }
        out.permissions = PERMISSIONS
            .iter()
            .copied()
            .filter(|p| state.consented.iter().any(|c| c == p))
            .collect();
    }
    if out.permissions.is_empty() {
        return Err(invalid(scope));
    }
    Ok(out)
}

/// The user an OBO assertion (or a session) speaks for.
#[derive(Debug, Clone)]
pub(super) struct AssertedUser {
    /// `tid`.
    pub(super) tid: String,
    /// `oid`.
    pub(super) oid: Option<String>,
    /// `upn`, `preferred_username` or `unique_name`.
    pub(super) upn: Option<String>,
}

/// AADSTS65001: the app has no consent for what it asked.
pub(super) fn consent_required(state: &EntraState) -> AadError {
    AadError::new(
        400,
        "invalid_grant",
        65001,
        format!(
            "The user or administrator has not consented to use the application with ID \
             '{}'. Send an interactive authorization request for this user and resource.",
            state.client_id
        ),
    )
    .with("suberror", json!("consent_required"))
}

/// Applies the failure configured for `oid` (else the global one), if any.
pub(super) async fn injected_failure(
    state: &EntraState,
    oid: Option<&str>,
) -> Result<(), AadError> {
    match state.failure_for(oid) {
        None => Ok(()),
        Some(Failure::Slow(d)) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Some(Failure::StepUp { claims }) => Err(AadError::new(
            400,
            "invalid_grant",
            50076,
            format!(
                "Due to a configuration change made by your administrator, or because you moved \
                 to a new location, you must use multi-factor authentication to access '{}'.",
                state.graph_resource
            ),
        )
        .with("suberror", json!("basic_action"))
        .with("claims", json!(claims))),
        Some(Failure::ConsentRequired) => Err(consent_required(state)),
        Some(Failure::Throttle { retry_after_secs }) => Err(AadError::new(
            429,
            "temporarily_unavailable",
            90055,
            "There are too many incoming requests. Please retry later.",
        )
        .retry_after(retry_after_secs)),
        Some(Failure::ServerError) => Err(AadError::new(
            500,
            "server_error",
            50000,
            "There was an error issuing a token or an issue with our sign-in service.",
        )),
    }
}

/// Signs a v1 Graph access token for `user` and builds the token response, with
/// `refresh_token` when the caller issued one (the sessions do, on `offline_access`) and an ID
/// token when `openid` was asked.
pub(super) fn token_response(
    state: &EntraState,
    user: &AssertedUser,
    scopes: &Scopes,
    refresh_token: Option<String>,
) -> Value {
    let now = now_unix();
    let lifetime = i64::try_from(state.graph_token_lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    let oid = user.oid.clone().unwrap_or_default();
    let mut c = Map::new();
    c.insert("aud".into(), json!(state.graph_resource));
    c.insert("iss".into(), json!(issuer_v1(&user.tid)));
    c.insert("iat".into(), json!(now));
    c.insert("nbf".into(), json!(now));
    c.insert("exp".into(), json!(now.saturating_add(lifetime)));
    c.insert("appid".into(), json!(state.client_id));
    c.insert("appidacr".into(), json!("1"));
    c.insert("idtyp".into(), json!("user"));
    c.insert("oid".into(), json!(oid));
    // Graph tokens carry bare permission names, without the resource prefix.
    c.insert("scp".into(), json!(scopes.permissions.join(" ")));
    let sub = URL_SAFE_NO_PAD.encode(Sha256::digest(
        format!("{oid}:{}", state.graph_resource).as_bytes(),
    ));
    c.insert("sub".into(), json!(sub));
    c.insert("tid".into(), json!(user.tid));
    if let Some(upn) = &user.upn {
        c.insert("upn".into(), json!(upn));
        c.insert("unique_name".into(), json!(upn));
    }
    c.insert("uti".into(), json!(random_b64url(16)));
    c.insert("ver".into(), json!("1.0"));
    let access_token = state.sign_active(&Value::Object(c));
    let granted: Vec<String> = scopes
        .permissions
        .iter()
        .map(|p| format!("{}/{p}", state.graph_resource))
        .collect();
    let mut body = json!({
        "token_type": "Bearer",
        "scope": granted.join(" "),
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    });
    if let Some(rt) = refresh_token {
        body["refresh_token"] = json!(rt);
    }
    if scopes.openid {
        body["id_token"] = json!(id_token(state, user, now, lifetime));
    }
    body
}

/// A v2 ID token naming `user`, for the gateway's application.
fn id_token(state: &EntraState, user: &AssertedUser, now: i64, lifetime: i64) -> String {
    let oid = user.oid.clone().unwrap_or_default();
    let mut c = Map::new();
    c.insert("aud".into(), json!(state.client_id));
    c.insert("iss".into(), json!(state.issuer_v2(&user.tid)));
    c.insert("iat".into(), json!(now));
    c.insert("nbf".into(), json!(now));
    c.insert("exp".into(), json!(now.saturating_add(lifetime)));
    c.insert("oid".into(), json!(oid));
    c.insert("tid".into(), json!(user.tid));
    c.insert(
        "sub".into(),
        json!(URL_SAFE_NO_PAD.encode(Sha256::digest(
            format!("{oid}:{}", state.client_id).as_bytes()
        ))),
    );
    if let Some(upn) = &user.upn {
        c.insert("preferred_username".into(), json!(upn));
        c.insert("name".into(), json!(upn));
    }
    c.insert("ver".into(), json!("2.0"));
    state.sign_active(&Value::Object(c))
}
