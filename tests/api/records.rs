//! The record format: every kind the gateway writes matches `docs/audit.schema.json`, whose
//! strictness catches a field that should not be there; admin events other modules record.

use crate::helpers::{assert_schema_valid, audit_schema, spawn_app_with, Setup};
use serde_json::{json, Value};
use sync_gateway::audit::{generate_key_pair, AdminEvent};

fn signing_key(dir: &std::path::Path) -> String {
    let (private, _) = generate_key_pair().unwrap();
    let p = dir.join("signing.pem");
    std::fs::write(&p, private).unwrap();
    format!("{:?}", p.display().to_string())
}

/// The shapes of issue 3's `run` records, as another module would append them.
fn run_records(request_id: &str) -> Vec<Value> {
    let run = uuid::Uuid::now_v7().to_string();
    let base = |event: &str| {
        json!({"v": 1, "kind": "run", "id": uuid::Uuid::now_v7(), "time": "2026-11-29T10:00:00Z",
               "run_id": run, "event": event, "action": "sync", "tenant_id": "t"})
    };
    let mut scheduled = base("scheduled");
    scheduled["scheduled_for"] = json!("2026-11-29T10:10:00Z");
    scheduled["request_ids"] = json!([request_id]);
    let mut started = base("started");
    started["acting_as"] =
        json!({"kind": "user", "tenant_id": "t", "object_id": "o", "upn": "u@x.example"});
    started["request_ids"] = json!([request_id]);
    let mut attempt = base("attempt");
    attempt["attempt"] = json!(1);
    attempt["client_request_id"] = json!(uuid::Uuid::new_v4().to_string());
    let mut finished = base("finished");
    finished["outcome"] = json!("succeeded");
    finished["upstream"] =
        json!({"status": 204, "request_id": "r", "client_request_id": "c", "duration_ms": 12});
    let mut abandoned = base("abandoned");
    abandoned["code"] = json!("upstream-busy");
    vec![scheduled, started, attempt, finished, abandoned]
}

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
    let request_id = app.audit_of_kind("request")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for r in run_records(&request_id) {
        app.audit.append_value(r).await.unwrap();
    }

    let records = app.audit_records();
    let kinds: std::collections::BTreeSet<String> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    for k in ["request", "intent", "run", "admin", "checkpoint"] {
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
    let mut started = run_records(&uuid::Uuid::now_v7().to_string()).remove(1);
    started["seq"] = json!(1);
    started["prev"] = json!("0".repeat(64));
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
