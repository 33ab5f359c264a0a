//! How a record's hash is computed.
//!
//! - **Keyed** (every record written since the trail was keyed): HMAC-SHA256
//!   with the trail key over a domain tag, the previous hash and the
//!   record's fields, each length-prefixed. The record names its key by id
//!   (`key_id`), so a record hashed with another key (or none) is told from
//!   an edited one. Without the key nobody can recompute the chain.
//! - **Legacy** (records written before): unkeyed SHA-256 over the same
//!   length-prefixed fields. Anyone who can write the file can recompute
//!   those; verification reports them as legacy, never as keyed.

use ring::hmac;
use sha2::{Digest, Sha256};

use super::Record;

/// Domain tag of keyed record hashes (a version: bump it when the input
/// changes).
const RECORD_TAG: &[u8] = b"amaos-audit-record-v2\0";
/// Domain tag of checkpoint MACs.
const CHECKPOINT_TAG: &[u8] = b"amaos-audit-checkpoint-v1\0";
/// Domain tag of key ids.
const KEY_ID_TAG: &[u8] = b"amaos-audit-key-id\0";

/// Fewest bytes a trail key has.
pub const MIN_KEY_BYTES: usize = 32;

/// The trail's HMAC key. Its `Debug` never prints the key.
#[derive(Clone)]
pub struct TrailKey {
    key: hmac::Key,
    id: String,
}

impl std::fmt::Debug for TrailKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrailKey({})", self.id)
    }
}

impl TrailKey {
    /// A key from its bytes (at least [`MIN_KEY_BYTES`]).
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the audit key has {} bytes; it needs at least {MIN_KEY_BYTES}",
                bytes.len()
            ));
        }
        let mut h = Sha256::new();
        h.update(KEY_ID_TAG);
        h.update(bytes);
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            id: hex::encode(&h.finalize()[..8]),
        })
    }

    /// The key's public id (a hash of it), written into every record.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The keyed hash of `r` chained to `prev` (`r.key_id` is part of it).
    pub fn record_hash(&self, prev: &str, r: &Record) -> String {
        hex::encode(hmac::sign(&self.key, &record_message(prev, r)).as_ref())
    }

    /// True when `r.hash` is `r`'s keyed hash chained to `prev` (compared in
    /// constant time).
    pub fn record_ok(&self, prev: &str, r: &Record) -> bool {
        hex::decode(&r.hash)
            .is_ok_and(|mac| hmac::verify(&self.key, &record_message(prev, r), &mac).is_ok())
    }

    /// The MAC of a checkpoint's fields.
    pub fn checkpoint_mac(&self, fields: &[&[u8]]) -> String {
        hex::encode(hmac::sign(&self.key, &framed(CHECKPOINT_TAG, fields)).as_ref())
    }

    /// True when `mac` is the MAC of the checkpoint `fields` (constant time).
    pub fn checkpoint_mac_ok(&self, fields: &[&[u8]], mac: &str) -> bool {
        hex::decode(mac)
            .is_ok_and(|mac| hmac::verify(&self.key, &framed(CHECKPOINT_TAG, fields), &mac).is_ok())
    }
}

/// `tag`, then each part after its length (so no two inputs frame alike).
fn framed(tag: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut message =
        Vec::with_capacity(tag.len() + parts.iter().map(|p| p.len() + 8).sum::<usize>());
    message.extend_from_slice(tag);
    for part in parts {
        message.extend_from_slice(&(part.len() as u64).to_be_bytes());
        message.extend_from_slice(part);
    }
    message
}

/// What a keyed record hash covers: the previous hash and every field but
/// the hash itself.
fn record_message(prev: &str, r: &Record) -> Vec<u8> {
    framed(
        RECORD_TAG,
        &[
            prev.as_bytes(),
            r.index.to_string().as_bytes(),
            r.at_ms.to_string().as_bytes(),
            r.principal.as_bytes(),
            r.tenant.as_bytes(),
            r.action.as_bytes(),
            r.object.as_bytes(),
            r.decision.as_bytes(),
            r.trace_id.as_bytes(),
            r.key_id.as_bytes(),
        ],
    )
}

/// The unkeyed (legacy) hash of `r` chained to `prev`, as trails were
/// hashed before they were keyed (and as the in-memory trail still is).
pub fn legacy_hash(prev: &str, r: &Record) -> String {
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
