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
    /// A JSON file (mode 0600), replaced atomically.
    File(PathBuf),
    /// A Redis string.
    Redis(RedisAnchor),
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
            AnchorStore::File(path) => format!("checkpoint file {}", path.display()),
            AnchorStore::Redis(r) => format!("Redis key {}", r.key),
        }
    }

    /// The checkpoint, if one was written. With `watch`, a Redis checkpoint
    /// is watched until [`AnchorStore::store`] or [`AnchorStore::release`].
    pub fn load(&mut self, watch: bool) -> Result<Option<Checkpoint>, String> {
        let from = self.describe();
        match self {
            AnchorStore::File(path) => match std::fs::read(&*path) {
                Ok(text) => parse_checkpoint(&text, &from).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{from}: {e}")),
            },
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
            AnchorStore::File(path) => write_private(path, &text),
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
