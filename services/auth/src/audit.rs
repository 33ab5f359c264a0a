//! The audit trail of privileged actions, each record hash-chained to the one
//! before (SHA-256 over the previous hash and the record's fields), bounded in
//! memory.

use std::collections::VecDeque;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Most records kept; the oldest are dropped first (indexes keep counting).
pub const MAX_RECORDS: usize = 100_000;

/// One audited action.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Hash of the record before (hex); empty for the first.
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

/// The trail.
#[derive(Default)]
pub struct AuditLog {
    records: Mutex<VecDeque<Record>>,
}

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
    hex::encode(h.finalize())
}

impl AuditLog {
    /// Appends an entry.
    pub fn append(&self, entry: Entry<'_>) -> Record {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let (index, prev_hash) = records
            .back()
            .map(|r| (r.index + 1, r.hash.clone()))
            .unwrap_or((0, String::new()));
        let mut record = Record {
            index,
            at_ms: crate::keys::now_ms(),
            principal: entry.principal.to_owned(),
            tenant: entry.tenant.to_owned(),
            action: entry.action.to_owned(),
            object: entry.object.to_owned(),
            decision: if entry.allowed { "allow" } else { "deny" }.to_owned(),
            prev_hash,
            hash: String::new(),
        };
        record.hash = chain_hash(&record.prev_hash, &record);
        if records.len() >= MAX_RECORDS {
            records.pop_front();
        }
        records.push_back(record.clone());
        record
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

/// The index of the first record whose hash does not chain, if any.
pub fn verify_chain(records: &[Record]) -> Option<u64> {
    let mut prev: Option<&Record> = None;
    for r in records {
        let expected_prev = prev.map(|p| p.hash.as_str());
        if expected_prev.is_some_and(|p| p != r.prev_hash) || chain_hash(&r.prev_hash, r) != r.hash
        {
            return Some(r.index);
        }
        prev = Some(r);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_detects_an_edit() {
        let log = AuditLog::default();
        for action in ["keys.create", "keys.revoke", "keys.create"] {
            log.append(Entry {
                principal: "p",
                tenant: "t",
                action,
                object: "k",
                allowed: true,
            });
        }
        let mut records = log.query(None, None, 0, 0, 10);
        assert_eq!(verify_chain(&records), None);
        records[1].object = "other".into();
        assert_eq!(verify_chain(&records), Some(1));
    }
}
