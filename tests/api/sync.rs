//! `POST /sync` for a valid user: one exchange, one Graph call, 202, and the audit records.

use crate::helpers::{header, problem_of, problem_type, spawn_app};
use serde_json::Value;
use sync_gateway::sim::entra::TokenVersion;

#[tokio::test]
async fn a_valid_caller_triggers_exactly_one_authenticated_graph_sync() {
    let app = spawn_app().await;
    let resp = app.post_sync(&app.token()).await;

    assert_eq!(resp.status(), 202);
    assert!(header(&resp, "ratelimit-policy").contains("\"per-caller\";q=6000;w=60"));
    let location = header(&resp, "location");
    assert!(header(&resp, "ratelimit").starts_with("\"per-"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["action"], "sync");
    assert_eq!(body["state"], "succeeded");
    assert_eq!(body["upstream"]["status"], 204);
    let run_id = uuid::Uuid::parse_str(body["id"].as_str().unwrap()).unwrap();
    assert_eq!(run_id.get_version_num(), 7);
    assert_eq!(location, format!("/sync/runs/{run_id}"));
    assert_eq!(body["covers"]["count"], 1);

    let calls = app.sims.graph.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].authorization_ok);
    assert_eq!(calls[0].tenant_id.as_deref(), Some(app.tenant.as_str()));
    assert_eq!(
        calls[0].client_request_id.as_deref(),
        body["upstream"]["client_request_id"].as_str()
    );
    assert_eq!(app.sims.entra.exchanges(), 1);
}

#[tokio::test]
async fn the_audit_trail_records_the_run_before_the_call_and_the_outcome() {
    let app = spawn_app().await;
    let spec = app.user();
    let resp = app
        .post_sync_json(
            &app.sims.entra.mint(&spec),
            r#"{"reason":"laptop reimaged"}"#,
        )
        .await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    // The run's `finished` record may land just after the answer.
    app.wait_for_run_record(body["id"].as_str().unwrap(), "finished")
        .await;

    let records: Vec<Value> = app
        .audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "run" || r["kind"] == "request")
        .collect();
    assert_eq!(records.len(), 3, "{records:#?}");
    // The run's start is written (and fsynced) before Graph is called: it is the first of them.
    let started = &records[0];
    assert_eq!(started["kind"], "run");
    assert_eq!(started["event"], "started");
    assert_eq!(started["run_id"], body["id"]);
    assert_eq!(
        started["attempt"]["client_request_id"],
        body["upstream"]["client_request_id"]
    );
    assert_eq!(started["acting_as"]["object_id"], spec.object_id.as_str());
    let request = app.only_request_record();
    assert_eq!(started["covers"], serde_json::json!([request["id"]]));
    let finished = records
        .iter()
        .find(|r| r["event"] == "finished")
        .expect("a finished record");
    assert_eq!(finished["state"], "succeeded");
    assert_eq!(finished["attempts"][0]["status"], 204);

    assert_eq!(request["v"], 1);
    assert_eq!(request["action"], "sync");
    assert_eq!(request["decision"], "allowed");
    assert_eq!(request["status"], 202);
    assert_eq!(request["run_id"], body["id"]);
    assert_eq!(request["run_state"], "succeeded");
    assert_eq!(request["caller"]["kind"], "user");
    assert_eq!(request["caller"]["tenant_id"], app.tenant.as_str());
    assert_eq!(request["caller"]["object_id"], spec.object_id.as_str());
    assert_eq!(request["caller"]["upn"], spec.upn.as_deref().unwrap());
    assert_eq!(request["client_ip"], "127.0.0.1");
    assert_eq!(request["reason"], "laptop reimaged");
    assert_eq!(request["upstream"]["status"], 204);
    assert_eq!(
        request["upstream"]["request_id"],
        body["upstream"]["request_id"]
    );
    assert!(request["time"].as_str().unwrap().ends_with('Z'));
    assert!(request["duration_ms"].is_u64());
}

#[tokio::test]
async fn a_v1_token_is_accepted_like_a_v2_token() {
    let app = spawn_app().await;
    let mut spec = app.user();
    spec.version = TokenVersion::V1;
    let resp = app.post_sync(&app.sims.entra.mint(&spec)).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(app.sims.graph.accepted_syncs(), 1);
}

#[tokio::test]
async fn a_token_for_the_app_id_uri_audience_is_accepted() {
    let app = spawn_app().await;
    let mut spec = app.user();
    spec.audience = Some(crate::helpers::APP_ID_URI.into());
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&spec)).await.status(),
        202
    );
}

#[tokio::test]
async fn a_reason_longer_than_500_characters_is_refused_without_calling_graph() {
    let app = spawn_app().await;
    let body = serde_json::json!({ "reason": "x".repeat(501) }).to_string();
    let resp = app.post_sync_json(&app.token(), &body).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(problem_of(resp).await["type"], problem_type("bad-request"));
    assert_eq!(app.sims.graph.sync_calls(), 0);
    assert_eq!(app.only_request_record()["code"], "bad-request");
}

#[tokio::test]
async fn a_reason_of_exactly_500_characters_is_accepted() {
    let app = spawn_app().await;
    let body = serde_json::json!({ "reason": "é".repeat(500) }).to_string();
    assert_eq!(app.post_sync_json(&app.token(), &body).await.status(), 202);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_without_calling_graph() {
    let app = spawn_app().await;
    let resp = app.post_sync_json(&app.token(), "reason=because").await;
    assert_eq!(resp.status(), 400);
    let p = problem_of(resp).await;
    assert_eq!(p["status"], 400);
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_body_that_is_a_json_array_is_refused() {
    let app = spawn_app().await;
    for body in ["[]", "[\"a reason\"]", " [null]"] {
        let resp = app.post_sync_json(&app.token(), body).await;
        assert_eq!(resp.status(), 400, "{body}");
    }
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_body_with_unknown_fields_is_refused() {
    let app = spawn_app().await;
    let resp = app
        .post_sync_json(&app.token(), r#"{"reason":"x","device":"all"}"#)
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_body_larger_than_the_limit_is_refused_with_413() {
    let app = spawn_app().await;
    let body = format!(r#"{{"reason":"{}"}}"#, "x".repeat(10_000));
    let resp = app.post_sync_json(&app.token(), &body).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("payload-too-large")
    );
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn every_error_is_a_problem_whose_instance_is_the_audit_record() {
    let app = spawn_app().await;
    let resp = app.post_sync("not-a-jwt").await;
    let p = problem_of(resp).await;
    for field in ["type", "title", "status", "detail", "instance"] {
        assert!(!p[field].is_null(), "{field} missing in {p}");
    }
    let record = app.only_request_record();
    assert_eq!(
        p["instance"],
        format!("urn:uuid:{}", record["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn other_methods_and_paths_get_problem_answers() {
    let app = spawn_app().await;
    let get = app
        .http
        .get(format!("{}/sync", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(header(&get, "allow"), "POST");
    let missing = app
        .http
        .post(format!("{}/nope", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(problem_of(missing).await["type"], problem_type("not-found"));
}
