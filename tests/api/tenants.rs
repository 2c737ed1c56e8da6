//! Where exchanges go: the caller's own tenant authority when several tenants are allowed, and
//! the national cloud's Graph resource in the exchanged scope.

use crate::helpers::{problem_of, problem_type, spawn_app_with, Prepare, Setup};
use sync_gateway::sim::entra::TokenSpec;

fn two_tenants() -> Setup {
    Setup {
        prepare: Some(Box::new(|p: &Prepare<'_>| {
            vec![(
                "callers.allowed_tenants".into(),
                format!("[\"{}\", \"{}\"]", p.tenant, p.foreign_tenant),
            )]
        })),
        ..Setup::default()
    }
}

#[tokio::test]
async fn a_caller_from_a_second_allowed_tenant_is_exchanged_at_its_own_tenant() {
    let app = spawn_app_with(two_tenants()).await;
    let second = TokenSpec::user(&app.foreign_tenant, uuid::Uuid::new_v4().to_string());
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&second)).await.status(),
        202
    );
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let tenants: Vec<String> = app
        .sims
        .entra
        .token_request_log()
        .into_iter()
        .map(|r| r.tenant)
        .collect();
    assert_eq!(
        tenants,
        vec![app.foreign_tenant.clone(), app.tenant.clone()]
    );
    let graph_tenants: Vec<Option<String>> = app
        .sims
        .graph
        .calls()
        .into_iter()
        .map(|c| c.tenant_id)
        .collect();
    assert_eq!(
        graph_tenants,
        vec![Some(app.foreign_tenant.clone()), Some(app.tenant.clone())]
    );
}

#[tokio::test]
async fn each_allowed_tenant_has_its_own_rate_limit() {
    let mut setup = two_tenants().set("limits.per_tenant", "{ per_minute = 1, burst = 1 }");
    setup.config.push((
        "limits.per_caller".into(),
        "{ per_minute = 60, burst = 10 }".into(),
    ));
    let app = spawn_app_with(setup).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(app.post_sync(&app.token()).await.status(), 429);
    let second = TokenSpec::user(&app.foreign_tenant, uuid::Uuid::new_v4().to_string());
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&second)).await.status(),
        202
    );
}

/// A simulated US Government cloud: Entra names Graph `https://graph.microsoft.us`.
fn usgov_sims() -> Setup {
    Setup {
        sim: Some(Box::new(|o| {
            o.graph_resource = Some("https://graph.microsoft.us".into());
            o.cloud_instance_name = "microsoftonline.us".into();
        })),
        ..Setup::default()
    }
}

#[tokio::test]
async fn a_national_cloud_exchanges_for_its_own_graph_resource() {
    // The hosts stay the simulators' (explicit keys override the cloud's); the scope follows
    // the cloud.
    let app = spawn_app_with(usgov_sims().set("entra.cloud", "\"usgov\"")).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(app.sims.entra.exchanges(), 1);
    assert_eq!(app.sims.graph.accepted_syncs(), 1);
}

#[tokio::test]
async fn without_its_cloud_a_gateway_asks_a_national_cloud_for_the_wrong_graph() {
    let app = spawn_app_with(usgov_sims()).await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 502);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("exchange-failed"));
    assert!(p["detail"].as_str().unwrap().contains("AADSTS70011"), "{p}");
    assert_eq!(app.sims.graph.sync_calls(), 0);
}
