//! The token endpoint (`POST /{tenant}/oauth2/v2.0/token`): the tenant, client
//! authentication (secret in the form or HTTP Basic, or a client assertion; the application
//! must be in the tenant), dispatch on `grant_type`, and the on-behalf-of grant with Entra's
//! checks on the user's assertion; the log of token requests.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::super::keys::VerifyError;
use super::super::options::AppConsent;
use super::client_credentials::{client_credentials_grant, GRANT_CLIENT_CREDENTIALS};
use super::credentials::{presented, ClientAuthSeen, Credentials};
use super::errors::{AadError, Ctx};
use super::form::{parse_form, Form};
use super::grant::{consent_required, injected_failure, parse_scopes, AssertedUser};
use super::sessions::{device_code_grant, refresh_token_grant, Sessions};
use super::state::{fmt_unix, issuer_v1, now_unix, EntraState};

/// The OBO grant type.
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The device-code grant type (RFC 8628).
pub const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The refresh-token grant type.
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
/// `client_assertion_type` of certificate and federated client assertions.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// One POST to a token endpoint, as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestSeen {
    /// The tenant in the path (`/{tenant}/oauth2/v2.0/token`).
    pub tenant: String,
    /// `grant_type`, empty when missing.
    pub grant_type: String,
    /// How the client tried to authenticate; `None` when it presented nothing recognisable.
    pub client_auth: Option<ClientAuthSeen>,
    /// The status answered.
    pub status: u16,
    /// The W3C `traceparent` header, if sent.
    pub traceparent: Option<String>,
}

/// Token requests remembered at most (the oldest are dropped).
const MAX_TOKEN_LOG: usize = 10_000;

/// The token requests seen so far, oldest first, at most [`MAX_TOKEN_LOG`].
#[derive(Default)]
pub(super) struct TokenLog(Mutex<Vec<TokenRequestSeen>>);

impl TokenLog {
    fn push(&self, seen: TokenRequestSeen) {
        let mut log = self.0.lock().expect("token log lock");
        if log.len() >= MAX_TOKEN_LOG {
            log.remove(0);
        }
        log.push(seen);
    }

    /// Every request remembered, oldest first.
    pub(super) fn requests(&self) -> Vec<TokenRequestSeen> {
        self.0.lock().expect("token log lock").clone()
    }
}

/// `Authorization: Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 section 2.3.1).
fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

/// `POST /{tenant}/oauth2/v2.0/token`: every request is counted and logged, whatever its
/// outcome.
pub(super) async fn token(
    state: web::Data<EntraState>,
    credentials: web::Data<Credentials>,
    sessions: web::Data<Sessions>,
    log: web::Data<TokenLog>,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let ctx = Ctx::new(&req);
    let tenant = path.into_inner();
    let mut seen = TokenRequestSeen {
        tenant: tenant.clone(),
        grant_type: String::new(),
        client_auth: None,
        status: 0,
        traceparent: req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let resp = match token_inner(
        &state,
        &credentials,
        &sessions,
        &tenant,
        &req,
        &body,
        &mut seen,
    )
    .await
    {
        Ok(body) => ctx
            .response(StatusCode::OK)
            .insert_header(("cache-control", "no-store, no-cache"))
            .insert_header(("pragma", "no-cache"))
            .json(body),
        Err(e) => e.into_response(&ctx, &state.base),
    };
    seen.status = resp.status().as_u16();
    log.push(seen);
    resp
}

/// Entra's checks in its order (tenant, client authentication), then the grant.
async fn token_inner(
    state: &EntraState,
    credentials: &Credentials,
    sessions: &Sessions,
    tenant: &str,
    req: &HttpRequest,
    body: &[u8],
    seen: &mut TokenRequestSeen,
) -> Result<Value, AadError> {
    // 1. Tenant. Multi-tenant aliases are refused too: the gateway must use the caller's tenant.
    if !state.knows_tenant(tenant) {
        return Err(AadError::tenant_not_found("invalid_request", tenant));
    }
    let form = parse_form(req, body);
    seen.grant_type = form.get("grant_type").cloned().unwrap_or_default();
    // 2. Client authentication.
    seen.client_auth = presented_client_auth(state, req, &form);
    authenticate_client(state, credentials, tenant, req, &form)?;
    // 3. Grant dispatch.
    match form.get("grant_type").map(String::as_str) {
        None => Err(AadError::missing("grant_type")),
        Some(GRANT_JWT_BEARER) => on_behalf_of(state, sessions, tenant, &form).await,
        Some(GRANT_REFRESH_TOKEN) => refresh_token_grant(state, sessions, tenant, &form).await,
        Some(GRANT_DEVICE_CODE) => device_code_grant(state, sessions, tenant, &form).await,
        Some(GRANT_CLIENT_CREDENTIALS) => {
            let assertion = !matches!(seen.client_auth, Some(ClientAuthSeen::Secret));
            client_credentials_grant(state, tenant, &form, assertion).await
        }
        Some(other) => Err(AadError::new(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{other}'."),
        )),
    }
}

/// How the request tries to authenticate the client, before any check.
fn presented_client_auth(
    state: &EntraState,
    req: &HttpRequest,
    form: &Form,
) -> Option<ClientAuthSeen> {
    if basic_credentials(req).is_some() || form.contains_key("client_secret") {
        return Some(ClientAuthSeen::Secret);
    }
    form.get("client_assertion")
        .and_then(|a| presented(state, a))
}

/// Entra's checks on the client: known `client_id`, then its secret or client assertion.
fn authenticate_client(
    state: &EntraState,
    credentials: &Credentials,
    tenant: &str,
    req: &HttpRequest,
    form: &Form,
) -> Result<(), AadError> {
    let (client_id, secret) = match basic_credentials(req) {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (
            form.get("client_id").cloned(),
            form.get("client_secret").cloned(),
        ),
    };
    let Some(client_id) = client_id else {
        return Err(AadError::missing("client_id"));
    };
    // An application nobody consented to in this tenant is not there, for any grant.
    if client_id != state.client_id || state.app_consent(tenant) == AppConsent::NotInTenant {
        return Err(AadError::new(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{tenant}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant. You may \
                 have sent your authentication request to the wrong tenant."
            ),
        ));
    }
    match secret {
        Some(secret) => {
            // Constant time, as a real credential check would be.
            if bool::from(secret.as_bytes().ct_eq(state.client_secret.as_bytes())) {
                Ok(())
            } else {
                Err(AadError::new(
                    401,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the \
                         request is the client secret value, not the client secret ID, for a \
                         secret added to app '{}'.",
                        state.client_id
                    ),
                ))
            }
        }
        None if form.contains_key("client_assertion") => {
            if form.get("client_assertion_type").map(String::as_str) != Some(CLIENT_ASSERTION_TYPE)
            {
                return Err(AadError::new(
                    400,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'client_assertion_type'.",
                ));
            }
            credentials.check_client_assertion(state, tenant, &form["client_assertion"])
        }
        None => Err(AadError::new(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or \
             'client_secret'.",
        )),
    }
}

/// Whether the `aud` claim (a string or an array) names one of `audiences`.
fn aud_matches(claims: &Value, audiences: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    }
}

/// AADSTS50013: the OBO assertion is not acceptable.
fn invalid_assertion(message: impl Into<String>) -> AadError {
    AadError::new(400, "invalid_grant", 50013, message)
}

/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`: exchanges the user's token for a
/// Graph token.
async fn on_behalf_of(
    state: &EntraState,
    sessions: &Sessions,
    tenant: &str,
    form: &Form,
) -> Result<Value, AadError> {
    // 4. requested_token_use.
    match form.get("requested_token_use").map(String::as_str) {
        Some("on_behalf_of") => {}
        Some(other) => {
            return Err(AadError::new(
                400,
                "invalid_request",
                90014,
                format!(
                    "The provided value '{other}' for the field 'requested_token_use' is not \
                     valid; expected 'on_behalf_of'."
                ),
            ))
        }
        None => {
            return Err(AadError::new(
                400,
                "invalid_request",
                90014,
                "The required field 'requested_token_use' is missing from the credential. \
                 Ensure that you have all the necessary parameters for the login request.",
            ))
        }
    }
    // 5. scope.
    let scope = form
        .get("scope")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| AadError::missing("scope"))?;
    let scopes = parse_scopes(state, scope)?;
    // 6. assertion.
    let assertion = form
        .get("assertion")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AadError::missing("assertion"))?;
    let user = validate_assertion(state, tenant, assertion)?;
    // 6b. Consent: every named permission must have been consented to for the app.
    if scopes
        .permissions
        .iter()
        .any(|p| !state.consented.iter().any(|c| c == p))
    {
        return Err(consent_required(state));
    }
    // 7. Failure injection.
    injected_failure(state, user.oid.as_deref()).await?;
    // 8. Issue the Graph token.
    let body = sessions.issue_tokens(state, tenant, &user, &scopes);
    state.exchanges.fetch_add(1, Ordering::SeqCst);
    Ok(body)
}

/// Entra's checks on the OBO assertion, in order: signature by a published key, audience,
/// lifetime, tenant, issuer, and that it is a delegated user token.
fn validate_assertion(
    state: &EntraState,
    tenant: &str,
    assertion: &str,
) -> Result<AssertedUser, AadError> {
    let (_header, claims) = state.keys.verify(assertion).map_err(|e| {
        invalid_assertion(match e {
            VerifyError::Malformed => "Assertion is not a well-formed JWT.".to_string(),
            VerifyError::Algorithm => format!(
                "Assertion uses an unsupported algorithm '{:?}'.",
                header_alg(assertion)
            ),
            VerifyError::UnknownKey | VerifyError::Signature => {
                "Assertion failed signature validation. [Reason - The key was not found.]"
                    .to_string()
            }
        })
    })?;
    if !aud_matches(&claims, &state.api_audiences) {
        return Err(invalid_assertion(format!(
            "Assertion audience does not match the Client app presenting the assertion. The \
             audience in the assertion was '{}' and the expected audience is '{}' or one of the \
             Application Id URIs of this application.",
            claims.get("aud").map(Value::to_string).unwrap_or_default(),
            state.client_id
        )));
    }
    let now = now_unix();
    let Some(exp) = claims.get("exp").and_then(Value::as_i64) else {
        return Err(invalid_assertion("Assertion has no expiry."));
    };
    let nbf = claims.get("nbf").and_then(Value::as_i64);
    // No clock-skew allowance: a gateway must not present tokens at the edge of expiry.
    if now >= exp || nbf.is_some_and(|n| n > now) {
        return Err(AadError::new(
            400,
            "invalid_grant",
            500133,
            format!(
                "Assertion is not within its valid time range. Ensure that the access token is \
                 not expired before using it for user assertion, or request a new token. Current \
                 time: {}, expiry time of assertion {}.",
                fmt_unix(now),
                fmt_unix(exp)
            ),
        ));
    }
    let claim = |name: &str| claims.get(name).and_then(Value::as_str);
    let tid = claim("tid").unwrap_or("");
    if tid != tenant {
        return Err(invalid_assertion(format!(
            "Assertion was issued for tenant '{tid}', not for the requested tenant '{tenant}'."
        )));
    }
    let iss = claim("iss").unwrap_or("");
    if iss != issuer_v1(tid) && iss != state.issuer_v2(tid) {
        return Err(invalid_assertion(format!(
            "Assertion contains an invalid issuer '{iss}'."
        )));
    }
    let is_app = claim("idtyp") == Some("app");
    let has_scp = claim("scp").is_some_and(|s| !s.trim().is_empty());
    if is_app || !has_scp {
        return Err(invalid_assertion(
            "Assertion is not a user token; the on-behalf-of flow requires a delegated user \
             token.",
        ));
    }
    Ok(AssertedUser {
        tid: tid.to_string(),
        oid: claim("oid").map(str::to_string),
        upn: ["upn", "preferred_username", "unique_name"]
            .into_iter()
            .find_map(claim)
            .map(str::to_string),
    })
}

/// The `alg` a token's header names, if it parses.
fn header_alg(token: &str) -> Option<Algorithm> {
    jsonwebtoken::decode_header(token).ok().map(|h| h.alg)
}

#[cfg(test)]
mod tests {
    use super::super::mint::TokenSpec;
    use super::super::state::{Failure, FailureScope};
    use super::super::test_support::{error_code, obo_form, post_token, sims, TENANT};
    use super::*;

    #[actix_rt::test]
    async fn wrong_secret_is_invalid_client() {
        let s = sims().await;
        let t = s.entra.mint(&TokenSpec::user(TENANT, "u1"));
        let mut form = obo_form(&s, &t);
        form[2].1 = "wrong".to_string();
        let (status, _, body) = post_token(&s, &form).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(error_code(&body), 7000215);
        for k in [
            "error_description",
            "timestamp",
            "trace_id",
            "correlation_id",
            "error_uri",
        ] {
            assert!(body[k].is_string(), "{k} missing");
        }
        form[1].1 = "someone-else".to_string();
        let (status, _, body) = post_token(&s, &form).await;
        assert_eq!((status, error_code(&body)), (400, 700016));
        assert_eq!(s.entra.token_requests(), 2);
        assert_eq!(s.entra.exchanges(), 0);
    }

    #[actix_rt::test]
    async fn basic_auth_and_checks_in_order() {
        let s = sims().await;
        let t = s.entra.mint(&TokenSpec::user(TENANT, "u1"));
        // HTTP Basic instead of form fields.
        let form: Vec<_> = obo_form(&s, &t)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("client_"))
            .collect();
        let r = reqwest::Client::new()
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", s.entra.base_url()))
            .basic_auth("gw-client-id", Some("gw-secret-value"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);

        let mut f = obo_form(&s, &t);
        f[0].1 = "password".into();
        let (st, _, b) = post_token(&s, &f).await;
        assert_eq!(
            (st, b["error"].as_str().unwrap(), error_code(&b)),
            (400, "unsupported_grant_type", 70003)
        );

        let mut f = obo_form(&s, &t);
        f.retain(|(k, _)| *k != "requested_token_use");
        let (st, _, b) = post_token(&s, &f).await;
        assert_eq!((st, b["error"].as_str().unwrap()), (400, "invalid_request"));

        let mut f = obo_form(&s, &t);
        f[4].1 = "https://graph.microsoft.com/DeviceManagementServiceConfig.ReadWrite.All".into();
        let (st, _, b) = post_token(&s, &f).await;
        assert_eq!((st, error_code(&b)), (400, 70011));

        // An app-only token cannot be exchanged.
        let app = s.entra.mint(&TokenSpec::app(TENANT, "some-app"));
        let (st, _, b) = post_token(&s, &obo_form(&s, &app)).await;
        assert_eq!(
            (st, b["error"].as_str().unwrap(), error_code(&b)),
            (400, "invalid_grant", 50013)
        );

        // Wrong audience and unpublished key are invalid assertions.
        let mut spec = TokenSpec::user(TENANT, "u1");
        spec.audience = Some("someone-else".into());
        let (st, _, b) = post_token(&s, &obo_form(&s, &s.entra.mint(&spec))).await;
        assert_eq!((st, error_code(&b)), (400, 50013));
        let forged = s
            .entra
            .sign_with_unpublished_key(&s.entra.claims_for(&TokenSpec::user(TENANT, "u1")));
        let (st, _, b) = post_token(&s, &obo_form(&s, &forged)).await;
        assert_eq!((st, error_code(&b)), (400, 50013));

        // Unknown tenant in the path.
        let r = reqwest::Client::new()
            .post(format!(
                "{}/other-tenant/oauth2/v2.0/token",
                s.entra.base_url()
            ))
            .form(&obo_form(&s, &t))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let b: Value = r.json().await.unwrap();
        assert_eq!(
            (b["error"].as_str().unwrap(), error_code(&b)),
            ("invalid_request", 90002)
        );
    }

    #[actix_rt::test]
    async fn expired_assertion_is_500133() {
        let s = sims().await;
        let mut spec = TokenSpec::user(TENANT, "u1");
        spec.expires_at = Some(now_unix() - 10);
        let t = s.entra.mint(&spec);
        let (status, _, body) = post_token(&s, &obo_form(&s, &t)).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(error_code(&body), 500133);
    }

    #[actix_rt::test]
    async fn injected_failures() {
        let s = sims().await;
        let t = s.entra.mint(&TokenSpec::user(TENANT, "u1"));
        let other = s.entra.mint(&TokenSpec::user(TENANT, "u2"));
        let challenge = r#"{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}"#;
        s.entra.set_failure(
            FailureScope::User("u1".into()),
            Some(Failure::StepUp {
                claims: challenge.into(),
            }),
        );
        let (status, _, body) = post_token(&s, &obo_form(&s, &t)).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(error_code(&body), 50076);
        assert_eq!(body["suberror"], "basic_action");
        assert_eq!(body["claims"], challenge);
        // Another user is unaffected.
        let (status, _, _) = post_token(&s, &obo_form(&s, &other)).await;
        assert_eq!(status, 200);

        s.entra.set_failure(
            FailureScope::Global,
            Some(Failure::Throttle {
                retry_after_secs: 7,
            }),
        );
        let (status, headers, body) = post_token(&s, &obo_form(&s, &other)).await;
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "7");
        assert_eq!(body["error"], "temporarily_unavailable");
        // The user-specific failure wins over the global one.
        let (_, _, body) = post_token(&s, &obo_form(&s, &t)).await;
        assert_eq!(error_code(&body), 50076);

        s.entra
            .set_failure(FailureScope::Global, Some(Failure::ServerError));
        let (status, _, body) = post_token(&s, &obo_form(&s, &other)).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (500, "server_error")
        );
        s.entra.set_failure(FailureScope::Global, None);
        s.entra.set_failure(FailureScope::User("u1".into()), None);
        let (status, _, _) = post_token(&s, &obo_form(&s, &t)).await;
        assert_eq!(status, 200);
        assert_eq!(s.entra.exchanges(), 2);
    }
}
