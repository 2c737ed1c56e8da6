//! The writer thread: group commit, chaining, checkpoints, failure and recovery.
//!
//! Everything waiting in the queue is linked into the chain and handed to the sink as one
//! batch (one `write` + one `fsync`, or one transaction); each waiter then learns the outcome.
//! The chain only moves forward once a commit succeeded: after a failure the sink cuts the
//! unconfirmed part and the next batch reuses the same `seq`s, so the trail never holds a
//! record that was refused to its caller, nor a gap.
//!
//! Outcome records (what already happened upstream: a run's `finished`, the `request` record of
//! a request whose run may have acted) are the one exception: one that could not be made
//! durable is kept, in order and bounded, and written first by the next commit that works,
//! marked `"late": true` with its `recorded_at`.

use super::chain::{hex, CheckpointSigner, Tail};
use super::error::AuditError;
use super::event::{AdminEvent, AdminRecord, AuditEvent};
use super::sink::{AuditSink, Batch, Opened};
use crate::metrics::AuditMetrics;
use crate::retry::Backoff;
use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// Records committed together at most; bounds the latency of the first one in a batch.
const MAX_BATCH: usize = 4096;

/// How often a failed sink is retried while no record arrives, so `/readyz` recovers on its own.
const RETRY: Backoff = Backoff::constant(Duration::from_millis(500));

/// A record queued for the writer: its JSON object, and the channel that confirms it.
pub(super) struct Pending {
    pub body: Vec<u8>,
    pub done: oneshot::Sender<Result<u64, AuditError>>,
    /// Set for an outcome record: it is kept when it cannot be made durable in time, and this
    /// says when it finally is (or that it was dropped).
    pub landed: Option<oneshot::Sender<Result<Landed, AuditError>>>,
}

/// Where an outcome record ended up once durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    /// Its `seq`.
    pub seq: u64,
    /// True when it was written from the late queue, marked `"late": true`.
    pub late: bool,
}

/// An outcome record that could not be made durable yet: written first, marked late, by the
/// next commit that works.
struct Late {
    body: Vec<u8>,
    landed: Option<oneshot::Sender<Result<Landed, AuditError>>>,
    /// Where it was in the last commit, which failed but may have landed all the same (a
    /// transaction whose answer was lost): if the sink's recovery says it did, it is not
    /// written twice.
    doubt: Option<Landed>,
}

/// What the writer is told.
pub(super) enum Msg {
    Record(Pending),
    /// Write a final checkpoint, then confirm and stop.
    Shutdown(oneshot::Sender<()>),
}

/// State the writer shares with the `AuditLog` handles.
pub(super) struct Shared {
    /// False after a failed commit, true again after a successful one.
    pub healthy: AtomicBool,
    /// Milliseconds since `epoch` at which the running commit started; 0 when idle.
    pub busy_since_ms: AtomicU64,
    pub epoch: Instant,
    pub metrics: AuditMetrics,
}

impl Shared {
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

/// How the writer signs and copies.
pub(super) struct WriterOptions {
    pub signer: Option<CheckpointSigner>,
    pub checkpoint_every_records: u64,
    pub checkpoint_every: Duration,
    pub stdout_copy: bool,
    /// Outcome records kept while the sink fails, at most.
    pub late_capacity: usize,
    /// `"replica":"<id>"`, put on every line after `prev` (empty: none).
    pub replica_member: Vec<u8>,
}

struct Failing {
    error: String,
    commits: u64,
}

pub(super) fn run(
    mut sink: Box<dyn AuditSink>,
    opened: Opened,
    rx: Receiver<Msg>,
    shared: Arc<Shared>,
    opts: WriterOptions,
) {
    let mut tail = opened.tail;
    let mut notes: Vec<AdminEvent> = opened.notes;
    if let (Some(signer), Some(last)) = (&opts.signer, &opened.last_line) {
        if let Some(previous) = checkpoint_key_id(last) {
            if previous != signer.key_id() {
                notes.push(AdminEvent::KeyRotation {
                    key: "audit-signing".into(),
                    previous_key_id: Some(previous),
                    key_id: signer.key_id().into(),
                });
            }
        }
    }
    let copy = opts.stdout_copy.then(|| spawn_copy(shared.metrics.clone()));
    let mut since_checkpoint: u64 = 0;
    let mut last_checkpoint = Instant::now();
    let mut failing: Option<Failing> = None;
    let mut batch: Vec<Pending> = Vec::new();
    let mut late: VecDeque<Late> = VecDeque::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let mut stopping: Option<Option<oneshot::Sender<()>>> = None;

    loop {
        // A failing sink is retried at a steady pace, whatever is waiting to be written.
        let wait = if failing.is_some() {
            RETRY.delay(1)
        } else if !notes.is_empty() {
            Duration::ZERO
        } else if opts.signer.is_some() && since_checkpoint > 0 {
            opts.checkpoint_every
                .saturating_sub(last_checkpoint.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Record(p)) => batch.push(p),
            Ok(Msg::Shutdown(ack)) => stopping = Some(Some(ack)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stopping = Some(None),
        }
        while stopping.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Record(p)) => batch.push(p),
                Ok(Msg::Shutdown(ack)) => stopping = Some(Some(ack)),
                Err(_) => break,
            }
        }
        // A caller that gave up has been answered 503: its record must not appear later,
        // unless it is an outcome record, which is written late instead.
        let before = batch.len();
        let mut gave_up = Vec::new();
        batch.retain_mut(|p| {
            if !p.done.is_closed() {
                return true;
            }
            if let Some(landed) = p.landed.take() {
                gave_up.push(Late {
                    body: std::mem::take(&mut p.body),
                    landed: Some(landed),
                    doubt: None,
                });
            }
            false
        });
        shared
            .metrics
            .abandoned
            .inc_by((before - batch.len() - gave_up.len()) as u64);
        for l in gave_up {
            keep_late(&mut late, l, opts.late_capacity, &shared);
        }

        let checkpoint_due = opts.signer.is_some()
            && since_checkpoint + (batch.len() as u64) > 0
            && (since_checkpoint + batch.len() as u64 >= opts.checkpoint_every_records
                || last_checkpoint.elapsed() >= opts.checkpoint_every
                || stopping.is_some());
        let work = !batch.is_empty() || !notes.is_empty() || !late.is_empty() || checkpoint_due;
        if work || failing.is_some() {
            if let Some(f) = &mut failing {
                match sink.recover() {
                    Ok(Some(t)) => {
                        settle_in_doubt(&mut late, t.seq, &shared);
                        tail = t;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if work {
                            f.commits += 1;
                        }
                        fail(&mut batch, &mut late, None, opts.late_capacity, &shared, &e);
                        if stopping.is_some() {
                            break;
                        }
                        continue;
                    }
                }
            }
            match sink.maintain(SystemTime::now()) {
                Ok(events) => notes.extend(events),
                Err(e) => tracing::error!(error = %e, "audit rotation or retention failed"),
            }

            let saved = tail;
            buf.clear();
            ranges.clear();
            let push = |tail: &mut Tail,
                        body: &[u8],
                        buf: &mut Vec<u8>,
                        ranges: &mut Vec<Range<usize>>| {
                let start = buf.len();
                tail.link_member_into(body, &opts.replica_member, buf);
                ranges.push(start..buf.len());
                buf.push(b'\n');
            };
            if let Some(f) = &failing {
                let body = admin_body(AdminEvent::WriteFailed {
                    error: f.error.clone(),
                    failed_commits: f.commits,
                });
                push(&mut tail, &body, &mut buf, &mut ranges);
            }
            // Late outcome records first, in order: they happened before anything below.
            let first_late_seq = tail.seq + 1;
            for l in &late {
                push(&mut tail, &late_body(&l.body), &mut buf, &mut ranges);
            }
            for n in &notes {
                push(&mut tail, &admin_body(n.clone()), &mut buf, &mut ranges);
            }
            let first_record_seq = tail.seq + 1;
            for p in &batch {
                push(&mut tail, &p.body, &mut buf, &mut ranges);
            }
            let written = (ranges.len()) as u64;
            let mut checkpoint_written = false;
            if let Some(signer) = &opts.signer {
                let pending = since_checkpoint + written;
                let due = pending > 0
                    && (pending >= opts.checkpoint_every_records
                        || last_checkpoint.elapsed() >= opts.checkpoint_every
                        || stopping.is_some());
                if due {
                    let body = checkpoint_body(signer, &tail);
                    push(&mut tail, &body, &mut buf, &mut ranges);
                    checkpoint_written = true;
                }
            }
            if ranges.is_empty() {
                // Nothing to write: the sink recovered with nothing waiting.
                failing = None;
                shared.healthy.store(true, Ordering::Relaxed);
                shared.metrics.healthy.set(1);
                if stopping.is_some() {
                    break;
                }
                continue;
            }

            let started = Instant::now();
            shared
                .busy_since_ms
                .store(shared.now_ms(), Ordering::Relaxed);
            let result = sink.commit(&Batch {
                buf: &buf,
                lines: &ranges,
                first_seq: saved.seq + 1,
            });
            shared.busy_since_ms.store(0, Ordering::Relaxed);
            shared
                .metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    failing = None;
                    notes.clear();
                    shared.healthy.store(true, Ordering::Relaxed);
                    shared.metrics.healthy.set(1);
                    shared.metrics.commits.inc();
                    shared.metrics.records_written.inc_by(ranges.len() as u64);
                    if checkpoint_written {
                        shared.metrics.checkpoints.inc();
                        since_checkpoint = 0;
                        last_checkpoint = Instant::now();
                    } else {
                        since_checkpoint += written;
                    }
                    for (i, l) in late.drain(..).enumerate() {
                        let seq = first_late_seq + i as u64;
                        if let Some(landed) = l.landed {
                            let _ = landed.send(Ok(Landed { seq, late: true }));
                        }
                    }
                    shared.metrics.late_pending.set(0);
                    let mut refused = Vec::new();
                    for (i, p) in batch.drain(..).enumerate() {
                        let seq = first_record_seq + i as u64;
                        if p.done.send(Ok(seq)).is_err() {
                            refused.push(seq);
                        }
                        if let Some(landed) = p.landed {
                            let _ = landed.send(Ok(Landed { seq, late: false }));
                        }
                    }
                    if !refused.is_empty() {
                        // Their callers were answered 503: say so in the trail itself.
                        notes.push(AdminEvent::LateCommit { seqs: refused });
                    }
                    if let Some((copy, _)) = &copy {
                        if copy.try_send(buf.clone()).is_err() {
                            shared.metrics.copy_failures.inc();
                        }
                    }
                }
                Err(e) => {
                    tail = saved;
                    shared.metrics.commit_failures.inc();
                    tracing::error!(error = %e, sink = sink.name(), "audit commit failed");
                    failing
                        .get_or_insert_with(|| Failing {
                            error: format!("{:?}", e.kind()),
                            commits: 0,
                        })
                        .commits += 1;
                    for (i, l) in late.iter_mut().enumerate() {
                        l.doubt = Some(Landed {
                            seq: first_late_seq + i as u64,
                            late: true,
                        });
                    }
                    let in_commit = Some(first_record_seq);
                    fail(
                        &mut batch,
                        &mut late,
                        in_commit,
                        opts.late_capacity,
                        &shared,
                        &e,
                    );
                }
            }
        }
        if stopping.is_some() {
            break;
        }
    }
    if !late.is_empty() {
        // Their senders drop here, so whoever waits for them learns they were not written.
        tracing::error!(
            records = late.len(),
            "stopping with outcome records the audit trail never took"
        );
    }
    if let Some((tx, drained)) = copy {
        // Let the copy catch up before the process exits, but never wait on a stuck reader.
        drop(tx);
        let _ = drained.recv_timeout(Duration::from_secs(1));
    }
    if let Some(Some(ack)) = stopping {
        let _ = ack.send(());
    }
}

/// Refuses every record of a failed commit; outcome records are kept to be written late.
/// `first_seq` is the first record's `seq` in the commit that failed, if it was attempted.
fn fail(
    batch: &mut Vec<Pending>,
    late: &mut VecDeque<Late>,
    first_seq: Option<u64>,
    capacity: usize,
    shared: &Shared,
    e: &std::io::Error,
) {
    shared.healthy.store(false, Ordering::Relaxed);
    shared.metrics.healthy.set(0);
    for (i, p) in batch.drain(..).enumerate() {
        let _ = p.done.send(Err(AuditError::Io(format!("{:?}", e.kind()))));
        if let Some(landed) = p.landed {
            let l = Late {
                body: p.body,
                landed: Some(landed),
                doubt: first_seq.map(|s| Landed {
                    seq: s + i as u64,
                    late: false,
                }),
            };
            keep_late(late, l, capacity, shared);
        }
    }
}

/// After a failed commit, the sink's recovery found the chain at `seq`: the kept records that
/// were in that commit at or before it landed after all, so they are done, not written again.
fn settle_in_doubt(late: &mut VecDeque<Late>, seq: u64, shared: &Shared) {
    late.retain_mut(|l| match l.doubt.take() {
        Some(d) if d.seq <= seq => {
            if let Some(landed) = l.landed.take() {
                let _ = landed.send(Ok(d));
            }
            false
        }
        _ => true,
    });
    shared.metrics.late_pending.set(late.len() as i64);
}

/// Queues an outcome record to be written late, unless `capacity` are already waiting: then
/// it is dropped (the newest, so the ones kept stay in order) and whoever waits is told.
fn keep_late(late: &mut VecDeque<Late>, l: Late, capacity: usize, shared: &Shared) {
    if late.len() >= capacity {
        shared.metrics.late_dropped.inc();
        tracing::error!(
            capacity,
            "an outcome record was dropped: too many are waiting for the audit trail to recover"
        );
        if let Some(landed) = l.landed {
            let _ = landed.send(Err(AuditError::QueueFull));
        }
        return;
    }
    late.push_back(l);
    shared.metrics.late_pending.set(late.len() as i64);
}

/// What the writer adds to an outcome record it writes late (see [`late_body`]); the schema of
/// `request` and `run` lines includes it (`super::schema`).
#[derive(Serialize, JsonSchema)]
pub(crate) struct LateMark {
    /// Written late: the trail could not take this outcome record when it happened (a write
    /// failed or timed out), so it was kept and written once the trail recovered. `time` says
    /// when it happened, `recorded_at` when it was written. A late `request` record's caller was
    /// answered 503 `audit-unavailable` naming the run; its `status` and `code` are the answer
    /// the gateway had decided on.
    #[schemars(extend("const" = true))]
    late: bool,
    /// When a late record was written (only with `late`).
    #[schemars(with = "DateTime<Utc>")]
    recorded_at: String,
}

/// The record as written late: the same object with `"late": true` and when it was written.
/// The record's own `time` stays: it says when it happened.
fn late_body(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut m)) => {
            let mark = LateMark {
                late: true,
                recorded_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            };
            if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&mark) {
                m.extend(fields);
            }
            serde_json::to_vec(&m).unwrap_or_else(|_| body.to_vec())
        }
        // Records are checked to be objects before they are queued.
        _ => body.to_vec(),
    }
}

fn admin_body(event: AdminEvent) -> Vec<u8> {
    serde_json::to_vec(&AuditEvent::Admin(AdminRecord::now(event))).unwrap_or_default()
}

/// The checkpoint that will follow `tail`: it signs `tail`'s seq + 1 and hash.
fn checkpoint_body(signer: &CheckpointSigner, tail: &Tail) -> Vec<u8> {
    let time = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let prev = hex(&tail.hash);
    let sig = signer.sign(tail.seq + 1, &prev, &time);
    serde_json::to_vec(&Checkpoint {
        v: super::formats::FORMAT_VERSION,
        time: &time,
        key_id: signer.key_id(),
        sig: &sig,
    })
    .unwrap_or_default()
}

/// A signed checkpoint: an Ed25519 signature by `key_id` over
/// `sync-gateway audit checkpoint v1\n{seq}\n{prev}\n{time}\n{key_id}`, where `seq` and
/// `prev` are the line's own (the chain puts them first, as on every line).
#[derive(Serialize, JsonSchema)]
#[serde(tag = "kind", rename = "checkpoint")]
pub(crate) struct Checkpoint<'a> {
    /// Record format version.
    #[schemars(schema_with = "super::formats::format_version")]
    v: u32,
    /// When it was made (UTC).
    #[schemars(with = "DateTime<Utc>")]
    time: &'a str,
    /// The signing key's id: the first 16 hex digits of the SHA-256 of the raw public key.
    #[schemars(pattern(super::formats::KEY_ID))]
    key_id: &'a str,
    /// The signature, base64.
    #[schemars(pattern(super::formats::SIGNATURE))]
    sig: &'a str,
}

fn checkpoint_key_id(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    if v["kind"] != "checkpoint" {
        return None;
    }
    v["key_id"].as_str().map(str::to_string)
}

/// The stdout copy runs on its own thread behind a bounded queue: a slow log shipper must
/// never hold up the durable sink. When the queue is full the copy is skipped and counted.
/// Returns the queue and a channel that closes once everything queued has been copied.
fn spawn_copy(metrics: AuditMetrics) -> (SyncSender<Vec<u8>>, Receiver<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1024);
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("audit-stdout".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            for buf in rx {
                let mut out = stdout.lock();
                if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                    metrics.copy_failures.inc();
                }
            }
            drop(done_tx);
        });
    if spawned.is_err() {
        tracing::error!("cannot start the audit stdout copy");
    }
    (tx, done)
}

/// Sends without blocking; a full or stopped writer is an error the caller maps.
pub(super) fn offer(tx: &SyncSender<Msg>, p: Pending) -> Result<(), AuditError> {
    tx.try_send(Msg::Record(p)).map_err(|e| match e {
        TrySendError::Full(_) => AuditError::QueueFull,
        TrySendError::Disconnected(_) => AuditError::Stopped,
    })
}
