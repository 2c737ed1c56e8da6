//! The file sink: one append-only file, one writer thread, group commit.

use super::Pending;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Records committed together at most; bounds the latency of the first one in a batch.
const MAX_BATCH: usize = 4096;

pub(super) struct FileSink {
    file: File,
    /// A failed write may have left part of a line behind; the next commit starts a new line
    /// so that the next record is never glued to the torn one.
    maybe_torn: bool,
}

impl FileSink {
    pub(super) fn open(path: &Path) -> io::Result<FileSink> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileSink {
            file,
            maybe_torn: false,
        })
    }

    fn commit(&mut self, buf: &[u8]) -> io::Result<()> {
        let result = self.write_and_sync(buf);
        self.maybe_torn = result.is_err();
        result
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.maybe_torn {
            self.file.write_all(b"\n")?;
        }
        self.file.write_all(buf)?;
        match self.file.sync_data() {
            // A character device such as /dev/null cannot be synced; a regular file can.
            Err(e) if e.raw_os_error() == Some(22) => Ok(()),
            other => other,
        }
    }
}

/// Drains the queue: everything waiting is written with one `write` and one `fsync`, then
/// each waiter is told the outcome. Runs on its own thread so a slow disk never blocks the
/// async runtime; callers bound their wait with a timeout.
pub(super) fn run_writer(
    mut sink: FileSink,
    mut rx: mpsc::Receiver<Pending>,
    healthy: Arc<AtomicBool>,
) {
    let mut batch: Vec<Pending> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        buf.clear();
        for p in &batch {
            buf.extend_from_slice(&p.line);
        }
        let result = sink.commit(&buf);
        healthy.store(result.is_ok(), Ordering::Relaxed);
        for p in batch.drain(..) {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            let _ = p.done.send(r);
        }
    }
}
