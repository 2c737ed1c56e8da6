//! The audit trail: what the gateway did, for whom, and why, as a hash-chained sequence of
//! JSON records (format and guarantees: `docs/audit.md`).
//!
//! Records are made durable by one writer thread that commits whatever has queued up in one
//! `write` + `fsync` (or one transaction) — group commit. [`AuditLog::append`] returns only
//! once the record is durable, or fails within `audit.write_timeout_ms`: the pipeline then
//! answers 503 and calls nothing upstream (fail closed, with a bound). While a commit has been
//! running longer than that bound (a hung disk), appends are refused at once instead of each
//! waiting out the bound.
//!
//! Outcome records — what already happened upstream, which must not be lost — go through
//! [`AuditLog::append_outcome`]: one that cannot be made durable in time is kept (bounded, in
//! order, [`LATE_CAPACITY`]) and written, marked `"late": true`, once the trail recovers.
//!
//! The chain, checkpoints, rotation, recovery and sinks know nothing of record kinds: they
//! take a JSON object and add `seq` and `prev` in the writer, where the order is decided.

mod chain;
mod error;
mod event;
mod file;
mod formats;
mod postgres;
mod redact;
pub mod schema;
mod sink;
pub mod verify;
mod writer;

pub use chain::{
    generate_key_pair, public_key_pem, CheckpointSigner, CheckpointVerifier, KeyError, Tail,
};
pub use event::{
    AdminEvent, AdminRecord, AttemptSummary, AuditEvent, CallerSummary, HookDelivery,
    RequestRecord, RunRecord, UpstreamSummary,
};
pub use file::{replica_path, rotated_files, FileOptions, FileSink};
pub use postgres::{
    postgres_streams, stream_source, valid_schema_name, verify_postgres, verify_postgres_stream,
    PostgresOptions, PostgresSink, DEFAULT_STREAM,
};
pub use redact::{ValueHasher, MIN_KEY_BYTES as MIN_HMAC_KEY_BYTES, SENSITIVE_FIELDS};
pub use sink::{AuditSink, Batch, Opened};

use crate::domain::ReplicaId;
use crate::metrics::AuditMetrics;
use serde_json::Value;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use writer::{Msg, Pending, Shared, WriterOptions};

pub use error::AuditError;
pub use writer::Landed;

/// The record format version written into every record.
pub fn event_format_version() -> u32 {
    event::FORMAT_VERSION
}

/// How many records may wait for the writer; beyond that callers get 503 at once.
const QUEUE_CAPACITY: usize = 16_384;

/// Outcome records kept at most while the trail cannot take them; beyond that each is dropped,
/// logged at `error` and counted in `audit_late_dropped_total`. Enough for minutes of a
/// failed disk at the rate runs finish (at most two live runs per tenant).
pub const LATE_CAPACITY: usize = 1024;

/// What became of an outcome record ([`AuditLog::append_outcome`]).
#[derive(Debug)]
pub enum OutcomeWrite {
    /// Durable in time, at this `seq`.
    Durable(u64),
    /// Not durable in time (`error` says why): the writer keeps it and writes it, marked
    /// `"late": true`, once the trail recovers; `landed` says when.
    Queued {
        /// Why it was not durable in time.
        error: AuditError,
        /// Resolves once it is written, or with an error if it was dropped.
        landed: LateReceipt,
    },
    /// Not durable and not kept either (the queues were full, the writer stopped, or the
    /// record is not valid): it will not be in the trail.
    Lost(AuditError),
}

/// Resolves when a kept outcome record is finally written.
#[derive(Debug)]
pub struct LateReceipt(oneshot::Receiver<Result<Landed, AuditError>>);

impl LateReceipt {
    /// Waits until the record is written (`Ok`), or dropped: the late queue was full or the
    /// writer stopped first (`Err`).
    pub async fn wait(self) -> Result<Landed, AuditError> {
        self.0.await.unwrap_or(Err(AuditError::Stopped))
    }
}

/// How the trail is written, besides the sink.
pub struct AuditOptions {
    /// `audit.write_timeout_ms`: the bound on every append.
    pub write_timeout: Duration,
    /// Signs checkpoints when set.
    pub signer: Option<CheckpointSigner>,
    /// A checkpoint after at most this many records...
    pub checkpoint_every_records: u64,
    /// ...or this long after the last one, whichever comes first.
    pub checkpoint_every: Duration,
    /// Hashes sensitive values when set.
    pub hasher: Option<ValueHasher>,
    /// Also copies every committed record to stdout.
    pub stdout_copy: bool,
    /// Where the counters go.
    pub metrics: AuditMetrics,
    /// Outcome records kept at most while the sink fails ([`LATE_CAPACITY`]).
    pub late_capacity: usize,
    /// The replica whose chain this is: every record names it (`replica`). `None` only for
    /// tools and tests that write a trail outside a gateway.
    pub replica: Option<ReplicaId>,
}

impl AuditOptions {
    /// No checkpoints, no hashing, no copy; fresh counters.
    pub fn new(write_timeout: Duration) -> AuditOptions {
        AuditOptions {
            write_timeout,
            signer: None,
            checkpoint_every_records: 1000,
            checkpoint_every: Duration::from_secs(60),
            hasher: None,
            stdout_copy: false,
            metrics: AuditMetrics::default(),
            late_capacity: LATE_CAPACITY,
            replica: None,
        }
    }
}

/// Handle to the audit trail; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: SyncSender<Msg>,
    timeout: Duration,
    shared: Arc<Shared>,
    hasher: Option<Arc<ValueHasher>>,
    sink: &'static str,
    signing_key_id: Option<String>,
}

impl AuditLog {
    /// Opens (creating if needed) the append-only file at `path`, without rotation, and starts
    /// the writer thread.
    pub fn open_file(path: &Path, timeout: Duration) -> io::Result<AuditLog> {
        let opts = FileOptions {
            rotate_bytes: 0,
            rotate_age: Duration::ZERO,
            retain_files: 0,
        };
        AuditLog::start(
            Box::new(FileSink::new(path, opts)),
            AuditOptions::new(timeout),
        )
    }

    /// Opens `sink` on a new writer thread and returns once it is open (or failed to open).
    pub fn start(mut sink: Box<dyn AuditSink>, opts: AuditOptions) -> io::Result<AuditLog> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            busy_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics: opts.metrics.clone(),
        });
        shared.metrics.healthy.set(1);
        let name = sink.name();
        let signing_key_id = opts.signer.as_ref().map(|s| s.key_id().to_string());
        let writer_opts = WriterOptions {
            signer: opts.signer,
            checkpoint_every_records: opts.checkpoint_every_records.max(1),
            checkpoint_every: opts.checkpoint_every,
            stdout_copy: opts.stdout_copy,
            late_capacity: opts.late_capacity,
            replica_member: opts
                .replica
                .as_ref()
                .map(|r| {
                    format!("\"replica\":{}", serde_json::Value::from(r.as_str())).into_bytes()
                })
                .unwrap_or_default(),
        };
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || match sink.open() {
                Ok(opened) => {
                    let _ = opened_tx.send(Ok(()));
                    writer::run(sink, opened, rx, s, writer_opts);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })?;
        opened_rx
            .recv()
            .map_err(|_| io::Error::other("the audit writer died while opening"))??;
        Ok(AuditLog {
            tx,
            timeout: opts.write_timeout,
            shared,
            hasher: opts.hasher.map(Arc::new),
            sink: name,
            signing_key_id,
        })
    }

    /// Appends `event` and waits until it is durable.
    pub async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        if self.hasher.is_some() {
            // Hashing works on the value form.
            return match serde_json::to_value(event) {
                Ok(value) => self.append_value(value).await.map(|_| ()),
                Err(e) => self
                    .note_refusal(Err(AuditError::Invalid(e.to_string())))
                    .map(|_| ()),
            };
        }
        // A typed record never carries `seq` or `prev`, so it goes straight to bytes: the detour
        // through a `Value` (a map per object, then serialized again) cost about a tenth of a
        // proxied request's CPU.
        let result = match serde_json::to_vec(event) {
            Ok(body) => self.submit(body).await,
            Err(e) => Err(AuditError::Invalid(e.to_string())),
        };
        self.note_refusal(result).map(|_| ())
    }

    /// Appends an outcome record: one that describes what already happened upstream (a run's
    /// `finished` after Graph was called, the `request` record of a request whose run may have
    /// acted), so it must not be lost. Waits at most the write timeout, like [`Self::append`];
    /// if the record is not durable by then it is kept and written, marked `"late": true`,
    /// once the trail recovers. Never use it for a record that must be durable *before*
    /// something happens (a pre-call `run` record): those fail closed with [`Self::append`].
    pub async fn append_outcome(&self, event: &AuditEvent) -> OutcomeWrite {
        let body = if self.hasher.is_some() {
            // Hashing works on the value form.
            match serde_json::to_value(event) {
                Ok(mut value) => self.prepare(&mut value),
                Err(e) => Err(AuditError::Invalid(e.to_string())),
            }
        } else {
            // Every accepted request goes this way: straight to bytes, as in `append`.
            serde_json::to_vec(event).map_err(|e| AuditError::Invalid(e.to_string()))
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => return OutcomeWrite::Lost(self.refused_outcome(e)),
        };
        // Checked before offering: the record itself must still be offered, to be kept.
        let stalled = self.stalled();
        let (done, confirmed) = oneshot::channel();
        let (landed_tx, landed) = oneshot::channel();
        let pending = Pending {
            body,
            done,
            landed: Some(landed_tx),
        };
        if let Err(e) = writer::offer(&self.tx, pending) {
            return OutcomeWrite::Lost(self.refused_outcome(e));
        }
        let result = if stalled {
            // Dropping `confirmed` tells the writer nobody waits: it keeps the record as late.
            Err(AuditError::Stalled)
        } else {
            match tokio::time::timeout(self.timeout, confirmed).await {
                Err(_) => Err(AuditError::Timeout),
                Ok(Err(_)) => Err(AuditError::Stopped),
                Ok(Ok(r)) => r,
            }
        };
        match result {
            Ok(seq) => OutcomeWrite::Durable(seq),
            Err(e) => OutcomeWrite::Queued {
                error: self.refused_outcome(e),
                landed: LateReceipt(landed),
            },
        }
    }

    /// Counts an outcome record that was not durable in time.
    fn refused_outcome(&self, e: AuditError) -> AuditError {
        self.shared.metrics.refused(e.kind());
        e
    }

    /// Records an admin event (start, stop, key rotation, identity login, ...) and waits until
    /// it is durable.
    pub async fn admin(&self, event: AdminEvent) -> Result<(), AuditError> {
        self.append(&AuditEvent::Admin(AdminRecord::now(event)))
            .await
    }

    /// Appends any record given as a JSON object (it must carry `v` and `kind`, and not `seq`
    /// or `prev`, which the writer adds). Returns the record's `seq` once it is durable.
    pub async fn append_value(&self, mut record: Value) -> Result<u64, AuditError> {
        let result = match self.prepare(&mut record) {
            Ok(body) => self.submit(body).await,
            Err(e) => Err(e),
        };
        self.note_refusal(result)
    }

    /// Counts and logs a refused record.
    fn note_refusal(&self, result: Result<u64, AuditError>) -> Result<u64, AuditError> {
        if let Err(e) = &result {
            self.shared.metrics.refused(e.kind());
            tracing::error!(error = %e, "audit record could not be made durable");
        }
        result
    }

    /// Checks a record given as a value, hashes its sensitive fields, and serializes it.
    fn prepare(&self, record: &mut Value) -> Result<Vec<u8>, AuditError> {
        let obj = record
            .as_object()
            .ok_or_else(|| AuditError::Invalid("not a JSON object".into()))?;
        if obj.contains_key("seq") || obj.contains_key("prev") {
            return Err(AuditError::Invalid("seq and prev are the writer's".into()));
        }
        if let Some(h) = &self.hasher {
            h.apply(record);
        }
        serde_json::to_vec(record).map_err(|e| AuditError::Invalid(e.to_string()))
    }

    /// Hands a serialized record to the writer and waits for it to be durable.
    async fn submit(&self, body: Vec<u8>) -> Result<u64, AuditError> {
        if self.stalled() {
            return Err(AuditError::Stalled);
        }
        let (done, confirmed) = oneshot::channel();
        writer::offer(
            &self.tx,
            Pending {
                body,
                done,
                landed: None,
            },
        )?;
        match tokio::time::timeout(self.timeout, confirmed).await {
            Err(_) => Err(AuditError::Timeout),
            Ok(Err(_)) => Err(AuditError::Stopped),
            Ok(Ok(r)) => r,
        }
    }

    /// True while a commit has been running for longer than the write timeout.
    fn stalled(&self) -> bool {
        let since = self.shared.busy_since_ms.load(Ordering::Relaxed);
        since != 0 && self.shared.now_ms().saturating_sub(since) > self.timeout.as_millis() as u64
    }

    /// False after the last commit failed or while the writer is stalled; `/readyz` reports it.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed) && !self.stalled()
    }

    /// The durable sink's name (`file`, `postgres`, ...).
    pub fn sink_name(&self) -> &'static str {
        self.sink
    }

    /// The `start` admin event for this trail.
    pub fn start_event(&self) -> AdminEvent {
        AdminEvent::Start {
            version: env!("CARGO_PKG_VERSION").into(),
            sink: self.sink.into(),
            signing_key_id: self.signing_key_id.clone(),
            hmac_key_id: self.hasher.as_ref().map(|h| h.key_id().to_string()),
        }
    }

    /// Writes a final checkpoint (when checkpoints are on) and waits, at most the write
    /// timeout, for the writer to confirm. Records appended afterwards are refused.
    pub async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.try_send(Msg::Shutdown(ack)).is_ok() {
            let _ = tokio::time::timeout(self.timeout, done).await;
        }
    }
}

/// SHA-256 (hex) of the effective configuration as `check-config` prints it, secrets masked:
/// the `config_loaded` admin record names it.
pub fn config_hash(config: &crate::config::Config) -> String {
    chain::hex(&chain::hash(config.to_masked_toml().as_bytes()))
}

/// The replica whose chain must be kept apart from the others': on the redis backend several
/// replicas may share one audit volume or database, so each writes its own chain (file or
/// stream); the memory backend is one process, which keeps the one chain it always wrote.
fn own_chain(state: &crate::config::StateConfig) -> Option<&ReplicaId> {
    (state.backend == crate::config::StateBackendKind::Redis).then_some(&state.replica_id)
}

/// The active audit file this process writes, if the durable sink is a file: `audit.path`, or
/// on the redis backend the replica's own file beside it ([`replica_path`]).
pub fn trail_path(
    c: &crate::config::AuditConfig,
    state: &crate::config::StateConfig,
) -> Option<std::path::PathBuf> {
    let path = c.path.as_ref()?;
    Some(match own_chain(state) {
        Some(r) => replica_path(path, r.as_str()),
        None => path.clone(),
    })
}

/// The PostgreSQL stream this process writes: its replica id on the redis backend, else the
/// default stream ([`DEFAULT_STREAM`]).
pub fn postgres_stream(state: &crate::config::StateConfig) -> String {
    own_chain(state)
        .map(|r| r.as_str().to_string())
        .unwrap_or_else(|| DEFAULT_STREAM.to_string())
}

/// Opens the trail configured in `[audit]`, as the chain of `state`'s replica. `sink` replaces the configured durable sink (the
/// seam tests use to inject a failing or hanging one); rotation, checkpoints, hashing and the
/// stdout copy still follow the configuration. The error names what could not be opened.
pub async fn open_configured(
    c: &crate::config::AuditConfig,
    state: &crate::config::StateConfig,
    metrics: AuditMetrics,
    sink: Option<Box<dyn AuditSink>>,
) -> Result<AuditLog, (String, io::Error)> {
    use crate::config::AuditSinkKind;
    let timeout = Duration::from_millis(c.write_timeout_ms);
    let (what, sink): (String, Box<dyn AuditSink>) = match (sink, c.durable_sink()) {
        (Some(s), _) => (format!("the {} sink", s.name()), s),
        (None, AuditSinkKind::Postgres) => (
            format!("PostgreSQL schema {}", c.postgres_schema),
            Box::new(PostgresSink::for_stream(
                PostgresOptions {
                    url: c
                        .postgres_url
                        .as_ref()
                        .map(|u| u.expose().to_string())
                        .unwrap_or_default(),
                    schema: c.postgres_schema.clone(),
                    timeout,
                },
                postgres_stream(state),
            )),
        ),
        (None, _) => {
            let path = trail_path(c, state).unwrap_or_default();
            // Checked first: recovery lists the directory before anything opens the file.
            if let Some(dir) = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
            {
                let e = io::Error::new(io::ErrorKind::NotFound, dir.display().to_string());
                return Err((
                    path.display().to_string(),
                    file::missing_directory(&path, e),
                ));
            }
            (
                path.display().to_string(),
                Box::new(FileSink::new(
                    path,
                    FileOptions {
                        rotate_bytes: c.rotate_bytes,
                        rotate_age: Duration::from_secs(c.rotate_seconds),
                        retain_files: c.retain_files,
                    },
                )),
            )
        }
    };
    let signer = match &c.signing_key_file {
        Some(p) => Some(CheckpointSigner::from_pem_file(p).map_err(|e| {
            (
                "audit.signing_key_file".to_string(),
                io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            )
        })?),
        None => None,
    };
    let opts = AuditOptions {
        write_timeout: timeout,
        signer,
        checkpoint_every_records: c.checkpoint_every_records,
        checkpoint_every: Duration::from_secs(c.checkpoint_every_seconds),
        hasher: c
            .hmac_key
            .as_ref()
            .map(|k| ValueHasher::new(k.expose().as_bytes())),
        stdout_copy: c.stdout_copy(),
        metrics,
        late_capacity: LATE_CAPACITY,
        replica: Some(state.replica_id.clone()),
    };
    // Opening may block for a while (connect, migrate, read the tail): not on the runtime.
    match tokio::task::spawn_blocking(move || AuditLog::start(sink, opts)).await {
        Ok(r) => r.map_err(|e| (what, e)),
        Err(_) => Err((what, io::Error::other("the audit opener panicked"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn record() -> AuditEvent {
        AuditEvent::Request(RequestRecord::new(Uuid::now_v7(), Utc::now(), "sync", None))
    }

    #[tokio::test]
    async fn concurrent_appends_all_land_as_whole_chained_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_file(&path, Duration::from_secs(5)).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move { log.append(&record()).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 200);
        for (i, l) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["kind"], "request");
            assert_eq!(v["seq"], i as u64 + 1);
        }
        let report = verify::verify_files(&[path], &verify::VerifyOptions::default()).unwrap();
        assert!(report.intact(), "{}", report.render());
    }

    #[tokio::test]
    async fn a_full_disk_fails_the_append_and_marks_the_log_unhealthy() {
        let log = AuditLog::open_file(Path::new("/dev/full"), Duration::from_secs(5)).unwrap();
        assert!(matches!(
            log.append(&record()).await,
            Err(AuditError::Io(_))
        ));
        assert!(!log.is_healthy());
    }

    /// A sink in memory that fails every commit while `failing` is set; with `lose_answer`
    /// set, the next commit lands but reports a failure (a transaction whose answer was lost),
    /// and, like PostgreSQL, recovery says where the chain really stands.
    struct Flaky {
        failing: Arc<AtomicBool>,
        lose_answer: Arc<AtomicBool>,
        lines: Arc<std::sync::Mutex<Vec<Value>>>,
        tail: Tail,
    }

    impl AuditSink for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn open(&mut self) -> io::Result<Opened> {
            Ok(Opened {
                tail: Tail::EMPTY,
                last_line: None,
                notes: Vec::new(),
            })
        }
        fn commit(&mut self, batch: &Batch<'_>) -> io::Result<()> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(28));
            }
            let mut lines = self.lines.lock().unwrap();
            for (i, l) in batch.lines().enumerate() {
                lines.push(serde_json::from_slice(l).unwrap());
                self.tail = Tail {
                    seq: batch.first_seq + i as u64,
                    hash: chain::hash(l),
                };
            }
            if self.lose_answer.swap(false, Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(110));
            }
            Ok(())
        }
        fn recover(&mut self) -> io::Result<Option<Tail>> {
            Ok(Some(self.tail))
        }
    }

    type Lines = Arc<std::sync::Mutex<Vec<Value>>>;

    /// A trail on a [`Flaky`] sink keeping at most `late_capacity` outcome records, failing.
    fn flaky(late_capacity: usize) -> (AuditLog, Arc<AtomicBool>, Lines) {
        let (log, failing, _, lines) = flaky_with(late_capacity, false);
        (log, failing, lines)
    }

    /// [`flaky`]; with `lose_answer`, not failing but losing the answer of the first commit.
    fn flaky_with(
        late_capacity: usize,
        lose_answer: bool,
    ) -> (AuditLog, Arc<AtomicBool>, Arc<AtomicBool>, Lines) {
        let failing = Arc::new(AtomicBool::new(!lose_answer));
        let lose_answer = Arc::new(AtomicBool::new(lose_answer));
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Flaky {
            failing: failing.clone(),
            lose_answer: lose_answer.clone(),
            lines: lines.clone(),
            tail: Tail::EMPTY,
        };
        let opts = AuditOptions {
            late_capacity,
            ..AuditOptions::new(Duration::from_millis(100))
        };
        let log = AuditLog::start(Box::new(sink), opts).unwrap();
        (log, failing, lose_answer, lines)
    }

    fn record_with(id: Uuid) -> AuditEvent {
        AuditEvent::Request(RequestRecord::new(id, Utc::now(), "sync", None))
    }

    fn queued(w: OutcomeWrite) -> LateReceipt {
        match w {
            OutcomeWrite::Queued { landed, .. } => landed,
            other => panic!("not queued: {other:?}"),
        }
    }

    #[tokio::test]
    async fn outcome_records_beyond_the_late_capacity_are_dropped_and_counted() {
        let (log, failing, lines) = flaky(2);
        let first = queued(log.append_outcome(&record_with(Uuid::now_v7())).await);
        let second = queued(log.append_outcome(&record_with(Uuid::now_v7())).await);
        let third = queued(log.append_outcome(&record_with(Uuid::now_v7())).await);
        assert!(matches!(third.wait().await, Err(AuditError::QueueFull)));
        assert_eq!(log.shared.metrics.late_dropped.get(), 1);
        assert_eq!(log.shared.metrics.late_pending.get(), 2);

        failing.store(false, Ordering::SeqCst);
        assert!(first.wait().await.unwrap().late);
        assert!(second.wait().await.unwrap().late);
        let late = lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["late"] == true)
            .count();
        assert_eq!(late, 2, "the two kept, the third never");
    }

    #[tokio::test]
    async fn kept_outcome_records_are_written_first_in_order_marked_late_with_their_own_time() {
        let (log, failing, lines) = flaky(16);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let before = Utc::now();
        let a_landed = queued(log.append_outcome(&record_with(a)).await);
        let b_landed = queued(log.append_outcome(&record_with(b)).await);

        failing.store(false, Ordering::SeqCst);
        let later = log
            .append_value(serde_json::json!({"v": 1, "kind": "x"}))
            .await;
        let (a_seq, b_seq) = (
            a_landed.wait().await.unwrap(),
            b_landed.wait().await.unwrap(),
        );
        assert!(a_seq.seq < b_seq.seq && b_seq.seq < later.unwrap());

        let lines = lines.lock().unwrap();
        assert_eq!(lines[0]["event"], "write_failed", "{lines:?}");
        for (line, id) in lines[1..3].iter().zip([a, b]) {
            assert_eq!(line["id"], id.to_string());
            assert_eq!(line["late"], true);
            let time: chrono::DateTime<Utc> = line["time"].as_str().unwrap().parse().unwrap();
            let recorded: chrono::DateTime<Utc> =
                line["recorded_at"].as_str().unwrap().parse().unwrap();
            assert!(time < before + chrono::TimeDelta::seconds(1) && recorded >= time);
        }
        assert!(
            lines[3].get("late").is_none(),
            "a record in time is not marked"
        );
    }

    #[tokio::test]
    async fn an_outcome_record_whose_failed_commit_landed_after_all_is_not_written_twice() {
        let (log, _, _, lines) = flaky_with(16, true);
        let id = Uuid::now_v7();
        let landed = queued(log.append_outcome(&record_with(id)).await);
        let at = landed.wait().await.unwrap();
        assert_eq!(
            at,
            Landed {
                seq: 1,
                late: false
            }
        );
        // A later record follows the recovery's commit, which would have repeated it.
        log.append_value(serde_json::json!({"v": 1, "kind": "x"}))
            .await
            .unwrap();
        let lines = lines.lock().unwrap();
        let copies = lines.iter().filter(|l| l["id"] == id.to_string()).count();
        assert_eq!(copies, 1, "{lines:?}");
    }

    #[tokio::test]
    async fn a_record_carrying_its_own_seq_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open_file(&dir.path().join("a"), Duration::from_secs(5)).unwrap();
        let r = log
            .append_value(serde_json::json!({"v": 1, "kind": "x", "seq": 9}))
            .await;
        assert!(matches!(r, Err(AuditError::Invalid(_))));
    }
}
