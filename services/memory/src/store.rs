//! The embedded (in-process) memory store: per-tenant, bounded, newest last.
//!
//! Recall here is keyword matching (the share of the query's words found in
//! the text), and says so ([`RecallMode::Keyword`]); semantic recall over
//! embeddings is a separate backend.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// What kind of thing a memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A fact.
    Fact,
    /// A conversation turn.
    Turn,
    /// A task result.
    Result,
    /// Anything else.
    Note,
}

/// A stored memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Its id.
    pub id: String,
    /// The team that stored it.
    pub team: String,
    /// The agent that stored it.
    pub agent: String,
    /// Its session, if any.
    pub session_id: String,
    /// Its kind.
    pub kind: Kind,
    /// The text.
    pub text: String,
    /// Free-form metadata.
    pub metadata: HashMap<String, String>,
    /// When it was stored.
    pub created_at: SystemTime,
    /// When it expires, if it does.
    pub expires_at: Option<SystemTime>,
    idempotency_key: Option<String>,
}

/// Which memories a query considers; empty fields match all.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Team.
    pub team: String,
    /// Agent.
    pub agent: String,
    /// Session.
    pub session_id: String,
    /// Kinds; empty for all.
    pub kinds: Vec<Kind>,
    /// Stored at or after.
    pub after: Option<SystemTime>,
    /// Stored before.
    pub before: Option<SystemTime>,
}

impl Filter {
    fn matches(&self, item: &Item) -> bool {
        (self.team.is_empty() || item.team == self.team)
            && (self.agent.is_empty() || item.agent == self.agent)
            && (self.session_id.is_empty() || item.session_id == self.session_id)
            && (self.kinds.is_empty() || self.kinds.contains(&item.kind))
            && self.after.is_none_or(|a| item.created_at >= a)
            && self.before.is_none_or(|b| item.created_at < b)
    }
}

/// A memory to store.
pub struct NewItem {
    /// Team.
    pub team: String,
    /// Agent.
    pub agent: String,
    /// Session.
    pub session_id: String,
    /// Kind.
    pub kind: Kind,
    /// Text.
    pub text: String,
    /// Metadata.
    pub metadata: HashMap<String, String>,
    /// Time to live.
    pub ttl: Option<Duration>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
}

/// The store.
pub struct MemoryStore {
    tenants: Mutex<HashMap<String, VecDeque<Item>>>,
    max_per_tenant: usize,
}

/// Lower-case words of two or more letters or digits, without common stop words.
fn words(text: &str) -> HashSet<String> {
    const STOP: &[&str] = &[
        "the", "and", "for", "with", "that", "this", "are", "was", "from", "into", "about", "of",
        "to", "in", "on", "is", "it", "an", "as", "by", "at", "or", "be",
    ];
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
        .collect()
}

impl MemoryStore {
    /// An empty store keeping at most `max_per_tenant` memories per tenant.
    pub fn new(max_per_tenant: usize) -> Self {
        Self {
            tenants: Mutex::new(HashMap::new()),
            max_per_tenant,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Item>>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(items: &mut VecDeque<Item>, now: SystemTime) {
        items.retain(|i| i.expires_at.is_none_or(|e| e > now));
    }

    /// Stores a memory; the same idempotency key returns the first id.
    pub fn remember(&self, tenant: &str, new: NewItem) -> String {
        let now = SystemTime::now();
        let mut tenants = self.lock();
        let items = tenants.entry(tenant.to_owned()).or_default();
        Self::live(items, now);
        if let Some(key) = &new.idempotency_key
            && let Some(existing) = items
                .iter()
                .find(|i| i.idempotency_key.as_ref() == Some(key))
        {
            return existing.id.clone();
        }
        while items.len() >= self.max_per_tenant {
            items.pop_front();
        }
        let id = amaos_mesh::new_id();
        items.push_back(Item {
            id: id.clone(),
            team: new.team,
            agent: new.agent,
            session_id: new.session_id,
            kind: new.kind,
            text: new.text,
            metadata: new.metadata,
            created_at: now,
            expires_at: new.ttl.map(|ttl| now + ttl),
            idempotency_key: new.idempotency_key,
        });
        id
    }

    /// The `top_k` memories sharing the most words with `query`, scored by the
    /// share of the query's words they contain.
    pub fn recall(
        &self,
        tenant: &str,
        query: &str,
        filter: &Filter,
        top_k: usize,
        min_score: f64,
    ) -> Vec<(Item, f64)> {
        let wanted = words(query);
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut tenants = self.lock();
        let Some(items) = tenants.get_mut(tenant) else {
            return Vec::new();
        };
        Self::live(items, SystemTime::now());
        let mut scored: Vec<(Item, f64)> = items
            .iter()
            .rev()
            .filter(|i| filter.matches(i))
            .filter_map(|i| {
                let found = words(&i.text);
                let score = wanted.intersection(&found).count() as f64 / wanted.len() as f64;
                (score > 0.0 && score >= min_score).then(|| (i.clone(), score))
            })
            .collect();
        // Stable sort keeps newest first among equal scores.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.truncate(top_k);
        scored
    }

    /// The newest `limit` memories matching `filter`, newest first.
    pub fn recent(&self, tenant: &str, filter: &Filter, limit: usize) -> Vec<Item> {
        let mut tenants = self.lock();
        let Some(items) = tenants.get_mut(tenant) else {
            return Vec::new();
        };
        Self::live(items, SystemTime::now());
        items
            .iter()
            .rev()
            .filter(|i| filter.matches(i))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Removes one memory by id; returns how many were removed (0 or 1).
    pub fn forget_id(&self, tenant: &str, id: &str) -> u64 {
        let mut tenants = self.lock();
        let Some(items) = tenants.get_mut(tenant) else {
            return 0;
        };
        let before = items.len();
        items.retain(|i| i.id != id);
        (before - items.len()) as u64
    }

    /// Removes every memory of the tenant matching `filter`.
    pub fn forget_matching(&self, tenant: &str, filter: &Filter) -> u64 {
        let mut tenants = self.lock();
        let Some(items) = tenants.get_mut(tenant) else {
            return 0;
        };
        let before = items.len();
        items.retain(|i| !filter.matches(i));
        (before - items.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(text: &str, session: &str) -> NewItem {
        NewItem {
            team: "t".into(),
            agent: "a".into(),
            session_id: session.into(),
            kind: Kind::Note,
            text: text.into(),
            metadata: HashMap::new(),
            ttl: None,
            idempotency_key: None,
        }
    }

    #[test]
    fn recall_ranks_by_shared_words_within_the_tenant() {
        let store = MemoryStore::new(100);
        store.remember("acme", note("Rust async runtimes compared", "s1"));
        store.remember("acme", note("Cooking pasta at home", "s1"));
        store.remember("other", note("Rust async runtimes secrets", "s1"));
        let hits = store.recall("acme", "async Rust", &Filter::default(), 5, 0.0);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0.text, "Rust async runtimes compared");
        assert_eq!(hits[0].1, 1.0);
        assert!(
            store
                .recall("nobody", "async Rust", &Filter::default(), 5, 0.0)
                .is_empty()
        );
    }

    #[test]
    fn the_store_is_bounded_and_forget_works() {
        let store = MemoryStore::new(2);
        let first = store.remember("acme", note("one", "s1"));
        store.remember("acme", note("two", "s2"));
        store.remember("acme", note("three", "s2"));
        let recent = store.recent("acme", &Filter::default(), 10);
        assert_eq!(
            recent.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(),
            ["three", "two"]
        );
        assert_eq!(store.forget_id("acme", &first), 0);
        let scope = Filter {
            session_id: "s2".into(),
            ..Default::default()
        };
        assert_eq!(store.forget_matching("acme", &scope), 2);
        assert!(store.recent("acme", &Filter::default(), 10).is_empty());
    }

    #[test]
    fn the_same_idempotency_key_stores_once() {
        let store = MemoryStore::new(10);
        let mut a = note("x", "");
        a.idempotency_key = Some("k".into());
        let mut b = note("x", "");
        b.idempotency_key = Some("k".into());
        assert_eq!(store.remember("acme", a), store.remember("acme", b));
        assert_eq!(store.recent("acme", &Filter::default(), 10).len(), 1);
    }
}
