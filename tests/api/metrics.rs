//! `/metrics`: each counter moves by exactly what happened, read from the text exposition
//! before and after a scripted sequence; histograms by their `_count`; label values stay
//! within their bounded sets.

use crate::audit::{faulty_setup, Fault, Mode};
use crate::helpers::{problem_of, spawn_app, spawn_app_with, Setup, TestApp};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use sync_gateway::clock::Clock;
use sync_gateway::sim::graph::{GraphMode, GraphResponse};

/// One scrape of `/metrics`: every sample line as `name{labels}` → value.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Parses the OpenMetrics text: `# ...` lines are metadata; a sample is the series, one
    /// space, the value (label values here never contain a space followed by a number).
    fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("a sample line: series value");
                (series.to_string(), value.parse().expect("a numeric value"))
            })
            .collect();
        Scrape(samples)
    }

    /// The value of `series`, 0 when it is absent (a labelled series appears on first use).
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
}

async fn scrape(app: &TestApp) -> Scrape {
    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    Scrape::parse(&resp.text().await.unwrap())
}

/// Counters (`_total`) and histogram counts (`_count`) that moved between `before` and `after`,
/// the audit trail's own left out (its commits group records as timing allows), restricted to
/// series starting with one of `prefixes` (all when empty).
fn moved(before: &Scrape, after: &Scrape, prefixes: &[&str]) -> BTreeMap<String, f64> {
    after
        .0
        .iter()
        .filter(|(s, _)| {
            let name = s.split('{').next().unwrap_or(s);
            (name.ends_with("_total") || name.ends_with("_count"))
                && !name.starts_with("sync_gateway_audit_")
                && (prefixes.is_empty() || prefixes.iter().any(|p| s.starts_with(p)))
        })
        .map(|(s, v)| (s.clone(), v - before.get(s)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

fn expect(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(s, v)| (s.to_string(), *v)).collect()
}

/// Scrapes until `series` reaches `value` (work on the run's own task lands after the answer).
async fn wait_for(app: &TestApp, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape(app).await.get(series) != value {
        assert!(Instant::now() < deadline, "{series} never reached {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_scripted_sequence_moves_each_counter_by_exactly_what_happened() {
    let cooldown = 600;
    let app = spawn_app_with(
        Setup::intune(cooldown)
            .set("limits.per_caller", "{ per_minute = 1, burst = 1 }")
            .in_virtual_time(),
    )
    .await;
    let (a, b, c) = (app.token(), app.token(), app.token());
    let before = scrape(&app).await;

    // A token that is no JWT: 401.
    assert_eq!(app.post_sync("not-a-jwt").await.status(), 401);
    // A accepted: a run starts now and Graph accepts it.
    let first = app.post_sync(&a).await;
    assert_eq!(first.status(), 202);
    assert_eq!(first.json::<Value>().await.unwrap()["state"], "succeeded");
    // B inside the cooldown: a scheduled run; C joins it.
    let scheduled: Value = app.post_sync(&b).await.json().await.unwrap();
    assert_eq!(scheduled["state"], "scheduled");
    let joined: Value = app.post_sync(&c).await.json().await.unwrap();
    assert_eq!(joined["id"], scheduled["id"]);
    // A again: over its per-caller limit.
    assert_eq!(app.post_sync(&a).await.status(), 429);
    // A reads the scheduled run.
    let id = scheduled["id"].as_str().unwrap();
    assert_eq!(
        app.get_as(&format!("/sync/runs/{id}"), &a).await.status(),
        200
    );
    // The cooldown ends: the scheduled run starts and Graph accepts it.
    let not_before: chrono::DateTime<chrono::Utc> =
        scheduled["not_before"].as_str().unwrap().parse().unwrap();
    app.clock()
        .advance((not_before - app.clock().now()).to_std().unwrap());
    wait_for(
        &app,
        r#"sync_gateway_run_transitions_total{from="running",to="succeeded"}"#,
        2.0,
    )
    .await;

    let after = scrape(&app).await;
    assert_eq!(
        moved(&before, &after, &[]),
        expect(&[
            // 5 POST /sync (401, 202, 202, 202, 429) and 1 run read.
            (
                r#"sync_gateway_requests_total{route="/sync",status_class="4xx",kind="invalid-token"}"#,
                1.0
            ),
            (
                r#"sync_gateway_requests_total{route="/sync",status_class="2xx",kind="none"}"#,
                3.0
            ),
            (
                r#"sync_gateway_requests_total{route="/sync",status_class="4xx",kind="rate-limited"}"#,
                1.0
            ),
            (
                r#"sync_gateway_requests_total{route="/sync/runs/{id}",status_class="2xx",kind="none"}"#,
                1.0
            ),
            (
                r#"sync_gateway_request_duration_seconds_count{route="/sync"}"#,
                5.0
            ),
            (
                r#"sync_gateway_request_duration_seconds_count{route="/sync/runs/{id}"}"#,
                1.0
            ),
            // Tokens: the bad one refused; A, B, C verified once each, A twice from the cache.
            (
                r#"sync_gateway_token_validations_total{result="refused"}"#,
                1.0
            ),
            (
                r#"sync_gateway_token_validations_total{result="accepted"}"#,
                5.0
            ),
            (
                r#"sync_gateway_token_refusals_total{cause="malformed"}"#,
                1.0
            ),
            ("sync_gateway_verified_token_cache_misses_total", 4.0),
            ("sync_gateway_verified_token_cache_hits_total", 2.0),
            // One exchange per accepted caller; the limited request made none.
            ("sync_gateway_exchange_cache_misses_total", 3.0),
            ("sync_gateway_exchange_duration_seconds_count", 3.0),
            // The run read is not limited.
            (
                r#"sync_gateway_rate_limit_decisions_total{policy="per-caller",decision="allowed"}"#,
                3.0
            ),
            (
                r#"sync_gateway_rate_limit_decisions_total{policy="per-caller",decision="limited"}"#,
                1.0
            ),
            (
                r#"sync_gateway_rate_limit_decisions_total{policy="per-tenant",decision="allowed"}"#,
                3.0
            ),
            // A's run, then B's (which C joined).
            (
                r#"sync_gateway_run_transitions_total{from="new",to="running"}"#,
                1.0
            ),
            (
                r#"sync_gateway_run_transitions_total{from="new",to="scheduled"}"#,
                1.0
            ),
            (
                r#"sync_gateway_run_transitions_total{from="scheduled",to="running"}"#,
                1.0
            ),
            (
                r#"sync_gateway_run_transitions_total{from="running",to="succeeded"}"#,
                2.0
            ),
            // The settings read at the tenant's first run, then two accepted syncs.
            (
                r#"sync_gateway_graph_responses_total{operation="read_settings",status="200"}"#,
                1.0
            ),
            (
                r#"sync_gateway_graph_responses_total{operation="sync",status="204"}"#,
                2.0
            ),
            (
                r#"sync_gateway_graph_request_duration_seconds_count{operation="read_settings"}"#,
                1.0
            ),
            (
                r#"sync_gateway_graph_request_duration_seconds_count{operation="sync"}"#,
                2.0
            ),
        ])
    );
    assert_eq!(after.get(r#"sync_gateway_runs{state="scheduled"}"#), 0.0);
    assert_eq!(after.get(r#"sync_gateway_runs{state="running"}"#), 0.0);
}

#[tokio::test]
async fn the_next_allowed_gauge_is_the_last_run_start_plus_the_cooldown() {
    let cooldown = 600;
    let app = spawn_app_with(Setup::intune(cooldown).in_virtual_time()).await;
    let run: Value = app.post_sync(&app.token()).await.json().await.unwrap();
    let started: chrono::DateTime<chrono::Utc> =
        run["started_at"].as_str().unwrap().parse().unwrap();
    let expected = started + chrono::TimeDelta::seconds(cooldown as i64);
    let gauge = format!(
        r#"sync_gateway_run_next_allowed_timestamp_seconds{{tenant="{}"}}"#,
        app.tenant
    );
    let value = scrape(&app).await.get(&gauge);
    assert_eq!((value * 1000.0).round() as i64, expected.timestamp_millis());
    // A request now is scheduled for exactly that instant.
    let scheduled: Value = app.post_sync(&app.token()).await.json().await.unwrap();
    let not_before: chrono::DateTime<chrono::Utc> =
        scheduled["not_before"].as_str().unwrap().parse().unwrap();
    assert_eq!(not_before, expected);
    assert_eq!(
        scrape(&app)
            .await
            .get(r#"sync_gateway_runs{state="scheduled"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_run_graph_refuses_counts_the_status_and_the_failed_transition() {
    let app = spawn_app_with(Setup {
        graph_mode: GraphMode::Always(GraphResponse::Status(403)),
        ..Setup::default()
    })
    .await;
    let before = scrape(&app).await;
    let resp = app.post_sync(&app.token()).await;
    let status = resp.status().as_u16();
    let problem = problem_of(resp).await;
    let kind = problem["type"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    wait_for(
        &app,
        r#"sync_gateway_run_transitions_total{from="running",to="failed"}"#,
        1.0,
    )
    .await;
    let after = scrape(&app).await;
    let requests = format!(
        r#"sync_gateway_requests_total{{route="/sync",status_class="{}xx",kind="{kind}"}}"#,
        status / 100
    );
    assert_eq!(
        moved(
            &before,
            &after,
            &[
                "sync_gateway_requests_total",
                "sync_gateway_run_transitions_total",
                "sync_gateway_graph_responses_total{operation=\"sync\"",
            ]
        ),
        expect(&[
            (requests.as_str(), 1.0),
            (
                r#"sync_gateway_run_transitions_total{from="new",to="running"}"#,
                1.0
            ),
            (
                r#"sync_gateway_run_transitions_total{from="running",to="failed"}"#,
                1.0
            ),
            (
                r#"sync_gateway_graph_responses_total{operation="sync",status="403"}"#,
                1.0
            ),
        ])
    );
}

#[tokio::test]
async fn entra_refusing_the_gateways_own_credential_is_counted_by_its_aadsts_code() {
    let app = spawn_app_with(Setup {
        gateway_secret: Some("not-the-registered-secret".into()),
        ..Setup::default()
    })
    .await;
    let before = scrape(&app).await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 500);
    let after = scrape(&app).await;
    assert_eq!(
        moved(
            &before,
            &after,
            &["sync_gateway_entra_errors_total", "sync_gateway_exchange_"]
        ),
        expect(&[
            (
                r#"sync_gateway_entra_errors_total{grant="on_behalf_of",cause="client_credential",code="AADSTS7000215"}"#,
                1.0
            ),
            ("sync_gateway_exchange_cache_misses_total", 1.0),
            ("sync_gateway_exchange_duration_seconds_count", 1.0),
        ])
    );
}

#[tokio::test]
async fn fifty_concurrent_first_calls_with_one_token_count_one_exchange_miss_and_49_hits() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    let statuses = app.post_sync_concurrently(&app.token(), 50).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let after = scrape(&app).await;
    assert_eq!(
        moved(&before, &after, &["sync_gateway_exchange_"]),
        expect(&[
            ("sync_gateway_exchange_cache_misses_total", 1.0),
            ("sync_gateway_exchange_cache_hits_total", 49.0),
            ("sync_gateway_exchange_duration_seconds_count", 1.0),
        ])
    );
}

#[tokio::test]
async fn an_unknown_key_id_counts_one_key_refresh_of_its_issuer() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    let token = app.sims.entra.sign_with_unpublished_key(&app.claims());
    assert_eq!(app.post_sync(&token).await.status(), 401);
    let after = scrape(&app).await;
    assert_eq!(
        moved(&before, &after, &["sync_gateway_jwks_refreshes_total"]),
        expect(&[(
            &format!(
                r#"sync_gateway_jwks_refreshes_total{{tenant="{}",version="v2",trigger="unknown_kid",result="ok"}}"#,
                app.tenant
            ),
            1.0
        )])
    );
}

#[tokio::test]
async fn the_tracked_keys_gauge_counts_each_caller_and_tenant_the_limiter_holds() {
    let app = spawn_app().await;
    for _ in 0..2 {
        assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    }
    let now = scrape(&app).await;
    assert_eq!(
        now.get(r#"sync_gateway_rate_limit_tracked_keys{policy="per-caller"}"#),
        2.0
    );
    assert_eq!(
        now.get(r#"sync_gateway_rate_limit_tracked_keys{policy="per-tenant"}"#),
        1.0
    );
}

#[tokio::test]
async fn paths_the_gateway_does_not_serve_are_counted_as_unmatched_without_their_ids() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    let missing_run = uuid::Uuid::new_v4().to_string();
    assert_eq!(app.get("/devices/abc-123").await.status(), 404);
    // Ids with letters: a bare number such as 4242 can turn up in any metric's value.
    assert_eq!(app.get("/sync/xyz/q4242q").await.status(), 404);
    assert_eq!(
        app.get_as(&format!("/sync/runs/{missing_run}"), &app.token())
            .await
            .status(),
        404
    );
    let text = app.get("/metrics").await.text().await.unwrap();
    for id in ["abc-123", "q4242q", missing_run.as_str()] {
        assert!(!text.contains(id), "{id} is in /metrics");
    }
    assert_eq!(
        moved(
            &before,
            &Scrape::parse(&text),
            &["sync_gateway_requests_total"]
        ),
        expect(&[
            (
                r#"sync_gateway_requests_total{route="unmatched",status_class="4xx",kind="not-found"}"#,
                2.0
            ),
            (
                r#"sync_gateway_requests_total{route="/sync/runs/{id}",status_class="4xx",kind="not-found"}"#,
                1.0
            ),
        ])
    );
}

#[tokio::test]
async fn a_lost_audit_record_counts_the_503_a_sync_gets_and_the_status_a_read_gets() {
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::default();
    let app = spawn_app_with(faulty_setup(&dir, &fault)).await;
    let token = app.token();
    let before = scrape(&app).await;
    fault.set(Mode::Fail(28));
    assert_eq!(app.post_sync(&token).await.status(), 503);
    // A read is answered even when its record is lost: counted with the status it got.
    let missing_run = uuid::Uuid::new_v4();
    assert_eq!(
        app.get_as(&format!("/sync/runs/{missing_run}"), &token)
            .await
            .status(),
        404
    );
    let after = scrape(&app).await;
    fault.set(Mode::Pass);
    assert_eq!(
        moved(&before, &after, &["sync_gateway_requests_total"]),
        expect(&[
            (
                r#"sync_gateway_requests_total{route="/sync",status_class="5xx",kind="audit-unavailable"}"#,
                1.0
            ),
            (
                r#"sync_gateway_requests_total{route="/sync/runs/{id}",status_class="4xx",kind="not-found"}"#,
                1.0
            ),
        ])
    );
}
