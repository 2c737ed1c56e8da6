//! Caller validation: every way a token can be wrong is refused with the right answer, before
//! anything reaches Entra's token endpoint or Graph, and leaves exactly one audit record.

use crate::helpers::{header, problem_of, problem_type, spawn_app, spawn_app_with, Setup, TestApp};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sync_gateway::sim::entra::TokenSpec;

/// Sends `token` and asserts a refusal with `status`, a description containing `why`, no
/// exchange, no Graph call, and one `denied` audit record with `code`.
async fn assert_refused(app: &TestApp, token: &str, status: u16, code: &str, why: &str) {
    let resp = app.post_sync(token).await;
    assert_eq!(resp.status(), status);
    let challenge = header(&resp, "www-authenticate");
    if status == 401 {
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "challenge: {challenge}"
        );
        assert!(
            challenge.contains(why),
            "challenge {challenge:?} lacks {why:?}"
        );
        assert!(!challenge.contains(token), "the challenge echoes the token");
    }
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type(code));
    assert!(p["detail"].as_str().unwrap().contains(why), "{p}");
    assert_eq!(
        app.sims.entra.token_requests(),
        0,
        "an exchange was attempted"
    );
    assert_eq!(app.sims.graph.sync_calls(), 0, "Graph was called");
    let record = app.only_request_record();
    assert_eq!(record["decision"], "denied");
    assert_eq!(record["code"], code);
    assert_eq!(record["status"], status);
}

fn sign_with(app: &TestApp, claims: &Value) -> String {
    app.sims.entra.sign(&app.sims.entra.header(), claims)
}

fn unsigned(header: &Value, claims: &Value) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        e.encode(header.to_string()),
        e.encode(claims.to_string())
    )
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn no_credentials_get_a_bare_bearer_challenge() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(format!("{}/sync", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(&resp, "www-authenticate"),
        "Bearer realm=\"sync-gateway\""
    );
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("missing-credentials")
    );
    assert_eq!(app.sims.graph.sync_calls(), 0);
    assert_eq!(app.only_request_record()["code"], "missing-credentials");
}

#[tokio::test]
async fn a_malformed_token_is_refused() {
    let app = spawn_app().await;
    assert_refused(&app, "not.a-jwt", 401, "invalid-token", "not a signed JWT").await;
}

#[tokio::test]
async fn a_token_with_a_bad_signature_is_refused() {
    let app = spawn_app().await;
    let token = app.token();
    let (rest, sig) = token.rsplit_once('.').unwrap();
    // Flip the signature's first character: still base64url, no longer valid.
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{rest}.{flipped}{}", &sig[1..]);
    assert_refused(
        &app,
        &tampered,
        401,
        "invalid-token",
        "signature is invalid",
    )
    .await;
}

#[tokio::test]
async fn a_token_with_altered_claims_is_refused() {
    let app = spawn_app().await;
    let token = app.token();
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&e.decode(&parts[1]).unwrap()).unwrap();
    claims["oid"] = json!(uuid::Uuid::new_v4().to_string());
    parts[1] = e.encode(claims.to_string());
    assert_refused(
        &app,
        &parts.join("."),
        401,
        "invalid-token",
        "signature is invalid",
    )
    .await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let app = spawn_app().await;
    let mut spec = app.user();
    spec.expires_at = Some(now() - 120); // beyond the 60 s leeway
    let token = app.sims.entra.mint(&spec);
    assert_refused(&app, &token, 401, "invalid-token", "expired").await;
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_passes_validation_but_entra_refuses_to_exchange_it() {
    let app = spawn_app().await;
    let mut spec = app.user();
    spec.expires_at = Some(now() - 20);
    let resp = app.post_sync(&app.sims.entra.mint(&spec)).await;
    // The gateway's leeway let it through to the exchange; Entra's AADSTS500133 comes back as
    // invalid_token so the client fetches a fresh token.
    assert_eq!(resp.status(), 401);
    assert!(header(&resp, "www-authenticate").contains("error=\"invalid_token\""));
    let p = problem_of(resp).await;
    assert!(p["detail"]
        .as_str()
        .unwrap()
        .contains("expired before it could be exchanged"));
    assert_eq!(app.sims.entra.token_requests(), 1);
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused() {
    let app = spawn_app().await;
    let mut spec = app.user();
    spec.not_before = Some(now() + 600);
    let token = app.sims.entra.mint(&spec);
    assert_refused(&app, &token, 401, "invalid-token", "not valid yet").await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let app = spawn_app().await;
    let mut spec = app.user();
    spec.audience = Some("api://some-other-api".into());
    let token = app.sims.entra.mint(&spec);
    assert_refused(&app, &token, 401, "invalid-token", "audience").await;
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let app = spawn_app().await;
    let mut claims = app.claims();
    claims["iss"] = json!(format!("https://evil.example/{}/v2.0", app.tenant));
    let token = sign_with(&app, &claims);
    assert_refused(&app, &token, 401, "invalid-token", "issuer").await;
}

#[tokio::test]
async fn a_token_of_a_tenant_that_is_not_allowed_is_refused() {
    let app = spawn_app().await;
    let spec = TokenSpec::user(&app.foreign_tenant, uuid::Uuid::new_v4().to_string());
    let token = app.sims.entra.mint(&spec);
    assert_refused(&app, &token, 401, "invalid-token", "tenant is not allowed").await;
}

#[tokio::test]
async fn a_token_whose_tid_disagrees_with_its_issuer_is_refused() {
    let app = spawn_app().await;
    let mut claims = app.claims();
    // Issued by the allowed tenant's issuer but claiming another tenant.
    claims["tid"] = json!(app.foreign_tenant.clone());
    let token = sign_with(&app, &claims);
    assert_refused(&app, &token, 401, "invalid-token", "tenant is not allowed").await;
}

#[tokio::test]
async fn a_v2_issuers_token_that_says_ver_1_is_refused() {
    let app = spawn_app().await;
    let mut claims = app.claims();
    claims["ver"] = json!("1.0");
    let token = sign_with(&app, &claims);
    assert_refused(&app, &token, 401, "invalid-token", "version (ver)").await;
}

#[tokio::test]
async fn a_v1_issuers_token_that_says_ver_2_is_refused() {
    let app = spawn_app().await;
    let mut spec = app.user();
    spec.version = sync_gateway::sim::entra::TokenVersion::V1;
    let mut claims = app.sims.entra.claims_for(&spec);
    claims["ver"] = json!("2.0");
    let token = sign_with(&app, &claims);
    assert_refused(&app, &token, 401, "invalid-token", "version (ver)").await;
    assert_eq!(
        app.metric("sync_gateway_token_refusals_total{cause=\"version_mismatch\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let app = spawn_app().await;
    let token = unsigned(&json!({"alg": "none", "typ": "JWT"}), &app.claims());
    assert_refused(
        &app,
        &token,
        401,
        "invalid-token",
        "algorithm is not accepted",
    )
    .await;
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_public_key_is_refused() {
    let app = spawn_app().await;
    let pem = app.sims.entra.public_key_pem();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(app.sims.entra.active_kid());
    let token = jsonwebtoken::encode(
        &h,
        &app.claims(),
        &EncodingKey::from_secret(pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_refused(
        &app,
        &token,
        401,
        "invalid-token",
        "algorithm is not accepted",
    )
    .await;
}

#[tokio::test]
async fn a_token_naming_its_own_key_url_is_refused() {
    let app = spawn_app().await;
    let mut h = app.sims.entra.header();
    h.jku = Some("https://attacker.example/keys".into());
    let token = app.sims.entra.sign(&h, &app.claims());
    assert_refused(&app, &token, 401, "invalid-token", "jku").await;
}

#[tokio::test]
async fn a_token_embedding_its_own_key_is_refused() {
    let app = spawn_app().await;
    let h = json!({"alg": "RS256", "kid": app.sims.entra.active_kid(),
        "jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}});
    let token = format!("{}sig", unsigned(&h, &app.claims()));
    assert_refused(&app, &token, 401, "invalid-token", "jwk").await;
}

#[tokio::test]
async fn an_unknown_key_id_is_refused_after_exactly_one_refresh() {
    let app = spawn_app().await;
    let before = app.sims.entra.jwks_requests();
    let token = app.sims.entra.sign_with_unpublished_key(&app.claims());
    assert_refused(&app, &token, 401, "invalid-token", "unknown key").await;
    assert_eq!(app.sims.entra.jwks_requests(), before + 1);
}

#[tokio::test]
async fn unknown_key_ids_refresh_at_most_once_per_cooldown() {
    let app = spawn_app().await;
    let before = app.sims.entra.jwks_requests();
    for _ in 0..5 {
        let token = app.sims.entra.sign_with_unpublished_key(&app.claims());
        assert_eq!(app.post_sync(&token).await.status(), 401);
    }
    assert_eq!(app.sims.entra.jwks_requests(), before + 1);
}

#[tokio::test]
async fn a_storm_of_random_key_ids_delays_a_newly_published_key_by_the_new_kid_interval_only() {
    let app = spawn_app_with(Setup::default().set("callers.new_kid_refresh_seconds", "1")).await;
    let before = app.sims.entra.jwks_requests();
    for _ in 0..20 {
        let token = app.sims.entra.sign_with_unpublished_key(&app.claims());
        assert_eq!(app.post_sync(&token).await.status(), 401);
    }
    assert_eq!(app.sims.entra.jwks_requests(), before + 1);
    assert_eq!(
        app.metric("sync_gateway_token_refusals_total{cause=\"unknown_key\"}")
            .await,
        20.0
    );
    app.sims.entra.rotate_keys();
    // Past the interval (not the 300 s cooldown) the new key's first token refreshes once.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(app.sims.entra.jwks_requests(), before + 2);
}

#[tokio::test]
async fn a_key_id_a_fresh_key_set_lacked_refreshes_no_more_than_once_per_cooldown() {
    let app = spawn_app_with(Setup::default().set("callers.new_kid_refresh_seconds", "1")).await;
    let before = app.sims.entra.jwks_requests();
    let token = app.sims.entra.sign_with_unpublished_key(&app.claims());
    assert_eq!(app.post_sync(&token).await.status(), 401);
    assert_eq!(app.sims.entra.jwks_requests(), before + 1);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(app.post_sync(&token).await.status(), 401);
    assert_eq!(app.sims.entra.jwks_requests(), before + 1);
}

#[tokio::test]
async fn a_token_signed_with_a_newly_rotated_key_is_accepted_after_one_refresh() {
    let app = spawn_app().await;
    let before = app.sims.entra.jwks_requests();
    app.sims.entra.rotate_keys();
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(app.sims.entra.jwks_requests(), before + 1);
    // The next token with the new key needs no further refresh.
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(app.sims.entra.jwks_requests(), before + 1);
}

#[tokio::test]
async fn an_app_only_token_is_refused_with_403() {
    let app = spawn_app().await;
    let mut spec = TokenSpec::app(&app.tenant, uuid::Uuid::new_v4().to_string());
    spec.roles = vec!["Sync.Trigger.All".into()];
    let token = app.sims.entra.mint(&spec);
    assert_refused(&app, &token, 403, "app-only-caller", "app-only").await;
    assert_eq!(app.only_request_record()["caller"]["kind"], "app");
}

#[tokio::test]
async fn a_token_without_the_required_scope_is_refused_with_insufficient_scope() {
    let app = spawn_app().await;
    let mut spec = app.user();
    spec.scopes = vec!["User.Read".into()];
    let token = app.sims.entra.mint(&spec);
    let resp = app.post_sync(&token).await;
    assert_eq!(resp.status(), 403);
    let challenge = header(&resp, "www-authenticate");
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"Sync.Trigger\""), "{challenge}");
    assert_refused_record(&app, "insufficient-scope", 403);
}

fn assert_refused_record(app: &TestApp, code: &str, status: u16) {
    assert_eq!(app.sims.graph.sync_calls(), 0);
    let r = app.only_request_record();
    assert_eq!(r["code"], code);
    assert_eq!(r["status"], status);
}

#[tokio::test]
async fn verified_tokens_are_remembered_until_they_expire() {
    let app = spawn_app().await;
    let token = app.token();
    assert_eq!(app.post_sync(&token).await.status(), 202);
    // With Entra gone, a remembered token still passes validation (and the cached exchange).
    app.sims.entra.stop().await;
    assert_eq!(app.post_sync(&token).await.status(), 202);
}

#[tokio::test]
async fn the_gateway_is_not_ready_until_signing_keys_are_loaded() {
    let app = spawn_app_with(Setup {
        entra_down_at_start: true,
        ..Setup::default()
    })
    .await;
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["signing_keys"], false);
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("keys-unavailable")
    );
    let live = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}
