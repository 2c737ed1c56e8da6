//! The audit trail: fail closed, and no secret in it or in the logs.

use crate::helpers::{
    config_toml, header, problem_of, problem_type, spawn_app, spawn_app_with, start_world, Setup,
};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use sync_gateway::audit::verify::{verify_files, VerifyOptions};
use sync_gateway::audit::{AuditSink, Batch, FileOptions, FileSink, Opened, Tail};
use sync_gateway::server::StartError;
use sync_gateway::sim::entra::{Failure, FailureScope};
use sync_gateway::{Application, Config};

#[tokio::test]
async fn an_unwritable_audit_trail_answers_503_and_graph_is_never_called() {
    // /dev/full accepts the open and fails every write with ENOSPC: a full disk.
    let app = spawn_app_with(Setup {
        audit_path: Some("/dev/full".into()),
        audit_broken_at_start: true,
        ..Setup::default()
    })
    .await;
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("audit-unavailable"));
    assert_eq!(app.sims.graph.sync_calls(), 0);
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn a_refused_caller_is_also_refused_service_when_the_trail_is_unwritable() {
    let app = spawn_app_with(Setup {
        audit_path: Some("/dev/full".into()),
        audit_broken_at_start: true,
        ..Setup::default()
    })
    .await;
    // Nothing is answered that was not recorded, not even a refusal.
    assert_eq!(app.post_sync("garbage").await.status(), 503);
}

#[tokio::test]
async fn no_token_or_secret_appears_in_logs_or_audit_across_every_outcome() {
    let app = spawn_app().await;
    // Success, refusals, a step-up and an IdP failure: each path logs something.
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let mut spec = app.user();
    spec.scopes = vec!["User.Read".into()];
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&spec)).await.status(),
        403
    );
    let token = app.token();
    let (rest, _) = token.rsplit_once('.').unwrap();
    assert_eq!(app.post_sync(&format!("{rest}.AAAA")).await.status(), 401);
    let stepped = app.user();
    app.sims.entra.set_failure(
        FailureScope::User(stepped.object_id.clone()),
        Some(Failure::StepUp {
            claims: "{\"access_token\":{}}".into(),
        }),
    );
    assert_eq!(
        app.post_sync(&app.sims.entra.mint(&stepped)).await.status(),
        401
    );
    app.sims
        .entra
        .set_failure(FailureScope::Global, Some(Failure::ServerError));
    assert_eq!(app.post_sync(&app.token()).await.status(), 503);
    assert!(app.sims.entra.issued_secrets().len() >= 6);
    app.assert_no_secret_leaked();
}

/// What the injected sink does with the next commit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Pass,
    /// Writes half the batch, then fails with this `errno` (28: ENOSPC, 13: EACCES).
    Fail(i32),
    /// Blocks until released, then writes.
    Hang,
}

#[derive(Clone, Default)]
pub(crate) struct Fault {
    state: Arc<(Mutex<FaultState>, Condvar)>,
}

struct FaultState {
    mode: Mode,
    hung: usize,
}

impl Default for FaultState {
    fn default() -> Self {
        FaultState {
            mode: Mode::Pass,
            hung: 0,
        }
    }
}

impl Fault {
    pub(crate) fn set(&self, mode: Mode) {
        self.state.0.lock().unwrap().mode = mode;
        self.state.1.notify_all();
    }
    /// Commits blocked right now.
    fn hung(&self) -> usize {
        self.state.0.lock().unwrap().hung
    }
}

/// The real file sink, with faults injected in front of it.
struct FaultySink {
    inner: FileSink,
    path: PathBuf,
    fault: Fault,
}

impl AuditSink for FaultySink {
    fn name(&self) -> &'static str {
        "file"
    }
    fn open(&mut self) -> std::io::Result<Opened> {
        self.inner.open()
    }
    fn commit(&mut self, batch: &Batch<'_>) -> std::io::Result<()> {
        let (lock, cv) = &*self.fault.state;
        let mut s = lock.lock().unwrap();
        match s.mode {
            Mode::Pass => {}
            Mode::Fail(errno) => {
                // Half a batch lands before the disk fills up: recovery must cut it.
                let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
                f.write_all(&batch.buf[..batch.buf.len() / 2])?;
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            Mode::Hang => {
                s.hung += 1;
                while s.mode == Mode::Hang {
                    s = cv.wait(s).unwrap();
                }
                s.hung -= 1;
            }
        }
        drop(s);
        self.inner.commit(batch)
    }
    fn recover(&mut self) -> std::io::Result<Option<Tail>> {
        self.inner.recover()
    }
}

/// A gateway whose audit sink fails or hangs as `fault` says (shared with the metrics tests).
pub(crate) fn faulty_setup(dir: &tempfile::TempDir, fault: &Fault) -> Setup {
    let path = dir.path().join("audit.jsonl");
    Setup {
        audit_path: Some(path.clone()),
        audit_sink: Some(Box::new(FaultySink {
            inner: FileSink::new(&path, FileOptions::default()),
            path,
            fault: fault.clone(),
        })),
        ..Setup::default()
    }
    .set("audit.write_timeout_ms", "300")
}

#[tokio::test]
async fn a_full_disk_answers_503_calls_nothing_upstream_and_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::default();
    let app = spawn_app_with(faulty_setup(&dir, &fault)).await;
    fault.set(Mode::Fail(28));

    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "retry-after"), "5");
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("audit-unavailable")
    );
    assert_eq!(app.sims.graph.sync_calls(), 0);
    assert_eq!(app.get("/readyz").await.status(), 503);
    assert!(
        app.metric("sync_gateway_audit_append_failures_total{reason=\"io\"}")
            .await
            >= 1.0
    );

    // Space comes back: the trail recovers by itself and says what happened.
    fault.set(Mode::Pass);
    app.wait_until_ready().await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let failed = app.audit_of_kind("admin");
    let failed: Vec<_> = failed
        .iter()
        .filter(|r| r["event"] == "write_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["error"], "StorageFull");
    // No half-written line is left: every line is a whole record and the chain verifies
    // (checked again by the helper's Drop).
    assert!(app.audit_text().ends_with('\n'));
    assert_eq!(started_runs(&app).len(), 1);
}

#[tokio::test]
async fn an_unwritable_file_answers_503_and_graph_is_never_called() {
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::default();
    let app = spawn_app_with(faulty_setup(&dir, &fault)).await;
    fault.set(Mode::Fail(13)); // EACCES
    let resp = app.post_sync(&app.token()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        problem_of(resp).await["type"],
        problem_type("audit-unavailable")
    );
    assert_eq!(app.sims.graph.sync_calls(), 0);
    fault.set(Mode::Pass);
    app.wait_until_ready().await;
    // Nothing of the refused request was kept: its records were never confirmed.
    assert_eq!(app.audit_of_kind("request").len(), 0);
    assert_eq!(started_runs(&app).len(), 0);
}

#[tokio::test]
async fn an_audit_file_that_cannot_be_opened_stops_the_gateway_from_starting() {
    let world = start_world().await;
    let missing = std::path::Path::new("/nonexistent-dir/audit.jsonl");
    let config = Config::from_toml_and_env(
        &config_toml(&world, missing, &[]),
        [(
            "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".to_string(),
            world.secret.clone(),
        )],
    )
    .unwrap();
    match Application::build(config).await {
        Err(StartError::Audit { path, .. }) => assert_eq!(path, missing.display().to_string()),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the gateway started without an audit trail"),
    }
}

#[tokio::test]
async fn a_hung_writer_answers_503_within_the_bound_and_never_stalls_later_requests() {
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::default();
    let app = spawn_app_with(faulty_setup(&dir, &fault)).await;
    fault.set(Mode::Hang);

    let first = app.post_sync(&app.token()).await;
    assert_eq!(first.status(), 503);
    // Answered while the writer is still stuck in that commit: bounded by the timeout, not
    // by the disk.
    assert_eq!(fault.hung(), 1);

    let mut later = Vec::new();
    for _ in 0..20 {
        let (http, url, token) = (
            app.http.clone(),
            format!("{}/sync", app.address),
            app.token(),
        );
        later.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for r in later {
        assert_eq!(r.await.unwrap(), 503);
    }
    assert_eq!(fault.hung(), 1, "the writer was hung throughout");
    assert_eq!(app.sims.graph.sync_calls(), 0);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["checks"]["audit"],
        false
    );
    assert!(
        app.metric("sync_gateway_audit_append_failures_total{reason=\"stalled\"}")
            .await
            >= 1.0
    );

    fault.set(Mode::Pass);
    app.wait_until_ready().await;
    let answer = app.post_sync(&app.token()).await;
    assert_eq!(answer.status(), 202);
    assert_eq!(app.sims.graph.sync_calls(), 1);
    // The run's `finished` record may land just after the answer: read the trail once it has.
    let run: Value = answer.json().await.unwrap();
    app.wait_for_outcome_record(run["id"].as_str().unwrap(), "recorded")
        .await;
    // The record that was in the hung commit landed after its caller was refused: the trail
    // says so, so verify does not count it as a run with an unknown outcome.
    let late: Vec<Value> = app
        .audit_of_kind("admin")
        .into_iter()
        .filter(|r| r["event"] == "late_commit")
        .collect();
    assert_eq!(late.len(), 1, "{late:?}");
    let report = verify_files(&app.audit_files(), &VerifyOptions::default()).unwrap();
    assert!(report.intact(), "{}", report.render());
    assert!(report.open_runs.is_empty(), "{}", report.render());
}

#[tokio::test]
async fn the_metrics_endpoint_counts_durable_records_in_openmetrics_text() {
    let app = spawn_app().await;
    assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("# TYPE sync_gateway_audit_records_written counter"),
        "{text}"
    );
    // start, config_loaded, run started, run finished, request
    assert!(app.metric("sync_gateway_audit_records_written_total").await >= 4.0);
    assert_eq!(app.metric("sync_gateway_audit_healthy").await, 1.0);
}

/// A sync whose run's Graph call is answered (204) only after the trail was made unwritable
/// (EACCES): the call is held in the simulated Graph until the sink fails, so nothing races.
/// Returns the caller's answer; the trail is still failing.
async fn sync_with_the_trail_failing_while_graph_answers(
    app: &crate::helpers::TestApp,
    fault: &Fault,
) -> reqwest::Response {
    app.sims.graph.hold_answers();
    let (http, url, token) = (
        app.http.clone(),
        format!("{}/sync", app.address),
        app.token(),
    );
    let call = tokio::spawn(async move { http.post(url).bearer_auth(token).send().await.unwrap() });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.sims.graph.sync_calls() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "Graph was never called"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    fault.set(Mode::Fail(13));
    app.sims.graph.release_answers();
    call.await.unwrap()
}

#[tokio::test]
async fn a_caller_whose_record_fails_after_graph_acted_gets_503_naming_the_run_and_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::default();
    let app = spawn_app_with(faulty_setup(&dir, &fault)).await;

    let resp = sync_with_the_trail_failing_while_graph_answers(&app, &fault).await;
    assert_eq!(resp.status(), 503);
    let location = header(&resp, "location");
    let p = problem_of(resp).await;
    assert_eq!(p["type"], problem_type("audit-unavailable"));
    let run_id = p["run"]["id"].as_str().expect("the problem names the run");
    assert_eq!(location, format!("/sync/runs/{run_id}"));
    assert_eq!(p["run"]["state"], "succeeded");
    assert!(p["instance"].as_str().unwrap().starts_with("urn:uuid:"));
    assert_eq!(app.sims.graph.accepted_syncs(), 1);

    fault.set(Mode::Pass);
    app.wait_until_ready().await;
}

#[tokio::test]
async fn a_run_whose_outcome_is_not_yet_durable_says_pending_until_it_is_written_late() {
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::default();
    let app = spawn_app_with(faulty_setup(&dir, &fault)).await;
    let resp = sync_with_the_trail_failing_while_graph_answers(&app, &fault).await;
    let p = problem_of(resp).await;
    let run_id = p["run"]["id"].as_str().unwrap().to_string();

    let run = app.wait_for_outcome_record(&run_id, "pending").await;
    assert_eq!(run["state"], "succeeded");

    fault.set(Mode::Pass);
    app.wait_for_outcome_record(&run_id, "recorded_late").await;
}

#[tokio::test]
async fn outcome_records_the_trail_could_not_take_are_written_late_once_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::default();
    let app = spawn_app_with(faulty_setup(&dir, &fault)).await;
    let resp = sync_with_the_trail_failing_while_graph_answers(&app, &fault).await;
    let p = problem_of(resp).await;
    let run_id = p["run"]["id"].as_str().unwrap().to_string();
    let request_id = p["instance"]
        .as_str()
        .unwrap()
        .trim_start_matches("urn:uuid:")
        .to_string();
    // The caller is answered once the run is final, which can be just before the run's own
    // `finished` record reaches the writer: wait until the trail has refused that one too.
    app.wait_for_outcome_record(&run_id, "pending").await;

    fault.set(Mode::Pass);
    app.wait_for_outcome_record(&run_id, "recorded_late").await;
    let records = app.audit_records();
    let seq_of = |pred: &dyn Fn(&Value) -> bool| {
        let found: Vec<&Value> = records.iter().filter(|r| pred(r)).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
    };
    let started = seq_of(&|r| r["run_id"] == run_id.as_str() && r["event"] == "started");
    let finished = seq_of(&|r| r["run_id"] == run_id.as_str() && r["event"] == "finished");
    let request = seq_of(&|r| r["kind"] == "request" && r["id"] == request_id.as_str());
    let failed = seq_of(&|r| r["event"] == "write_failed");

    assert!(
        started.get("late").is_none(),
        "written before the call, in time"
    );
    assert_eq!(finished["state"], "succeeded");
    assert_eq!(finished["attempts"][0]["status"], 204);
    for late in [&finished, &request] {
        assert_eq!(late["late"], true, "{late}");
        assert!(late["recorded_at"].is_string(), "{late}");
    }
    // Written first by the commit that worked again, right after it says writes failed.
    let mut late_seqs = [finished["seq"].as_u64(), request["seq"].as_u64()];
    late_seqs.sort();
    let after = failed["seq"].as_u64().unwrap();
    assert_eq!(late_seqs, [Some(after + 1), Some(after + 2)]);

    let report = verify_files(&app.audit_files(), &VerifyOptions::default()).unwrap();
    assert!(report.intact(), "{}", report.render());
    assert!(report.open_runs.is_empty(), "{}", report.render());
    let text = report.render();
    assert!(
        text.contains("outcome recorded late:") && text.contains(&run_id),
        "{text}"
    );
}

/// The `run` records written before a run's first Graph call.
fn started_runs(app: &crate::helpers::TestApp) -> Vec<serde_json::Value> {
    app.audit_of_kind("run")
        .into_iter()
        .filter(|r| r["event"] == "started")
        .collect()
}
