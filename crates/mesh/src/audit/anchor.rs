//! The trail's checkpoint: its first record (index and hash) and its last
//! anchored one, MACed with the trail key, kept where the trail's writer
//! cannot rewrite it along with the file — in Redis when `auth.key_store =
//! "redis"`, else in a file beside the trail key (weaker: whoever can write
//! the data directory can put back an older checkpoint).
//!
//! The writer advances the checkpoint under the trail's file lock, after the
//! records reached the file (and the disk, per `auth.audit_durability`); it
//! refuses to append when the checkpoint says the file was cut, rewritten at
//! its head or its anchored end, or belongs to another trail or key.
//! Verification compares the file with it: a head that differs, or a last
//! index beyond the file's last record (a cut tail), is named.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::TrailKey;
use super::resp::{Conn, Value};

/// The checkpoint of a trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Which trail (a hash of its path).
    pub trail: String,
    /// The id of the key that MACs it.
    pub key_id: String,
    /// The trail's first record.
    pub first_index: u64,
    /// Its hash.
    pub first_hash: String,
    /// The last record anchored.
    pub last_index: u64,
    /// Its hash.
    pub last_hash: String,
    /// When it was written, ms since the epoch.
    pub at_ms: u64,
    /// HMAC-SHA256 of the fields above with the trail key (hex).
    pub mac: String,
}

impl Checkpoint {
    fn mac_input(&self) -> [Vec<u8>; 7] {
        [
            self.trail.as_bytes().to_vec(),
            self.key_id.as_bytes().to_vec(),
            self.first_index.to_string().into_bytes(),
            self.first_hash.as_bytes().to_vec(),
            self.last_index.to_string().into_bytes(),
            self.last_hash.as_bytes().to_vec(),
            self.at_ms.to_string().into_bytes(),
        ]
    }

    /// A checkpoint MACed with `key`.
    pub fn signed(key: &TrailKey, trail: &str, first: (u64, &str), last: (u64, &str)) -> Self {
        let mut checkpoint = Self {
            trail: trail.to_owned(),
            key_id: key.id().to_owned(),
            first_index: first.0,
            first_hash: first.1.to_owned(),
            last_index: last.0,
            last_hash: last.1.to_owned(),
            at_ms: super::now_ms(),
            mac: String::new(),
        };
        let input = checkpoint.mac_input();
        let parts: Vec<&[u8]> = input.iter().map(Vec::as_slice).collect();
        checkpoint.mac = key.checkpoint_mac(&parts);
        checkpoint
    }

    /// True when its MAC is `key`'s.
    pub fn mac_ok(&self, key: &TrailKey) -> bool {
        let input = self.mac_input();
        let parts: Vec<&[u8]> = input.iter().map(Vec::as_slice).collect();
        self.key_id == key.id() && key.checkpoint_mac_ok(&parts, &self.mac)
    }
}

/// The id of the trail at `path`: a hash of its absolute path.
pub fn trail_id(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let absolute = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .map(|d| d.join(name))
                .unwrap_or_else(|_| std::path::absolute(path).unwrap_or(path.to_owned()))
        }
        _ => std::path::absolute(path).unwrap_or(path.to_owned()),
    };
    let digest = Sha256::digest(absolute.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..8])
}

/// Where a checkpoint is kept.
pub enum AnchorStore {
    /// A file of two slots (mode 0600).
    File(FileAnchor),
    /// A Redis string.
    Redis(RedisAnchor),
}

/// Bytes of one slot of a checkpoint file: a checkpoint's JSON, padded.
const SLOT: usize = 1024;

/// A checkpoint file: two slots of [`SLOT`] bytes, each a checkpoint in
/// JSON padded with spaces. A new checkpoint overwrites the older slot in
/// place and is synced (one `fdatasync`, no file created or renamed per
/// checkpoint); a write torn by a crash spoils only that slot, and the other
/// still holds the previous checkpoint. Reading takes the slot that parses
/// with the highest index. A file of one JSON checkpoint (the earlier
/// format) is read as such and rewritten in two slots at its next store.
pub struct FileAnchor {
    path: PathBuf,
    /// The file, open for writing, with its inode (a file replaced under
    /// us is opened again).
    file: Option<(std::fs::File, u64)>,
    /// The slot the last load found newest (the other one is written next);
    /// `None`: the file is missing or in the one-checkpoint format.
    newest: Option<usize>,
}

impl FileAnchor {
    /// The checkpoint file at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            newest: None,
        }
    }

    fn load(&mut self, from: &str) -> Result<Option<Checkpoint>, String> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.newest = None;
                return Ok(None);
            }
            Err(e) => return Err(format!("{from}: {e}")),
        };
        if text.len() != 2 * SLOT {
            self.newest = None;
            return parse_checkpoint(&text, from).map(Some);
        }
        let slots: Vec<Option<Checkpoint>> = text
            .chunks(SLOT)
            .map(|slot| parse_checkpoint(slot.trim_ascii_end(), from).ok())
            .collect();
        let newest = slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.last_index)))
            .max_by_key(|(_, last)| *last)
            .map(|(i, _)| i);
        self.newest = newest;
        match newest {
            Some(i) => Ok(slots.into_iter().nth(i).flatten()),
            None if text.iter().all(|b| *b == b' ') => Ok(None),
            None => Err(format!("{from}: neither slot holds a checkpoint")),
        }
    }

    fn store(&mut self, text: &[u8], from: &str) -> Result<(), String> {
        use std::os::unix::fs::{FileExt, MetadataExt};
        if text.len() >= SLOT {
            return Err(format!(
                "{from}: a checkpoint of {} bytes does not fit",
                text.len()
            ));
        }
        let mut slot = vec![b' '; SLOT];
        slot[..text.len()].copy_from_slice(text);
        let Some(newest) = self.newest else {
            // Missing or in the one-checkpoint format: written whole.
            slot.resize(2 * SLOT, b' ');
            write_private(&self.path, &slot)?;
            self.file = None;
            self.newest = Some(0);
            return Ok(());
        };
        let fail = |e: std::io::Error| format!("{from}: {e}");
        let inode = std::fs::metadata(&self.path).map_err(fail)?.ino();
        if self.file.as_ref().is_none_or(|(_, ino)| *ino != inode) {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .map_err(fail)?;
            let inode = file.metadata().map_err(fail)?.ino();
            self.file = Some((file, inode));
        }
        let Some((file, _)) = self.file.as_ref() else {
            return Err(format!("{from}: not open"));
        };
        let next = 1 - newest;
        let written = file
            .write_all_at(&slot, (next * SLOT) as u64)
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            self.file = None;
            return Err(fail(e));
        }
        self.newest = Some(next);
        Ok(())
    }
}

/// A checkpoint in Redis, written with WATCH/MULTI/EXEC so two writers never
/// both advance it from the same state.
pub struct RedisAnchor {
    url: String,
    key: String,
    conn: Option<Conn>,
    watching: bool,
}

impl RedisAnchor {
    /// The checkpoint of `trail` under `prefix` in the Redis at `url`.
    pub fn new(url: &str, prefix: &str, trail: &str) -> Self {
        Self {
            url: url.to_owned(),
            key: format!("{prefix}:{{audit}}:checkpoint:{trail}"),
            conn: None,
            watching: false,
        }
    }

    fn run(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Value>, String> {
        if self.conn.is_none() {
            self.conn = Some(Conn::connect(&self.url)?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("not connected".into());
        };
        let replies = conn.pipeline(commands);
        if replies.is_err() {
            self.conn = None;
            self.watching = false;
        }
        let replies = replies?;
        match replies.iter().find_map(|r| match r {
            Value::Error(e) => Some(e.clone()),
            _ => None,
        }) {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }
}

fn parse_checkpoint(text: &[u8], from: &str) -> Result<Checkpoint, String> {
    serde_json::from_slice(text).map_err(|e| format!("{from}: not a checkpoint ({e})"))
}

impl AnchorStore {
    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            AnchorStore::File(f) => format!("checkpoint file {}", f.path.display()),
            AnchorStore::Redis(r) => format!("Redis key {}", r.key),
        }
    }

    /// The checkpoint, if one was written. With `watch`, a Redis checkpoint
    /// is watched until [`AnchorStore::store`] or [`AnchorStore::release`].
    pub fn load(&mut self, watch: bool) -> Result<Option<Checkpoint>, String> {
        let from = self.describe();
        match self {
            AnchorStore::File(f) => f.load(&from),
            AnchorStore::Redis(r) => {
                let key = r.key.clone();
                let mut commands: Vec<Vec<&[u8]>> = Vec::new();
                if watch {
                    commands.push(vec![b"WATCH", key.as_bytes()]);
                }
                commands.push(vec![b"GET", key.as_bytes()]);
                let replies = r.run(&commands).map_err(|e| format!("{from}: {e}"))?;
                r.watching = watch;
                match replies.last() {
                    Some(Value::Bulk(text)) => parse_checkpoint(text, &from).map(Some),
                    Some(Value::Nil) => Ok(None),
                    other => Err(format!("{from}: unexpected reply {other:?}")),
                }
            }
        }
    }

    /// Writes `checkpoint` (for Redis: only if the watched key did not change).
    pub fn store(&mut self, checkpoint: &Checkpoint) -> Result<(), String> {
        let from = self.describe();
        let text = serde_json::to_vec(checkpoint).map_err(|e| e.to_string())?;
        match self {
            AnchorStore::File(f) => f.store(&text, &from),
            AnchorStore::Redis(r) => {
                let key = r.key.clone();
                let replies = if r.watching {
                    r.run(&[
                        vec![b"MULTI"],
                        vec![b"SET", key.as_bytes(), &text],
                        vec![b"EXEC"],
                    ])
                } else {
                    r.run(&[vec![b"SET", key.as_bytes(), &text]])
                }
                .map_err(|e| format!("{from}: {e}"))?;
                r.watching = false;
                match replies.last() {
                    Some(Value::Nil) => Err(format!(
                        "{from}: another writer changed the checkpoint meanwhile"
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Ends a watch begun by [`AnchorStore::load`] without writing.
    pub fn release(&mut self) {
        if let AnchorStore::Redis(r) = self
            && r.watching
        {
            r.watching = false;
            if r.run(&[vec![b"UNWATCH"]]).is_err() {
                r.conn = None;
            }
        }
    }
}

/// Writes `bytes` to `path` (mode 0600) through a synced temporary file and
/// a rename, so a reader sees the old file or the new one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let tmp = path.with_extension(format!("tmp-{}", crate::new_id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| fail(&tmp, e))?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(path, e));
    }
    Ok(())
}

/// What the writer found in the file (under its lock) before appending.
pub struct FileEnds<'a> {
    /// The first record's index and hash; `None` for an empty file.
    pub first: Option<(u64, &'a str)>,
    /// The last record's index and hash, and whether it is keyed.
    pub last: Option<(u64, &'a str, bool)>,
}

/// Checks the stored checkpoint against the file the writer is about to
/// extend: `Err` says why appending must stop (the trail was cut, rewritten,
/// or the checkpoint is not this trail's).
pub fn check(
    stored: Option<&Checkpoint>,
    key: &TrailKey,
    trail: &str,
    file: &FileEnds<'_>,
    at: &str,
) -> Result<(), String> {
    let Some(c) = stored else {
        return match file.last {
            // Keyed records without a checkpoint: it was removed, and the
            // tail may have been cut with it.
            Some((_, _, true)) => Err(format!(
                "the trail holds keyed records but its checkpoint ({at}) is missing; \
                 its tail may have been cut. Verify it (`amaos audit verify`), then restore \
                 the checkpoint, or move the trail aside to start a new one"
            )),
            _ => Ok(()),
        };
    };
    if c.trail != trail {
        return Err(format!("the checkpoint ({at}) belongs to another trail"));
    }
    if !c.mac_ok(key) {
        return Err(format!(
            "the checkpoint ({at}) does not verify with the audit key (key {}, checkpoint says {}): it was altered or the key changed",
            key.id(),
            c.key_id
        ));
    }
    let Some((last_index, last_hash, keyed)) = file.last else {
        return Err(format!(
            "the trail is empty but its checkpoint ({at}) records {} records: it was cut or replaced",
            c.last_index + 1
        ));
    };
    if file.first != Some((c.first_index, c.first_hash.as_str())) {
        return Err(format!(
            "the trail's first record is not the one its checkpoint ({at}) records: its head was cut or rewritten"
        ));
    }
    if !keyed {
        return Err(
            "the trail's last record is not keyed although the trail is: it was appended without the key"
                .into(),
        );
    }
    if c.last_index > last_index {
        return Err(format!(
            "the trail ends at record {last_index} but its checkpoint ({at}) records {}: its tail was cut",
            c.last_index
        ));
    }
    if c.last_index == last_index && c.last_hash != last_hash {
        return Err(format!(
            "record {last_index} is not the one the checkpoint ({at}) records: it was rewritten"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(last: u64) -> Checkpoint {
        let key = TrailKey::new(&[3; 32]).unwrap();
        Checkpoint::signed(&key, "t", (0, "h0"), (last, &format!("h{last}")))
    }

    fn store(anchor: &mut AnchorStore, last: u64) {
        // The writer always loads (under the trail's lock) before it stores.
        anchor.load(false).unwrap();
        anchor.store(&checkpoint(last)).unwrap();
    }

    #[test]
    fn a_checkpoint_file_alternates_slots_and_reads_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.checkpoint");
        let mut anchor = AnchorStore::File(FileAnchor::new(path.clone()));
        assert_eq!(anchor.load(false).unwrap(), None);
        for last in 1..=5 {
            store(&mut anchor, last);
            let mut reader = AnchorStore::File(FileAnchor::new(path.clone()));
            assert_eq!(reader.load(false).unwrap().unwrap().last_index, last);
        }
        assert_eq!(std::fs::read(&path).unwrap().len(), 2 * SLOT);
    }

    #[test]
    fn a_torn_slot_leaves_the_previous_checkpoint_and_the_old_format_is_read() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.checkpoint");
        // The earlier format: one JSON checkpoint, rewritten in slots at the next store.
        std::fs::write(&path, serde_json::to_vec(&checkpoint(7)).unwrap()).unwrap();
        let mut anchor = AnchorStore::File(FileAnchor::new(path.clone()));
        assert_eq!(anchor.load(false).unwrap().unwrap().last_index, 7);
        anchor.store(&checkpoint(8)).unwrap();
        store(&mut anchor, 9);
        assert_eq!(anchor.load(false).unwrap().unwrap().last_index, 9);
        // The slot written last (slot 1) torn half-way by a crash.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff; 40], (SLOT + 20) as u64).unwrap();
        assert_eq!(anchor.load(false).unwrap().unwrap().last_index, 8);
        // Both slots spoiled: an error, not "no checkpoint".
        file.write_all_at(&[0xff; 40], 20).unwrap();
        assert!(anchor.load(false).is_err());
    }
}
