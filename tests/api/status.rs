//! `GET /sync/status` asks Entra for no more than the sync itself needs.

use crate::helpers::{spawn_app_with, Setup, TestApp};
use sync_gateway::sim::entra::{PERMISSION_READ, PERMISSION_READ_WRITE};

/// A world whose tenants consented to the sync's permission only.
fn consented_to_the_sync_only() -> Setup {
    Setup {
        sim: Some(Box::new(|o| {
            o.consented_permissions = vec![PERMISSION_READ_WRITE.to_string()];
        })),
        ..Setup::default()
    }
}

async fn get_status(app: &TestApp, token: &str) -> reqwest::Response {
    app.get_as("/sync/status", token).await
}

#[tokio::test]
async fn a_tenant_that_consented_only_to_the_sync_can_read_the_status() {
    let app = spawn_app_with(consented_to_the_sync_only()).await;
    let token = app.token();
    assert_eq!(get_status(&app, &token).await.status(), 200);
}

#[tokio::test]
async fn the_status_reuses_the_token_exchanged_for_the_sync() {
    let app = spawn_app_with(Setup::default()).await;
    let token = app.token();
    assert_eq!(app.post_sync(&token).await.status(), 202);
    assert_eq!(get_status(&app, &token).await.status(), 200);
    assert_eq!(app.sims.entra.exchanges(), 1);
}

#[tokio::test]
async fn graph_status_permission_names_the_permission_the_status_asks_for() {
    let app = spawn_app_with(
        consented_to_the_sync_only()
            .set("graph.status_permission", &format!("\"{PERMISSION_READ}\"")),
    )
    .await;
    let token = app.token();
    assert_eq!(app.post_sync(&token).await.status(), 202);
    // The named read permission was never consented to, so Entra refuses that exchange.
    let resp = get_status(&app, &token).await;
    assert_eq!(resp.status(), 403);
    let p: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        p["type"],
        crate::helpers::problem_type("consent-required"),
        "{p}"
    );
    assert!(
        p["detail"].as_str().unwrap().contains(PERMISSION_READ),
        "{p}"
    );
}
