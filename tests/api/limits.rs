//! Rate limits: per caller and per tenant, with Retry-After and the draft-11 headers.

use crate::helpers::{header, problem_of, problem_type, spawn_app_with, Setup};

#[tokio::test]
async fn a_caller_over_its_limit_gets_429_with_the_three_headers() {
    let app =
        spawn_app_with(Setup::default().set("limits.per_caller", "{ per_minute = 2, burst = 2 }"))
            .await;
    let token = app.token();
    assert_eq!(app.post_sync(&token).await.status(), 202);
    assert_eq!(app.post_sync(&token).await.status(), 202);
    let resp = app.post_sync(&token).await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = header(&resp, "retry-after").parse().expect("whole seconds");
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(
        header(&resp, "ratelimit-policy"),
        "\"per-caller\";q=2;w=60, \"per-tenant\";q=6000;w=60"
    );
    assert_eq!(
        header(&resp, "ratelimit"),
        format!("\"per-caller\";r=0;t={retry_after}")
    );
    assert_eq!(problem_of(resp).await["type"], problem_type("rate-limited"));
    assert_eq!(app.sims.graph.sync_calls(), 2);
    let denied: Vec<_> = app
        .audit_of_kind("request")
        .into_iter()
        .filter(|r| r["code"] == "rate-limited")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["decision"], "denied");
}

#[tokio::test]
async fn one_callers_limit_does_not_touch_another_caller() {
    let app =
        spawn_app_with(Setup::default().set("limits.per_caller", "{ per_minute = 1, burst = 1 }"))
            .await;
    let first = app.token();
    assert_eq!(app.post_sync(&first).await.status(), 202);
    assert_eq!(app.post_sync(&first).await.status(), 429);
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
}

#[tokio::test]
async fn the_tenant_limit_covers_all_its_callers() {
    let app =
        spawn_app_with(Setup::default().set("limits.per_tenant", "{ per_minute = 2, burst = 2 }"))
            .await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 429);
    assert!(header(&resp, "ratelimit").starts_with("\"per-tenant\";r=0;t="));
    assert_eq!(app.sims.graph.sync_calls(), 2);
}

#[tokio::test]
async fn a_limited_request_makes_no_exchange() {
    let app =
        spawn_app_with(Setup::default().set("limits.per_caller", "{ per_minute = 1, burst = 1 }"))
            .await;
    let spec = app.user();
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&spec)).await.status(),
        202
    );
    // A second, different token of the same user: limited before it is exchanged.
    let mut again = spec.clone();
    again.lifetime = std::time::Duration::from_secs(1800);
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&again)).await.status(),
        429
    );
    assert_eq!(app.sims.entra.token_requests(), 1);
}
