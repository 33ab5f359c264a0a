//! The audit trail of privileged actions: JSON lines, each record chained to
//! the one before and keyed, its ends anchored by a checkpoint.
//!
//! - **Keyed chain** ([`chain`]): a record's hash is HMAC-SHA256, with the
//!   trail key, over the previous hash and the record's fields; the record
//!   names its key by id. Whoever can write the file but has no key cannot
//!   edit a record and recompute the chain. Records written before trails
//!   were keyed (unkeyed SHA-256) still verify, and are reported as legacy.
//! - **Key** ([`key`]): the secret `audit/hmac-key` of the configured secret
//!   store (Vault, or the embedded store), else — embedded store only — the
//!   file `<data_dir>/audit-hmac.key`, created 0600 when absent.
//! - **Checkpoint** ([`anchor`]): the first record and the last anchored one
//!   (index and hash), MACed, kept in Redis when `auth.key_store = "redis"`
//!   (under `auth.redis_prefix`), else in `<key dir>/<trail name>.checkpoint`
//!   beside the key file (weaker: whoever can write that directory can put
//!   back an older checkpoint). It catches a cut head and a cut tail.
//! - **Writer** ([`writer`]): one thread per trail file and process, fed by a
//!   bounded channel; appends wait for their answer, so the caller learns
//!   when its record could not be written and refuses its action (fail
//!   closed). Appends of every process sharing the file extend one chain
//!   (an exclusive lock on the file, the chain continued from its last
//!   record). Durability is `auth.audit_durability`: `always` (fsync before
//!   an append is answered; the default) or an interval (fsync at most that
//!   often; the checkpoint moves at each fsync).
//!
//! The newest records this process wrote (or, with [`AuditLog::open`],
//! found) are also kept in memory, bounded, for QueryAudit. [`verify_file`]
//! and [`verify_trail`] check a trail and name the first record that was
//! edited, deleted, reordered or cut.

pub mod anchor;
pub mod chain;
pub mod key;
mod resp;
mod verify;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

pub use anchor::Checkpoint;
pub use chain::{TrailKey, legacy_hash};
pub use key::{KEY_FILE, KEY_SECRET};
pub use verify::{Report, Verdict, verify_chain, verify_configured, verify_file, verify_trail};

use writer::Writer;

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
    /// The id of the key that hashed it; empty for a legacy (unkeyed)
    /// record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    /// Hash of the record before (hex); empty for the first.
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

/// When an appended record must be on disk (`auth.audit_durability`),
/// defined with the rest of the configuration.
pub use crate::config::Durability;

/// Where a trail's checkpoint is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// A file beside the key file (the embedded default).
    File,
    /// Redis (chosen by `auth.key_store = "redis"`).
    Redis {
        /// `auth.redis_url`.
        url: String,
        /// `auth.redis_prefix`.
        prefix: String,
    },
}

/// How a trail is keyed, anchored and synced.
#[derive(Clone, Debug)]
pub struct TrailSettings {
    /// Where the embedded key file (and file checkpoint) live.
    pub data_dir: PathBuf,
    /// The secret store holding `audit/hmac-key`.
    pub secrets: crate::secrets::SecretsConfig,
    /// Where the checkpoint is kept.
    pub anchor: Anchor,
    /// When appends reach the disk.
    pub durability: Durability,
}

impl TrailSettings {
    /// The settings `config` gives its trail (`auth.audit_file`).
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            data_dir: config.data_dir.clone(),
            secrets: config.secrets.clone(),
            anchor: match config.auth.key_store {
                crate::config::KeyStoreBackend::Redis => Anchor::Redis {
                    url: config.auth.redis_url.clone(),
                    prefix: config.auth.redis_prefix.clone(),
                },
                crate::config::KeyStoreBackend::File => Anchor::File,
            },
            durability: config.auth.audit_durability,
        }
    }

    /// The embedded defaults for a trail nobody configured: key and
    /// checkpoint files in the trail's own directory, synced always.
    pub fn for_path(path: &Path) -> Self {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        Self {
            data_dir: dir,
            secrets: crate::secrets::SecretsConfig::default(),
            anchor: Anchor::File,
            durability: Durability::Always,
        }
    }

    /// Equal for equal settings (no secret is in them: the secret store's
    /// settings only name where secrets are).
    fn fingerprint(&self) -> String {
        format!("{self:?}")
    }

    /// The checkpoint store of the trail at `path`; a file checkpoint lives
    /// in `key_dir` (where the key file is), else in the data directory.
    pub(crate) fn anchor_store(
        &self,
        path: &Path,
        key_dir: Option<&Path>,
        trail: &str,
    ) -> anchor::AnchorStore {
        match &self.anchor {
            Anchor::File => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "audit".into());
                anchor::AnchorStore::File(anchor::FileAnchor::new(
                    key_dir
                        .unwrap_or(&self.data_dir)
                        .join(format!("{name}.checkpoint")),
                ))
            }
            Anchor::Redis { url, prefix } => {
                anchor::AnchorStore::Redis(anchor::RedisAnchor::new(url, prefix, trail))
            }
        }
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, TrailSettings>> {
    static SETTINGS: OnceLock<Mutex<HashMap<PathBuf, TrailSettings>>> = OnceLock::new();
    SETTINGS.get_or_init(Default::default)
}

/// Makes every writer of `config`'s trail in this process (whoever opened
/// it, and by whatever constructor) key, anchor and sync it as `config`
/// says. [`AuditLog::open_configured`] and
/// [`AuditLog::append_only_configured`] call it; a process whose only
/// writers open the trail by path should call it once at start.
pub fn configure(config: &crate::Config) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(config.audit_file(), TrailSettings::from_config(config));
}

/// The settings registered for `path`, else the embedded defaults.
pub fn settings_for(path: &Path) -> TrailSettings {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(path)
        .cloned()
        .unwrap_or_else(|| TrailSettings::for_path(path))
}

/// The trail.
#[derive(Default)]
pub struct AuditLog {
    records: Mutex<VecDeque<Record>>,
    /// Appends are not kept in memory (nothing here queries them).
    write_only: bool,
    /// The writer of the trail file (shared by every [`AuditLog`] of this
    /// process on the same path); `None` keeps the trail in memory only.
    writer: Option<Arc<Writer>>,
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

/// Runs `f` to completion on this thread. Inside a multi-threaded Tokio
/// runtime the worker first hands its other tasks to the rest of the pool
/// (`block_in_place`), so a synchronous append does not stall them.
fn wait<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| futures::executor::block_on(f))
        }
        _ => futures::executor::block_on(f),
    }
}

impl AuditLog {
    /// A trail appended to `file`, continuing the chain already in it (its
    /// records are read back for [`AuditLog::query`]). Keyed, anchored and
    /// synced as [`configure`] registered for `file`, else by the embedded
    /// defaults of [`TrailSettings::for_path`].
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
            writer: Some(Writer::shared(file)),
        })
    }

    /// [`AuditLog::open`] on `config`'s trail, keyed, anchored and synced as
    /// `config` says.
    pub fn open_configured(config: &crate::Config) -> Result<Self, SinkDown> {
        configure(config);
        Self::open(&config.audit_file())
    }

    /// A trail appended to `file` by a service that only writes (nothing is
    /// read back into memory; QueryAudit is auth's).
    pub fn append_only(file: &Path) -> Self {
        Self {
            records: Mutex::new(VecDeque::new()),
            write_only: true,
            writer: Some(Writer::shared(file)),
        }
    }

    /// [`AuditLog::append_only`] on `config`'s trail, keyed, anchored and
    /// synced as `config` says.
    pub fn append_only_configured(config: &crate::Config) -> Self {
        configure(config);
        Self::append_only(&config.audit_file())
    }

    /// The record `entry` becomes, before the writer numbers, chains and
    /// keys it. The trace id is the caller's (the current span's).
    fn draft(entry: Entry<'_>) -> Record {
        Record {
            index: 0,
            at_ms: now_ms(),
            principal: bounded(entry.principal),
            tenant: bounded(entry.tenant),
            action: bounded(entry.action),
            object: bounded(entry.object),
            decision: if entry.allowed { "allow" } else { "deny" }.to_owned(),
            trace_id: crate::telemetry::current_trace_id().unwrap_or_default(),
            key_id: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// Appends an entry and answers once it is written (on disk, under
    /// `always`): `Err` means it was not, and the action must not happen.
    /// The blocking work runs on the trail's writer thread; this waits for
    /// it without blocking other tasks of the async runtime.
    pub async fn append_async(&self, entry: Entry<'_>) -> Result<Record, SinkDown> {
        let draft = Self::draft(entry);
        match &self.writer {
            Some(writer) => {
                let record = writer
                    .submit(draft)
                    .await
                    .inspect_err(|_| crate::metrics::audit_append_failed())?;
                self.remember(record.clone());
                Ok(record)
            }
            None => Ok(self.append_in_memory(draft)),
        }
    }

    /// [`AuditLog::append_async`] for synchronous callers: waits for the
    /// writer thread on this thread (inside a multi-threaded runtime, after
    /// handing this worker's other tasks to the pool).
    pub fn append(&self, entry: Entry<'_>) -> Result<Record, SinkDown> {
        let draft = Self::draft(entry);
        match &self.writer {
            Some(writer) => {
                let record = wait(writer.submit(draft))
                    .inspect_err(|_| crate::metrics::audit_append_failed())?;
                self.remember(record.clone());
                Ok(record)
            }
            None => Ok(self.append_in_memory(draft)),
        }
    }

    /// The index of the last record this process's writer knows is on disk.
    pub fn synced_through(&self) -> Option<u64> {
        self.writer.as_ref().and_then(|w| w.synced_through())
    }

    fn append_in_memory(&self, mut record: Record) -> Record {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let (index, prev) = records
            .back()
            .map(|r| (r.index + 1, r.hash.clone()))
            .unwrap_or((0, String::new()));
        record.index = index;
        record.prev_hash = prev;
        record.hash = legacy_hash(&record.prev_hash, &record);
        if records.len() >= MAX_RECORDS {
            records.pop_front();
        }
        records.push_back(record.clone());
        record
    }

    /// Keeps a written record for [`AuditLog::query`], in index order.
    fn remember(&self, record: Record) {
        if self.write_only {
            return;
        }
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= MAX_RECORDS {
            records.pop_front();
        }
        let at = records.partition_point(|r| r.index < record.index);
        records.insert(at, record);
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

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

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
    fn durability_parses() {
        assert_eq!("always".parse::<Durability>(), Ok(Durability::Always));
        assert_eq!(
            "250ms".parse::<Durability>(),
            Ok(Durability::Every(Duration::from_millis(250)))
        );
        assert!("0s".parse::<Durability>().is_err());
        assert!("2m".parse::<Durability>().is_err());
        assert!("sometimes".parse::<Durability>().is_err());
        assert_eq!(Durability::Every(Duration::from_secs(1)).to_string(), "1s");
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
        // A record another process appended (with the key): the next append
        // reads the file's tail and chains to it.
        let key = TrailKey::new(
            std::fs::read_to_string(dir.path().join(KEY_FILE))
                .unwrap()
                .trim()
                .as_bytes(),
        )
        .unwrap();
        let last = reopened.query(None, None, 0, 7, 1).remove(0);
        let mut foreign = Record {
            index: last.index + 1,
            prev_hash: last.hash.clone(),
            principal: "another-process".into(),
            ..last
        };
        foreign.hash = key.record_hash(&foreign.prev_hash, &foreign);
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
