//! The file sink: an append-only active file, rotated by size and age into numbered files
//! that are fsynced and never written again, with retention by count and start-up repair of
//! a torn last line.
//!
//! Layout, for `audit.path = /var/lib/sync-gateway/audit.jsonl`:
//! `audit.jsonl.000001`, `audit.jsonl.000002`, ... (rotated, oldest first) and `audit.jsonl`
//! (active). The chain runs through them in that order.

use super::chain::{hash, hex, Tail};
use super::event::AdminEvent;
use super::sink::{AuditSink, Batch, Opened};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// When the active file is rotated and how many rotated files are kept.
#[derive(Debug, Clone, Copy)]
pub struct FileOptions {
    /// Rotate once the active file holds at least this many bytes (0: never by size).
    pub rotate_bytes: u64,
    /// Rotate once the active file is this old (zero: never by age).
    pub rotate_age: Duration,
    /// Keep at most this many rotated files, deleting the oldest (0: keep all).
    pub retain_files: usize,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            rotate_bytes: 64 * 1024 * 1024,
            rotate_age: Duration::from_secs(86_400),
            retain_files: 0,
        }
    }
}

/// The file sink; see the module docs.
pub struct FileSink {
    path: PathBuf,
    opts: FileOptions,
    file: Option<File>,
    /// Bytes of the active file that are complete and durable; a failed commit is cut back
    /// to this.
    good_len: u64,
    /// A character device such as `/dev/full` or `/dev/null`: never rotated, never cut.
    device: bool,
    created: SystemTime,
    last_number: u64,
    /// Device and inode of the open active file: the path must still name it before every
    /// commit and rotation, or records would go to a file nobody can find (or rotation would
    /// rename whatever replaced it).
    identity: Option<(u64, u64)>,
}

impl FileSink {
    /// A sink for the active file `path`; nothing is touched until [`AuditSink::open`].
    pub fn new(path: impl Into<PathBuf>, opts: FileOptions) -> FileSink {
        FileSink {
            path: path.into(),
            opts,
            file: None,
            good_len: 0,
            device: false,
            created: SystemTime::now(),
            last_number: 0,
            identity: None,
        }
    }

    /// Fails unless `audit.path` still names the file this sink has open. Costs one `stat`
    /// per group commit.
    fn check_path_is_ours(&self) -> io::Result<()> {
        let Some(ours) = self.identity else {
            return Ok(());
        };
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == ours => Ok(()),
            Ok(m) => Err(io::Error::other(format!(
                "{} was replaced by {} while the gateway was writing it; refusing to write or rotate until the path names the gateway's audit file again (move it back, or restart the gateway)",
                self.path.display(),
                kind_of(&m)
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::other(format!(
                "{} was removed while the gateway was writing it; refusing to write or rotate until the file is back (or the gateway restarts)",
                self.path.display()
            ))),
            Err(e) => Err(e),
        }
    }

    fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("audit file not open"))
    }

    fn open_active(&mut self) -> io::Result<()> {
        let existed = self.path.exists();
        if let Ok(m) = std::fs::metadata(&self.path) {
            // A regular file, or a character device such as /dev/full in tests; never a
            // directory (rotation would rename it) or a FIFO (an append could block forever).
            if !m.is_file() && !m.file_type().is_char_device() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "audit.path {} is {}, not a regular file",
                        self.path.display(),
                        kind_of(&m)
                    ),
                ));
            }
        }
        let file = match OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(missing_directory(&self.path, e))
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        self.device = !meta.is_file();
        self.identity = (!self.device).then(|| (meta.dev(), meta.ino()));
        self.good_len = if self.device { 0 } else { meta.len() };
        self.created = if existed {
            meta.created()
                .or_else(|_| meta.modified())
                .unwrap_or_else(|_| SystemTime::now())
        } else {
            SystemTime::now()
        };
        self.file = Some(file);
        if !existed {
            sync_dir(&self.path)?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<PathBuf> {
        self.check_path_is_ours()?;
        self.file()?.sync_all()?;
        let number = self.last_number + 1;
        let target = numbered(&self.path, number);
        if target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", target.display()),
            ));
        }
        std::fs::rename(&self.path, &target)?;
        self.last_number = number;
        self.file = None;
        self.open_active()?;
        sync_dir(&self.path)?;
        Ok(target)
    }

    fn apply_retention(&mut self) -> io::Result<Option<AdminEvent>> {
        if self.opts.retain_files == 0 {
            return Ok(None);
        }
        let rotated = rotated_files(&self.path)?;
        if rotated.len() <= self.opts.retain_files {
            return Ok(None);
        }
        let (gone, kept) = rotated.split_at(rotated.len() - self.opts.retain_files);
        let starts_at = match kept.first() {
            Some((_, p)) => first_seq(p)?,
            None => return Ok(None),
        };
        let mut removed = Vec::new();
        for (_, p) in gone {
            std::fs::remove_file(p)?;
            removed.push(file_name(p));
        }
        sync_dir(&self.path)?;
        Ok(Some(AdminEvent::Retention {
            removed,
            trail_starts_at_seq: starts_at,
        }))
    }
}

impl AuditSink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn open(&mut self) -> io::Result<Opened> {
        self.last_number = rotated_files(&self.path)?
            .last()
            .map(|(n, _)| *n)
            .unwrap_or(0);
        self.open_active()?;
        let mut notes = Vec::new();
        if self.device {
            return Ok(Opened {
                tail: Tail::EMPTY,
                last_line: None,
                notes,
            });
        }
        let path = self.path.clone();
        let (complete_len, last) = {
            let file = self.file()?;
            last_complete_line(file)?
        };
        if complete_len < self.good_len {
            // A crash mid-write: the bytes after the last newline were never acknowledged.
            let good = self.good_len;
            let torn = read_range(self.file()?, complete_len, good)?;
            let file = self.file()?;
            file.set_len(complete_len)?;
            file.sync_all()?;
            self.good_len = complete_len;
            notes.push(AdminEvent::TornTailRecovered {
                file: file_name(&path),
                torn_bytes: torn.len() as u64,
                torn_sha256: hex(&hash(&torn)),
                resumed_after_seq: 0, // filled in below, once the tail is known
            });
        }
        let last = match last {
            Some(l) => Some(l),
            None => match rotated_files(&self.path)?.last() {
                Some((_, p)) => last_complete_line(&mut File::open(p)?)?.1,
                None => None,
            },
        };
        let tail = match &last {
            Some(l) => Tail {
                seq: seq_of(l).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the last record of the audit trail has no seq; run `sync-gateway audit verify`",
                    )
                })?,
                hash: hash(l),
            },
            None => Tail::EMPTY,
        };
        for n in &mut notes {
            if let AdminEvent::TornTailRecovered {
                resumed_after_seq, ..
            } = n
            {
                *resumed_after_seq = tail.seq;
            }
        }
        Ok(Opened {
            tail,
            last_line: last,
            notes,
        })
    }

    fn commit(&mut self, batch: &Batch<'_>) -> io::Result<()> {
        self.check_path_is_ours()?;
        let file = self.file()?;
        file.write_all(batch.buf)?;
        match file.sync_data() {
            // A character device such as /dev/null cannot be synced; a regular file can.
            Err(e) if e.raw_os_error() == Some(22) => {}
            other => other?,
        }
        self.good_len += batch.buf.len() as u64;
        Ok(())
    }

    fn recover(&mut self) -> io::Result<Option<Tail>> {
        if self.device {
            return Err(io::Error::other("cannot repair a device"));
        }
        if self.file.is_none() {
            self.open_active()?;
        }
        self.check_path_is_ours()?;
        let good = self.good_len;
        let file = self.file()?;
        // Cut whatever part of the failed commit landed: those records were never confirmed.
        if file.metadata()?.len() != good {
            file.set_len(good)?;
        }
        file.sync_all()?;
        Ok(None)
    }

    fn maintain(&mut self, now: SystemTime) -> io::Result<Vec<AdminEvent>> {
        if self.device || self.good_len == 0 {
            return Ok(Vec::new());
        }
        let by_size = self.opts.rotate_bytes > 0 && self.good_len >= self.opts.rotate_bytes;
        let by_age = !self.opts.rotate_age.is_zero()
            && now.duration_since(self.created).unwrap_or_default() >= self.opts.rotate_age;
        if !(by_size || by_age) {
            return Ok(Vec::new());
        }
        self.rotate()?;
        Ok(self.apply_retention()?.into_iter().collect())
    }
}

/// What a path names, for an error message.
fn kind_of(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "another file"
    }
}

/// The active file of `replica`'s own chain beside the configured `path` (redis backend, where
/// replicas may share one volume): the replica id goes before the last extension,
/// `audit.jsonl` → `audit.pod-0.jsonl` (a name without one gets it appended: `audit` →
/// `audit.pod-0`). Its rotated files are numbered like any active file's,
/// `audit.pod-0.jsonl.000001`, so every chain's files sort together.
pub fn replica_path(path: &Path, replica: &str) -> PathBuf {
    let name = file_name(path);
    let named = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.{replica}.{ext}"),
        _ => format!("{name}.{replica}"),
    };
    path.with_file_name(named)
}

/// `path` with the rotation number appended: `audit.jsonl.000003`.
pub fn numbered(path: &Path, n: u64) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n:06}"));
    PathBuf::from(s)
}

/// The rotation number of `candidate` if it is a rotated file of the active file `path`.
pub fn rotation_number(active: &Path, candidate: &Path) -> Option<u64> {
    let base = active.file_name()?.to_str()?;
    let name = candidate.file_name()?.to_str()?;
    let digits = name.strip_prefix(base)?.strip_prefix('.')?;
    if digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// The rotated files of the active file `path`, oldest first.
pub fn rotated_files(path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let p = entry?.path();
        if let Some(n) = rotation_number(path, &p) {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => File::open(d)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// The `seq` of a line, read without parsing the rest of it.
pub fn seq_of(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_slice::<Seq>(line).ok().map(|s| s.seq)
}

fn first_seq(p: &Path) -> io::Result<u64> {
    let mut f = File::open(p)?;
    let mut buf = vec![0u8; 256];
    let n = f.read(&mut buf)?;
    let text = &buf[..n];
    let digits: String = text
        .strip_prefix(b"{\"seq\":")
        .unwrap_or_default()
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|b| *b as char)
        .collect();
    digits.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} does not start with a record", p.display()),
        )
    })
}

fn read_range(file: &mut File, from: u64, to: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (to - from) as usize];
    file.seek(SeekFrom::Start(from))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// Reads backwards from the end: the length up to and including the last newline, and the
/// last complete line (without its newline).
fn last_complete_line(file: &mut File) -> io::Result<(u64, Option<Vec<u8>>)> {
    let len = file.metadata()?.len();
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut tail: Vec<u8> = Vec::new(); // bytes from `end` to `len`
    let mut last_nl: Option<u64> = None;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let mut chunk = read_range(file, start, end)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        end = start;
        let positions: Vec<u64> = tail
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| end + i as u64)
            .collect();
        if last_nl.is_none() {
            last_nl = positions.last().copied();
        }
        if let Some(nl) = last_nl {
            // The line before `nl` starts after the newline before it (or at 0).
            let before = positions.iter().rev().find(|p| **p < nl).copied();
            if before.is_some() || end == 0 {
                let line_start = before.map(|p| p + 1).unwrap_or(0);
                let line = tail[(line_start - end) as usize..(nl - end) as usize].to_vec();
                return Ok((nl + 1, Some(line)));
            }
        }
    }
    Ok((0, None))
}

/// The gateway does not create the audit file's directory (its owner and mode are the
/// operator's choice): the error says which one to create.
pub(crate) fn missing_directory(path: &Path, e: io::Error) -> io::Error {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if dir.is_dir() {
        return e;
    }
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "audit.path's directory {} does not exist: create it (e.g. `mkdir -p {}`) and let the gateway's user write to it",
            dir.display(),
            dir.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_complete_line_is_found_behind_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3,\"to").unwrap();
        let (len, line) = last_complete_line(&mut File::open(&p).unwrap()).unwrap();
        assert_eq!(len, 20);
        assert_eq!(line.unwrap(), b"{\"seq\":2}");
    }

    #[test]
    fn a_long_last_line_spanning_chunks_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let long = format!("{{\"seq\":2,\"x\":\"{}\"}}", "y".repeat(200_000));
        std::fs::write(&p, format!("{{\"seq\":1}}\n{long}\n")).unwrap();
        let (_, line) = last_complete_line(&mut File::open(&p).unwrap()).unwrap();
        assert_eq!(line.unwrap(), long.as_bytes());
    }

    #[test]
    fn a_replicas_file_carries_its_id_before_the_extension() {
        assert_eq!(
            replica_path(Path::new("/x/audit.jsonl"), "pod-0"),
            Path::new("/x/audit.pod-0.jsonl")
        );
        assert_eq!(
            replica_path(Path::new("/x/trail"), "pod-0"),
            Path::new("/x/trail.pod-0")
        );
        assert_eq!(
            replica_path(Path::new("/x/.audit"), "a"),
            Path::new("/x/.audit.a")
        );
    }

    #[test]
    fn rotated_names_sort_by_number_and_ignore_others() {
        let active = Path::new("/x/audit.jsonl");
        assert_eq!(
            rotation_number(active, Path::new("/x/audit.jsonl.000012")),
            Some(12)
        );
        assert_eq!(
            rotation_number(active, Path::new("/x/audit.jsonl.12")),
            None
        );
        assert_eq!(rotation_number(active, Path::new("/x/other.000001")), None);
    }
}
