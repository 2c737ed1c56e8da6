//! The audit trail: what the gateway did, for whom, and why, as JSON lines.
//!
//! Records are made durable (written and fsynced) by one writer thread that commits whatever
//! has queued up in one `write` + `fsync` (group commit). [`AuditLog::append`] returns only once
//! the record is durable, or fails within `audit.write_timeout_ms`: the pipeline then answers
//! 503 and calls nothing upstream (fail closed, with a bound).

mod event;
mod file;

pub use event::{
    AttemptSummary, AuditEvent, CallerSummary, RequestRecord, RunRecord, UpstreamSummary,
};

/// The record format version written into every record.
pub fn event_format_version() -> u32 {
    event::FORMAT_VERSION
}

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why a record could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The writer did not confirm in time (hung or slow disk).
    #[error("audit write timed out")]
    Timeout,
    /// The queue to the writer is full.
    #[error("audit queue full")]
    QueueFull,
    /// The write or fsync failed (disk full, I/O error, ...).
    #[error("audit write failed: {0}")]
    Io(String),
    /// The writer thread has stopped.
    #[error("audit writer stopped")]
    Stopped,
}

/// A record queued for the writer, with the channel that confirms its durability.
struct Pending {
    line: Vec<u8>,
    done: oneshot::Sender<io::Result<()>>,
}

/// Handle to the audit trail; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
    timeout: Duration,
    healthy: Arc<AtomicBool>,
}

/// How many records may wait for the writer; beyond that callers get 503 at once.
const QUEUE_CAPACITY: usize = 16_384;

impl AuditLog {
    /// Opens (creating if needed) the append-only file at `path` and starts the writer thread.
    pub fn open_file(path: &Path, timeout: Duration) -> io::Result<AuditLog> {
        let sink = file::FileSink::open(path)?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || file::run_writer(sink, rx, h))?;
        Ok(AuditLog {
            tx,
            timeout,
            healthy,
        })
    }

    /// Appends `event` and waits until it is durable.
    pub async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(event).map_err(|e| AuditError::Io(e.to_string()))?;
        line.push(b'\n');
        let (done, confirmed) = oneshot::channel();
        self.tx
            .try_send(Pending { line, done })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AuditError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => AuditError::Stopped,
            })?;
        let result = match tokio::time::timeout(self.timeout, confirmed).await {
            Err(_) => Err(AuditError::Timeout),
            Ok(Err(_)) => Err(AuditError::Stopped),
            Ok(Ok(Err(e))) => Err(AuditError::Io(e.to_string())),
            Ok(Ok(Ok(()))) => Ok(()),
        };
        if let Err(e) = &result {
            self.healthy.store(false, Ordering::Relaxed);
            tracing::error!(error = %e, "audit record could not be made durable");
        }
        result
    }

    /// False after the last write failed; `/readyz` reports it.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
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
    async fn concurrent_appends_all_land_as_whole_lines() {
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
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["kind"], "request");
        }
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
}
