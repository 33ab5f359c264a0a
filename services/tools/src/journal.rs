//! Recorded tool results by (tenant, idempotency key), bounded: a retried call
//! with the same key gets the recorded result instead of running again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// What a lookup found.
pub enum Lookup {
    /// Nothing recorded under the key.
    Absent,
    /// The result recorded for the same call.
    Recorded(serde_json::Value),
    /// The key was recorded for a different call.
    Conflict,
}

/// A hash of a call: the tool and its arguments.
pub fn fingerprint(tool: &str, args: &serde_json::Map<String, serde_json::Value>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tool.as_bytes());
    h.update([0]);
    // serde_json maps are ordered by key, so this is canonical.
    h.update(
        serde_json::Value::Object(args.clone())
            .to_string()
            .as_bytes(),
    );
    h.finalize().into()
}

type Key = (String, String);

/// Results by key, and keys in the order recorded (for eviction).
type Entries = (HashMap<Key, ([u8; 32], serde_json::Value)>, VecDeque<Key>);

/// The journal.
pub struct Journal {
    entries: Mutex<Entries>,
    max: usize,
}

impl Journal {
    /// A journal keeping at most `max` results (oldest dropped first).
    pub fn new(max: usize) -> Self {
        Self {
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
            max,
        }
    }

    /// Looks up a key.
    pub fn lookup(&self, tenant: &str, key: &str, fingerprint: &[u8; 32]) -> Lookup {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.0.get(&(tenant.to_owned(), key.to_owned())) {
            None => Lookup::Absent,
            Some((fp, result)) if fp == fingerprint => Lookup::Recorded(result.clone()),
            Some(_) => Lookup::Conflict,
        }
    }

    /// Records a result.
    pub fn record(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: [u8; 32],
        result: serde_json::Value,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *entries;
        let k = (tenant.to_owned(), key.to_owned());
        if map.insert(k.clone(), (fingerprint, result)).is_none() {
            order.push_back(k);
        }
        while order.len() > self.max {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}
