//! The on-behalf-of exchange: caching, single flight, and Entra ID's answers.

use crate::helpers::{header, problem_of, problem_type, spawn_app, spawn_app_with, Setup};
use base64::Engine;
use sync_gateway::sim::entra::{Failure, FailureScope, TokenSpec};

#[tokio::test]
async fn repeated_calls_with_the_same_token_make_one_exchange() {
    let app = spawn_app().await;
    let token = app.token();
    for _ in 0..3 {
        assert_eq!(app.post_sync(&token).await.status(), 202);
    }
    assert_eq!(app.sims.entra.exchanges(), 1);
    assert_eq!(app.sims.graph.accepted_syncs(), 3);
}

#[tokio::test]
async fn fifty_concurrent_first_calls_with_one_new_token_make_exactly_one_exchange() {
    let app = spawn_app().await;
    // Slow the exchange down so all fifty arrive while it is in flight.
    app.sims.entra.set_failure(
        FailureScope::Global,
        Some(Failure::Slow(std::time::Duration::from_millis(300))),
    );
    let token = app.token();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (http, url, token) = (
            app.http.clone(),
            format!("{}/sync", app.address),
            token.clone(),
        );
        set.spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    let statuses = set.join_all().await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(app.sims.entra.token_requests(), 1);
    assert_eq!(app.sims.entra.exchanges(), 1);
    // A cooldown of 0 (the tests' default) makes every request its own run.
    assert_eq!(app.sims.graph.accepted_syncs(), 50);
}

#[tokio::test]
async fn different_tokens_are_exchanged_separately() {
    let app = spawn_app().await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(app.sims.entra.exchanges(), 2);
}

#[tokio::test]
async fn a_step_up_answers_401_with_the_claims_challenge_and_calls_no_graph() {
    let app = spawn_app().await;
    let spec = app.user();
    let claims = r#"{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}"#;
    app.sims.entra.set_failure(
        FailureScope::User(spec.object_id.clone()),
        Some(Failure::StepUp {
            claims: claims.into(),
        }),
    );
    let resp = app.post_sync(&app.sims.entra.mint(&spec)).await;
    assert_eq!(resp.status(), 401);
    let challenge = header(&resp, "www-authenticate");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains("error=\"insufficient_claims\""),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!(
            "authorization_uri=\"{}/{}/oauth2/v2.0/authorize\"",
            app.sims.entra.base_url(),
            app.tenant
        )),
        "{challenge}"
    );
    let b64 = challenge
        .split("claims=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&decoded).unwrap(),
        serde_json::from_str::<serde_json::Value>(claims).unwrap()
    );
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("step-up-required")
    );
    assert_eq!(app.sims.graph.sync_calls(), 0);
    assert_eq!(app.only_request_record()["code"], "step-up-required");
}

#[tokio::test]
async fn a_step_up_for_one_user_does_not_affect_another() {
    let app = spawn_app().await;
    let blocked = app.user();
    app.sims.entra.set_failure(
        FailureScope::User(blocked.object_id.clone()),
        Some(Failure::StepUp {
            claims: "{\"access_token\":{}}".into(),
        }),
    );
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&blocked)).await.status(),
        401
    );
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
}

#[tokio::test]
async fn identity_provider_errors_answer_503_with_retry_after() {
    let app = spawn_app().await;
    app.sims
        .entra
        .set_failure(FailureScope::Global, Some(Failure::ServerError));
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    assert!(header(&resp, "retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("identity-provider-unavailable")
    );
    // MSAL's rule: one retry after a server error, no more.
    assert_eq!(app.sims.entra.token_requests(), 2);
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn identity_provider_throttling_passes_its_retry_after_and_is_not_retried() {
    let app = spawn_app().await;
    app.sims.entra.set_failure(
        FailureScope::Global,
        Some(Failure::Throttle {
            retry_after_secs: 17,
        }),
    );
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "retry-after"), "17");
    assert_eq!(app.sims.entra.token_requests(), 1);
}

#[tokio::test]
async fn an_unreachable_identity_provider_answers_503_and_keys_keep_serving() {
    let app = spawn_app().await;
    let token = app.token();
    app.sims.entra.stop().await;
    let resp = app.post_sync(&token).await;
    // 503 from the exchange, not 401: the token was verified with the last good keys.
    assert_eq!(resp.status(), 503);
    assert!(!header(&resp, "retry-after").is_empty());
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("identity-provider-unavailable")
    );
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn missing_consent_answers_403_naming_the_permission() {
    let app = spawn_app().await;
    app.sims
        .entra
        .set_failure(FailureScope::Global, Some(Failure::ConsentRequired));
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 403);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("consent-required"));
    assert!(p["detail"]
        .as_str()
        .unwrap()
        .contains("DeviceManagementServiceConfig.ReadWrite.All"));
}

#[tokio::test]
async fn a_wrong_gateway_secret_is_an_operator_problem_not_the_callers() {
    let app = spawn_app_with(Setup {
        gateway_secret: Some("not-the-registered-secret".into()),
        ..Setup::default()
    })
    .await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("gateway-misconfigured")
    );
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn an_exchanged_token_is_not_reused_past_the_inbound_tokens_exp() {
    // The gateway accepts an inbound token up to callers.leeway_seconds (60 s) after its
    // `exp`, but the Graph token exchanged for it must end with it: a caller whose token
    // expired cannot keep acting through the cache.
    let app = spawn_app().await;
    // Start late in a second, so a cache lifetime counted in whole seconds from a truncated
    // "now" would outlive the real `exp` by most of a second.
    while chrono::Utc::now().timestamp_subsec_millis() < 700 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let exp = chrono::Utc::now().timestamp() + 2;
    let spec = TokenSpec {
        expires_at: Some(exp),
        ..app.user()
    };
    let token = app.sims.entra.mint(&spec);
    assert_eq!(app.post_sync(&token).await.status(), 202);
    assert_eq!(app.post_sync(&token).await.status(), 202);
    assert_eq!(
        app.sims.entra.exchanges(),
        1,
        "cached while the inbound token lives"
    );

    // Real time: token lifetimes are not on the scheduler's clock.
    while chrono::Utc::now().timestamp() < exp {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let resp = app.post_sync(&token).await;
    assert_eq!(resp.status(), 401, "not served from the cache");
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("invalid-token"));
    assert!(
        p["detail"].as_str().unwrap().contains("exchanged"),
        "refused by the new exchange, not by authentication: {p}"
    );
    assert_eq!(
        app.sims.entra.exchanges(),
        1,
        "Entra refused the expired one"
    );
    assert_eq!(app.sims.graph.sync_calls(), 2, "Graph was not called again");
}
