//! Delegated sessions without a user at the keyboard (reference §5): the device authorization
//! endpoint and the device-code grant (RFC 8628, with Entra's error names), and the
//! refresh-token grant with rotation; every refresh token a grant issues is minted and
//! remembered here ([`Sessions`]). Unlike real Entra, a refresh token here is single use: once
//! redeemed it is refused, so a gateway that loses the rotated token fails its tests.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::errors::{AadError, Ctx};
use super::form::{parse_form, Form};
use super::grant::{injected_failure, parse_scopes, token_response, AssertedUser, Scopes};
use super::state::{derived_guid, now_unix, random_b64url, EntraState};

/// How long a device code lives (Entra: 15 minutes).
const DEVICE_CODE_LIFETIME: i64 = 900;

/// The simulated user who signs in at the verification page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUser {
    /// `tid`; `None` = the tenant the flow was started for.
    pub tenant_id: Option<String>,
    /// `oid`.
    pub object_id: String,
    /// `preferred_username`.
    pub upn: String,
}

impl DeviceUser {
    /// A user of the flow's tenant named `upn`, with an object id derived from it.
    pub fn named(upn: impl Into<String>) -> Self {
        let upn = upn.into();
        DeviceUser {
            tenant_id: None,
            object_id: derived_guid("device-user", &upn),
            upn,
        }
    }
}

/// What the person at the browser eventually does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceOutcome {
    /// Signs in as this user and consents.
    Approve(DeviceUser),
    /// Declines: `authorization_declined`, as Entra names it.
    Deny,
    /// Declines: `access_denied`, as RFC 8628 names it (other servers).
    AccessDenied,
    /// Never finishes (`expired_token`).
    Expire,
}

/// How polls of the next device codes are answered: `slow_downs` polls get `slow_down`, then
/// `pending_polls` get `authorization_pending`, then the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceScript {
    /// Polls answered `slow_down` first.
    pub slow_downs: usize,
    /// Then polls answered `authorization_pending`.
    pub pending_polls: usize,
    /// Then this.
    pub outcome: DeviceOutcome,
}

/// A device code issued, until it expires or is redeemed.
struct DeviceGrant {
    tenant: String,
    user_code: String,
    scopes: Scopes,
    expires_at: i64,
    script: Option<DeviceScript>,
    decision: Option<DeviceOutcome>,
    redeemed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshState {
    Active,
    Used,
    Revoked,
    IdleExpired,
}

/// A refresh token issued, and whether it may still be redeemed.
struct RefreshGrant {
    tenant: String,
    user: AssertedUser,
    permissions: Vec<&'static str>,
    state: RefreshState,
    issued: u64,
}

/// The device codes and refresh tokens issued, and the script for the next device logins.
#[derive(Default)]
pub(super) struct Sessions(Mutex<Table>);

#[derive(Default)]
struct Table {
    devices: HashMap<String, DeviceGrant>,
    script: Option<DeviceScript>,
    refresh: HashMap<String, RefreshGrant>,
    next_serial: u64,
}

impl Sessions {
    fn sessions(&self) -> MutexGuard<'_, Table> {
        self.0.lock().expect("sessions lock")
    }

    /// Issues tokens for `user` (see [`token_response`]); with `offline_access`, also a refresh
    /// token, remembered here so the refresh grant can redeem it once.
    pub(super) fn issue_tokens(
        &self,
        state: &EntraState,
        tenant: &str,
        user: &AssertedUser,
        scopes: &Scopes,
    ) -> Value {
        let refresh_token = scopes.offline_access.then(|| {
            // Opaque, as Entra's are; recorded so leak scans find it.
            let rt = format!("1.SIM{}", random_b64url(96));
            state.record(&rt);
            self.register_refresh_token(&rt, tenant, user, scopes);
            rt
        });
        token_response(state, user, scopes, refresh_token)
    }

    /// Remembers a refresh token issued to `user` so the refresh grant can redeem it once.
    fn register_refresh_token(
        &self,
        token: &str,
        tenant: &str,
        user: &AssertedUser,
        scopes: &Scopes,
    ) {
        let mut s = self.sessions();
        s.next_serial += 1;
        let issued = s.next_serial;
        s.refresh.insert(
            token.to_string(),
            RefreshGrant {
                tenant: tenant.to_string(),
                user: user.clone(),
                permissions: scopes.permissions.clone(),
                state: RefreshState::Active,
                issued,
            },
        );
    }

    /// How polls of device codes issued from now on are answered.
    pub(super) fn set_device_script(&self, script: Option<DeviceScript>) {
        self.sessions().script = script;
    }

    /// The person's decision on `user_code`; false for an unknown code.
    pub(super) fn decide_device_code(&self, user_code: &str, outcome: DeviceOutcome) -> bool {
        let mut s = self.sessions();
        let found = s
            .devices
            .values_mut()
            .find(|d| d.user_code.eq_ignore_ascii_case(user_code.trim()));
        match found {
            Some(d) => {
                d.decision = Some(outcome);
                true
            }
            None => false,
        }
    }

    /// The newest unredeemed refresh token of the user `oid`.
    pub(super) fn newest_refresh_token(&self, oid: &str) -> Option<String> {
        self.sessions()
            .refresh
            .iter()
            .filter(|(_, g)| g.state == RefreshState::Active && g.user.oid.as_deref() == Some(oid))
            .max_by_key(|(_, g)| g.issued)
            .map(|(t, _)| t.clone())
    }

    fn end_sessions(&self, oid: &str, to: RefreshState) {
        for g in self.sessions().refresh.values_mut() {
            if g.user.oid.as_deref() == Some(oid) && g.state == RefreshState::Active {
                g.state = to;
            }
        }
    }

    /// Revokes every unredeemed refresh token of `oid`.
    pub(super) fn revoke_sessions(&self, oid: &str) {
        self.end_sessions(oid, RefreshState::Revoked);
    }

    /// Every unredeemed refresh token of `oid` expires for inactivity.
    pub(super) fn expire_sessions(&self, oid: &str) {
        self.end_sessions(oid, RefreshState::IdleExpired);
    }
}

fn invalid_grant(code: u32, message: &str) -> AadError {
    AadError::new(400, "invalid_grant", code, message)
}

/// `grant_type=refresh_token`: redeems the token once and issues a new pair.
pub(super) async fn refresh_token_grant(
    state: &EntraState,
    sessions: &Sessions,
    tenant: &str,
    form: &Form,
) -> Result<Value, AadError> {
    let token = form
        .get("refresh_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AadError::missing("refresh_token"))?;
    let scopes = match form.get("scope").filter(|s| !s.trim().is_empty()) {
        Some(s) => Some(parse_scopes(state, s)?),
        None => None,
    };
    let (user, granted) = {
        let s = sessions.sessions();
        let g = s
            .refresh
            .get(token)
            .filter(|g| g.tenant == tenant)
            .ok_or_else(|| {
                invalid_grant(9002313, "Invalid request. Request is malformed or invalid.")
            })?;
        match g.state {
            RefreshState::Active => {}
            RefreshState::Used => return Err(invalid_grant(70000, "The provided grant is invalid: this refresh token was already redeemed (the simulator rotates refresh tokens strictly).")),
            RefreshState::Revoked => return Err(invalid_grant(50173, "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.")),
            RefreshState::IdleExpired => return Err(invalid_grant(700082, "The refresh token has expired due to inactivity. The token was issued and was inactive for 90.00:00:00.")),
        }
        (g.user.clone(), g.permissions.clone())
    };
    // Before redeeming: an injected outage must leave the token usable.
    injected_failure(state, user.oid.as_deref()).await?;
    let scopes = scopes.unwrap_or(Scopes {
        permissions: granted,
        offline_access: true,
        openid: false,
    });
    {
        let mut s = sessions.sessions();
        let g = s.refresh.get_mut(token).expect("looked up above");
        if g.state != RefreshState::Active {
            // Another request redeemed it meanwhile.
            return Err(invalid_grant(70000, "The provided grant is invalid: this refresh token was already redeemed (the simulator rotates refresh tokens strictly)."));
        }
        g.state = RefreshState::Used;
    }
    state.refreshes.fetch_add(1, Ordering::SeqCst);
    Ok(sessions.issue_tokens(state, tenant, &user, &scopes))
}

/// `grant_type=urn:ietf:params:oauth:grant-type:device_code`: one poll.
pub(super) async fn device_code_grant(
    state: &EntraState,
    sessions: &Sessions,
    tenant: &str,
    form: &Form,
) -> Result<Value, AadError> {
    state.device_polls.fetch_add(1, Ordering::SeqCst);
    let code = form
        .get("device_code")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AadError::missing("device_code"))?;
    let bad_code = || {
        AadError::new(
            400,
            "bad_verification_code",
            70019,
            "The provided value for the input parameter 'device_code' is not valid.",
        )
    };
    let pending = || {
        AadError::new(
            400,
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        )
    };
    let expired = || {
        AadError::new(
            400,
            "expired_token",
            70020,
            "The provided value for the input parameter 'device_code' is not valid. This device code has expired.",
        )
    };
    let (outcome, scopes) = {
        let mut s = sessions.sessions();
        let d = s
            .devices
            .get_mut(code)
            .filter(|d| d.tenant == tenant)
            .ok_or_else(bad_code)?;
        if d.redeemed {
            return Err(invalid_grant(54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token."));
        }
        if now_unix() >= d.expires_at {
            return Err(expired());
        }
        let outcome = match &mut d.script {
            Some(script) if script.slow_downs > 0 => {
                script.slow_downs -= 1;
                return Err(AadError::new(
                    400,
                    "slow_down",
                    70016,
                    "OAuth 2.0 device flow error. Polling too fast: slow down.",
                ));
            }
            Some(script) if script.pending_polls > 0 => {
                script.pending_polls -= 1;
                return Err(pending());
            }
            Some(script) => script.outcome.clone(),
            None => d.decision.clone().ok_or_else(pending)?,
        };
        if let DeviceOutcome::Approve(_) = outcome {
            d.redeemed = true;
        }
        (outcome, d.scopes.clone())
    };
    let user = match outcome {
        DeviceOutcome::Approve(u) => u,
        DeviceOutcome::Deny => {
            return Err(AadError::new(
                400,
                "authorization_declined",
                70000,
                "The end user denied the authorization request.",
            ))
        }
        DeviceOutcome::AccessDenied => {
            return Err(AadError::new(
                400,
                "access_denied",
                70000,
                "The end user denied the authorization request.",
            ))
        }
        DeviceOutcome::Expire => return Err(expired()),
    };
    let user = AssertedUser {
        tid: user.tenant_id.unwrap_or_else(|| tenant.to_string()),
        oid: Some(user.object_id),
        upn: Some(user.upn),
    };
    injected_failure(state, user.oid.as_deref()).await?;
    state.device_logins.fetch_add(1, Ordering::SeqCst);
    Ok(sessions.issue_tokens(state, tenant, &user, &scopes))
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`: starts a device-code flow (no client credential).
pub(super) async fn device_authorization(
    state: web::Data<EntraState>,
    sessions: web::Data<Sessions>,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let ctx = Ctx::new(&req);
    let tenant = path.into_inner();
    match start_device_flow(&state, &sessions, &tenant, &parse_form(&req, &body)) {
        Ok(v) => ctx
            .response(StatusCode::OK)
            .insert_header(("cache-control", "no-store, no-cache"))
            .json(v),
        Err(e) => e.into_response(&ctx, &state.base),
    }
}

/// Checks the request and issues a device code and its user code.
fn start_device_flow(
    state: &EntraState,
    sessions: &Sessions,
    tenant: &str,
    form: &Form,
) -> Result<Value, AadError> {
    if !state.knows_tenant(tenant) {
        return Err(AadError::tenant_not_found("invalid_request", tenant));
    }
    let client_id = form
        .get("client_id")
        .ok_or_else(|| AadError::missing("client_id"))?;
    if *client_id != state.client_id {
        return Err(AadError::new(
            400,
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
        ));
    }
    let scope = form
        .get("scope")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| AadError::missing("scope"))?;
    let scopes = parse_scopes(state, scope)?;
    let device_code = format!("SIMDC{}", random_b64url(48));
    state.record(&device_code);
    let user_code = user_code();
    let verification_uri = format!("{}/_sim/device", state.base);
    let interval = state.device_interval.as_secs();
    let script = sessions.sessions().script.clone();
    sessions.sessions().devices.insert(
        device_code.clone(),
        DeviceGrant {
            tenant: tenant.to_string(),
            user_code: user_code.clone(),
            scopes,
            expires_at: now_unix() + DEVICE_CODE_LIFETIME,
            script,
            decision: None,
            redeemed: false,
        },
    );
    Ok(json!({
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": verification_uri,
        "expires_in": DEVICE_CODE_LIFETIME,
        "interval": interval,
        "message": format!("To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."),
    }))
}

/// Nine characters from an alphabet without look-alikes, like Entra's user codes.
fn user_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut b = [0u8; 9];
    rand::fill(&mut b[..]);
    b.iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect()
}

/// `GET /_sim/device`: the verification page a person opens in `dev` mode.
pub(super) async fn device_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(
            r#"<!doctype html><title>Simulated Entra ID: device sign-in</title>
<h1>Simulated Entra ID: device sign-in</h1>
<form method="post">
<p><label>Code <input name="user_code" autofocus></label></p>
<p>Sign in as <code>svc-sync@contoso.example</code>:
<button name="action" value="approve">Approve</button>
<button name="action" value="deny">Deny</button></p>
</form>"#,
        )
}

/// `POST /_sim/device` (`user_code`, `action=approve|deny`): the person's decision.
pub(super) async fn device_decision(
    sessions: web::Data<Sessions>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = parse_form(&req, &body);
    let code = form.get("user_code").cloned().unwrap_or_default();
    let outcome = match form.get("action").map(String::as_str) {
        Some("deny") => DeviceOutcome::Deny,
        _ => DeviceOutcome::Approve(DeviceUser::named("svc-sync@contoso.example")),
    };
    let approved = matches!(outcome, DeviceOutcome::Approve(_));
    if sessions.decide_device_code(&code, outcome) {
        HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(if approved {
                "Signed in. You may close this window.\n"
            } else {
                "Sign-in declined.\n"
            })
    } else {
        HttpResponse::BadRequest()
            .content_type("text/plain; charset=utf-8")
            .body("Unknown code.\n")
    }
}

#[cfg(test)]
mod tests {
    use super::super::grant::PERMISSION_READ_WRITE;
    use super::super::test_support::{post_token, sims, TENANT};
    use super::super::token::GRANT_DEVICE_CODE;
    use super::*;

    fn refresh_form(token: &str) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", "refresh_token".to_string()),
            ("client_id", "gw-client-id".to_string()),
            ("client_secret", "gw-secret-value".to_string()),
            ("refresh_token", token.to_string()),
        ]
    }

    async fn start_flow(s: &crate::sim::Simulators) -> Value {
        reqwest::Client::new()
            .post(format!(
                "{}/{TENANT}/oauth2/v2.0/devicecode",
                s.entra.base_url()
            ))
            .form(&[
                ("client_id", "gw-client-id".to_string()),
                (
                    "scope",
                    format!(
                        "openid offline_access {}/{}",
                        s.entra.graph_resource(),
                        PERMISSION_READ_WRITE
                    ),
                ),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn poll_form(code: &Value) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", GRANT_DEVICE_CODE.to_string()),
            ("client_id", "gw-client-id".to_string()),
            ("client_secret", "gw-secret-value".to_string()),
            (
                "device_code",
                code["device_code"].as_str().unwrap().to_string(),
            ),
        ]
    }

    #[actix_rt::test]
    async fn a_device_code_is_pending_until_the_person_decides_then_redeemed_once() {
        let s = sims().await;
        let code = start_flow(&s).await;
        assert_eq!(code["interval"], 5);
        assert_eq!(code["expires_in"], 900);
        let (st, _, b) = post_token(&s, &poll_form(&code)).await;
        assert_eq!(
            (st, b["error"].as_str().unwrap()),
            (400, "authorization_pending")
        );
        let user = DeviceUser::named("svc@example.test");
        assert!(s
            .entra
            .approve_device_code(code["user_code"].as_str().unwrap(), user.clone()));
        let (st, _, b) = post_token(&s, &poll_form(&code)).await;
        assert_eq!(st, 200);
        assert!(b["refresh_token"].is_string() && b["id_token"].is_string());
        let id: Value =
            crate::sim::keys::unverified_claims(b["id_token"].as_str().unwrap()).unwrap();
        assert_eq!(id["oid"], user.object_id.as_str());
        assert_eq!(id["preferred_username"], "svc@example.test");
        let (st, _, b) = post_token(&s, &poll_form(&code)).await;
        assert_eq!((st, b["error_codes"][0].as_i64()), (400, Some(54005)));
    }

    #[actix_rt::test]
    async fn a_script_answers_slow_down_then_pending_then_its_outcome() {
        let s = sims().await;
        s.entra.script_device_login(Some(DeviceScript {
            slow_downs: 1,
            pending_polls: 1,
            outcome: DeviceOutcome::Deny,
        }));
        let code = start_flow(&s).await;
        let mut errors = Vec::new();
        for _ in 0..3 {
            let (_, _, b) = post_token(&s, &poll_form(&code)).await;
            errors.push(b["error"].as_str().unwrap().to_string());
        }
        assert_eq!(
            errors,
            [
                "slow_down",
                "authorization_pending",
                "authorization_declined"
            ]
        );
        assert_eq!(s.entra.device_polls(), 3);
    }

    #[actix_rt::test]
    async fn a_refresh_token_is_redeemed_once_and_rotated() {
        let s = sims().await;
        s.entra.script_device_login(Some(DeviceScript {
            slow_downs: 0,
            pending_polls: 0,
            outcome: DeviceOutcome::Approve(DeviceUser::named("svc@example.test")),
        }));
        let code = start_flow(&s).await;
        let (_, _, b) = post_token(&s, &poll_form(&code)).await;
        let first = b["refresh_token"].as_str().unwrap().to_string();
        let (st, _, b) = post_token(&s, &refresh_form(&first)).await;
        assert_eq!(st, 200);
        let second = b["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(first, second);
        let oid = DeviceUser::named("svc@example.test").object_id;
        assert_eq!(s.entra.current_refresh_token(&oid), Some(second.clone()));
        let (st, _, b) = post_token(&s, &refresh_form(&first)).await;
        assert_eq!((st, b["error"].as_str().unwrap()), (400, "invalid_grant"));
        s.entra.revoke_refresh_tokens(&oid);
        let (_, _, b) = post_token(&s, &refresh_form(&second)).await;
        assert_eq!(b["error_codes"][0], 50173);
        assert_eq!(s.entra.refreshes(), 1);
    }
}
