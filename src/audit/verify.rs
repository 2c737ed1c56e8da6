//! `sync-gateway audit verify`: checks a trail (files, or the PostgreSQL table) link by link.
//!
//! It reports the first broken link of each break with its line number and reason (a record
//! altered, missing, out of order or inserted), files missing from the rotation sequence,
//! checkpoints whose signature does not verify, a torn last line (a crash mid-write: accepted,
//! since nothing in it was ever acknowledged), and every run that started without a matching
//! finish (its outcome is unknown), and, apart from those, every run whose finish was written
//! late (marked `"late": true`, after the trail recovered from a failure): its outcome is
//! known, but was recorded late. The trail is intact when no problem was found.

use super::chain::{hash, hex, CheckpointVerifier, GENESIS};
use super::file::rotation_number;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

/// What to check with.
#[derive(Debug, Default, Clone)]
pub struct VerifyOptions {
    /// Public keys of the checkpoint signers. Without any, signatures are not checked and the
    /// report says so.
    pub keys: Vec<CheckpointVerifier>,
}

/// Where in the trail something was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file (or table) it is in.
    pub source: String,
    /// The line number in it, from 1.
    pub line: u64,
    /// What is wrong, or what is known.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.message)
    }
}

/// The outcome of a verification.
#[derive(Debug, Default)]
pub struct Report {
    /// Sources read, in chain order.
    pub sources: Vec<String>,
    /// Complete records read.
    pub records: u64,
    /// The first and last `seq` seen.
    pub seq_range: Option<(u64, u64)>,
    /// Breaks of integrity, in trail order; the first is the first broken link.
    pub problems: Vec<Finding>,
    /// An incomplete last line (a crash mid-write).
    pub torn_tail: Option<Finding>,
    /// Runs that started without a matching finish.
    pub open_runs: Vec<Finding>,
    /// Runs whose finish (`finished`, `abandoned`, `merged`) was written late, after the trail
    /// recovered: at that record.
    pub late_outcomes: Vec<Finding>,
    /// Checkpoints seen, and how many of them verified with a given key.
    pub checkpoints: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints_verified: u64,
    /// Records after the last verified checkpoint (not covered by any signature).
    pub unsigned_tail: u64,
    /// Other facts worth telling the operator.
    pub notes: Vec<String>,
    /// The replica ids the records name (`replica`), each once, in the order first seen: one
    /// for a replica's own chain; none for records written before replica ids existed.
    pub replicas: Vec<String>,
}

impl Report {
    /// True when no problem was found (a torn tail, open runs and late outcomes are not
    /// problems).
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// The human-readable report `audit verify` prints.
    pub fn render(&self) -> String {
        let mut s = self.render_findings();
        if self.intact() {
            let _ = writeln!(s, "result: intact");
        } else {
            let _ = writeln!(
                s,
                "result: NOT intact ({} problem(s); the first broken link is {}:{})",
                self.problems.len(),
                self.problems[0].source,
                self.problems[0].line
            );
        }
        s
    }

    /// [`Report::render`] without its `result:` line: one chain's part of a report on several.
    pub fn render_findings(&self) -> String {
        let mut s = String::new();
        let range = self
            .seq_range
            .map(|(a, b)| format!(", seq {a}..{b}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "read {} record(s) from {} source(s){range}",
            self.records,
            self.sources.len()
        );
        let _ = writeln!(
            s,
            "checkpoints: {} ({} signature(s) verified); {} record(s) after the last verified checkpoint",
            self.checkpoints, self.checkpoints_verified, self.unsigned_tail
        );
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        if let Some(t) = &self.torn_tail {
            let _ = writeln!(s, "torn tail: {t}");
        }
        for r in &self.open_runs {
            let _ = writeln!(s, "outcome unknown: {r}");
        }
        for r in &self.late_outcomes {
            let _ = writeln!(s, "outcome recorded late: {r}");
        }
        for p in &self.problems {
            let _ = writeln!(s, "BROKEN: {p}");
        }
        s
    }
}

/// The fields verification reads; everything else in a record is covered by its hash only.
#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    run_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    key_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sig: Option<Cow<'a, str>>,
    #[serde(default)]
    trail_starts_at_seq: Option<u64>,
    #[serde(default)]
    seqs: Option<Vec<u64>>,
    #[serde(default)]
    late: bool,
    #[serde(borrow, default)]
    replica: Option<Cow<'a, str>>,
}

#[derive(Clone)]
struct Loc {
    source: usize,
    line: u64,
}

struct Suspect {
    before: Loc,
    this: Loc,
    this_hash: [u8; 32],
}

/// Verifies a trail fed line by line, in chain order.
pub struct Verifier {
    opts: VerifyOptions,
    report: Report,
    last: Option<(u64, [u8; 32], Loc)>,
    first: Option<(u64, Loc)>,
    /// After a problem, the next record re-anchors the chain (one report per break).
    resync: bool,
    suspect: Option<Suspect>,
    retention_starts: BTreeSet<u64>,
    /// Open runs: run id → where it started and that record's seq.
    runs: HashMap<String, (Loc, u64)>,
    unverified_checkpoints: u64,
    /// (source, line) of each problem, kept in trail order at the end.
    problem_at: Vec<(usize, u64)>,
}

impl Verifier {
    /// A verifier using `opts`.
    pub fn new(opts: VerifyOptions) -> Verifier {
        Verifier {
            opts,
            report: Report::default(),
            last: None,
            first: None,
            resync: false,
            suspect: None,
            retention_starts: BTreeSet::new(),
            runs: HashMap::new(),
            unverified_checkpoints: 0,
            problem_at: Vec::new(),
        }
    }

    /// Starts the next source (file or table); returns its index.
    pub fn source(&mut self, name: impl Into<String>) -> usize {
        self.report.sources.push(name.into());
        self.report.sources.len() - 1
    }

    /// Reports a problem that is not about one record (e.g. a missing file).
    pub fn problem(&mut self, source: usize, line: u64, message: impl Into<String>) {
        self.push_problem(&Loc { source, line }, message.into());
        self.resync = true;
    }

    fn finding(&self, at: &Loc, message: String) -> Finding {
        Finding {
            source: self.report.sources[at.source].clone(),
            line: at.line,
            message,
        }
    }

    fn push_problem(&mut self, at: &Loc, message: String) {
        if self.problem_at.contains(&(at.source, at.line)) {
            return; // one report per line
        }
        self.problem_at.push((at.source, at.line));
        let f = self.finding(at, message);
        self.report.problems.push(f);
    }

    /// Feeds one line (without its newline). `terminated` is false for a last line that has
    /// no newline; `last_source` says whether more sources follow.
    pub fn line(
        &mut self,
        source: usize,
        line_no: u64,
        bytes: &[u8],
        terminated: bool,
        last_source: bool,
    ) {
        let at = Loc {
            source,
            line: line_no,
        };
        if !terminated {
            let msg = format!(
                "the last line is incomplete ({} bytes, no newline): a write was cut short, never acknowledged",
                bytes.len()
            );
            if last_source {
                self.report.torn_tail = Some(self.finding(&at, msg));
            } else {
                self.push_problem(&at, format!("{msg}, but more of the trail follows"));
                self.resync = true;
            }
            return;
        }
        let head: Head<'_> = match serde_json::from_slice(bytes) {
            Ok(h) => h,
            Err(_) => {
                self.push_problem(
                    &at,
                    "not a chained record (not JSON, or no seq/prev): altered".into(),
                );
                self.resync = true;
                return;
            }
        };
        let h = hash(bytes);
        self.report.records += 1;
        if let Some(r) = &head.replica {
            if !self.report.replicas.iter().any(|seen| seen == r) {
                self.report.replicas.push(r.to_string());
            }
        }
        let range = self.report.seq_range.get_or_insert((head.seq, head.seq));
        range.1 = head.seq;
        if self.first.is_none() {
            self.first = Some((head.seq, at.clone()));
        }
        let prev_ok = hex_eq(
            &head.prev,
            self.last.as_ref().map(|l| &l.1).unwrap_or(&GENESIS),
        );

        // A pending suspect is decided by whether this record links to it.
        if let Some(s) = self.suspect.take() {
            let links = hex_eq(&head.prev, &s.this_hash);
            if links {
                self.push_problem(
                    &s.before,
                    "record altered: its hash does not match the prev of the next record".into(),
                );
            } else {
                self.push_problem(
                    &s.this,
                    "record altered: its prev does not match the previous record, nor its hash the next".into(),
                );
                self.resync = true;
            }
        }

        // A checkpoint whose signature verifies vouches for its own prev.
        let signed_ok = head.kind.as_deref() == Some("checkpoint") && self.checkpoint(&at, &head);

        match &self.last {
            _ if self.resync => self.resync = false,
            None => {}
            Some((last_seq, _, _)) => {
                let expected = last_seq + 1;
                if head.seq > expected {
                    self.push_problem(
                        &at,
                        format!(
                            "expected seq {expected}, found {}: {} record(s) missing (deleted) or out of order before this line",
                            head.seq,
                            head.seq - expected
                        ),
                    );
                } else if head.seq < expected {
                    self.push_problem(
                        &at,
                        format!(
                            "expected seq {expected}, found {}: a record inserted, repeated or out of order",
                            head.seq
                        ),
                    );
                } else if !prev_ok {
                    let before = self
                        .last
                        .as_ref()
                        .map(|l| l.2.clone())
                        .unwrap_or(at.clone());
                    if signed_ok {
                        self.push_problem(
                            &before,
                            "record altered: its hash does not match the prev of the signed checkpoint after it".into(),
                        );
                    } else {
                        self.suspect = Some(Suspect {
                            before,
                            this: at.clone(),
                            this_hash: h,
                        });
                    }
                }
            }
        }

        match head.kind.as_deref() {
            Some("run") => match (head.event.as_deref(), &head.run_id) {
                (Some("started"), Some(r)) => {
                    self.runs.insert(r.to_string(), (at.clone(), head.seq));
                }
                // A merged run's requests continue in another run, which finishes for them.
                (Some(event @ ("finished" | "abandoned" | "merged")), Some(r)) => {
                    let started = self.runs.remove(r.as_ref());
                    if let (true, Some((from, _))) = (head.late, started) {
                        let msg = format!(
                            "run {r} (started at {}:{}): its {event} record was written late, after the trail recovered",
                            self.report.sources[from.source], from.line
                        );
                        let f = self.finding(&at, msg);
                        self.report.late_outcomes.push(f);
                    }
                }
                _ => {}
            },
            Some("admin") => {
                if let Some(s) = head.trail_starts_at_seq {
                    self.retention_starts.insert(s);
                }
                if let Some(seqs) = &head.seqs {
                    // Refused to their callers: no upstream call followed those records.
                    self.runs.retain(|_, (_, seq)| !seqs.contains(seq));
                }
            }
            _ => {}
        }
        if head.kind.as_deref() != Some("checkpoint") {
            self.report.unsigned_tail += 1;
        }
        self.last = Some((head.seq, h, at));
    }

    /// Checks a checkpoint's signature; true when it verified with a given key.
    fn checkpoint(&mut self, at: &Loc, head: &Head<'_>) -> bool {
        self.report.checkpoints += 1;
        let (Some(key_id), Some(sig), Some(time)) = (&head.key_id, &head.sig, &head.time) else {
            self.push_problem(at, "checkpoint without key_id, time or sig".into());
            return false;
        };
        if self.opts.keys.is_empty() {
            self.unverified_checkpoints += 1;
            return false;
        }
        match self.opts.keys.iter().find(|k| k.key_id() == key_id) {
            None => {
                self.push_problem(
                    at,
                    format!("checkpoint signed by key {key_id}, which is not among the given public keys"),
                );
                false
            }
            Some(k) if k.verify(head.seq, &head.prev, time, sig) => {
                self.report.checkpoints_verified += 1;
                self.report.unsigned_tail = 0;
                true
            }
            Some(_) => {
                self.push_problem(
                    at,
                    "checkpoint signature does not verify: it or the records before it were rewritten".into(),
                );
                false
            }
        }
    }

    /// Ends verification and returns the report.
    pub fn finish(mut self) -> Report {
        if let Some(s) = self.suspect.take() {
            self.push_problem(
                &s.this,
                "record altered: its prev does not match the hash of the previous record (either may have been edited)".into(),
            );
        }
        // Problems were found in trail order except those decided later: sort them.
        let sources = self.report.sources.clone();
        let index = |f: &Finding| sources.iter().position(|s| *s == f.source).unwrap_or(0);
        self.report.problems.sort_by_key(|f| (index(f), f.line));
        if let Some((seq, at)) = self.first.clone() {
            if seq != 1 && !self.retention_starts.contains(&seq) {
                let msg = format!(
                    "the trail begins at seq {seq}: records 1..{} are missing and no retention record explains it",
                    seq - 1
                );
                self.report.problems.insert(0, self.finding(&at, msg));
            } else if seq != 1 {
                self.report.notes.push(format!(
                    "the trail begins at seq {seq}; earlier files were removed by retention"
                ));
            }
        }
        let mut runs: Vec<(String, (Loc, u64))> = self.runs.drain().collect();
        runs.sort_by_key(|(_, (l, _))| (l.source, l.line));
        for (id, (at, _)) in runs {
            let f = self.finding(
                &at,
                format!("run {id} started here without a matching finish"),
            );
            self.report.open_runs.push(f);
        }
        if self.unverified_checkpoints > 0 {
            self.report.notes.push(format!(
                "{} checkpoint signature(s) not checked: give --public-key to check them",
                self.unverified_checkpoints
            ));
        }
        if self.report.checkpoints == 0 && self.report.records > 0 {
            self.report.notes.push(
                "no checkpoints: a rewrite of the whole chain would not be detected (set audit.signing_key_file)".into(),
            );
        }
        self.report
    }
}

fn hex_eq(text: &str, h: &[u8; 32]) -> bool {
    text.len() == 64 && text.eq_ignore_ascii_case(&hex(h))
}

/// Orders trail files as the chain runs: per active file name, rotated files by number, then
/// the active file.
pub fn order_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut keyed: Vec<(PathBuf, u64, PathBuf)> = paths
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match name.rsplit_once('.') {
                Some((base, _)) if rotation_number(&p.with_file_name(base), p).is_some() => {
                    let n = rotation_number(&p.with_file_name(base), p).unwrap_or(0);
                    (p.with_file_name(base), n, p.clone())
                }
                _ => (p.clone(), u64::MAX, p.clone()),
            }
        })
        .collect();
    keyed.sort();
    keyed.dedup_by(|a, b| a.2 == b.2);
    keyed.into_iter().map(|(_, _, p)| p).collect()
}

/// Verifies the files in `paths` (any order) as one trail.
pub fn verify_files(paths: &[PathBuf], opts: &VerifyOptions) -> io::Result<Report> {
    let ordered = order_files(paths);
    let mut v = Verifier::new(opts.clone());
    let mut previous: Option<(PathBuf, u64)> = None;
    for (i, path) in ordered.iter().enumerate() {
        let src = v.source(path.display().to_string());
        let this = numbered_parts(path);
        if let (Some((base, n)), Some((this_base, m))) = (&previous, &this) {
            if base == this_base && m > &(n + 1) {
                let missing: Vec<String> = (n + 1..*m)
                    .map(|k| super::file::numbered(base, k).display().to_string())
                    .collect();
                v.problem(
                    src,
                    0,
                    format!("missing file(s) in the sequence: {}", missing.join(", ")),
                );
            }
        }
        previous = this.or(previous);
        feed_file(&mut v, src, path, i + 1 == ordered.len())?;
    }
    Ok(v.finish())
}

/// One chain's verification: which chain, and its report.
#[derive(Debug)]
pub struct ChainReport {
    /// What the chain is called: the replica id its records name (several, comma-separated,
    /// when a single gateway's chain was written under different ids over time), else the
    /// active file or stream.
    pub name: String,
    /// The report of this chain alone.
    pub report: Report,
}

impl ChainReport {
    /// `report` of the chain otherwise known as `fallback` (a file or stream name), named by
    /// the replica ids its records carry when they carry any.
    pub fn new(report: Report, fallback: impl Into<String>) -> ChainReport {
        let name = if report.replicas.is_empty() {
            fallback.into()
        } else {
            report.replicas.join(",")
        };
        ChainReport { name, report }
    }

    /// The one result line of this chain: its name, records, first and last `seq`, and `ok`
    /// or the first problem.
    pub fn summary(&self) -> String {
        let r = &self.report;
        let range = r
            .seq_range
            .map(|(a, b)| format!(", seq {a}..{b}"))
            .unwrap_or_default();
        let verdict = match r.problems.first() {
            None => "ok".to_string(),
            Some(p) => format!("BROKEN ({} problem(s)), first at {p}", r.problems.len()),
        };
        format!(
            "chain {}: {} record(s){range}: {verdict}",
            self.name, r.records
        )
    }
}

/// The report `audit verify` prints for `chains`: a single chain's report as it always was;
/// for several, each chain's findings under a heading, then one result line per chain and the
/// overall result.
pub fn render_chains(chains: &[ChainReport]) -> String {
    if let [one] = chains {
        return one.report.render();
    }
    let mut s = String::new();
    for c in chains {
        let _ = writeln!(s, "== chain {} ==", c.name);
        s.push_str(&c.report.render_findings());
    }
    for c in chains {
        let _ = writeln!(s, "{}", c.summary());
    }
    let broken: Vec<&str> = chains
        .iter()
        .filter(|c| !c.report.intact())
        .map(|c| c.name.as_str())
        .collect();
    if broken.is_empty() {
        let _ = writeln!(s, "result: {} chain(s), all intact", chains.len());
    } else {
        let _ = writeln!(
            s,
            "result: NOT intact ({} of {} chain(s) broken: {})",
            broken.len(),
            chains.len(),
            broken.join(", ")
        );
    }
    s
}

/// The files of `paths`, with each directory replaced by the trail files in it: every regular,
/// non-hidden file named `*.jsonl` (each replica's active file) or a rotated file of one
/// (`*.jsonl.000001`). A trail under another name is given by its files.
pub fn expand_paths(paths: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        for entry in std::fs::read_dir(p)? {
            let f = entry?.path();
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let active = numbered_parts(&f).map(|(a, _)| a).unwrap_or(f.clone());
            let is_trail = active
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".jsonl"));
            if is_trail && !name.starts_with('.') && f.is_file() {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// `paths` (files, any order) grouped into chains: an active file with its rotated files is one
/// chain (`audit.pod-0.jsonl`, `audit.pod-0.jsonl.000001`, ...); chains in name order.
pub fn group_chains(paths: &[PathBuf]) -> Vec<(PathBuf, Vec<PathBuf>)> {
    let mut chains: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    for p in order_files(paths) {
        let active = numbered_parts(&p).map(|(a, _)| a).unwrap_or(p.clone());
        match chains.last_mut() {
            Some((a, files)) if *a == active => files.push(p),
            _ => chains.push((active, vec![p])),
        }
    }
    chains
}

/// Verifies each chain among `paths` (files and directories, [`expand_paths`]) on its own.
pub fn verify_chains(paths: &[PathBuf], opts: &VerifyOptions) -> io::Result<Vec<ChainReport>> {
    let files = expand_paths(paths)?;
    if files.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no trail files (*.jsonl and their rotated files) among the given paths",
        ));
    }
    group_chains(&files)
        .into_iter()
        .map(|(active, files)| {
            let report = verify_files(&files, opts)?;
            Ok(ChainReport::new(report, file_label(&active)))
        })
        .collect()
}

fn file_label(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn numbered_parts(p: &Path) -> Option<(PathBuf, u64)> {
    let name = p.file_name()?.to_str()?;
    let (base, _) = name.rsplit_once('.')?;
    let active = p.with_file_name(base);
    rotation_number(&active, p).map(|n| (active, n))
}

fn feed_file(v: &mut Verifier, src: usize, path: &Path, last_source: bool) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(1024);
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let terminated = buf.last() == Some(&b'\n');
        if terminated {
            buf.pop();
        }
        v.line(src, line_no, &buf, terminated, last_source);
    }
    Ok(())
}

/// The hex SHA-256 a line's successor names as its `prev` (for tools and tests).
pub fn line_hash_hex(line: &[u8]) -> String {
    hex(&hash(line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Tail;
    use serde_json::json;

    /// Verifies `records`, chained in order.
    fn verify(records: &[serde_json::Value]) -> Report {
        let mut tail = Tail::EMPTY;
        let mut v = Verifier::new(VerifyOptions::default());
        let src = v.source("trail");
        for (i, r) in records.iter().enumerate() {
            let line = tail.link(&serde_json::to_vec(r).unwrap());
            v.line(src, i as u64 + 1, &line, true, true);
        }
        v.finish()
    }

    fn run(id: &str, event: &str) -> serde_json::Value {
        json!({"v": 1, "kind": "run", "run_id": id, "event": event})
    }

    #[test]
    fn files_group_into_one_chain_per_active_file_with_its_rotated_files_first() {
        let p = |n: &str| PathBuf::from(format!("/x/{n}"));
        let chains = group_chains(&[
            p("audit.gw-b.jsonl"),
            p("audit.gw-a.jsonl.000002"),
            p("audit.gw-a.jsonl"),
            p("audit.gw-a.jsonl.000001"),
        ]);
        assert_eq!(
            chains,
            [
                (
                    p("audit.gw-a.jsonl"),
                    vec![
                        p("audit.gw-a.jsonl.000001"),
                        p("audit.gw-a.jsonl.000002"),
                        p("audit.gw-a.jsonl")
                    ]
                ),
                (p("audit.gw-b.jsonl"), vec![p("audit.gw-b.jsonl")]),
            ]
        );
    }

    #[test]
    fn a_chain_is_named_by_the_replica_its_records_carry_else_by_its_file() {
        let mut tail = Tail::EMPTY;
        let mut v = Verifier::new(VerifyOptions::default());
        let src = v.source("audit.gw-a.jsonl");
        for (i, r) in [json!({"v": 1, "kind": "x"}), json!({"v": 1, "kind": "x"})]
            .iter()
            .enumerate()
        {
            let mut line = Vec::new();
            tail.link_member_into(
                &serde_json::to_vec(r).unwrap(),
                br#""replica":"gw-a""#,
                &mut line,
            );
            v.line(src, i as u64 + 1, &line, true, true);
        }
        let named = ChainReport::new(v.finish(), "audit.gw-a.jsonl");
        assert_eq!(named.name, "gw-a");
        assert_eq!(named.summary(), "chain gw-a: 2 record(s), seq 1..2: ok");
        let legacy = ChainReport::new(verify(&[run("r1", "started")]), "audit.jsonl");
        assert_eq!(legacy.name, "audit.jsonl");
        // One chain is reported as a single trail always was.
        assert_eq!(
            render_chains(&[legacy]),
            verify(&[run("r1", "started")]).render()
        );
    }

    #[test]
    fn a_run_finished_only_by_a_late_record_is_reported_as_outcome_recorded_late() {
        let mut finished = run("r1", "finished");
        finished["late"] = json!(true);
        let report = verify(&[run("r1", "started"), finished]);
        assert!(report.intact());
        assert!(report.open_runs.is_empty());
        assert_eq!(report.late_outcomes.len(), 1);
        assert_eq!(report.late_outcomes[0].line, 2);
        let text = report.render();
        assert!(
            text.contains("outcome recorded late: trail:2: run r1"),
            "{text}"
        );
        assert!(!text.contains("outcome unknown"), "{text}");
    }

    #[test]
    fn a_run_without_a_finish_stays_outcome_unknown_not_late() {
        let report = verify(&[run("r1", "started"), run("r2", "started"), {
            let mut f = run("r2", "finished");
            f["late"] = json!(true);
            f
        }]);
        assert_eq!(report.open_runs.len(), 1);
        assert!(report.render().contains("outcome unknown: trail:1: run r1"));
        assert_eq!(report.late_outcomes.len(), 1);
    }
}
