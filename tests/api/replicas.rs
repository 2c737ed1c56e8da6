//! Several replicas on one Redis share one run schedule: a storm spread over them makes the
//! runs one gateway would, any replica answers for any run, a run survives the replica that
//! scheduled it being killed, a stopped Redis fails closed and nothing reaches Graph twice,
//! and Redis never holds a token in the clear.
//!
//! Like `state.rs`, the tests read `REDIS_URL` and return at once, saying why, without it.

use crate::crash::serve_with_env;
use crate::helpers::{assert_trail_valid, header, problem_type, spawn_app_with, Setup, TestApp};
use crate::state::{
    assert_no_issued_token_in, closed_port, delete_keys, dump_keys, on_redis, quoted, redis_url,
    replicas, unique_prefix, OwnRedis, STATE_KEY,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use sync_gateway::clock::{Clock, ManualClock};
use sync_gateway::sim::graph::GraphMode;

/// Intune's rule on Graph and in the gateway, `secs` long, on a clock the test moves (the
/// first replica's; the others share its world and so its clock).
fn intune_in_virtual_time(setup: Setup, secs: u64) -> Setup {
    Setup {
        graph_mode: GraphMode::Normal,
        intune_cooldown: Some(Duration::from_secs(secs)),
        clock: Some(Arc::new(ManualClock::new())),
        ..setup
    }
    .set("actions.sync.cooldown_seconds", &secs.to_string())
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

async fn run_on(app: &TestApp, token: &str, id: &str) -> Value {
    app.get_as(&format!("/sync/runs/{id}"), token)
        .await
        .json()
        .await
        .unwrap()
}

/// Polls run `id` on `app` until it is final (at most 30 s).
async fn final_run_on(app: &TestApp, token: &str, id: &str) -> Value {
    for _ in 0..300 {
        let run = run_on(app, token, id).await;
        if ["succeeded", "failed", "abandoned"].contains(&run["state"].as_str().unwrap_or("")) {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {id} did not finish");
}

/// Graph never had to refuse a call (no 429, no 409).
fn assert_graph_never_refused(app: &TestApp) {
    let calls = app.sims.graph.calls();
    assert!(
        calls.iter().all(|c| c.status != 429 && c.status != 409),
        "{calls:#?}"
    );
}

/// `n` requests from `users` users at once, round robin over `apps`: (status, body) each.
async fn storm(apps: &[TestApp], users: &[String], n: usize) -> Vec<(u16, Value)> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let app = &apps[i % apps.len()];
        let (http, url, token) = (
            app.http.clone(),
            format!("{}/sync", app.address),
            users[i % users.len()].clone(),
        );
        set.spawn(async move {
            let r = http.post(url).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        });
    }
    set.join_all().await
}

/// Two replicas on Redis (`prefix`) with Intune's rule of `cooldown` seconds in real time
/// (two processes cannot share a manual clock): one in this process (the survivor) and one
/// in a child process (the doomed, to be killed), with `more` configuration for the child:
/// (the survivor, the child, its base URL, its directory).
async fn survivor_and_doomed(
    url: &str,
    prefix: &str,
    cooldown: u64,
    more: &[(&str, &str)],
) -> (TestApp, std::process::Child, String, tempfile::TempDir) {
    let survivor = spawn_app_with(
        Setup {
            graph_mode: GraphMode::Normal,
            intune_cooldown: Some(Duration::from_secs(cooldown)),
            ..on_redis(url, prefix, None)
        }
        .set("actions.sync.cooldown_seconds", &cooldown.to_string()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut extra = vec![
        ("state.backend".to_string(), "\"redis\"".to_string()),
        ("state.key_prefix".to_string(), quoted(prefix)),
        (
            "actions.sync.cooldown_seconds".to_string(),
            cooldown.to_string(),
        ),
    ];
    extra.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env = [
        ("SYNC_GATEWAY__STATE__REDIS_URL", url),
        ("SYNC_GATEWAY__STATE__ENCRYPTION_KEY", STATE_KEY),
    ];
    let (doomed, base) = serve_with_env(
        &survivor.world,
        dir.path(),
        &extra,
        &env,
        std::process::Stdio::null(),
    )
    .await;
    (survivor, doomed, base, dir)
}

#[tokio::test]
async fn a_storm_spread_over_three_replicas_makes_one_immediate_run_and_one_trailing_run() {
    let Some(url) = redis_url("storm over replicas") else {
        return;
    };
    let prefix = unique_prefix();
    let apps = replicas(3, &url, &prefix, |s| intune_in_virtual_time(s, 600)).await;
    let users: Vec<String> = (0..30).map(|_| apps[0].token()).collect();
    let answers = storm(&apps, &users, 300).await;
    assert!(answers.iter().all(|(s, _)| *s == 202), "{answers:?}");
    let runs: HashSet<&str> = answers
        .iter()
        .map(|(_, b)| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "one immediate run and one trailing run");
    let immediate: Vec<&Value> = answers
        .iter()
        .filter(|(_, b)| b["state"] != "scheduled")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(immediate.len(), 1, "exactly one request started a run");
    let first = immediate[0];
    assert_eq!(first["state"], "succeeded");
    let trailing_id = runs.iter().find(|id| **id != first["id"]).unwrap();
    assert_eq!(apps[0].sims.graph.sync_calls(), 1, "one immediate call");

    // Every replica answers the same for the trailing run: all 299 others joined it, due a
    // cooldown after the first run started.
    let due = time(&first["started_at"]) + chrono::TimeDelta::seconds(600);
    for app in &apps {
        let run = run_on(app, &users[0], trailing_id).await;
        assert_eq!(run["state"], "scheduled");
        assert_eq!(run["covers"]["count"], 299);
        let not_before = time(&run["not_before"]);
        assert!(
            (not_before - due).num_milliseconds().abs() <= 1,
            "{not_before} vs {due}"
        );
    }

    // Just before it is due nothing goes out; at the time, exactly one replica runs it.
    let clock = apps[0].clock();
    clock.advance(
        (due - clock.now() - chrono::TimeDelta::milliseconds(5))
            .to_std()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(apps[0].sims.graph.sync_calls(), 1, "a run went out early");
    clock.advance(Duration::from_millis(10));
    let run = final_run_on(&apps[2], &users[1], trailing_id).await;
    assert_eq!(run["state"], "succeeded");
    // Any replica polls the schedule at most every half second; give them two more rounds.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        apps[0].sims.graph.sync_calls(),
        2,
        "exactly one trailing call"
    );
    assert_graph_never_refused(&apps[0]);
    for app in &apps {
        let seen = run_on(app, &users[2], trailing_id).await;
        assert_eq!(seen["state"], "succeeded");
        assert_eq!(seen["started_at"], run["started_at"]);
        assert_eq!(seen["covers"]["count"], 299);
    }
    // The run's records are in the chain of the replica that executed it, and only there.
    let started: usize = apps
        .iter()
        .map(|a| {
            a.audit_of_kind("run")
                .iter()
                .filter(|r| r["run_id"] == *trailing_id && r["event"] == "started")
                .count()
        })
        .sum();
    assert_eq!(started, 1);
    delete_keys(&url, &prefix).await;
}

/// `INFO commandstats` of the Redis at `url`: calls so far per command.
async fn command_calls(url: &str) -> std::collections::HashMap<String, i64> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    // cmdstat_evalsha:calls=12,usec=...
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (command, rest) = l.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((command.to_string(), calls))
        })
        .collect()
}

#[tokio::test]
async fn a_warm_request_takes_its_limits_and_joins_its_run_in_one_redis_round_trip() {
    let Some(_) = redis_url("one round trip on the warm path") else {
        return;
    };
    // A Redis of the test's own, so that its command counts are this gateway's alone.
    let port = closed_port();
    let Some(_own) = OwnRedis::start(port) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(intune_in_virtual_time(
        on_redis(&url, &unique_prefix(), None),
        600,
    ))
    .await;
    let token = app.token();
    // Cold: the exchange, the limits, then a run at once; the next request schedules the
    // trailing run. Both reach Redis more than once.
    let first: Value = app.post_sync(&token).await.json().await.unwrap();
    let first_id = first["id"].as_str().unwrap();
    let scheduled: Value = app.post_sync(&token).await.json().await.unwrap();
    assert_eq!(scheduled["state"], "scheduled");
    let scheduled_id = scheduled["id"].as_str().unwrap();
    // The first run's outcome is published (one more script) before the counting starts.
    for _ in 0..300 {
        if run_on(&app, &token, first_id).await["outcome_record"] == "recorded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let before = command_calls(&url).await;
    const N: i64 = 20;
    for _ in 0..N {
        let resp = app.post_sync(&token).await;
        assert_eq!(resp.status(), 202);
        // The limits were taken: their status is in the answer.
        assert!(resp.headers().get("ratelimit").is_some());
    }
    let after = command_calls(&url).await;
    let delta =
        |command: &str| after.get(command).unwrap_or(&0) - before.get(command).unwrap_or(&0);

    // Warm: one script per request takes the limits and joins the run. Beside the requests
    // only the sweep talks to Redis, each round one SMEMBERS and one script for the tenant;
    // a round may straddle a reading (±1). Two round trips per request would make 2 × N.
    let scripts = delta("evalsha") - delta("smembers");
    assert!(
        (N - 1..=N + 1).contains(&scripts),
        "{scripts} scripts for {N} warm requests: {before:?} -> {after:?}"
    );
    // Nor a command of its own (commandstats also counts those the scripts run, so only the
    // commands no script runs can be told apart).
    for command in ["eval", "hgetall", "ping", "script|load"] {
        assert_eq!(delta(command), 0, "{command}: {before:?} -> {after:?}");
    }
    // And they joined the scheduled run.
    let run = run_on(&app, &token, scheduled_id).await;
    assert_eq!(run["covers"]["count"], N + 1);
}

/// One replica on Redis whose callers have a burst of two (Intune's window 600 s, in virtual
/// time), and a caller token whose first `POST /sync` it answered 202 (started): the token is
/// exchanged and the tenant's schedule known, so the caller's next requests take the warm path.
async fn one_replica_after_a_first_sync_of_a_burst_of_two(
    url: &str,
    prefix: &str,
) -> (TestApp, String) {
    let app = replicas(1, url, prefix, |s| {
        intune_in_virtual_time(s, 600).set("limits.per_caller", "{ per_minute = 1, burst = 2 }")
    })
    .await
    .remove(0);
    let token = app.token();
    assert_eq!(app.post_sync(&token).await.status(), 202);
    (app, token)
}

#[tokio::test]
async fn a_warm_request_whose_stored_credentials_vanished_is_joined_and_takes_its_limits_once() {
    let Some(url) = redis_url("limits taken once when the actor is resent") else {
        return;
    };
    let prefix = unique_prefix();
    let (app, token) = one_replica_after_a_first_sync_of_a_burst_of_two(&url, &prefix).await;
    // The caller's sealed credentials are gone from Redis (expired, evicted): the replica
    // sends the join without them, hears that they are needed, and sends them again.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let actors: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}run-actor:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(actors.len(), 1, "{actors:?}");
    let _: i64 = redis::cmd("DEL")
        .arg(&actors)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The second of the burst's two requests: admitted, so the limits were taken once for it,
    // not once per attempt of the join.
    let second = app.post_sync(&token).await;
    assert_eq!(second.status(), 202);
    assert_eq!(header(&second, "ratelimit"), "\"per-caller\";r=0;t=120");
    assert_eq!(app.post_sync(&token).await.status(), 429);
    delete_keys(&url, &prefix).await;
}

#[tokio::test]
async fn a_warm_request_over_its_limit_hears_429_and_leaves_the_shared_schedule_as_it_was() {
    let Some(url) = redis_url("a warm refusal leaves the schedule alone") else {
        return;
    };
    let prefix = unique_prefix();
    let (app, token) = one_replica_after_a_first_sync_of_a_burst_of_two(&url, &prefix).await;
    // Warm now (the token exchanged, the tenant's schedule known): the join's script takes
    // the limits, and the second request of the burst schedules the trailing run.
    let scheduled: Value = app.post_sync(&token).await.json().await.unwrap();
    assert_eq!(scheduled["state"], "scheduled");
    let scheduled_id = scheduled["id"].as_str().unwrap();
    let refused = app.post_sync(&token).await;
    assert_eq!(refused.status(), 429);
    assert!(
        header(&refused, "ratelimit").starts_with("\"per-caller\";r=0;t="),
        "{:?}",
        refused.headers()
    );
    assert!(header(&refused, "retry-after").parse::<u64>().unwrap() >= 1);
    // The refused caller did not join the run.
    let run = run_on(&app, &token, scheduled_id).await;
    assert_eq!(run["covers"]["count"], 1);
    delete_keys(&url, &prefix).await;
}

#[tokio::test]
async fn redis_holds_no_token_in_the_clear_while_a_run_waits_with_its_joiners_credentials() {
    let Some(url) = redis_url("no token in Redis") else {
        return;
    };
    let prefix = unique_prefix();
    let apps = replicas(2, &url, &prefix, |s| intune_in_virtual_time(s, 600)).await;
    // One run now, then three users join the scheduled run through both replicas.
    assert_eq!(apps[0].post_sync(&apps[0].token()).await.status(), 202);
    for i in 0..3 {
        assert_eq!(apps[i % 2].post_sync(&apps[0].token()).await.status(), 202);
    }
    let (keys, stored) = dump_keys(&url, &prefix).await;
    // The four users' credentials are there (sealed) for whichever replica runs their run...
    let sealed = keys.iter().filter(|k| k.contains("run-actor:")).count();
    assert_eq!(sealed, 4, "{keys:#?}");
    // ...and no token the simulated Entra issued, nor a JWT's signature, appears in the clear.
    assert!(apps[0].sims.entra.issued_secrets().len() >= 4);
    assert_no_issued_token_in(&apps[0], &stored);
    delete_keys(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_run_whose_replica_is_killed_is_started_once_by_another_replica_when_due() {
    let Some(url) = redis_url("SIGKILL takeover") else {
        return;
    };
    let prefix = unique_prefix();
    let (survivor, mut doomed, base, dir) = survivor_and_doomed(&url, &prefix, 3, &[]).await;
    let http = reqwest::Client::new();
    let token = survivor.token();
    let post = |token: String| {
        let (http, url) = (http.clone(), format!("{base}/sync"));
        async move {
            let r = http.post(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()
        }
    };
    let first = post(token.clone()).await;
    assert_eq!(first["state"], "succeeded");
    let scheduled = post(survivor.token()).await;
    assert_eq!(scheduled["state"], "scheduled");
    let id = scheduled["id"].as_str().unwrap().to_string();

    // The replica that scheduled it dies before it is due.
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    assert_eq!(survivor.sims.graph.sync_calls(), 1);

    let run = final_run_on(&survivor, &token, &id).await;
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["covers"]["count"], 1);
    assert!(time(&run["started_at"]) >= time(&scheduled["not_before"]));
    // Once: another sweep round finds nothing more to start.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(survivor.sims.graph.sync_calls(), 2);
    assert_graph_never_refused(&survivor);
    let started = survivor
        .audit_of_kind("run")
        .into_iter()
        .filter(|r| r["run_id"] == id.as_str() && r["event"] == "started")
        .count();
    assert_eq!(started, 1, "the survivor recorded the run it started");
    // The killed replica's chain still verifies.
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.starts_with("audit") && name.ends_with(".jsonl")
        })
        .collect();
    assert!(!files.is_empty());
    assert_trail_valid(&files, &[]);
    delete_keys(&url, &prefix).await;
}

#[tokio::test]
async fn a_stopped_redis_fails_closed_nothing_reaches_graph_twice_and_service_resumes() {
    if redis_url("Redis stopped under load").is_none() {
        return;
    }
    let port = closed_port();
    let Some(child) = OwnRedis::start(port) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = unique_prefix();
    let apps = replicas(2, &url, &prefix, |s| intune_in_virtual_time(s, 600)).await;
    let users: Vec<String> = (0..10).map(|_| apps[0].token()).collect();

    let before = storm(&apps, &users, 40).await;
    assert!(before.iter().all(|(s, _)| *s == 202));
    let trailing: HashSet<String> = before
        .iter()
        .filter(|(_, b)| b["state"] == "scheduled")
        .map(|(_, b)| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(trailing.len(), 1);
    assert_eq!(apps[0].sims.graph.sync_calls(), 1);

    // Redis stops answering (SIGSTOP: connections stay open, nothing comes back).
    let pid = child.0.id().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success());
    let during = storm(&apps, &users, 40).await;
    let statuses: HashSet<u16> = during.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses,
        HashSet::from([503]),
        "limits and schedule fail closed"
    );
    assert!(during
        .iter()
        .all(|(_, b)| b["type"] == problem_type("state-unavailable")));
    assert_eq!(apps[0].sims.graph.sync_calls(), 1);

    // Redis answers again: both replicas serve without a restart, into the same trailing run.
    assert!(signal("-CONT").success());
    for app in &apps {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = app.post_sync(&users[0]).await;
            if r.status() == 202 {
                let body: Value = r.json().await.unwrap();
                assert!(trailing.contains(body["id"].as_str().unwrap()));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "did not resume");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let after = storm(&apps, &users, 40).await;
    assert!(after
        .iter()
        .all(|(s, b)| *s == 202 && trailing.contains(b["id"].as_str().unwrap())));
    assert_eq!(
        apps[0].sims.graph.sync_calls(),
        1,
        "nothing reached Graph twice"
    );

    // The trailing run goes out once, when due.
    let id = trailing.iter().next().unwrap().clone();
    let clock = apps[0].clock();
    let due = time(&run_on(&apps[1], &users[0], &id).await["not_before"]);
    clock.advance((due - clock.now()).to_std().unwrap() + Duration::from_millis(5));
    let run = final_run_on(&apps[0], &users[0], &id).await;
    assert_eq!(run["state"], "succeeded");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(apps[0].sims.graph.sync_calls(), 2);
    assert_graph_never_refused(&apps[0]);
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_replica_dies_mid_call_is_taken_over_once_its_lease_runs_out() {
    let Some(url) = redis_url("lease takeover") else {
        return;
    };
    let prefix = unique_prefix();
    // The Graph timeout is long enough that the run is still calling when its replica dies.
    let (survivor, mut doomed, base, dir) =
        survivor_and_doomed(&url, &prefix, 2, &[("graph.timeout_seconds", "30")]).await;
    // Graph holds the call: the doomed replica is mid-run when it dies.
    survivor.sims.graph.set_mode(GraphMode::Always(
        sync_gateway::sim::graph::GraphResponse::Hang,
    ));
    let token = survivor.token();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // The caller gives up waiting; the run goes on.
    let _ = http
        .post(format!("{base}/sync"))
        .bearer_auth(&token)
        .send()
        .await;
    for _ in 0..100 {
        if survivor.sims.graph.sync_calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        survivor.sims.graph.sync_calls(),
        1,
        "the doomed replica called Graph"
    );
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    survivor.sims.graph.set_mode(GraphMode::Normal);

    // Once the lease runs out, the survivor puts the run back in line and runs it when the
    // tenant's cooldown allows: exactly one more call, accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while survivor.sims.graph.sync_calls() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run was not taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(survivor.sims.graph.sync_calls(), 2);
    assert_eq!(survivor.sims.graph.accepted_syncs(), 1);
    let started = survivor
        .audit_of_kind("run")
        .into_iter()
        .filter(|r| r["event"] == "started")
        .collect::<Vec<_>>();
    assert_eq!(started.len(), 1, "the survivor started the taken-over run");
    let run_id = started[0]["run_id"].as_str().unwrap().to_string();
    let run = final_run_on(&survivor, &token, &run_id).await;
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["covers"]["count"], 1);
    // Its first attempt, the one the dead replica made, is in the dead replica's chain.
    let dead_chain = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default()
        + &std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.to_string_lossy().contains("audit.") && p.to_string_lossy().ends_with(".jsonl")
            })
            .filter(|p| !p.ends_with("audit.jsonl"))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<String>();
    assert!(
        dead_chain.contains(&run_id),
        "the dead replica recorded the run it started"
    );
    delete_keys(&url, &prefix).await;
}
