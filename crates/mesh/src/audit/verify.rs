//! Verifying a trail: every record chains to the one before and verifies
//! with the trail key (or, before the first keyed record, with the legacy
//! unkeyed hash), the file starts at record 0, and its ends agree with the
//! checkpoint.

use std::path::{Path, PathBuf};

use super::anchor::{self, Checkpoint};
use super::chain::{TrailKey, legacy_hash};
use super::{Record, TrailSettings};

/// What verification found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record is keyed, chains, and the file's ends agree with the
    /// checkpoint: this many records.
    Intact(u64),
    /// The record expected at this index is edited, missing, out of order,
    /// or cut (a cut head names 0; a cut tail names the first index missing).
    BrokenAt(u64),
    /// The chain holds, but the first `legacy` of `records` are unkeyed
    /// (written before trails were keyed): anyone who could write the file
    /// could have rewritten them.
    Legacy {
        /// Records in the trail.
        records: u64,
        /// How many of the first ones are unkeyed.
        legacy: u64,
    },
    /// The records are keyed and chain, but there is no valid checkpoint to
    /// check the ends against (a cut tail cannot be ruled out): this many.
    Unanchored(u64),
}

/// What verification found, and with what.
#[derive(Debug)]
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// Records in the file.
    pub records: u64,
    /// Where the key came from; `None` when there is none.
    pub key: Option<String>,
    /// Where the checkpoint is looked for.
    pub checkpoint: String,
    /// Why the verdict, or notes (records past the checkpoint).
    pub detail: String,
}

/// The position of the first record that does not chain (edited, missing,
/// or out of order), if any, for unkeyed records (the in-memory trail, and
/// legacy files); keyed trails are checked by [`verify_trail`].
pub fn verify_chain(records: &[Record]) -> Option<u64> {
    let mut prev: Option<&Record> = None;
    for (position, r) in records.iter().enumerate() {
        let expected_index = prev.map(|p| p.index + 1).unwrap_or(r.index);
        let expected_prev = prev.map(|p| p.hash.as_str());
        if r.index != expected_index
            || expected_prev.is_some_and(|p| p != r.prev_hash)
            || legacy_hash(&r.prev_hash, r) != r.hash
        {
            return Some(prev.map(|p| p.index + 1).unwrap_or(position as u64));
        }
        prev = Some(r);
    }
    None
}

/// The verdict on `records` (the whole file, in order) with `key` and the
/// stored `checkpoint` of trail `trail`. `Err`: it cannot be told (a keyed
/// record and no key, or the wrong key from the first keyed record on).
pub fn judge(
    records: &[Record],
    key: Option<&TrailKey>,
    checkpoint: Option<&Checkpoint>,
    trail: &str,
) -> Result<(Verdict, String), String> {
    let broken = |index: u64, why: String| Ok((Verdict::BrokenAt(index), why));
    let mut legacy = 0u64;
    let mut keyed = false;
    let mut prev: Option<&Record> = None;
    for r in records {
        let expected_index = prev.map_or(0, |p| p.index + 1);
        let expected_prev = prev.map_or("", |p| p.hash.as_str());
        if r.index != expected_index || r.prev_hash != expected_prev {
            return match prev {
                None => broken(
                    0,
                    format!(
                        "the trail starts at record {} instead of 0: its head was cut",
                        r.index
                    ),
                ),
                Some(_) => broken(expected_index, "it was edited, deleted or moved".to_owned()),
            };
        }
        if r.key_id.is_empty() {
            if keyed {
                return broken(
                    r.index,
                    "an unkeyed record among keyed ones: it was written without the key".into(),
                );
            }
            if legacy_hash(&r.prev_hash, r) != r.hash {
                return broken(r.index, "it was edited, deleted or moved".into());
            }
            legacy += 1;
        } else {
            match key {
                None => {
                    return Err(format!(
                        "record {} is keyed (key {}) but no audit key was found",
                        r.index, r.key_id
                    ));
                }
                Some(k) if k.id() != r.key_id => {
                    if keyed {
                        return broken(
                            r.index,
                            format!("it names key {} among records of key {}", r.key_id, k.id()),
                        );
                    }
                    return Err(format!(
                        "record {} is keyed with key {}, but the audit key found is {}: the wrong key?",
                        r.index,
                        r.key_id,
                        k.id()
                    ));
                }
                Some(k) => {
                    if !k.record_ok(&r.prev_hash, r) {
                        return broken(
                            r.index,
                            "it was edited, deleted or moved (its keyed hash does not verify)"
                                .into(),
                        );
                    }
                }
            }
            keyed = true;
        }
        prev = Some(r);
    }
    let n = records.len() as u64;
    let done = |note: String| {
        Ok(if legacy > 0 {
            (Verdict::Legacy { records: n, legacy }, note)
        } else {
            (Verdict::Intact(n), note)
        })
    };
    let Some(c) = checkpoint else {
        if keyed {
            return Ok((
                Verdict::Unanchored(n),
                "there is no checkpoint: a cut tail cannot be ruled out".into(),
            ));
        }
        return done(String::new());
    };
    let Some(key) = key else {
        return Err("there is a checkpoint but no audit key to check it with".into());
    };
    if !c.mac_ok(key) {
        return Ok((
            Verdict::Unanchored(n),
            format!(
                "the checkpoint does not verify with the audit key {} (it names key {}): it was altered",
                key.id(),
                c.key_id
            ),
        ));
    }
    if c.trail != trail {
        return Ok((
            Verdict::Unanchored(n),
            "the checkpoint is another trail's (was the file moved or copied?)".into(),
        ));
    }
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return broken(
            0,
            format!(
                "the trail is empty but its checkpoint records {} records: it was cut",
                c.last_index + 1
            ),
        );
    };
    if (first.index, first.hash.as_str()) != (c.first_index, c.first_hash.as_str()) {
        return broken(
            0,
            "its first record is not the one the checkpoint records: the head was cut or replaced"
                .into(),
        );
    }
    if c.last_index > last.index {
        return broken(
            last.index + 1,
            format!(
                "its tail was cut: the checkpoint records index {}, the file ends at {}",
                c.last_index, last.index
            ),
        );
    }
    // Indexes run from 0 without gaps (checked above).
    if records[c.last_index as usize].hash != c.last_hash {
        return broken(
            c.last_index,
            "it is not the record the checkpoint records: it was rewritten".into(),
        );
    }
    let beyond = last.index - c.last_index;
    done(if beyond > 0 {
        format!("{beyond} records after the checkpoint (written since its last sync)")
    } else {
        String::new()
    })
}

/// The records of the trail at `path` (`None` when there is no file) and
/// its checkpoint, read together under a shared lock on the file: writers
/// append and move the checkpoint under the exclusive lock, so a live
/// trail is never seen half-written, nor with a checkpoint past the records
/// read (which would read as a cut tail). The lock is held for the reading
/// only; the records are checked after it is released.
fn read_trail(
    path: &Path,
    store: &mut anchor::AnchorStore,
) -> Result<(Option<Vec<Record>>, Option<Checkpoint>), String> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((None, store.load(false)?));
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    file.lock_shared()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    let read = std::io::Read::read_to_string(&mut file, &mut text)
        .map_err(|e| format!("{}: {e}", path.display()));
    let checkpoint = read.and_then(|_| store.load(false));
    let _ = file.unlock();
    let checkpoint = checkpoint?;
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
    Ok((Some(records), checkpoint))
}

/// Verifies the trail at `path` with the key and checkpoint `settings`
/// name; a key file is also looked for in `also_in` (after the data
/// directory), and a file checkpoint beside the key file found.
pub async fn verify_trail(
    settings: &TrailSettings,
    path: &Path,
    also_in: &[PathBuf],
) -> Result<Report, String> {
    let found = super::key::find(settings, false, also_in).await?;
    let trail = anchor::trail_id(path);
    let mut store =
        settings.anchor_store(path, found.as_ref().and_then(|f| f.dir.as_deref()), &trail);
    let at = store.describe();
    let (records, checkpoint) = read_trail(path, &mut store)?;
    let Some(records) = records else {
        return match checkpoint {
            Some(c) => Ok(Report {
                verdict: Verdict::BrokenAt(0),
                records: 0,
                key: found.map(|f| f.source),
                checkpoint: at,
                detail: format!(
                    "the trail is gone but its checkpoint records {} records",
                    c.last_index + 1
                ),
            }),
            None => Err(format!("{}: no such file", path.display())),
        };
    };
    let (verdict, detail) = judge(
        &records,
        found.as_ref().map(|f| &f.key),
        checkpoint.as_ref(),
        &trail,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Report {
        verdict,
        records: records.len() as u64,
        key: found.map(|f| f.source),
        checkpoint: if checkpoint.is_some() {
            at
        } else {
            format!("none ({at})")
        },
        detail,
    })
}

/// Verifies the trail at `path` as `config` keys and anchors it; when the
/// configured data directory has no key file, the trail's own directory is
/// looked in too (for a trail given by path).
pub async fn verify_configured(config: &crate::Config, path: &Path) -> Result<Report, String> {
    let settings = TrailSettings::from_config(config);
    let also_in: Vec<PathBuf> = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_owned)
        .into_iter()
        .collect();
    verify_trail(&settings, path, &also_in).await
}

/// Verifies an audit file with the settings registered for it in this
/// process (see [`super::configure`]), else the embedded defaults (key and
/// checkpoint files in its directory).
pub fn verify_file(path: &Path) -> Result<Verdict, String> {
    let settings = super::settings_for(path);
    let path = path.to_owned();
    // Its own thread and runtime: callers may be inside a runtime already.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(verify_trail(&settings, &path, &[]))
            })
            .join()
            .map_err(|_| "verification panicked".to_owned())?
    })
    .map(|report| report.verdict)
}
