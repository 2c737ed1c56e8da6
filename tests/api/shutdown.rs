//! Stopping as Kubernetes stops a pod: SIGTERM to the real binary under load. Readiness turns
//! off at once, requests are still served through the grace period, a run due within the drain
//! is started rather than abandoned, and the process exits 0 after flushing the trail; and what
//! `serve` logs is JSON lines without a secret.

use crate::crash::serve;
use crate::helpers::start_world;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sync_gateway::sim::entra::TokenSpec;

async fn post(base: &str, token: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/sync"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_turns_readiness_off_serves_through_the_grace_starts_due_runs_and_exits_cleanly() {
    let world = start_world().await;
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<(String, String)> = [
        ("server.shutdown_grace_seconds", "2"),
        ("server.shutdown_timeout_seconds", "15"),
        ("actions.sync.cooldown_seconds", "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (mut child, base) = serve(&world, dir.path(), &extra, Stdio::null()).await;
    let token = world.sims.entra.mint(&TokenSpec::user(
        &world.tenant,
        uuid::Uuid::new_v4().to_string(),
    ));
    let first = post(&base, &token).await;
    assert_eq!(first["state"], "succeeded");
    // Within the cooldown: a run scheduled 3 s from now, inside grace (2 s) + drain (15 s).
    let scheduled = post(&base, &token).await;
    assert_eq!(scheduled["state"], "scheduled");

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    // Readiness turns off at once (polled, bounded well inside the grace period) ...
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        if r.status() == 503 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["status"], "stopping");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still 200 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... while requests are still served: this one joins the scheduled run.
    let late = post(&base, &token).await;
    assert_eq!(late["id"], scheduled["id"]);

    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");

    let trail = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let records: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events_of = |run: &Value| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["kind"] == "run" && r["run_id"] == *run)
            .map(|r| r["event"].as_str().unwrap().to_string())
            .collect()
    };
    let events = events_of(&scheduled["id"]);
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(events.contains(&"started".to_string()), "{events:?}\n{log}");
    assert!(events.contains(&"finished".to_string()), "{events:?}");
    assert!(!events.contains(&"abandoned".to_string()), "{events:?}");
    assert!(records.iter().any(|r| r["event"] == "stop"));

    assert!(
        log.contains("stopping: /readyz answers 503 now"),
        "no line says what the stop waits for"
    );
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("sync-gateway stopped"), "last line: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_a_refusal_as_one_json_line_with_its_fields_and_no_secret() {
    let world = start_world().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = [("server.shutdown_grace_seconds".to_string(), "0".to_string())];
    let (mut child, base) = serve(&world, dir.path(), &extra, Stdio::null()).await;
    // A token for a tenant the gateway does not allow: refused with 401.
    let token = world.sims.entra.mint(&TokenSpec::user(
        &world.foreign_tenant,
        uuid::Uuid::new_v4().to_string(),
    ));
    let r = reqwest::Client::new()
        .post(format!("{base}/sync"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let instance = r.json::<Value>().await.unwrap()["instance"]
        .as_str()
        .unwrap()
        .trim_start_matches("urn:uuid:")
        .to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());

    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("every serve log line is JSON"))
        .collect();
    let refusal = lines
        .iter()
        .find(|l| l["audit_id"] == instance.as_str())
        .expect("a line for the refused request");
    assert_eq!(refusal["level"], "INFO");
    assert_eq!(refusal["status"], 401);
    assert_eq!(refusal["code"], "invalid-token");
    assert_eq!(refusal["route"], "/sync");
    assert!(refusal["timestamp"].is_string() && refusal["message"].is_string());
    assert!(!log.contains(&token), "the caller's token is in the log");
    assert!(
        !log.contains(&world.secret),
        "the client secret is in the log"
    );
}
