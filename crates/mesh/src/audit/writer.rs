//! The writer of one trail file in this process: a dedicated thread fed by a
//! bounded channel, so the blocking work — the file lock, the write, fsync,
//! the checkpoint — never runs on an async thread. Each request gets an
//! answer: the record as written, or why it could not be (the caller then
//! refuses its action). Requests waiting together are written as one batch
//! under one lock and one fsync (group commit).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::anchor::{self, AnchorStore, Checkpoint, FileEnds};
use super::chain::TrailKey;
use super::{Durability, Record, SinkDown};

/// Requests that may wait for the writer; senders beyond wait (async) or
/// block (sync) until there is room.
const QUEUE: usize = 1024;
/// Most records written under one lock and one fsync.
const MAX_BATCH: usize = 256;
/// Bytes read from the start or the end of the file to find its first or
/// last record (a record is at most ~16 KiB: five 512-byte fields, JSON
/// escaping at most sixfold, and three hashes).
const END_WINDOW: u64 = 64 * 1024;

struct Request {
    record: Record,
    reply: oneshot::Sender<Result<Record, SinkDown>>,
}

/// A handle on the writer thread of one trail.
pub struct Writer {
    tx: mpsc::Sender<Request>,
    /// One more than the index of the last record known on disk (0: none).
    synced: Arc<AtomicU64>,
}

impl Writer {
    /// The writer of `path` in this process, started when there is none.
    pub fn shared(path: &Path) -> Arc<Writer> {
        static OPEN: OnceLock<Mutex<std::collections::HashMap<PathBuf, Weak<Writer>>>> =
            OnceLock::new();
        let mut open = OPEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(writer) = open.get(path).and_then(Weak::upgrade) {
            return writer;
        }
        let writer = Arc::new(Self::start(path.to_owned()));
        open.insert(path.to_owned(), Arc::downgrade(&writer));
        writer
    }

    fn start(path: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let synced = Arc::new(AtomicU64::new(0));
        let state = State::new(path, synced.clone());
        // When the thread cannot start, `rx` is dropped with the closure
        // and every append fails (closed) instead of being lost.
        let spawned = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(state, rx));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the audit writer thread");
        }
        Self { tx, synced }
    }

    /// Writes `record` (numbered, chained and keyed by the writer); answers
    /// once it is in the file (and on disk under `always`).
    pub async fn submit(&self, record: Record) -> Result<Record, SinkDown> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { record, reply })
            .await
            .map_err(|_| SinkDown("the audit writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| SinkDown("the audit writer stopped before answering".into()))?
    }

    /// The index of the last record known to be on disk.
    pub fn synced_through(&self) -> Option<u64> {
        self.synced.load(Ordering::Acquire).checked_sub(1)
    }
}

fn run(state: State, rx: mpsc::Receiver<Request>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "the audit writer cannot start its runtime");
            return;
        }
    };
    runtime.block_on(serve(state, rx));
}

async fn serve(mut state: State, mut rx: mpsc::Receiver<Request>) {
    loop {
        let next = match state.sync_due() {
            None => rx.recv().await,
            Some(due) => {
                match tokio::time::timeout_at(tokio::time::Instant::from_std(due), rx.recv()).await
                {
                    Ok(next) => next,
                    Err(_) => {
                        if let Err(error) = state.sync_pending() {
                            tracing::error!(%error, "the audit trail could not be synced");
                        }
                        continue;
                    }
                }
            }
        };
        let Some(first) = next else {
            // Every handle is gone: what was written reaches the disk.
            if state.sync_due().is_some()
                && let Err(error) = state.sync_pending()
            {
                tracing::error!(%error, "the audit trail could not be synced");
            }
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let mut records: Vec<Record> = batch.iter().map(|r| r.record.clone()).collect();
        let written = state.append(&mut records).await;
        for (request, record) in batch.into_iter().zip(records) {
            let answer = match &written {
                Ok(()) => Ok(record),
                Err(e) => Err(SinkDown(format!("{}: {e}", state.path.display()))),
            };
            let _ = request.reply.send(answer);
        }
    }
}

/// The key and checkpoint store in use, and the settings they came from.
struct Resolved {
    fingerprint: String,
    durability: Durability,
    key: TrailKey,
    anchor: AnchorStore,
}

/// The first and last records of the file at a known length.
#[derive(Clone)]
struct Ends {
    len: u64,
    first: (u64, String),
    last: (u64, String, bool),
}

struct OpenTrail {
    file: std::fs::File,
    /// The ends as this writer left them: while the length is unchanged,
    /// nobody else appended and they need not be read again.
    ends: Option<Ends>,
}

struct State {
    path: PathBuf,
    trail: String,
    resolved: Option<Resolved>,
    file: Option<OpenTrail>,
    /// When records not yet on disk were first written.
    unsynced_since: Option<Instant>,
    last_sync: Instant,
    synced: Arc<AtomicU64>,
}

impl State {
    fn new(path: PathBuf, synced: Arc<AtomicU64>) -> Self {
        Self {
            trail: anchor::trail_id(&path),
            path,
            resolved: None,
            file: None,
            unsynced_since: None,
            last_sync: Instant::now(),
            synced,
        }
    }

    /// When the records written but not yet synced must be synced.
    fn sync_due(&self) -> Option<Instant> {
        // Under `always` every batch is synced before it is answered.
        let since = self.unsynced_since?;
        match self.resolved.as_ref().map(|r| r.durability) {
            Some(Durability::Every(interval)) => Some(since.max(self.last_sync) + interval),
            _ => None,
        }
    }

    /// Loads the key and checkpoint store the registered settings name,
    /// again when the settings changed.
    async fn resolve(&mut self) -> Result<(), String> {
        let settings = super::settings_for(&self.path);
        let fingerprint = settings.fingerprint();
        if self
            .resolved
            .as_ref()
            .is_some_and(|r| r.fingerprint == fingerprint)
        {
            return Ok(());
        }
        let found = super::key::find(&settings, true, &[])
            .await?
            .ok_or("no audit key")?;
        let anchor = settings.anchor_store(&self.path, found.dir.as_deref(), &self.trail);
        self.resolved = Some(Resolved {
            fingerprint,
            durability: settings.durability,
            key: found.key,
            anchor,
        });
        Ok(())
    }

    async fn append(&mut self, records: &mut [Record]) -> Result<(), String> {
        self.resolve().await?;
        let written = self.locked(|state| state.write(records));
        if written.is_err() {
            // Open the file afresh next time (it may have been replaced).
            self.file = None;
        }
        written
    }

    /// Syncs what was written and advances the checkpoint to the file's end.
    fn sync_pending(&mut self) -> Result<(), String> {
        let synced = self.locked(|state| state.sync_and_anchor(None));
        if synced.is_err() {
            self.file = None;
        }
        synced
    }

    /// Runs `f` holding the exclusive lock on the trail file, so writers in
    /// other processes extend the same chain.
    fn locked<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<T, String> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| e.to_string())?;
            self.file = Some(OpenTrail { file, ends: None });
        }
        // A trail deleted or moved under us is a sink that is down.
        if !self.path.exists() {
            return Err("the file is gone".into());
        }
        let Some(trail) = self.file.as_ref() else {
            return Err("not open".into());
        };
        trail.file.lock().map_err(|e| e.to_string())?;
        let result = f(self);
        if let Some(trail) = self.file.as_ref() {
            let _ = trail.file.unlock();
        }
        if result.is_err()
            && let Some(resolved) = self.resolved.as_mut()
        {
            resolved.anchor.release();
        }
        result
    }

    /// The file's ends now (read again when someone else appended).
    fn ends(&mut self) -> Result<Option<Ends>, String> {
        let (Some(trail), Some(resolved)) = (self.file.as_mut(), self.resolved.as_ref()) else {
            return Err("not open".into());
        };
        let len = trail.file.metadata().map_err(|e| e.to_string())?.len();
        if let Some(ends) = trail.ends.take()
            && ends.len == len
        {
            return Ok(Some(ends));
        }
        read_ends(&mut trail.file, len, &resolved.key)
    }

    /// Numbers, chains, keys and writes `records`; syncs and advances the
    /// checkpoint as the durability setting says.
    fn write(&mut self, records: &mut [Record]) -> Result<(), String> {
        let ends = self.ends()?;
        let (Some(trail), Some(resolved)) = (self.file.as_mut(), self.resolved.as_mut()) else {
            return Err("not open".into());
        };
        let at = resolved.anchor.describe();
        let stored = resolved.anchor.load(true)?;
        anchor::check(
            stored.as_ref(),
            &resolved.key,
            &self.trail,
            &file_ends(ends.as_ref()),
            &at,
        )?;
        let (mut next, mut prev) = match &ends {
            Some(e) => (e.last.0 + 1, e.last.1.clone()),
            None => (0, String::new()),
        };
        let mut lines = Vec::new();
        for record in records.iter_mut() {
            record.index = next;
            record.prev_hash = std::mem::take(&mut prev);
            record.key_id = resolved.key.id().to_owned();
            record.hash = resolved.key.record_hash(&record.prev_hash, record);
            serde_json::to_writer(&mut lines, &*record).map_err(|e| e.to_string())?;
            lines.push(b'\n');
            prev = record.hash.clone();
            next += 1;
        }
        let (Some(first_new), Some(last_new)) = (records.first(), records.last()) else {
            resolved.anchor.release();
            return Ok(());
        };
        trail.file.write_all(&lines).map_err(|e| e.to_string())?;
        trail.file.flush().map_err(|e| e.to_string())?;
        let len = ends.as_ref().map_or(0, |e| e.len) + lines.len() as u64;
        trail.ends = Some(Ends {
            len,
            first: ends
                .as_ref()
                .map(|e| e.first.clone())
                .unwrap_or((first_new.index, first_new.hash.clone())),
            last: (last_new.index, last_new.hash.clone(), true),
        });
        self.unsynced_since.get_or_insert_with(Instant::now);
        let sync_now = match resolved.durability {
            Durability::Always => true,
            Durability::Every(interval) => self.last_sync.elapsed() >= interval,
        };
        if sync_now {
            self.sync_and_anchor(Some(stored))
        } else if stored.is_none() {
            // The first checkpoint is written at once, so that other writers
            // never meet keyed records without one.
            self.anchor_to_end(Some(stored))
        } else {
            resolved.anchor.release();
            Ok(())
        }
    }

    /// Syncs the file, then advances the checkpoint to its last record.
    /// `loaded`: the checkpoint as already read (and watched) under this
    /// lock, if it was.
    fn sync_and_anchor(&mut self, loaded: Option<Option<Checkpoint>>) -> Result<(), String> {
        let Some(trail) = self.file.as_ref() else {
            return Err("not open".into());
        };
        // A failed sync is tried again an interval later, not at once.
        self.last_sync = Instant::now();
        trail.file.sync_data().map_err(|e| format!("fsync: {e}"))?;
        self.unsynced_since = None;
        self.anchor_to_end(loaded)?;
        let end = self
            .file
            .as_ref()
            .and_then(|t| t.ends.as_ref())
            .map(|e| e.last.0);
        if let Some(end) = end {
            self.synced.fetch_max(end + 1, Ordering::AcqRel);
        }
        Ok(())
    }

    fn anchor_to_end(&mut self, loaded: Option<Option<Checkpoint>>) -> Result<(), String> {
        let ends = self.ends()?;
        if let Some(trail) = self.file.as_mut() {
            trail.ends = ends.clone();
        }
        let Some(resolved) = self.resolved.as_mut() else {
            return Err("not resolved".into());
        };
        let Some(ends) = ends else {
            resolved.anchor.release();
            return Ok(());
        };
        let at = resolved.anchor.describe();
        let stored = match loaded {
            Some(stored) => stored,
            None => {
                let stored = resolved.anchor.load(true)?;
                anchor::check(
                    stored.as_ref(),
                    &resolved.key,
                    &self.trail,
                    &file_ends(Some(&ends)),
                    &at,
                )?;
                stored
            }
        };
        if !ends.last.2 || stored.as_ref().is_some_and(|c| c.last_index >= ends.last.0) {
            resolved.anchor.release();
        } else {
            let checkpoint = Checkpoint::signed(
                &resolved.key,
                &self.trail,
                (ends.first.0, &ends.first.1),
                (ends.last.0, &ends.last.1),
            );
            resolved.anchor.store(&checkpoint)?;
        }
        Ok(())
    }
}

fn file_ends(ends: Option<&Ends>) -> FileEnds<'_> {
    FileEnds {
        first: ends.map(|e| (e.first.0, e.first.1.as_str())),
        last: ends.map(|e| (e.last.0, e.last.1.as_str(), e.last.2)),
    }
}

/// The first and last records of the file (of length `len`); the last one
/// must verify when it is keyed.
fn read_ends(file: &mut std::fs::File, len: u64, key: &TrailKey) -> Result<Option<Ends>, String> {
    if len == 0 {
        return Ok(None);
    }
    let mut head = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    (&mut *file)
        .take(END_WINDOW)
        .read_to_end(&mut head)
        .map_err(|e| e.to_string())?;
    let start = len.saturating_sub(END_WINDOW);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start))
        .map_err(|e| e.to_string())?;
    file.read_to_end(&mut tail).map_err(|e| e.to_string())?;
    let parse = |line: &[u8], which: &str| -> Result<Record, String> {
        serde_json::from_slice(line).map_err(|e| {
            format!("the {which} record is not valid JSON ({e}); the trail was damaged")
        })
    };
    let lines = |bytes: &'_ [u8]| -> Vec<Vec<u8>> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(<[u8]>::to_vec)
            .collect()
    };
    let Some(first_line) = lines(&head).into_iter().next() else {
        return Ok(None);
    };
    let first = parse(&first_line, "first")?;
    let last_line = lines(&tail)
        .pop()
        .ok_or("the last record is longer than a record can be; the trail was damaged")?;
    let last = parse(&last_line, "last")?;
    let keyed = !last.key_id.is_empty();
    if keyed && (last.key_id != key.id() || !key.record_ok(&last.prev_hash, &last)) {
        return Err(format!(
            "the trail's last record ({}) does not verify with the audit key: it was edited or appended without the key",
            last.index
        ));
    }
    Ok(Some(Ends {
        len,
        first: (first.index, first.hash),
        last: (last.index, last.hash, keyed),
    }))
}
