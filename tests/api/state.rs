//! `[state] backend = "redis"`: several gateways on one Redis keep one set of limits and one
//! set of webhook delivery ids, and a Redis that cannot be reached fails as configured.
//!
//! The tests read `REDIS_URL` (`.ci/run` sets it); without it they return at once after saying
//! why, so `cargo test` passes on a machine without Redis. Each test writes under its own
//! `state.key_prefix` and deletes its keys at the end.

use crate::helpers::{header, problem_of, problem_type, spawn_app_with, Setup, TestApp, World};
use std::time::Duration;
use sync_gateway::config::HookKind;
use sync_gateway::sim::hooks::{new_secret, sample_body, sign, SigningKey};

/// Redis for these tests, or `None` (and a printed reason) when `REDIS_URL` is unset.
pub(crate) fn redis_url(test: &str) -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("{test}: REDIS_URL is unset, skipping (it needs a Redis)");
            None
        }
    }
}

/// A key prefix no other test uses.
pub(crate) fn unique_prefix() -> String {
    format!("sg-test:{}:", uuid::Uuid::new_v4().simple())
}

pub(crate) fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A gateway on the redis backend at `url` under `prefix`, in `world` if given.
pub(crate) fn on_redis(url: &str, prefix: &str, world: Option<World>) -> Setup {
    Setup {
        world,
        env: vec![("SYNC_GATEWAY__STATE__REDIS_URL".into(), url.into())],
        ..Setup::default()
    }
    .set("state.backend", "\"redis\"")
    .set("state.key_prefix", &quoted(prefix))
}

/// `n` gateways on one Redis and one world (the same simulators, tenants and registration),
/// each configured by `tune`.
async fn replicas(
    n: usize,
    url: &str,
    prefix: &str,
    tune: impl Fn(Setup) -> Setup,
) -> Vec<TestApp> {
    let first = spawn_app_with(tune(on_redis(url, prefix, None))).await;
    let world = first.world.clone();
    let mut apps = vec![first];
    for _ in 1..n {
        apps.push(spawn_app_with(tune(on_redis(url, prefix, Some(world.clone())))).await);
    }
    apps
}

/// Deletes every key under `prefix`.
pub(crate) async fn delete_keys(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

#[tokio::test]
async fn three_replicas_on_one_redis_admit_exactly_one_callers_burst_and_refuse_the_rest_as_memory_mode_does(
) {
    let Some(url) = redis_url("per-caller limit across replicas") else {
        return;
    };
    let prefix = unique_prefix();
    let apps = replicas(3, &url, &prefix, |s| {
        s.set("limits.per_caller", "{ per_minute = 1, burst = 4 }")
    })
    .await;
    let token = apps[0].token();
    let mut statuses = Vec::new();
    let mut refusals = Vec::new();
    // Round robin: requests 0, 3, 6 to the first replica, 1, 4, 7 to the second, ...
    for i in 0..9 {
        let resp = apps[i % 3].post_sync(&token).await;
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            refusals.push(resp);
        }
    }
    assert_eq!(statuses, [202, 202, 202, 202, 429, 429, 429, 429, 429]);
    for resp in refusals {
        let retry_after: u64 = header(&resp, "retry-after").parse().expect("whole seconds");
        // One request a minute: the next is admitted within the minute.
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(
            header(&resp, "ratelimit-policy"),
            "\"per-caller\";q=1;w=60, \"per-tenant\";q=6000;w=60"
        );
        assert_eq!(
            header(&resp, "ratelimit"),
            format!("\"per-caller\";r=0;t={retry_after}")
        );
        assert_eq!(problem_of(resp).await["type"], problem_type("rate-limited"));
    }
    assert_eq!(apps[0].sims.graph.sync_calls(), 4);
    delete_keys(&url, &prefix).await;
}

#[tokio::test]
async fn three_replicas_on_one_redis_hold_one_tenant_limit_for_all_its_callers() {
    let Some(url) = redis_url("tenant limit across replicas") else {
        return;
    };
    let prefix = unique_prefix();
    let apps = replicas(3, &url, &prefix, |s| {
        s.set("limits.per_tenant", "{ per_minute = 1, burst = 5 }")
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        // A different caller each time: only the tenant's cell is shared.
        let resp = apps[i % 3].post_sync(&apps[0].token()).await;
        if resp.status() == 429 {
            assert!(header(&resp, "ratelimit").starts_with("\"per-tenant\";r=0;t="));
            assert!(header(&resp, "retry-after").parse::<u64>().unwrap() >= 1);
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [202, 202, 202, 202, 202, 429, 429, 429]);
    assert_eq!(apps[0].sims.graph.sync_calls(), 5);
    delete_keys(&url, &prefix).await;
}

/// A GitHub source acting as the gateway's application identity (no session to sign in), its
/// secret in a file.
fn with_github_source(setup: Setup, secret: &str) -> Setup {
    let secret = secret.to_string();
    Setup {
        prepare: Some(Box::new(move |p| {
            let path = p.dir.join("github.secrets");
            std::fs::write(&path, format!("{secret}\n")).unwrap();
            vec![
                ("identities.app.kind".into(), quoted("application")),
                ("identities.app.tenant_id".into(), quoted(p.tenant)),
                ("hooks.github.kind".into(), quoted("github")),
                ("hooks.github.run_as".into(), quoted("app")),
                // The source's own limit is shared by the replicas too: wide enough here.
                (
                    "hooks.github.limits".into(),
                    "{ per_minute = 6000, burst = 1000 }".into(),
                ),
                (
                    "hooks.github.secrets_file".into(),
                    quoted(&path.display().to_string()),
                ),
            ]
        })),
        ..setup
    }
}

/// Posts GitHub delivery `id`, signed with `secret`, to `app`.
async fn deliver(app: &TestApp, secret: &str, id: &str) -> reqwest::Response {
    let body = sample_body(HookKind::Github, id);
    let headers = sign(
        HookKind::Github,
        SigningKey::Secret(secret),
        &body,
        chrono::Utc::now(),
        id,
    );
    let mut request = app
        .http
        .post(format!("{}/hooks/github", app.address))
        .body(body);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_webhook_delivery_sent_to_two_replicas_at_once_runs_once() {
    let Some(url) = redis_url("delivery ids across replicas") else {
        return;
    };
    let prefix = unique_prefix();
    let secret = new_secret(HookKind::Github);
    let apps = replicas(2, &url, &prefix, |s| with_github_source(s, &secret)).await;
    for round in 0..5 {
        let id = format!("delivery-{round}-{}", uuid::Uuid::new_v4());
        let (a, b) = tokio::join!(
            deliver(&apps[0], &secret, &id),
            deliver(&apps[1], &secret, &id)
        );
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort();
        // One accepted; the other a duplicate (200) or still in progress (503).
        assert!(
            statuses == [200, 202] || statuses == [202, 503],
            "round {round}: {statuses:?}"
        );
        let loser = if a.status() == 202 { b } else { a };
        if loser.status() == 503 {
            assert_eq!(
                problem_of(loser).await["type"],
                problem_type("delivery-in-progress")
            );
        }
        // The sender's retry to either replica is a duplicate.
        assert_eq!(deliver(&apps[1], &secret, &id).await.status(), 200);
    }
    // Five deliveries, five runs at most, whichever replica ran them.
    let accepted = apps
        .iter()
        .flat_map(|a| a.audit_of_kind("request"))
        .filter(|r| r["entrance"] == "hook" && r["hook"]["outcome"] == "accepted")
        .count();
    assert_eq!(accepted, 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(apps[0].sims.graph.sync_calls() <= 5);
    delete_keys(&url, &prefix).await;
}

#[tokio::test]
async fn an_unreachable_redis_with_limits_closed_answers_503_state_unavailable_and_graph_is_never_called(
) {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let app = spawn_app_with(Setup {
        state_unreachable_at_start: true,
        ..on_redis(&url, &unique_prefix(), None)
    })
    .await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    let retry_after: u64 = header(&resp, "retry-after").parse().expect("whole seconds");
    assert!(retry_after >= 1);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("state-unavailable")
    );
    assert_eq!(app.sims.graph.sync_calls(), 0);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["state"], "unreachable");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("sync_gateway_state_backend_up 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sync_gateway_state_backend_failures_total{operation=\"rate_check\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unreachable_redis_with_limits_open_admits_the_request() {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let app = spawn_app_with(
        Setup {
            state_unreachable_at_start: true,
            ..on_redis(&url, &unique_prefix(), None)
        }
        .set("state.on_unavailable", "{ limits = \"open\" }"),
    )
    .await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 202);
    // No limit was checked, so none is claimed in the headers.
    assert!(resp.headers().get("ratelimit").is_none());
    assert_eq!(app.sims.graph.sync_calls(), 1);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["state"], "unreachable");
}

#[tokio::test]
async fn an_unreachable_redis_refuses_a_webhook_delivery_with_503_even_with_limits_open() {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let secret = new_secret(HookKind::Github);
    let app = spawn_app_with(with_github_source(
        Setup {
            state_unreachable_at_start: true,
            ..on_redis(&url, &unique_prefix(), None)
        }
        .set("state.on_unavailable", "{ limits = \"open\" }"),
        &secret,
    ))
    .await;
    let resp = deliver(&app, &secret, &format!("d-{}", uuid::Uuid::new_v4())).await;
    assert_eq!(resp.status(), 503);
    assert!(header(&resp, "retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("state-unavailable")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn the_memory_backend_reports_its_state_as_memory_and_up() {
    let app = spawn_app_with(Setup::default()).await;
    let body: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(body["checks"]["state"], "memory");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("sync_gateway_state_backend_up 1"),
        "{metrics}"
    );
}

/// A `redis-server` this test starts on `port` (no persistence), stopped when dropped.
struct OwnRedis(std::process::Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_redis_that_comes_back_serves_again_without_a_restart() {
    let port = closed_port();
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(Setup {
        state_unreachable_at_start: true,
        ..on_redis(&url, &unique_prefix(), None)
    })
    .await;
    let token = app.token();
    assert_eq!(app.post_sync(&token).await.status(), 503);
    // Redis appears on the port the gateway was given.
    let child = match std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => OwnRedis(c),
        Err(e) => {
            eprintln!("no redis-server to start ({e}), skipping the recovery half");
            return;
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = app.post_sync(&token).await.status().as_u16();
        if status == 202 || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status, 202,
        "the gateway did not take up the returned Redis"
    );
    let body: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(body["checks"]["state"], "reachable");
    drop(child);
}
