//! Tamper evidence: `verify` finds every edit, deletion, reordering and insertion with the
//! right line number; the chain runs across rotation, retention, restarts, a torn tail and a
//! key change.

use crate::helpers::{assert_trail_valid, spawn_app_with, trail_files, Setup};
use chrono::Utc;
use std::path::{Path, PathBuf};
use std::time::Duration;
use sync_gateway::audit::verify::{verify_files, Report, VerifyOptions};
use sync_gateway::audit::{
    generate_key_pair, AuditEvent, AuditLog, AuditOptions, CheckpointSigner, CheckpointVerifier,
    FileOptions, FileSink, RequestRecord,
};
use uuid::Uuid;

/// A fresh key pair on disk: (private key file, verifier).
fn key(dir: &Path, name: &str) -> (PathBuf, CheckpointVerifier) {
    let (private, public) = generate_key_pair().unwrap();
    let p = dir.join(name);
    std::fs::write(&p, private).unwrap();
    let pubp = dir.join(format!("{name}.pub"));
    std::fs::write(&pubp, public).unwrap();
    (p, CheckpointVerifier::from_pem(&pubp).unwrap())
}

fn no_rotation() -> FileOptions {
    FileOptions {
        rotate_bytes: 0,
        rotate_age: Duration::ZERO,
        retain_files: 0,
    }
}

/// Opens the trail at `path` like the gateway does, checkpointing every 4 records.
fn open(path: &Path, key_file: &Path, file: FileOptions) -> AuditLog {
    let mut opts = AuditOptions::new(Duration::from_secs(5));
    opts.signer = Some(CheckpointSigner::from_pem_file(key_file).unwrap());
    opts.checkpoint_every_records = 4;
    AuditLog::start(Box::new(FileSink::new(path, file)), opts).unwrap()
}

async fn write(log: &AuditLog, n: usize) {
    for _ in 0..n {
        let mut r = RequestRecord::new(Uuid::now_v7(), Utc::now(), "sync", None);
        r.status = 401;
        r.code = Some("missing-credentials");
        log.append(&AuditEvent::Request(r)).await.unwrap();
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn verify_text(dir: &Path, lines: &[String], key: &CheckpointVerifier) -> Report {
    let p = dir.join("tampered.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    verify_files(
        &[p],
        &VerifyOptions {
            keys: vec![key.clone()],
        },
    )
    .unwrap()
}

/// A one-file trail of 14 requests with checkpoints, ended by a clean shutdown.
async fn sample(dir: &Path) -> (Vec<String>, CheckpointVerifier) {
    let (k, v) = key(dir, "signing.pem");
    let path = dir.join("audit.jsonl");
    let log = open(&path, &k, no_rotation());
    write(&log, 14).await;
    log.shutdown().await;
    (lines(&path), v)
}

fn first_problem_line(r: &Report) -> u64 {
    assert!(!r.intact(), "tampering went unnoticed:\n{}", r.render());
    r.problems[0].line
}

#[tokio::test]
async fn an_untouched_trail_with_checkpoints_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (original, key) = sample(dir.path()).await;
    let r = verify_text(dir.path(), &original, &key);
    assert!(r.intact(), "{}", r.render());
    assert!(r.checkpoints >= 4);
    assert_eq!(r.checkpoints, r.checkpoints_verified);
    assert_eq!(r.unsigned_tail, 0, "the shutdown checkpoint covers the end");
}

#[tokio::test]
async fn editing_any_line_is_reported_at_that_line() {
    let dir = tempfile::tempdir().unwrap();
    let (original, key) = sample(dir.path()).await;
    for i in 0..original.len() {
        let mut t = original.clone();
        // Change one digit of the record's time: still valid JSON, same length.
        let at = t[i].find("\"time\":\"").unwrap() + 8 + 18;
        let mut bytes = t[i].clone().into_bytes();
        bytes[at] = if bytes[at] == b'9' {
            b'0'
        } else {
            bytes[at] + 1
        };
        t[i] = String::from_utf8(bytes).unwrap();
        let r = verify_text(dir.path(), &t, &key);
        assert_eq!(first_problem_line(&r), i as u64 + 1, "{}", r.render());
    }
}

#[tokio::test]
async fn deleting_any_line_but_the_last_is_reported_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (original, key) = sample(dir.path()).await;
    // Cutting the very end is indistinguishable from a crash before it; see docs/audit.md.
    for i in 0..original.len() - 1 {
        let mut t = original.clone();
        t.remove(i);
        let r = verify_text(dir.path(), &t, &key);
        assert_eq!(first_problem_line(&r), i as u64 + 1, "{}", r.render());
    }
}

#[tokio::test]
async fn swapping_any_two_neighbouring_lines_is_reported_at_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (original, key) = sample(dir.path()).await;
    for i in 0..original.len() - 1 {
        let mut t = original.clone();
        t.swap(i, i + 1);
        let r = verify_text(dir.path(), &t, &key);
        assert_eq!(first_problem_line(&r), i as u64 + 1, "{}", r.render());
    }
}

#[tokio::test]
async fn inserting_a_line_anywhere_is_reported_at_the_inserted_line() {
    let dir = tempfile::tempdir().unwrap();
    let (original, key) = sample(dir.path()).await;
    for i in 0..=original.len() {
        let mut t = original.clone();
        // A replayed copy of a genuine record.
        let copy = if i == 0 {
            original[1].clone()
        } else {
            original[0].clone()
        };
        t.insert(i, copy);
        let r = verify_text(dir.path(), &t, &key);
        assert_eq!(first_problem_line(&r), i as u64 + 1, "{}", r.render());
    }
}

#[tokio::test]
async fn a_rechained_rewrite_is_caught_by_the_next_checkpoint_signature() {
    let dir = tempfile::tempdir().unwrap();
    let (original, key) = sample(dir.path()).await;
    // Someone without the key edits line 2 and recomputes every prev after it.
    let mut t = original.clone();
    t[1] = t[1].replace("\"decision\":\"denied\"", "\"decision\":\"allowed\"");
    assert_ne!(t[1], original[1]);
    for i in 2..t.len() {
        let prev = sync_gateway::audit::verify::line_hash_hex(t[i - 1].as_bytes());
        let v: serde_json::Value = serde_json::from_str(&t[i]).unwrap();
        let old = v["prev"].as_str().unwrap().to_string();
        t[i] = t[i].replace(&old, &prev);
    }
    let first_checkpoint = t
        .iter()
        .position(|l| l.contains("\"kind\":\"checkpoint\""))
        .unwrap();
    assert!(first_checkpoint > 1);
    let r = verify_text(dir.path(), &t, &key);
    assert_eq!(first_problem_line(&r), first_checkpoint as u64 + 1);
    assert!(
        r.problems[0].message.contains("signature"),
        "{}",
        r.render()
    );
}

#[tokio::test]
async fn the_chain_runs_across_rotated_files_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (k, key) = key(dir.path(), "signing.pem");
    let path = dir.path().join("audit.jsonl");
    let rotate = FileOptions {
        rotate_bytes: 1500,
        rotate_age: Duration::ZERO,
        retain_files: 0,
    };
    let log = open(&path, &k, rotate);
    write(&log, 12).await;
    log.shutdown().await;
    drop(log);
    let log = open(&path, &k, rotate);
    write(&log, 12).await;
    log.shutdown().await;

    let files = trail_files(&path);
    assert!(files.len() >= 3, "{files:?}");
    assert_trail_valid(&files, std::slice::from_ref(&key));
    // Each file starts where the previous one ended.
    for pair in files.windows(2) {
        let last = lines(&pair[0]).pop().unwrap();
        let first: serde_json::Value = serde_json::from_str(&lines(&pair[1])[0]).unwrap();
        assert_eq!(
            first["prev"],
            sync_gateway::audit::verify::line_hash_hex(last.as_bytes())
        );
    }
}

#[tokio::test]
async fn a_missing_rotated_file_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (k, key) = key(dir.path(), "signing.pem");
    let path = dir.path().join("audit.jsonl");
    let rotate = FileOptions {
        rotate_bytes: 1000,
        rotate_age: Duration::ZERO,
        retain_files: 0,
    };
    let log = open(&path, &k, rotate);
    write(&log, 20).await;
    log.shutdown().await;
    let mut files = trail_files(&path);
    assert!(files.len() >= 4, "{files:?}");
    let gone = files.remove(1);
    let r = verify_files(&files, &VerifyOptions { keys: vec![key] }).unwrap();
    assert!(!r.intact());
    assert!(
        r.problems[0].message.contains(&gone.display().to_string()),
        "{}",
        r.render()
    );
}

#[tokio::test]
async fn retention_keeps_the_newest_files_and_the_trail_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (k, key) = key(dir.path(), "signing.pem");
    let path = dir.path().join("audit.jsonl");
    let log = open(
        &path,
        &k,
        FileOptions {
            rotate_bytes: 800,
            rotate_age: Duration::ZERO,
            retain_files: 2,
        },
    );
    write(&log, 30).await;
    log.shutdown().await;
    let files = trail_files(&path);
    assert_eq!(
        files.len(),
        3,
        "two rotated files and the active one: {files:?}"
    );
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(text.contains("\"event\":\"retention\""));
    let r = verify_files(&files, &VerifyOptions { keys: vec![key] }).unwrap();
    assert!(r.intact(), "{}", r.render());
    assert!(
        r.notes.iter().any(|n| n.contains("retention")),
        "{}",
        r.render()
    );
}

#[tokio::test]
async fn a_torn_last_line_is_reported_then_cut_and_recorded_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (k, key) = key(dir.path(), "signing.pem");
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, &k, no_rotation());
    write(&log, 5).await;
    log.shutdown().await;
    drop(log);
    let torn = b"{\"seq\":99,\"prev\":\"00";
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, torn).unwrap();

    let before = verify_files(
        std::slice::from_ref(&path),
        &VerifyOptions {
            keys: vec![key.clone()],
        },
    )
    .unwrap();
    assert!(before.intact(), "a torn tail alone is not tampering");
    let t = before
        .torn_tail
        .as_ref()
        .expect("the torn tail is reported");
    assert_eq!(t.line, lines(&path).len() as u64);

    let log = open(&path, &k, no_rotation());
    write(&log, 1).await;
    log.shutdown().await;
    let records: Vec<serde_json::Value> = lines(&path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let recovered: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "torn_tail_recovered")
        .collect();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["torn_bytes"], torn.len());
    let after = verify_files(
        std::slice::from_ref(&path),
        &VerifyOptions { keys: vec![key] },
    )
    .unwrap();
    assert!(
        after.intact() && after.torn_tail.is_none(),
        "{}",
        after.render()
    );
    assert_trail_valid(&[path], &[]);
}

#[tokio::test]
async fn a_new_signing_key_is_recorded_and_both_keys_verify_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, v1) = key(dir.path(), "one.pem");
    let (k2, v2) = key(dir.path(), "two.pem");
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, &k1, no_rotation());
    write(&log, 3).await;
    log.shutdown().await;
    drop(log);
    let log = open(&path, &k2, no_rotation());
    write(&log, 3).await;
    log.shutdown().await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"event\":\"key_rotation\""));
    assert!(text.contains(&format!("\"previous_key_id\":\"{}\"", v1.key_id())));
    let only_new = verify_files(
        std::slice::from_ref(&path),
        &VerifyOptions {
            keys: vec![v2.clone()],
        },
    )
    .unwrap();
    assert!(
        !only_new.intact(),
        "a checkpoint by an unknown key is reported"
    );
    let both = verify_files(
        std::slice::from_ref(&path),
        &VerifyOptions { keys: vec![v1, v2] },
    )
    .unwrap();
    assert!(both.intact(), "{}", both.render());
    assert_trail_valid(&[path], &[]);
}

#[tokio::test]
async fn the_gateway_trail_spans_three_rotated_files_and_a_restart_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (k, key) = key(dir.path(), "signing.pem");
    let path = dir.path().join("audit.jsonl");
    let setup = |world| {
        Setup {
            audit_path: Some(path.clone()),
            world,
            ..Setup::default()
        }
        .set("audit.rotate_bytes", "1500")
        .set(
            "audit.signing_key_file",
            &format!("{:?}", k.display().to_string()),
        )
        .set("audit.checkpoint_every_records", "3")
    };

    let mut app = spawn_app_with(setup(None)).await;
    for _ in 0..4 {
        assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    }
    app.stop().await;
    let world = app.world.clone();
    drop(app);
    let mut app = spawn_app_with(setup(Some(world))).await;
    for _ in 0..2 {
        assert_eq!(app.post_sync(&app.token()).await.status(), 202);
    }
    app.stop().await;

    let files = trail_files(&path);
    assert!(files.len() >= 3, "{files:?}");
    assert_trail_valid(&files, &[key]);
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert_eq!(text.matches("\"event\":\"start\"").count(), 2);
    assert_eq!(text.matches("\"event\":\"config_loaded\"").count(), 2);
    assert_eq!(text.matches("\"event\":\"stop\"").count(), 2);
    assert_eq!(text.matches("\"event\":\"started\"").count(), 6);
}

#[tokio::test]
async fn a_run_started_without_a_finish_is_reported_as_outcome_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file(&path, Duration::from_secs(5)).unwrap();
    let started = |run: Uuid| {
        serde_json::json!({"v": 1, "kind": "run", "id": Uuid::now_v7(), "time": Utc::now(),
            "run_id": run, "action": "sync", "tenant_id": "t", "event": "started",
            "state": "running", "covers": [Uuid::now_v7()],
            "attempt": {"number": 1, "client_request_id": "c", "sent_at": Utc::now()},
            "acting_as": {"kind": "user", "tenant_id": "t"}})
    };
    let (finished_run, open_run) = (Uuid::now_v7(), Uuid::now_v7());
    log.append_value(started(finished_run)).await.unwrap();
    log.append_value(started(open_run)).await.unwrap();
    let mut finished = started(finished_run);
    finished["event"] = "finished".into();
    finished["state"] = "succeeded".into();
    finished.as_object_mut().unwrap().remove("attempt");
    log.append_value(finished).await.unwrap();

    let r = verify_files(std::slice::from_ref(&path), &VerifyOptions::default()).unwrap();
    assert!(r.intact(), "unknown outcomes are facts, not tampering");
    assert_eq!(r.open_runs.len(), 1, "{}", r.render());
    assert_eq!(r.open_runs[0].line, 2);
    assert!(r.open_runs[0].message.contains(&open_run.to_string()));
    assert!(r.render().contains("outcome unknown"));
    assert_trail_valid(&[path], &[]);
}
