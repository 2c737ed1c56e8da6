//! Runs and Intune's 10-minute rule: every accepted request is covered by a run that starts
//! after it, runs of one tenant are at least the cooldown apart, and no caller sees Graph's 429.
//! The simulated Graph enforces a 2 s cooldown here, as Intune enforces 10 minutes.
//!
//! The timeline tests run in virtual time (`Setup::in_virtual_time`): the scheduler and the
//! simulated Graph share a clock that stands still until the test advances it, so they assert
//! exact instants (`not_before` is exactly `started_at` + the cooldown) and skip the cooldown
//! without sleeping. Tests about token lifetimes or the pauses inside one run stay in real
//! time: those are real time in the gateway too.

use crate::helpers::{header, problem_of, problem_type, spawn_app_with, Setup, TestApp};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use sync_gateway::clock::Clock;
use sync_gateway::runs::schedule::LEARNED_MARGIN;
use sync_gateway::sim::entra::TokenSpec;
use sync_gateway::sim::graph::{GraphMode, GraphResponse};

const COOLDOWN: Duration = Duration::from_secs(2);
const STORM_COOLDOWN: u64 = 5;

/// `GET /sync/runs/{id}` with `token`.
pub async fn get_run(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.get_as(&format!("/sync/runs/{id}"), token).await
}

/// Polls the run until it reaches a final state (at most 30 s).
pub async fn wait_for_final(app: &TestApp, token: &str, id: &str) -> Value {
    for _ in 0..600 {
        let run: Value = get_run(app, token, id).await.json().await.unwrap();
        if ["succeeded", "failed", "abandoned"].contains(&run["state"].as_str().unwrap_or("")) {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {id} did not finish");
}

/// Graph's status for each attempt of `run`, in order.
fn attempt_statuses(run: &Value) -> Vec<u64> {
    run["upstream"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

fn delta(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap()
}

/// A moment of real time for the gateway to act on what a test just did (e.g. advancing the
/// clock), before asserting that it did nothing.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Waits in real time (token lifetimes are real, not on the scheduler's clock) until Entra
/// counts a token with this `exp` (unix seconds) as expired.
async fn wait_until_expired(exp: i64) {
    while Utc::now().timestamp() < exp {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Advances the clock to just before `t`, checks that Graph saw no new call, then to `t`:
/// the run due at `t` is not a moment early.
async fn advance_to(app: &TestApp, t: DateTime<Utc>) {
    let calls = app.sims.graph.sync_calls();
    let early = (t - app.clock().now() - chrono::TimeDelta::milliseconds(1))
        .to_std()
        .unwrap();
    app.clock().advance(early);
    settle().await;
    assert_eq!(app.sims.graph.sync_calls(), calls, "a run went out early");
    app.clock().advance(Duration::from_millis(1));
}

async fn post(app: &TestApp, token: &str) -> Value {
    let resp = app.post_sync(token).await;
    assert_eq!(resp.status(), 202);
    resp.json().await.unwrap()
}

/// Every call Graph accepted is at least the cooldown after the previous one, and Graph never
/// had to refuse one.
fn assert_spacing_and_no_refusals(app: &TestApp) {
    assert_spacing_and_no_refusals_with(app, COOLDOWN)
}

fn assert_spacing_and_no_refusals_with(app: &TestApp, cooldown: Duration) {
    let calls = app.sims.graph.calls();
    assert!(
        calls.iter().all(|c| c.status != 429 && c.status != 409),
        "{calls:#?}"
    );
    for pair in calls.windows(2) {
        assert!(pair[1].at - pair[0].at >= chrono::TimeDelta::from_std(cooldown).unwrap());
    }
}

#[tokio::test]
async fn a_storm_of_1000_requests_from_100_users_makes_one_call_and_one_trailing_run() {
    // A cooldown long enough that the whole storm lands inside it even on a slow machine, and
    // room for all 1000 connections at once: beyond server.max_connections (default 768) the
    // rest would wait for idle keep-alive connections to close and land after the cooldown.
    // In virtual time the whole storm lands inside the cooldown however slow the machine is.
    let app = spawn_app_with(
        Setup::intune(STORM_COOLDOWN)
            .set("server.max_connections", "1100")
            .in_virtual_time(),
    )
    .await;
    let tokens: Vec<String> = (0..100).map(|_| app.token()).collect();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (http, url, token) = (
            app.http.clone(),
            format!("{}/sync", app.address),
            tokens[i % 100].clone(),
        );
        set.spawn(async move {
            let r = http.post(url).bearer_auth(token).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        });
    }
    let answers = set.join_all().await;
    assert!(answers.iter().all(|(s, _)| *s == 202));
    let runs: HashSet<&str> = answers
        .iter()
        .map(|(_, b)| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "one immediate run and one trailing run");
    let immediate: Vec<&Value> = answers
        .iter()
        .filter(|(_, b)| b["state"] == "succeeded")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        immediate.len(),
        1,
        "exactly one request started a run and saw it succeed"
    );
    let first = immediate[0];
    let trailing = answers
        .iter()
        .map(|(_, b)| b)
        .find(|b| b["id"] != first["id"])
        .unwrap();
    assert!(
        answers
            .iter()
            .all(|(_, b)| b["id"] == first["id"] || b["state"] == "scheduled"),
        "every other request joined the trailing run"
    );
    let cooldown = delta(Duration::from_secs(STORM_COOLDOWN));
    let due = time(&first["started_at"]) + cooldown;
    assert_eq!(time(&trailing["not_before"]), due);
    assert_eq!(app.sims.graph.sync_calls(), 1, "one immediate call");

    // The trailing run goes out exactly when the cooldown ends, not a moment before.
    advance_to(&app, due).await;
    let run = wait_for_final(&app, &tokens[0], trailing["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded");
    assert_eq!(time(&run["started_at"]), due);
    assert_eq!(
        app.sims.graph.sync_calls(),
        2,
        "one immediate, one trailing"
    );
    assert_eq!(app.sims.graph.accepted_syncs(), 2);
    assert_spacing_and_no_refusals_with(&app, Duration::from_secs(STORM_COOLDOWN));
    // A run's `finished` record may land just after it is seen final.
    for run in [first, trailing] {
        app.wait_for_run_record(run["id"].as_str().unwrap(), "finished")
            .await;
    }
    let covered: usize = runs
        .iter()
        .map(|id| {
            app.audit_of_kind("run")
                .into_iter()
                .find(|r| r["run_id"] == *id && r["event"] == "finished")
                .unwrap()["covers"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(covered, 1000);
    assert_every_request_started_before_its_run(&app);
}

/// Each request record's run started (its `started` record) after the request arrived.
fn assert_every_request_started_before_its_run(app: &TestApp) {
    let started: HashMap<String, DateTime<Utc>> = app
        .audit_of_kind("run")
        .into_iter()
        .filter(|r| r["event"] == "started")
        .map(|r| (r["run_id"].as_str().unwrap().to_string(), time(&r["time"])))
        .collect();
    // Reads of a run (`GET /sync/runs/{id}`) name it too, but only sync requests join one.
    for req in app
        .audit_of_kind("request")
        .into_iter()
        .filter(|r| r["route"] == "/sync")
    {
        let run = req["run_id"].as_str().unwrap();
        assert!(
            started[run] >= time(&req["time"]),
            "run {run} started before a request it covers"
        );
    }
}

#[tokio::test]
async fn requests_within_the_cooldown_join_one_trailing_run_that_acts_as_the_latest() {
    let app = spawn_app_with(Setup::intune(2).in_virtual_time()).await;
    let first = post(&app, &app.token()).await;
    assert_eq!(first["state"], "succeeded");

    app.clock().advance(Duration::from_millis(500));
    let second = post(&app, &app.token()).await;
    assert_eq!(second["state"], "scheduled");
    let not_before = time(&second["not_before"]);
    assert_eq!(not_before, time(&first["started_at"]) + delta(COOLDOWN));

    app.clock().advance(Duration::from_millis(500));
    let latest = app.user();
    let third_token = app.sims.entra.mint(&latest);
    let third = post(&app, &third_token).await;
    assert_eq!(third["id"], second["id"], "joined the scheduled run");
    assert_eq!(third["covers"]["count"], 2);
    assert_eq!(time(&third["not_before"]), not_before);

    advance_to(&app, not_before).await;
    let trailing = wait_for_final(&app, &third_token, second["id"].as_str().unwrap()).await;
    assert_eq!(trailing["state"], "succeeded");
    assert_eq!(time(&trailing["started_at"]), not_before);
    assert_eq!(
        trailing["acting_as"]["object_id"],
        latest.object_id.as_str()
    );
    let calls = app.sims.graph.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].object_id.as_deref(),
        Some(latest.object_id.as_str())
    );

    // A fourth request after the second run started gets a third run, a cooldown later.
    let fourth = post(&app, &app.token()).await;
    assert_eq!(fourth["state"], "scheduled");
    assert_ne!(fourth["id"], second["id"]);
    let third_due = time(&trailing["started_at"]) + delta(COOLDOWN);
    assert_eq!(time(&fourth["not_before"]), third_due);
    advance_to(&app, third_due).await;
    let third_run = wait_for_final(&app, &third_token, fourth["id"].as_str().unwrap()).await;
    assert_eq!(third_run["state"], "succeeded");
    assert_eq!(time(&third_run["started_at"]), third_due);
    assert_spacing_and_no_refusals(&app);
    assert_every_request_started_before_its_run(&app);
}

/// A first run that Graph refuses with `answers` fails (the caller sees `status` and `kind`);
/// the tenant's next run still waits a full cooldown from the failed run's start: a failure
/// after the call was sent does not prove Graph did not start a sync.
async fn a_failed_run_holds_the_next_run_a_cooldown_after_its_start(
    answers: Vec<GraphResponse>,
    status: u16,
    kind: &str,
) {
    let app = spawn_app_with(Setup::intune(2).in_virtual_time()).await;
    let attempts = answers.len();
    app.sims.graph.push_responses(answers);
    let token = app.token();
    let resp = app.post_sync(&token).await;
    assert_eq!(resp.status(), status);
    let failed = problem_of(resp).await["run"].clone();
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["error"]["kind"], kind);
    assert_eq!(attempt_statuses(&failed).len(), attempts);
    let started_at = time(&failed["started_at"]);

    // Reported: the next request is scheduled exactly a cooldown after the failed run started.
    let next = post(&app, &token).await;
    assert_eq!(next["state"], "scheduled");
    let due = started_at + delta(COOLDOWN);
    assert_eq!(time(&next["not_before"]), due);
    assert!(time(&next["not_before"]) >= started_at + delta(COOLDOWN));

    // Respected: nothing reaches Graph before then, and the run goes out at that instant.
    advance_to(&app, due).await;
    let run = wait_for_final(&app, &token, next["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded");
    assert_eq!(time(&run["started_at"]), due);
    let calls = app.sims.graph.calls();
    assert_eq!(calls.len(), attempts + 1);
    assert!(calls[attempts].at - calls[0].at >= delta(COOLDOWN));
    assert_every_request_started_before_its_run(&app);
}

#[tokio::test]
async fn a_run_refused_with_403_holds_the_next_run_a_cooldown_after_its_start() {
    a_failed_run_holds_the_next_run_a_cooldown_after_its_start(
        vec![GraphResponse::Status(403)],
        403,
        "upstream-forbidden",
    )
    .await;
}

#[tokio::test]
async fn a_run_that_spent_its_retry_budget_on_503s_holds_the_next_run_a_cooldown_after_its_start() {
    // max_attempts is 3 in the tests.
    a_failed_run_holds_the_next_run_a_cooldown_after_its_start(
        vec![GraphResponse::Status(503); 3],
        502,
        "upstream-failed",
    )
    .await;
}

#[tokio::test]
async fn a_request_while_the_first_run_is_running_is_scheduled_a_cooldown_after_its_start() {
    // Graph's answer is held while the second request arrives; a generous timeout so that
    // holding it cannot time the call out on a slow machine.
    let app = spawn_app_with(
        Setup::intune(2)
            .set("graph.timeout_seconds", "20")
            .in_virtual_time(),
    )
    .await;
    app.sims.graph.hold_answers();
    let token = app.token();
    let first = {
        let (http, url, token) = (
            app.http.clone(),
            format!("{}/sync", app.address),
            token.clone(),
        );
        tokio::spawn(async move {
            let r = http.post(url).bearer_auth(token).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    for _ in 0..400 {
        if app.sims.graph.sync_calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(app.sims.graph.sync_calls(), 1, "the first run called Graph");
    let status: Value = app
        .get_as("/sync/status", &token)
        .await
        .json()
        .await
        .unwrap();
    let running = &status["gateway"]["running"];
    assert_eq!(running["state"], "running");
    let started_at = time(&running["started_at"]);

    // Reported while the first run is still running.
    let second = post(&app, &token).await;
    assert_eq!(second["state"], "scheduled");
    assert_ne!(second["id"], running["id"]);
    let due = started_at + delta(COOLDOWN);
    assert_eq!(time(&second["not_before"]), due);
    assert!(time(&second["not_before"]) >= started_at + delta(COOLDOWN));

    app.sims.graph.release_answers();
    let (code, first) = first.await.unwrap();
    assert_eq!(code, 202);
    assert_eq!(first["id"], running["id"]);
    assert_eq!(first["state"], "succeeded");

    // Respected: the second run goes out exactly a cooldown after the first started.
    advance_to(&app, due).await;
    let run = wait_for_final(&app, &token, second["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded");
    assert_eq!(time(&run["started_at"]), due);
    assert_eq!(app.sims.graph.sync_calls(), 2);
    assert_spacing_and_no_refusals(&app);
    assert_every_request_started_before_its_run(&app);
}

#[tokio::test]
async fn two_tenants_keep_separate_schedules() {
    // Virtual time: however slow the machine, the third request lands inside the cooldown.
    let app = spawn_app_with(Setup::intune(2).in_virtual_time()).await;
    assert_eq!(post(&app, &app.token()).await["state"], "succeeded");
    let other = app.sims.entra.mint(&TokenSpec::user(
        &app.tenant2,
        uuid::Uuid::new_v4().to_string(),
    ));
    assert_eq!(post(&app, &other).await["state"], "succeeded");
    assert_eq!(post(&app, &app.token()).await["state"], "scheduled");
    assert_eq!(app.sims.graph.accepted_syncs(), 2);
}

#[tokio::test]
async fn a_sync_from_the_portal_reschedules_the_run_from_graphs_last_trigger() {
    let app = spawn_app_with(Setup::intune(2).in_virtual_time()).await;
    let token = app.token();
    assert_eq!(post(&app, &token).await["state"], "succeeded");
    app.clock().advance(COOLDOWN + Duration::from_millis(200));

    // Someone presses Sync in the Intune portal: the gateway does not know.
    let pressed = app.clock().now();
    app.sims.graph.set_external_sync(&app.tenant, pressed);
    let resp = app.post_sync(&token).await;
    assert_eq!(resp.status(), 202, "Graph's 429 is not the caller's error");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["state"], "scheduled");
    // Graph's last trigger plus the cooldown, and the margin for times learned from Graph.
    let due = pressed + delta(COOLDOWN + LEARNED_MARGIN);
    assert_eq!(time(&body["not_before"]), due);
    assert!(time(&body["not_before"]) >= pressed + delta(COOLDOWN));

    advance_to(&app, due).await;
    let run = wait_for_final(&app, &token, body["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded");
    let statuses = attempt_statuses(&run);
    assert_eq!(statuses, vec![429, 204]);
    let accepted = app
        .sims
        .graph
        .calls()
        .into_iter()
        .rfind(|c| c.status == 204)
        .unwrap();
    assert!(accepted.at >= pressed + delta(COOLDOWN));
    assert_eq!(accepted.at, due);
    assert!(app
        .audit_of_kind("run")
        .iter()
        .any(|r| r["run_id"] == run["id"] && r["event"] == "rescheduled"));
}

#[tokio::test]
async fn a_sync_in_progress_is_waited_out_then_the_run_succeeds() {
    let app = spawn_app_with(Setup::intune(2)).await;
    app.sims.graph.push_responses([GraphResponse::Conflict]);
    let token = app.token();
    let body = post(&app, &token).await;
    assert_eq!(body["state"], "scheduled");
    let run = wait_for_final(&app, &token, body["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded");
    let statuses = attempt_statuses(&run);
    assert_eq!(statuses, vec![409, 204]);
    assert!(
        app.sims.graph.settings_reads() >= 2,
        "the status was polled"
    );
}

#[tokio::test]
async fn two_503s_then_204_make_three_attempts_with_retry_attempt_headers() {
    let app = spawn_app_with(Setup::default()).await;
    app.sims
        .graph
        .push_responses([GraphResponse::Status(503), GraphResponse::Status(503)]);
    let token = app.token();
    let body = post(&app, &token).await;
    let run = wait_for_final(&app, &token, body["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded");
    assert_eq!(attempt_statuses(&run), vec![503, 503, 204]);
    let attempts = run["upstream"]["attempts"].as_array().unwrap();
    let ids: HashSet<&str> = attempts
        .iter()
        .map(|a| a["client_request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "a fresh client-request-id per attempt");
    let calls = app.sims.graph.calls();
    let retry_headers: Vec<Option<u32>> = calls.iter().map(|c| c.retry_attempt).collect();
    assert_eq!(retry_headers, vec![None, Some(1), Some(2)]);
    // Every attempt was recorded durably before it was sent.
    let pre_call: Vec<Value> = app
        .audit_of_kind("run")
        .into_iter()
        .filter(|r| r["event"] == "started" || r["event"] == "attempt")
        .collect();
    assert_eq!(pre_call.len(), 3);
    for (record, call) in pre_call.iter().zip(&calls) {
        assert_eq!(
            record["attempt"]["client_request_id"].as_str(),
            call.client_request_id.as_deref()
        );
    }
}

#[tokio::test]
async fn graphs_retry_after_is_honored_between_attempts() {
    let app = spawn_app_with(Setup::default()).await;
    app.sims
        .graph
        .push_responses([GraphResponse::StatusRetryAfter(503, 1)]);
    let token = app.token();
    let body = post(&app, &token).await;
    let run = wait_for_final(&app, &token, body["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded");
    let calls = app.sims.graph.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls[1].at - calls[0].at >= chrono::TimeDelta::seconds(1));
}

#[tokio::test]
async fn an_exhausted_retry_budget_fails_the_run_and_callers_see_why() {
    let app = spawn_app_with(Setup {
        graph_mode: GraphMode::Always(GraphResponse::Status(503)),
        ..Setup::default()
    })
    .await;
    let token = app.token();
    let resp = app.post_sync(&token).await;
    assert_eq!(resp.status(), 502);
    let location = header(&resp, "location");
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("upstream-failed"));
    assert_eq!(p["run"]["state"], "failed");
    assert_eq!(
        location,
        format!("/sync/runs/{}", p["run"]["id"].as_str().unwrap())
    );
    // max_attempts is 3 in the tests.
    assert_eq!(app.sims.graph.sync_calls(), 3);
    let run: Value = get_run(&app, &token, p["run"]["id"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(run["state"], "failed");
    assert_eq!(run["error"]["kind"], "upstream-failed");
    assert_eq!(run["upstream"]["attempts"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_restart_inside_the_cooldown_does_not_fire_a_sync_early() {
    let mut app = spawn_app_with(Setup::intune(2).in_virtual_time()).await;
    let token = app.token();
    let first = post(&app, &token).await;
    assert_eq!(first["state"], "succeeded");
    app.restart().await;
    let after_restart = post(&app, &token).await;
    assert_eq!(after_restart["state"], "scheduled");
    let not_before = time(&after_restart["not_before"]);
    assert!(not_before >= time(&first["started_at"]) + delta(COOLDOWN));
    // The new process learned it from Graph's last trigger (the first run's, to the ms).
    assert_eq!(
        not_before,
        time(&first["started_at"]) + delta(COOLDOWN + LEARNED_MARGIN)
    );
    assert_eq!(app.sims.graph.sync_calls(), 1);
    advance_to(&app, not_before).await;
    let run = wait_for_final(&app, &token, after_restart["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded");
    assert_eq!(time(&run["started_at"]), not_before);
    assert_spacing_and_no_refusals(&app);
}

#[tokio::test]
async fn shutdown_records_a_scheduled_run_as_abandoned_with_its_requests() {
    let mut app = spawn_app_with(Setup::intune(600)).await;
    assert_eq!(post(&app, &app.token()).await["state"], "succeeded");
    let waiting = post(&app, &app.token()).await;
    assert_eq!(waiting["state"], "scheduled");
    app.stop().await;
    let abandoned: Vec<Value> = app
        .audit_of_kind("run")
        .into_iter()
        .filter(|r| r["event"] == "abandoned")
        .collect();
    assert_eq!(abandoned.len(), 1);
    assert_eq!(abandoned[0]["run_id"], waiting["id"]);
    assert_eq!(abandoned[0]["state"], "abandoned");
    let covered = abandoned[0]["covers"].as_array().unwrap();
    assert_eq!(covered.len(), 1);
    let request = app
        .audit_of_kind("request")
        .into_iter()
        .find(|r| r["run_id"] == waiting["id"])
        .unwrap();
    assert_eq!(covered[0], request["id"]);
    assert_eq!(app.sims.graph.sync_calls(), 1);
}

#[tokio::test]
async fn a_trailing_run_exchanges_again_when_the_joined_token_would_expire() {
    // Graph tokens that stop being usable (5 min buffer) one second after they are issued.
    let app = spawn_app_with(Setup {
        graph_token_lifetime: Some(Duration::from_secs(301)),
        ..Setup::intune(2).in_virtual_time()
    })
    .await;
    let token = app.token();
    assert_eq!(post(&app, &token).await["state"], "succeeded");
    let scheduled = post(&app, &token).await;
    assert_eq!(scheduled["state"], "scheduled");
    let exchanges_before = app.sims.entra.exchanges();
    // Real time for the joined Graph token to stop being usable, then the run's turn.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    advance_to(&app, time(&scheduled["not_before"])).await;
    let run = wait_for_final(&app, &token, scheduled["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded");
    assert!(
        app.sims.entra.exchanges() > exchanges_before,
        "exchanged again"
    );
    assert!(app.sims.graph.calls().iter().all(|c| c.authorization_ok));
}

#[tokio::test]
async fn a_trailing_run_acts_as_an_earlier_joiner_when_the_latest_ones_token_has_expired() {
    let app = spawn_app_with(Setup::intune(4).in_virtual_time()).await;
    let earlier = app.user();
    let earlier_token = app.sims.entra.mint(&earlier);
    assert_eq!(post(&app, &earlier_token).await["state"], "succeeded");
    let scheduled = post(&app, &earlier_token).await;
    assert_eq!(scheduled["state"], "scheduled");

    // The latest joiner's token expires before the run's turn; its exchange cannot be
    // renewed then (Entra ID refuses an expired assertion).
    let exp = Utc::now().timestamp() + 2;
    let latest = TokenSpec {
        expires_at: Some(exp),
        ..app.user()
    };
    let latest_token = app.sims.entra.mint(&latest);
    let joined = post(&app, &latest_token).await;
    assert_eq!(joined["id"], scheduled["id"]);
    assert_eq!(joined["acting_as"]["object_id"], latest.object_id.as_str());
    wait_until_expired(exp).await;
    advance_to(&app, time(&scheduled["not_before"])).await;

    let run = wait_for_final(&app, &earlier_token, scheduled["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["acting_as"]["object_id"], earlier.object_id.as_str());
    let calls = app.sims.graph.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].object_id.as_deref(),
        Some(earlier.object_id.as_str())
    );
    let started = app
        .audit_of_kind("run")
        .into_iter()
        .find(|r| r["event"] == "started" && r["run_id"] == scheduled["id"])
        .expect("a started record");
    assert_eq!(
        started["acting_as"]["object_id"],
        earlier.object_id.as_str(),
        "the record before the call names who acted"
    );
}

#[tokio::test]
async fn a_trailing_run_whose_joiners_all_expired_fails_with_the_latest_ones_error() {
    let app = spawn_app_with(Setup::intune(4).in_virtual_time()).await;
    assert_eq!(post(&app, &app.token()).await["state"], "succeeded");
    let exp = Utc::now().timestamp() + 2;
    let short_lived = || TokenSpec {
        expires_at: Some(exp),
        ..app.user()
    };
    let scheduled = post(&app, &app.sims.entra.mint(&short_lived())).await;
    assert_eq!(scheduled["state"], "scheduled");
    let joined = post(&app, &app.sims.entra.mint(&short_lived())).await;
    assert_eq!(joined["id"], scheduled["id"]);
    wait_until_expired(exp).await;
    advance_to(&app, time(&scheduled["not_before"])).await;

    let reader = app.token();
    let run = wait_for_final(&app, &reader, scheduled["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "failed");
    assert_eq!(run["error"]["kind"], "invalid-token");
    assert_eq!(
        run["acting_as"], joined["acting_as"],
        "still names the latest joiner"
    );
    assert_eq!(
        app.sims.graph.sync_calls(),
        1,
        "Graph is not called without a token"
    );
}

#[tokio::test]
async fn a_caller_sees_only_runs_of_its_own_tenant() {
    let app = spawn_app_with(Setup::default()).await;
    let token = app.token();
    let run = post(&app, &token).await;
    let id = run["id"].as_str().unwrap();
    assert_eq!(get_run(&app, &token, id).await.status(), 200);
    let other = app.sims.entra.mint(&TokenSpec::user(
        &app.tenant2,
        uuid::Uuid::new_v4().to_string(),
    ));
    let resp = get_run(&app, &other, id).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(problem_of(resp).await["type"], problem_type("not-found"));
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(get_run(&app, &token, &unknown).await.status(), 404);
    let anonymous = app
        .http
        .get(format!("{}/sync/runs/{id}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn sync_status_shows_graphs_view_and_the_gateways_runs() {
    let app = spawn_app_with(Setup::intune(600)).await;
    let token = app.token();
    let first = post(&app, &token).await;
    let scheduled = post(&app, &token).await;
    let resp = app.get_as("/sync/status", &token).await;
    assert_eq!(resp.status(), 200);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["tenant_id"], app.tenant.as_str());
    // Graph stamps milliseconds; the run's start has nanoseconds and may fall in the same one.
    assert!(
        time(&status["graph"]["lastManualSyncTriggerDateTime"])
            >= chrono::SubsecRound::trunc_subsecs(time(&first["started_at"]), 3)
    );
    assert!(status["graph"]["syncStatus"].is_string());
    assert_eq!(status["gateway"]["scheduled"]["id"], scheduled["id"]);
    assert!(status["gateway"]["running"].is_null());
    assert_eq!(status["gateway"]["next_start"], scheduled["not_before"]);
}
