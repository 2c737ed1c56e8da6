//! `[state] backend = "redis"`: several gateways on one Redis keep one set of limits, one set
//! of webhook delivery ids and one session per service identity (refreshed by one replica at a
//! time), and a Redis that cannot be reached fails as configured.
//!
//! The tests read `REDIS_URL` (`.ci/run` sets it); without it they return at once after saying
//! why, so `cargo test` passes on a machine without Redis. Each test writes under its own
//! `state.key_prefix` and deletes its keys at the end.

use crate::helpers::{header, problem_of, problem_type, spawn_app_with, Setup, TestApp, World};
use crate::identities::{
    approve_after, run_login, service_account_oid, store_key_b64, webhook_token, with_identity,
    SERVICE_ACCOUNT,
};
use base64::Engine;
use std::time::Duration;
use sync_gateway::config::HookKind;
use sync_gateway::credentials::redis_store::RedisSessionStore;
use sync_gateway::credentials::store::StoreKey;
use sync_gateway::sim::entra::{Failure, FailureScope};
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

/// The replicas' shared `state.encryption_key` (32 bytes, base64).
pub const STATE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

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
        env: vec![
            ("SYNC_GATEWAY__STATE__REDIS_URL".into(), url.into()),
            (
                "SYNC_GATEWAY__STATE__ENCRYPTION_KEY".into(),
                STATE_KEY.into(),
            ),
        ],
        ..Setup::default()
    }
    .set("state.backend", "\"redis\"")
    .set("state.key_prefix", &quoted(prefix))
}

/// `n` gateways on one Redis and one world (the same simulators, tenants and registration),
/// each configured by `tune`.
pub(crate) async fn replicas(
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
pub(crate) fn closed_port() -> u16 {
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
async fn on_redis_a_refused_body_counts_against_the_limits_and_an_over_limit_caller_hears_429_first(
) {
    let Some(url) = redis_url("refused bodies count on Redis") else {
        return;
    };
    let prefix = unique_prefix();
    let apps = replicas(1, &url, &prefix, |s| {
        s.set("limits.per_caller", "{ per_minute = 1, burst = 2 }")
    })
    .await;
    let app = &apps[0];
    let token = app.token();
    // Warm (the token exchanged, the tenant's schedule known), then a bad body: 400, and it
    // took the caller's second request, as in memory mode.
    assert_eq!(app.post_sync(&token).await.status(), 202);
    let bad = app.post_sync_json(&token, "reason=because").await;
    assert_eq!(bad.status(), 400);
    // Over the limit, the limit is what the caller hears, bad body or not.
    let over = app.post_sync_json(&token, "reason=because").await;
    assert_eq!(over.status(), 429);
    assert_eq!(app.post_sync(&token).await.status(), 429);
    delete_keys(&url, &prefix).await;
}

#[tokio::test]
async fn on_redis_a_limited_request_with_a_token_not_yet_exchanged_makes_no_exchange() {
    let Some(url) = redis_url("no exchange for a limited caller on Redis") else {
        return;
    };
    let prefix = unique_prefix();
    let apps = replicas(1, &url, &prefix, |s| {
        s.set("limits.per_caller", "{ per_minute = 1, burst = 1 }")
    })
    .await;
    let app = &apps[0];
    let spec = app.user();
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&spec)).await.status(),
        202
    );
    // A second, different token of the same user: not cached, so the limit is taken before
    // the exchange, not in the join's script after it.
    let mut again = spec.clone();
    again.lifetime = Duration::from_secs(1800);
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&again)).await.status(),
        429
    );
    assert_eq!(app.sims.entra.token_requests(), 1);
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
async fn an_unreachable_redis_with_limits_open_passes_the_limiter_but_the_shared_schedule_refuses_with_503(
) {
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
    // The limiter admitted without a limit (none is claimed in the headers), and the run
    // schedule, which always fails closed, refused: a sync it cannot coordinate could double.
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("ratelimit").is_none());
    assert!(header(&resp, "retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("state-unavailable")
    );
    assert_eq!(app.sims.graph.sync_calls(), 0);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for operation in ["rate_check", "run_submit"] {
        assert!(
            metrics.contains(&format!(
                "sync_gateway_state_backend_failures_total{{operation=\"{operation}\"}}"
            )),
            "{operation}: {metrics}"
        );
    }
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
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
/// A `redis-server` of the test's own, killed when dropped.
pub(crate) struct OwnRedis(pub(crate) std::process::Child);

impl OwnRedis {
    /// A `redis-server` keeping nothing on disk on `port`, once it accepts connections;
    /// `None` (and a printed reason) when there is none to start.
    pub(crate) fn start(port: u16) -> Option<OwnRedis> {
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
                eprintln!("no redis-server to start ({e}), skipping");
                return None;
            }
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(child)
    }
}

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
    let Some(child) = OwnRedis::start(port) else {
        return;
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

/// `setup` with the delegated service identity `bot`, which the webhook application acts as
/// (its session file configured, unused on the redis backend).
fn with_bot(setup: Setup) -> Setup {
    let prepare = with_identity()
        .prepare
        .expect("with_identity prepares the identity");
    Setup {
        // On Redis the session lives there: the identity is configured without a file.
        prepare: Some(Box::new(move |p| {
            prepare(p)
                .into_iter()
                .filter(|(key, _)| key != "identities.bot.store_path")
                .collect()
        })),
        ..setup
    }
}

/// `bot`'s session as `app`'s configuration finds it in Redis.
fn bot_session_store(app: &TestApp) -> RedisSessionStore {
    let redis = sync_gateway::state::Redis::new(
        &app.config.state,
        sync_gateway::metrics::StateMetrics::default(),
    )
    .unwrap();
    let key = StoreKey::from_base64(&store_key_b64()).unwrap();
    RedisSessionStore::new(redis, "bot", &app.tenant, &key, Duration::from_secs(5))
}

/// The refresh token of `bot`'s session in Redis.
async fn refresh_token_in_redis(app: &TestApp) -> Option<String> {
    let snapshot = bot_session_store(app).read().await.unwrap();
    snapshot
        .session
        .unwrap()
        .map(|s| s.refresh_token.expose().to_string())
}

/// `n` concurrent `POST /sync` with `token`, round robin over `apps`; their statuses.
async fn post_sync_spread(apps: &[TestApp], token: &str, n: usize) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let app = &apps[i % apps.len()];
        let (http, url, token) = (
            app.http.clone(),
            format!("{}/sync", app.address),
            token.to_string(),
        );
        set.spawn(async move {
            let resp = http.post(url).bearer_auth(token).send().await;
            resp.expect("gateway answers").status().as_u16()
        });
    }
    set.join_all().await
}

/// Every key under `prefix` and, as one text, each key followed by its values (every member of
/// a hash, list, set or sorted set): what a scan for secrets in the clear reads.
/// Fails if any token the simulated Entra issued (itself, base64-encoded, or its JWT
/// signature alone, enough to identify and with the rest replay it) is in `stored`.
pub(crate) fn assert_no_issued_token_in(app: &TestApp, stored: &str) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let secrets = app.sims.entra.issued_secrets();
    assert!(!secrets.is_empty());
    for secret in secrets {
        let mut needles = vec![secret.clone(), b64.encode(&secret)];
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() >= 32) {
            needles.push(sig.to_string());
        }
        for n in needles {
            assert!(!stored.contains(&n), "a token is in Redis in the clear");
        }
    }
}

pub(crate) async fn dump_keys(url: &str, prefix: &str) -> (Vec<String>, String) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut text = String::new();
    for key in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let read = match kind.as_str() {
            "string" => redis::cmd("GET").arg(key).clone(),
            "hash" => redis::cmd("HGETALL").arg(key).clone(),
            "list" => redis::cmd("LRANGE").arg(key).arg(0).arg(-1).clone(),
            "set" => redis::cmd("SMEMBERS").arg(key).clone(),
            "zset" => redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).clone(),
            // Expired since it was listed (a lease, a delivery id).
            "none" => continue,
            other => panic!("{key} is a {other}: the scan does not read that type"),
        };
        let values: Vec<Vec<u8>> = if kind == "string" {
            vec![read.query_async(&mut conn).await.unwrap()]
        } else {
            read.query_async(&mut conn).await.unwrap()
        };
        text.push_str(key);
        for v in values {
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(&v));
        }
        text.push('\n');
    }
    (keys, text)
}

/// Deletes `bot`'s shared access token, so the next replica without one refreshes.
async fn forget_shared_access_token(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}session-access:{{bot}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted, 1, "the refresh shared its access token");
}

#[tokio::test]
async fn fifty_concurrent_requests_over_three_replicas_make_one_refresh_and_redis_holds_the_newest_session(
) {
    let Some(url) = redis_url("service-identity refresh across replicas") else {
        return;
    };
    let prefix = unique_prefix();
    let mut apps = replicas(3, &url, &prefix, with_bot).await;
    run_login(&apps[0], approve_after(0)).await.result.unwrap();
    let entra = apps[0].sims.entra.clone();
    // Slow the refresh down so all fifty arrive while it is in flight.
    entra.set_failure(
        FailureScope::Global,
        Some(Failure::Slow(Duration::from_millis(300))),
    );
    let token = webhook_token(&apps[0]);
    let statuses = post_sync_spread(&apps, &token, 50).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(entra.refreshes(), 1);
    let newest = entra.current_refresh_token(&service_account_oid());
    assert_eq!(refresh_token_in_redis(&apps[0]).await, newest);
    for app in &apps {
        assert!(
            !app.dir.join("bot.session").exists(),
            "a session file was written"
        );
    }

    // The stored token is the one that works: with the shared access token gone, a restarted
    // replica refreshes with it (the simulated Entra refuses any older one).
    entra.set_failure(FailureScope::Global, None);
    forget_shared_access_token(&url, &prefix).await;
    apps[2].restart().await;
    assert_eq!(apps[2].post_sync(&token).await.status(), 202);
    assert_eq!(entra.refreshes(), 2);
    assert_eq!(
        refresh_token_in_redis(&apps[0]).await,
        entra.current_refresh_token(&service_account_oid())
    );
    delete_keys(&url, &prefix).await;
}

#[tokio::test]
async fn a_login_stores_the_session_in_redis_and_every_replica_acts_with_it() {
    let Some(url) = redis_url("login into Redis") else {
        return;
    };
    let prefix = unique_prefix();
    let apps = replicas(3, &url, &prefix, with_bot).await;
    let token = webhook_token(&apps[0]);
    for app in &apps {
        let resp = app.post_sync(&token).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(
            problem_of(resp).await["type"],
            problem_type("service-identity-login-required")
        );
    }
    let outcome = run_login(&apps[0], approve_after(0)).await.result.unwrap();
    assert_eq!(
        outcome.stored_in,
        format!("Redis (key {prefix}session:{{bot}})")
    );
    assert!(!apps[0].dir.join("bot.session").exists());
    for app in &apps {
        assert_eq!(app.post_sync(&token).await.status(), 202);
    }
    // One replica refreshed; the others used the access token it shared.
    assert_eq!(apps[0].sims.entra.refreshes(), 1);
    let calls = apps[0].sims.graph.calls();
    assert_eq!(calls.len(), 3);
    let oid = service_account_oid();
    assert!(calls
        .iter()
        .all(|c| c.object_id.as_deref() == Some(oid.as_str())));
    // Each replica records, in its own chain, the login it took up.
    for app in &apps {
        let logins = app
            .audit_of_kind("admin")
            .into_iter()
            .filter(|r| r["event"] == "identity_login" && r["identity"] == "bot")
            .count();
        assert_eq!(logins, 1);
    }
    delete_keys(&url, &prefix).await;
}

#[tokio::test]
async fn redis_never_holds_a_token_or_the_account_in_the_clear() {
    let Some(url) = redis_url("no token in the clear in Redis") else {
        return;
    };
    let prefix = unique_prefix();
    let apps = replicas(2, &url, &prefix, with_bot).await;
    run_login(&apps[0], approve_after(0)).await.result.unwrap();
    let token = webhook_token(&apps[0]);
    for app in &apps {
        assert_eq!(app.post_sync(&token).await.status(), 202);
    }
    let (keys, text) = dump_keys(&url, &prefix).await;
    // The scan sees the session and the shared access token (and the limits' cells).
    for kept in ["session:{bot}", "session-access:{bot}"] {
        assert!(keys.contains(&format!("{prefix}{kept}")), "{keys:?}");
    }
    assert_no_issued_token_in(&apps[0], &text);
    // Nor the account the session belongs to (a run's own record names whom it acted as).
    let (_, sessions) = dump_keys(&url, &format!("{prefix}session")).await;
    assert!(sessions.contains("session:{bot}"));
    assert!(!sessions.contains(SERVICE_ACCOUNT));
    delete_keys(&url, &prefix).await;
}

#[tokio::test]
async fn an_unreachable_redis_answers_a_service_identity_caller_503_state_unavailable_and_makes_no_refresh(
) {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let app = spawn_app_with(with_bot(
        Setup {
            state_unreachable_at_start: true,
            ..on_redis(&url, &unique_prefix(), None)
        }
        // Limits admit without Redis, so the request reaches the session.
        .set("state.on_unavailable", "{ limits = \"open\" }"),
    ))
    .await;
    let resp = app.post_sync(&webhook_token(&app)).await;
    assert_eq!(resp.status(), 503);
    assert!(header(&resp, "retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("state-unavailable")
    );
    assert_eq!(app.sims.entra.token_requests(), 0);
    assert_eq!(app.sims.graph.sync_calls(), 0);
    // The session is unknown, not ready.
    let body: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(
        body["checks"]["service_identities"]["bot"]["state"],
        "store-unavailable"
    );
}

#[tokio::test]
async fn a_replica_that_knows_the_session_but_loses_redis_refuses_with_503_and_never_refreshes_without_the_lease(
) {
    let port = closed_port();
    let url = format!("redis://127.0.0.1:{port}");
    let Some(own) = OwnRedis::start(port) else {
        return;
    };
    // Limits admit without Redis, so the request reaches the session.
    let mut app = spawn_app_with(with_bot(
        on_redis(&url, &unique_prefix(), None).set("state.on_unavailable", "{ limits = \"open\" }"),
    ))
    .await;
    run_login(&app, approve_after(0)).await.result.unwrap();
    // A restart reads the session from Redis at start: the replica knows it.
    app.restart().await;
    let body: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(
        body["checks"]["service_identities"]["bot"]["state"],
        "ready"
    );
    drop(own);
    let resp = app.post_sync(&webhook_token(&app)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("state-unavailable")
    );
    assert_eq!(app.sims.entra.refreshes(), 0);
    assert_eq!(app.sims.graph.sync_calls(), 0);
}

#[tokio::test]
async fn a_login_during_a_refresh_wins_and_the_refreshed_session_is_fenced_out() {
    let Some(url) = redis_url("login during a refresh") else {
        return;
    };
    let prefix = unique_prefix();
    let apps = replicas(2, &url, &prefix, with_bot).await;
    run_login(&apps[0], approve_after(0)).await.result.unwrap();
    let entra = apps[0].sims.entra.clone();
    let before = entra.token_requests();
    entra.set_failure(
        FailureScope::Global,
        Some(Failure::Slow(Duration::from_millis(1500))),
    );
    let token = webhook_token(&apps[0]);
    let first = {
        let (http, url, token) = (
            apps[0].http.clone(),
            format!("{}/sync", apps[0].address),
            token.clone(),
        );
        tokio::spawn(async move { http.post(url).bearer_auth(token).send().await })
    };
    // The refresh is at Entra (held there); a new login is stored meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while entra.token_requests() == before {
        assert!(std::time::Instant::now() < deadline, "no refresh started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    entra.set_failure(FailureScope::Global, None);
    run_login(&apps[1], approve_after(0)).await.result.unwrap();
    let from_login = refresh_token_in_redis(&apps[0]).await;

    // The held refresh ends, its write is fenced out, and the caller is served with the
    // login's session (a second refresh, with the login's token).
    let resp = first.await.unwrap().unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(entra.refreshes(), 2);
    let stored = refresh_token_in_redis(&apps[0]).await;
    assert_ne!(
        stored, from_login,
        "the login's token was redeemed and rotated"
    );
    assert_eq!(stored, entra.current_refresh_token(&service_account_oid()));
    // The other replica acts with that session's shared token: no third refresh.
    assert_eq!(apps[1].post_sync(&token).await.status(), 202);
    assert_eq!(entra.refreshes(), 2);
    delete_keys(&url, &prefix).await;
}
