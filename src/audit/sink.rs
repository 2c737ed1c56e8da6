//! The seam between the writer thread and the storage: the file, PostgreSQL, or a test's own
//! sink (one that fails with `ENOSPC` or hangs) passed to [`crate::server::BuildOptions`].

use super::chain::Tail;
use super::event::AdminEvent;
use std::io;
use std::ops::Range;
use std::time::SystemTime;

/// Linked records ready to be made durable, in order.
pub struct Batch<'a> {
    /// Every line, each followed by `\n`: what a file sink writes in one `write`.
    pub buf: &'a [u8],
    /// Where each line lies in `buf`, without its newline.
    pub lines: &'a [Range<usize>],
    /// The `seq` of the first line.
    pub first_seq: u64,
}

impl Batch<'_> {
    /// Each line's bytes, without the newline.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.iter().map(|r| &self.buf[r.clone()])
    }
}

/// What a sink found when it opened its storage.
#[derive(Debug)]
pub struct Opened {
    /// Where the chain stands: the last complete, durable record.
    pub tail: Tail,
    /// That record's bytes, if any (the writer reads the previous checkpoint key from it).
    pub last_line: Option<Vec<u8>>,
    /// Things the sink repaired (a torn last line) that must be recorded first.
    pub notes: Vec<AdminEvent>,
}

/// Durable storage for the trail. The writer thread owns the sink and never calls it
/// concurrently, so implementations need no locking; a call may block (that is what the
/// thread is for) and the callers' `audit.write_timeout_ms` bounds how long they wait for it.
pub trait AuditSink: Send + 'static {
    /// `file`, `postgres`, ...: recorded in the `start` admin record.
    fn name(&self) -> &'static str;

    /// Prepares the storage (creates, migrates, repairs a torn tail) and says where the chain
    /// stands. Called once, first.
    fn open(&mut self) -> io::Result<Opened>;

    /// Makes the whole batch durable; returns only once it is, or with the error.
    fn commit(&mut self, batch: &Batch<'_>) -> io::Result<()>;

    /// After a failed commit: removes whatever part of it may have landed so that the storage
    /// ends with the last confirmed record. Returns `Some(tail)` when the storage knows better
    /// than the writer where the chain stands (e.g. a transaction whose commit was in doubt),
    /// `None` when it ends with the last record the writer confirmed.
    fn recover(&mut self) -> io::Result<Option<Tail>>;

    /// Before each commit: housekeeping such as rotation and retention. Returns what it did
    /// that must be recorded. A failure here is logged; the commit goes ahead.
    fn maintain(&mut self, _now: SystemTime) -> io::Result<Vec<AdminEvent>> {
        Ok(Vec::new())
    }
}
