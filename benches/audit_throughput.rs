//! Throughput of the audit trail on this machine: records per second made durable by group
//! commit (write + fsync per batch) under concurrent writers, and the time `verify` takes on
//! a one-million-record trail. Prints figures; asserts nothing.
//!
//! `cargo bench --bench audit_throughput` (set AUDIT_BENCH_DIR to measure another disk; the
//! default is `target/audit-bench`, on the same disk as the build).

use chrono::Utc;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use sync_gateway::audit::verify::{verify_files, VerifyOptions};
use sync_gateway::audit::{
    AuditEvent, AuditLog, AuditOptions, CallerSummary, FileOptions, FileSink, RequestRecord, Tail,
    UpstreamSummary,
};
use uuid::Uuid;

/// A request record of the usual size (~600 bytes).
fn record() -> AuditEvent {
    let mut r = RequestRecord::new(
        Uuid::now_v7(),
        Utc::now(),
        "sync",
        Some("10.1.2.3".parse().unwrap()),
    );
    r.caller = Some(CallerSummary {
        kind: "user",
        tenant_id: Uuid::new_v4().to_string(),
        object_id: Some(Uuid::new_v4().to_string()),
        upn: Some("someone.with.a.long.name@contoso.example".into()),
        app_id: Some(Uuid::new_v4().to_string()),
        identity: None,
    });
    r.decision = sync_gateway::domain::Decision::Allowed;
    r.status = 202;
    r.run_id = Some(Uuid::now_v7());
    r.upstream = Some(UpstreamSummary {
        status: Some(204),
        request_id: Some(Uuid::new_v4().to_string()),
        client_request_id: Uuid::new_v4().to_string(),
        duration_ms: 87,
    });
    r.duration_ms = 95;
    r.reason = Some("laptop reimaged after a motherboard replacement".into());
    AuditEvent::Request(r)
}

fn bench_dir() -> PathBuf {
    let d = std::env::var_os("AUDIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/audit-bench"))
        });
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn group_commit(writers: usize, per_writer: usize) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let opts = FileOptions {
        rotate_bytes: 0,
        rotate_age: Duration::ZERO,
        retain_files: 0,
    };
    let log = AuditLog::start(
        Box::new(FileSink::new(dir.path().join("audit.jsonl"), opts)),
        AuditOptions::new(Duration::from_secs(30)),
    )
    .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_writer {
                log.append(&record()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let total = writers * per_writer;
    println!(
        "group commit, fsync on: {writers:>4} concurrent writers, {total:>6} records in {secs:6.2} s = {:>8.0} records/s",
        total as f64 / secs
    );
}

fn verify_million() {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let path = dir.path().join("audit.jsonl");
    let body = serde_json::to_vec(&record()).unwrap();
    let mut tail = Tail::EMPTY;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for _ in 0..1_000_000 {
        let line = tail.link(&body);
        std::io::Write::write_all(&mut out, &line).unwrap();
        std::io::Write::write_all(&mut out, b"\n").unwrap();
    }
    std::io::Write::flush(&mut out).unwrap();
    drop(out);
    let bytes = std::fs::metadata(&path).unwrap().len();
    let started = Instant::now();
    let report = verify_files(&[path], &VerifyOptions::default()).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(report.intact());
    println!(
        "verify: {} records ({} MB) in {secs:.2} s = {:.0} records/s",
        report.records,
        bytes / 1_000_000,
        report.records as f64 / secs
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        group_commit(1, 2_000).await;
        group_commit(16, 2_000).await;
        group_commit(64, 1_000).await;
        group_commit(256, 400).await;
    });
    verify_million();
}
