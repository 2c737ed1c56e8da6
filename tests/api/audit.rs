//! The audit trail: fail closed, and no secret in it or in the logs.

use crate::helpers::{problem_of, problem_type, spawn_app, spawn_app_with, Setup};
use sync_gateway::sim::entra::{Failure, FailureScope};

#[tokio::test]
async fn an_unwritable_audit_trail_answers_503_and_graph_is_never_called() {
    // /dev/full accepts the open and fails every write with ENOSPC: a full disk.
    let app = spawn_app_with(Setup {
        audit_path: Some("/dev/full".into()),
        audit_broken_at_start: true,
        ..Setup::default()
    })
    .await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("audit-unavailable"));
    assert_eq!(app.sims.graph.sync_calls(), 0);
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn a_refused_caller_is_also_refused_service_when_the_trail_is_unwritable() {
    let app = spawn_app_with(Setup {
        audit_path: Some("/dev/full".into()),
        audit_broken_at_start: true,
        ..Setup::default()
    })
    .await;
    // Nothing is answered that was not recorded, not even a refusal.
    assert_eq!(app.post_sync("garbage").await.status(), 503);
}

#[tokio::test]
async fn no_token_or_secret_appears_in_logs_or_audit_across_every_outcome() {
    let app = spawn_app().await;
    // Success, refusals, a step-up and an IdP failure: each path logs something.
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let mut spec = app.user();
    spec.scopes = vec!["User.Read".into()];
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&spec)).await.status(),
        403
    );
    let token = app.token();
    let (rest, _) = token.rsplit_once('.').unwrap();
    assert_eq!(app.post_sync(&format!("{rest}.AAAA")).await.status(), 401);
    let stepped = app.user();
    app.sims.entra.set_failure(
        FailureScope::User(stepped.object_id.clone()),
        Some(Failure::StepUp {
            claims: "{\"access_token\":{}}".into(),
        }),
    );
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&stepped)).await.status(),
        401
    );
    app.sims
        .entra
        .set_failure(FailureScope::Global, Some(Failure::ServerError));
    assert_eq!(app.post_sync(&app.token()).await.status(), 503);
    assert!(app.sims.entra.issued_secrets().len() >= 6);
    app.assert_no_secret_leaked();
}
