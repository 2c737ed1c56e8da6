//! [`AuditError`]: why a record could not be made durable, with its stable metric label.

/// Why a record could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The writer did not confirm in time (hung or slow disk).
    #[error("audit write timed out")]
    Timeout,
    /// A commit has been running longer than the bound: refused at once.
    #[error("audit writer stalled")]
    Stalled,
    /// The queue to the writer is full.
    #[error("audit queue full")]
    QueueFull,
    /// The write or fsync failed (disk full, I/O error, ...); the text is the error kind.
    #[error("audit write failed: {0}")]
    Io(String),
    /// The writer thread has stopped.
    #[error("audit writer stopped")]
    Stopped,
    /// The record is not a JSON object, or carries `seq` / `prev` itself.
    #[error("not a valid audit record: {0}")]
    Invalid(String),
}

impl AuditError {
    /// The stable label of the `reason` in `audit_append_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditError::Timeout => "timeout",
            AuditError::Stalled => "stalled",
            AuditError::QueueFull => "queue_full",
            AuditError::Io(_) => "io",
            AuditError::Stopped => "stopped",
            AuditError::Invalid(_) => "invalid",
        }
    }
}
