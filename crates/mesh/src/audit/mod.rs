//! The audit trail of privileged actions, each record hash-chained to the one
//! before (SHA-256 over the previous hash and the record's fields). Records
//! are appended to a JSON-lines file before the action takes effect: when the
//! file cannot be written the action fails (fail closed). Every service of a
//! process (and every process sharing the file) appends to one chain: an
//! append holds an exclusive lock on the file and chains to its last record.
//! The newest records this process wrote are also kept in memory, bounded,
//! for QueryAudit. [`verify_file`] checks a trail and names the first record
//! that was edited, deleted or reordered.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most records kept; the oldest are dropped first (indexes keep counting).
pub const MAX_RECORDS: usize = 100_000;

/// One audited action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the trail, from 0.
    pub index: u64,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Who acted.
    pub principal: String,
    /// In which tenant.
    pub tenant: String,
    /// What, e.g. `keys.create`.
    pub action: String,
    /// On what.
    pub object: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// The trace the action belongs to (W3C trace id, hex); empty when
    /// there is none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// Hash of the record before (hex); empty for the first.
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

/// The trail.
#[derive(Default)]
pub struct AuditLog {
    records: Mutex<VecDeque<Record>>,
    /// Appends are not kept in memory (nothing here queries them).
    write_only: bool,
    file: Option<PathBuf>,
    /// The open trail file, kept between appends and shared by every
    /// [`AuditLog`] of this process on the same path.
    handle: SharedTrail,
}

type TrailSlot = Mutex<Option<OpenTrail>>;
type SharedTrail = Arc<TrailSlot>;

/// The handle of the trail at `path` for this process. Services running in
/// one process (`amaos up`) append through one handle, so each append finds
/// its own last record cached instead of re-reading the file's tail.
fn shared_trail(path: &Path) -> SharedTrail {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<TrailSlot>>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    open.retain(|_, trail| trail.strong_count() > 0);
    if let Some(trail) = open.get(path).and_then(Weak::upgrade) {
        return trail;
    }
    let trail = SharedTrail::default();
    open.insert(path.to_owned(), Arc::downgrade(&trail));
    trail
}

/// The audit sink could not record an action; the action must not happen.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail cannot be written ({0}); privileged actions are refused until it can")]
pub struct SinkDown(pub String);

/// What an entry says, before it is numbered and chained.
pub struct Entry<'a> {
    /// Who acted.
    pub principal: &'a str,
    /// In which tenant.
    pub tenant: &'a str,
    /// What.
    pub action: &'a str,
    /// On what.
    pub object: &'a str,
    /// Allowed or denied.
    pub allowed: bool,
}

fn chain_hash(prev: &str, r: &Record) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &r.index.to_string(),
        &r.at_ms.to_string(),
        &r.principal,
        &r.tenant,
        &r.action,
        &r.object,
        &r.decision,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    // Records from before trace ids hash as they always did.
    if !r.trace_id.is_empty() {
        h.update((r.trace_id.len() as u64).to_be_bytes());
        h.update(r.trace_id.as_bytes());
    }
    hex::encode(h.finalize())
}

impl AuditLog {
    /// A trail appended to `file`, continuing the chain already in it.
    pub fn open(file: &Path) -> Result<Self, SinkDown> {
        let mut records = VecDeque::new();
        match std::fs::File::open(file) {
            Ok(f) => {
                for line in std::io::BufReader::new(f).lines() {
                    let line = line.map_err(|e| SinkDown(format!("{}: {e}", file.display())))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let record: Record = serde_json::from_str(&line).map_err(|e| {
                        SinkDown(format!(
                            "{}: a record is not valid JSON: {e}",
                            file.display()
                        ))
                    })?;
                    if records.len() >= MAX_RECORDS {
                        records.pop_front();
                    }
                    records.push_back(record);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SinkDown(format!("{}: {e}", file.display()))),
        }
        Ok(Self {
            records: Mutex::new(records),
            write_only: false,
            file: Some(file.to_owned()),
            handle: shared_trail(file),
        })
    }

    /// A trail appended to `file` by a service that only writes (nothing is
    /// read back into memory; QueryAudit is auth's).
    pub fn append_only(file: &Path) -> Self {
        Self {
            records: Mutex::new(VecDeque::new()),
            write_only: true,
            file: Some(file.to_owned()),
            handle: shared_trail(file),
        }
    }

    /// Appends an entry: written to the file first (chained to the file's
    /// last record, under an exclusive lock), then kept in memory.
    pub fn append(&self, entry: Entry<'_>) -> Result<Record, SinkDown> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = Record {
            index: 0,
            at_ms: now_ms(),
            principal: bounded(entry.principal),
            tenant: bounded(entry.tenant),
            action: bounded(entry.action),
            object: bounded(entry.object),
            decision: if entry.allowed { "allow" } else { "deny" }.to_owned(),
            trace_id: crate::telemetry::current_trace_id().unwrap_or_default(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        match &self.file {
            Some(path) => {
                let mut handle = self.handle.lock().unwrap_or_else(|e| e.into_inner());
                let appended = append_to_file(path, &mut handle, &mut record);
                if appended.is_err() {
                    // Open the file afresh next time (it may have been replaced).
                    *handle = None;
                }
                appended?;
            }
            None => {
                let (index, prev) = records
                    .back()
                    .map(|r| (r.index + 1, r.hash.clone()))
                    .unwrap_or((0, String::new()));
                record.index = index;
                record.prev_hash = prev;
                record.hash = chain_hash(&record.prev_hash, &record);
            }
        }
        if !self.write_only {
            if records.len() >= MAX_RECORDS {
                records.pop_front();
            }
            records.push_back(record.clone());
        }
        Ok(record)
    }

    /// Records after `after_index` matching the filters, oldest first.
    pub fn query(
        &self,
        tenant: Option<&str>,
        action: Option<&str>,
        after_ms: u64,
        after_index: u64,
        limit: usize,
    ) -> Vec<Record> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records
            .iter()
            .filter(|r| after_index == 0 || r.index > after_index)
            .filter(|r| r.at_ms >= after_ms)
            .filter(|r| tenant.is_none_or(|t| r.tenant == t))
            .filter(|r| action.is_none_or(|a| r.action == a))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// Longest field kept in a record (records stay one short line each).
const MAX_FIELD: usize = 512;

fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_FIELD);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The trail file as this process holds it open.
struct OpenTrail {
    file: std::fs::File,
    /// The file's length after this process's last append, with that
    /// record's index and hash: while the length is unchanged nobody else
    /// appended, and the tail need not be read again.
    last: Option<(u64, u64, String)>,
}

/// Numbers, chains and appends `record` to the file at `path`, holding an
/// exclusive lock so concurrent writers (other processes) extend one chain.
fn append_to_file(
    path: &Path,
    handle: &mut Option<OpenTrail>,
    record: &mut Record,
) -> Result<(), SinkDown> {
    let fail = |e: std::io::Error| SinkDown(format!("{}: {e}", path.display()));
    if handle.is_none() {
        *handle = Some(OpenTrail {
            file: std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(path)
                .map_err(fail)?,
            last: None,
        });
    }
    let Some(trail) = handle.as_mut() else {
        return Err(SinkDown(format!("{}: not open", path.display())));
    };
    // A trail deleted or moved under us is a sink that is down.
    if !path.exists() {
        return Err(SinkDown(format!("{}: the file is gone", path.display())));
    }
    trail.file.lock().map_err(fail)?;
    let written = append_locked(trail, record);
    let _ = trail.file.unlock();
    written.map_err(|e| SinkDown(format!("{}: {e}", path.display())))
}

fn append_locked(trail: &mut OpenTrail, record: &mut Record) -> Result<(), String> {
    let len = trail.file.metadata().map_err(|e| e.to_string())?.len();
    let (index, prev) = match trail.last.take() {
        Some((at, index, hash)) if at == len => (index + 1, hash),
        _ => last_record(&mut trail.file, len)?
            .map(|r| (r.index + 1, r.hash))
            .unwrap_or((0, String::new())),
    };
    let file = &mut trail.file;
    record.index = index;
    record.prev_hash = prev;
    record.hash = chain_hash(&record.prev_hash, record);
    let mut line = serde_json::to_vec(&*record).map_err(|e| e.to_string())?;
    line.push(b'\n');
    file.write_all(&line).map_err(|e| e.to_string())?;
    file.flush().map_err(|e| e.to_string())?;
    trail.last = Some((len + line.len() as u64, record.index, record.hash.clone()));
    Ok(())
}

/// The last record of a trail file, read from its tail.
fn last_record(file: &mut std::fs::File, len: u64) -> Result<Option<Record>, String> {
    // A record is at most a few KiB (its fields are bounded), so the last
    // 8 KiB always hold the last whole line.
    let start = len.saturating_sub(8 * 1024);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| e.to_string())?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).map_err(|e| e.to_string())?;
    match tail.lines().rev().find(|l| !l.trim().is_empty()) {
        None => Ok(None),
        Some(line) => serde_json::from_str(line)
            .map(Some)
            .map_err(|e| format!("the last record is not valid JSON ({e}); the trail was damaged")),
    }
}

/// The position of the first record that does not chain (edited, missing,
/// or out of order), if any.
pub fn verify_chain(records: &[Record]) -> Option<u64> {
    let mut prev: Option<&Record> = None;
    for (position, r) in records.iter().enumerate() {
        let expected_index = prev.map(|p| p.index + 1).unwrap_or(r.index);
        let expected_prev = prev.map(|p| p.hash.as_str());
        if r.index != expected_index
            || expected_prev.is_some_and(|p| p != r.prev_hash)
            || chain_hash(&r.prev_hash, r) != r.hash
        {
            return Some(prev.map(|p| p.index + 1).unwrap_or(position as u64));
        }
        prev = Some(r);
    }
    None
}

/// What [`verify_file`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record chains: this many.
    Intact(u64),
    /// The record expected at this index is edited, missing or out of order.
    BrokenAt(u64),
}

/// Verifies an audit file.
pub fn verify_file(path: &Path) -> Result<Verdict, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut records = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record: Record = serde_json::from_str(line).map_err(|e| {
            format!(
                "{}: line {}: not an audit record: {e}",
                path.display(),
                n + 1
            )
        })?;
        records.push(record);
    }
    Ok(match verify_chain(&records) {
        None => Verdict::Intact(records.len() as u64),
        Some(index) => Verdict::BrokenAt(index),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(n: usize) -> Vec<Record> {
        let log = AuditLog::default();
        for i in 0..n {
            log.append(Entry {
                principal: "p",
                tenant: "t",
                action: "keys.create",
                object: &format!("k{i}"),
                allowed: true,
            })
            .unwrap();
        }
        log.query(None, None, 0, 0, 100)
    }

    #[test]
    fn the_chain_names_an_edited_deleted_or_reordered_record() {
        let records = trail(5);
        assert_eq!(verify_chain(&records), None);
        let mut edited = records.clone();
        edited[2].object = "other".into();
        assert_eq!(verify_chain(&edited), Some(2));
        let mut deleted = records.clone();
        deleted.remove(3);
        assert_eq!(verify_chain(&deleted), Some(3));
        let mut reordered = records.clone();
        reordered.swap(1, 2);
        assert_eq!(verify_chain(&reordered), Some(1));
    }

    #[test]
    fn a_file_trail_continues_across_restarts_and_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let entry = || Entry {
            principal: "p",
            tenant: "t",
            action: "keys.revoke",
            object: "k",
            allowed: true,
        };
        AuditLog::open(&path).unwrap().append(entry()).unwrap();
        let reopened = AuditLog::open(&path).unwrap();
        assert_eq!(reopened.append(entry()).unwrap().index, 1);
        assert_eq!(verify_file(&path).unwrap(), Verdict::Intact(2));
        // Two writers on one file (two services, or two processes) extend
        // one chain.
        let other = AuditLog::append_only(&path);
        let third = AuditLog::append_only(&path);
        for _ in 0..3 {
            other.append(entry()).unwrap();
            third.append(entry()).unwrap();
        }
        assert_eq!(reopened.append(entry()).unwrap().index, 8);
        assert_eq!(verify_file(&path).unwrap(), Verdict::Intact(9));
        // A record another process appended: the next append reads the
        // file's tail and chains to it.
        let last = reopened.query(None, None, 0, 7, 1).remove(0);
        let mut foreign = Record {
            index: last.index + 1,
            prev_hash: last.hash.clone(),
            principal: "another-process".into(),
            ..last
        };
        foreign.hash = chain_hash(&foreign.prev_hash, &foreign);
        let mut line = serde_json::to_vec(&foreign).unwrap();
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&line)
            .unwrap();
        assert_eq!(other.append(entry()).unwrap().index, 10);
        assert_eq!(verify_file(&path).unwrap(), Verdict::Intact(11));
        // A sink that cannot be written refuses the action.
        let blocked = AuditLog::open(&dir.path().join("no-such-dir/audit.jsonl")).unwrap();
        assert!(blocked.append(entry()).is_err());
        assert!(blocked.query(None, None, 0, 0, 10).is_empty());
    }
}
