//! The record format: every kind the gateway writes matches `docs/audit.schema.json`, whose
//! strictness catches a field that should not be there; admin events other modules record.

use crate::helpers::{assert_schema_valid, audit_schema, spawn_app, spawn_app_with, Setup};
use serde_json::json;
use sync_gateway::audit::{generate_key_pair, AdminEvent};

fn signing_key(dir: &std::path::Path) -> String {
    let (private, _) = generate_key_pair().unwrap();
    let p = dir.join("signing.pem");
    std::fs::write(&p, private).unwrap();
    format!("{:?}", p.display().to_string())
}

/// The shapes of issue 3's `run` records, as another module would append them.
#[tokio::test]
async fn every_kind_of_record_the_gateway_writes_matches_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(
        Setup::default()
            .set("audit.signing_key_file", &signing_key(dir.path()))
            .set("audit.checkpoint_every_records", "2"),
    )
    .await;
    assert_eq!(
        app.post_sync_json(&app.token(), r#"{"reason":"reimaged"}"#)
            .await
            .status(),
        202
    );
    assert_eq!(app.post_sync("not-a-token").await.status(), 401);
    assert_eq!(
        app.post_sync_json(&app.token(), r#"{"device":"all"}"#)
            .await
            .status(),
        400
    );
    app.audit
        .admin(AdminEvent::IdentityLogin {
            identity: "22222222-2222-2222-2222-222222222222".into(),
            tenant_id: app.tenant.clone(),
            method: "client_secret".into(),
            outcome: "succeeded".into(),
        })
        .await
        .unwrap();
    app.audit
        .admin(AdminEvent::KeyRotation {
            key: "client-secret".into(),
            previous_key_id: Some("0123456789abcdef".into()),
            key_id: "fedcba9876543210".into(),
        })
        .await
        .unwrap();
    // Scheduled, rescheduled, merged and abandoned run records are validated by the runs
    // specifications, whose trails the helper checks against the schema when they end.

    let records = app.audit_records();
    let kinds: std::collections::BTreeSet<String> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    for k in ["request", "run", "admin", "checkpoint"] {
        assert!(kinds.contains(k), "no {k} record in {kinds:?}");
    }
    for r in &records {
        assert_schema_valid(r);
    }
}

#[tokio::test]
async fn a_record_with_a_field_the_schema_does_not_know_is_invalid() {
    let app = spawn_app_with(Setup::default()).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let request = app.audit_of_kind("request").remove(0);
    assert!(audit_schema().is_valid(&request));

    let mut leaked = request.clone();
    leaked["authorization"] = json!("Bearer eyJ...");
    assert!(!audit_schema().is_valid(&leaked));
    let mut nested = request.clone();
    nested["caller"]["token"] = json!("eyJ...");
    assert!(!audit_schema().is_valid(&nested));
    let mut start = app
        .audit_of_kind("admin")
        .into_iter()
        .find(|r| r["event"] == "start")
        .unwrap();
    start["client_secret"] = json!("s");
    assert!(!audit_schema().is_valid(&start));
}

#[tokio::test]
async fn a_run_start_without_the_identity_acted_as_is_invalid() {
    let app = spawn_app().await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let mut started = app
        .audit_of_kind("run")
        .into_iter()
        .find(|r| r["event"] == "started")
        .unwrap();
    assert!(audit_schema().is_valid(&started));
    started.as_object_mut().unwrap().remove("acting_as");
    assert!(!audit_schema().is_valid(&started));
}

#[tokio::test]
async fn the_start_and_the_configuration_are_recorded_first() {
    let app = spawn_app_with(Setup::default()).await;
    let records = app.audit_records();
    assert_eq!(records[0]["event"], "start");
    assert_eq!(records[0]["sink"], "file");
    assert_eq!(records[0]["seq"], 1);
    assert_eq!(records[1]["event"], "config_loaded");
    assert_eq!(records[1]["config_sha256"].as_str().unwrap().len(), 64);
}
