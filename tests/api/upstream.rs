//! Graph's answers as the caller sees them.

use crate::helpers::{header, problem_of, problem_type, spawn_app_with, Setup};
use sync_gateway::sim::graph::{GraphMode, GraphResponse};

fn graph(mode: GraphResponse) -> Setup {
    Setup {
        graph_mode: GraphMode::Always(mode),
        ..Setup::default()
    }
}

#[tokio::test]
async fn a_graph_server_error_answers_502_naming_graphs_request_id() {
    let app = spawn_app_with(graph(GraphResponse::Status(500))).await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 502);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("upstream-failed"));
    let record = app.only_request_record();
    let rid = record["upstream"]["request_id"].as_str().unwrap();
    assert!(p["detail"].as_str().unwrap().contains(rid), "{p}");
    assert_eq!(record["upstream"]["status"], 500);
    assert_eq!(app.sims.graph.sync_calls(), 1, "5xx is not retried here");
}

#[tokio::test]
async fn a_hanging_graph_answers_504_after_the_timeout() {
    let app = spawn_app_with(graph(GraphResponse::Hang).set("graph.timeout_seconds", "1")).await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("upstream-timeout")
    );
    let record = app.only_request_record();
    assert!(record["upstream"]["status"].is_null());
    assert_eq!(record["status"], 504);
}

#[tokio::test]
async fn a_graph_conflict_is_passed_through_as_409() {
    let app = spawn_app_with(graph(GraphResponse::Conflict)).await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 409);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("upstream-busy"));
    assert_eq!(p["upstream_status"], 409);
}

#[tokio::test]
async fn a_graph_429_is_passed_through_with_its_retry_after() {
    let app = spawn_app_with(graph(GraphResponse::TooMany {
        retry_after_secs: Some(120),
    }))
    .await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), "120");
    assert_eq!(problem_of(resp).await["upstream_status"], 429);
}

#[tokio::test]
async fn intunes_ten_minute_rule_reaches_the_caller_as_429_until_scheduling_exists() {
    let app = spawn_app_with(Setup {
        graph_mode: GraphMode::Normal,
        ..Setup::default()
    })
    .await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    assert_eq!(app.post_sync(&app.token()).await.status(), 429);
    assert_eq!(app.sims.graph.accepted_syncs(), 1);
}

#[tokio::test]
async fn an_unreachable_graph_answers_502() {
    let app = spawn_app_with(Setup::default()).await;
    app.sims.graph.stop().await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("upstream-failed")
    );
}

#[tokio::test]
async fn the_upstream_path_is_configuration() {
    let app = spawn_app_with(Setup::default().set(
        "actions.sync.upstream_path",
        "\"/v1.0/not/the/sync/action\"",
    ))
    .await;
    let resp = app.post_sync(&app.token()).await;
    // The simulated Graph does not serve that path and answers as Graph does for an unknown
    // segment (400): the gateway called the configured path, not the default.
    assert_eq!(resp.status(), 502);
    assert_eq!(app.sims.graph.sync_calls(), 0);
    assert_eq!(app.only_request_record()["upstream"]["status"], 400);
}
