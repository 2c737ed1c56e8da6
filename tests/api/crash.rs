//! A gateway process killed with SIGKILL in the middle of a load of concurrent requests
//! leaves a trail that `verify` accepts, in which every call Graph received has its durable
//! pre-call record; the next start resumes the chain.

use crate::helpers::{
    assert_trail_valid, config_toml, spawn_app_with, start_world, trail_files, Setup, World,
};
use serde_json::Value;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync_gateway::audit::verify::{verify_files, VerifyOptions};
use sync_gateway::sim::graph::{GraphMode, GraphResponse};

const BIN: &str = env!("CARGO_BIN_EXE_sync-gateway");

/// The port the child logged in its "sync-gateway serving" line.
fn served_port(log: &std::path::Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter(|l| l.contains("sync-gateway serving"))
        .find_map(|l| serde_json::from_str::<Value>(l).ok()?["port"].as_u64())
        .map(|p| p as u16)
}

/// Starts the real binary with `serve --config` against `world`, and waits until it is ready:
/// (the child, its base URL).
pub(crate) async fn serve(
    world: &World,
    dir: &std::path::Path,
    extra: &[(String, String)],
    stdout: Stdio,
) -> (Child, String) {
    // Graph accepts every call: the load is not bound by Intune's ten-minute rule.
    world
        .sims
        .graph
        .set_mode(GraphMode::Always(GraphResponse::Accept));
    serve_with_env(world, dir, extra, &[], stdout).await
}

/// [`serve`] as Graph is set now, with more environment (`env`) for the child.
// The caller waits for the child: it kills it, or stops it with SIGTERM, and then waits.
#[allow(clippy::zombie_processes)]
pub(crate) async fn serve_with_env(
    world: &World,
    dir: &std::path::Path,
    extra: &[(String, String)],
    env: &[(&str, &str)],
    stdout: Stdio,
) -> (Child, String) {
    let config = dir.join("gateway.toml");
    std::fs::write(&config, config_toml(world, &dir.join("audit.jsonl"), extra)).unwrap();
    let log = dir.join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("SYNC_GATEWAY__ENTRA__CLIENT_SECRET", &world.secret)
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(port) = served_port(&log) {
            let base = format!("http://127.0.0.1:{port}");
            if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
                if r.status() == 200 {
                    return (child, base);
                }
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_mid_load_leaves_a_verifiable_trail_covering_every_graph_call() {
    let world = start_world().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let (mut child, base) = serve(&world, dir.path(), &[], Stdio::null()).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Eight callers in a loop, each bounded in count; the gateway is killed under them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        let tokens: Vec<String> = (0..80)
            .map(|_| {
                let spec = sync_gateway::sim::entra::TokenSpec::user(
                    &world.tenant,
                    uuid::Uuid::new_v4().to_string(),
                );
                world.sims.entra.mint(&spec)
            })
            .collect();
        load.push(tokio::spawn(async move {
            for t in tokens {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = http
                    .post(format!("{base}/sync"))
                    .bearer_auth(t)
                    .send()
                    .await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while world.sims.graph.sync_calls() < 40 {
        assert!(Instant::now() < deadline, "the load never reached Graph");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }

    let files = trail_files(&audit);
    let report = verify_files(&files, &VerifyOptions::default()).unwrap();
    assert!(report.intact(), "{}", report.render());
    // Every call Graph received was recorded, durably, before it was made.
    let text = std::fs::read_to_string(&audit).unwrap();
    let recorded: HashSet<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "run" && !r["attempt"].is_null())
        .map(|r| {
            r["attempt"]["client_request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let calls = world.sims.graph.calls();
    assert!(calls.len() >= 40);
    for c in &calls {
        let id = c.client_request_id.clone().expect("a client-request-id");
        assert!(
            recorded.contains(&id),
            "Graph call {id} has no pre-call run record"
        );
    }

    // The next start cuts a torn tail (if the kill left one), records it, and goes on.
    let torn = report.torn_tail.is_some();
    let app = spawn_app_with(Setup {
        audit_path: Some(audit.clone()),
        world: Some(world.clone()),
        ..Setup::default()
    })
    .await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let recovered = app
        .audit_of_kind("admin")
        .iter()
        .filter(|r| r["event"] == "torn_tail_recovered")
        .count();
    assert_eq!(recovered, usize::from(torn));
    assert_trail_valid(&trail_files(&audit), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdout_copy_carries_every_committed_record_line_for_line() {
    let world = start_world().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stdout.log");
    let extra = [
        (
            "audit.sinks".to_string(),
            "[\"file\", \"stdout\"]".to_string(),
        ),
        // It stops with SIGTERM below; no load balancer needs a grace period here.
        ("server.shutdown_grace_seconds".to_string(), "0".to_string()),
    ];
    let (mut child, base) = serve(
        &world,
        dir.path(),
        &extra,
        Stdio::from(std::fs::File::create(&out).unwrap()),
    )
    .await;
    for _ in 0..3 {
        let spec = sync_gateway::sim::entra::TokenSpec::user(&world.tenant, "someone");
        let r = reqwest::Client::new()
            .post(format!("{base}/sync"))
            .bearer_auth(world.sims.entra.mint(&spec))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // A graceful stop: the stop record is written, and the copy drained, before exit.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(child.wait().unwrap().success());
    let file = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let copy = std::fs::read_to_string(&out).unwrap();
    assert!(file.contains("\"event\":\"stop\""));
    assert_eq!(copy, file);
}
