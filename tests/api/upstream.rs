//! Graph's answers as the caller sees them.

use crate::helpers::{problem_of, problem_type, spawn_app_with, Setup};
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
async fn a_graph_redirect_is_not_followed_and_fails_the_run() {
    // Pointing back at the action itself: a client that followed would call it again.
    let app = spawn_app_with(Setup::default()).await;
    let location = format!(
        "{}/beta/deviceManagement/windowsAutopilotSettings/sync",
        app.sims.graph.base_url()
    );
    app.sims
        .graph
        .set_mode(GraphMode::Always(GraphResponse::Redirect(location)));
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("upstream-failed")
    );
    assert_eq!(app.sims.graph.sync_calls(), 1, "the redirect was followed");
    assert_eq!(app.only_request_record()["upstream"]["status"], 307);
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
async fn a_graph_that_keeps_answering_409_fails_the_run_after_bounded_waits() {
    let app = spawn_app_with(graph(GraphResponse::Conflict)).await;
    let token = app.token();
    let resp = app.post_sync(&token).await;
    // Not an error to the caller: the run waits and tries again.
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["state"], "scheduled");
    let run = crate::runs::wait_for_final(&app, &token, body["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "failed");
    assert_eq!(run["error"]["kind"], "upstream-busy");
    let tries = sync_gateway::runs::schedule::MAX_REQUEUES as usize + 1;
    assert_eq!(app.sims.graph.sync_calls(), tries);
    assert_eq!(run["upstream"]["attempts"].as_array().unwrap().len(), tries);
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
