//! The hot tier: recent memories per tenant, bounded by count and by age.
//!
//! [`HotTier`] is what every hot backend offers; [`LruHotTier`] is the
//! in-process one (least recently used goes first when full, and every entry
//! expires a fixed time after it was last written). What leaves the tier,
//! by overflow or expiry, is handed back to the caller so that it can be
//! embedded and moved to long-term memory rather than lost.
//!
//! Time is `tokio::time::Instant`, so tests drive expiry with paused time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One memory in the hot tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotEntry {
    /// Its id, unique within the tenant.
    pub id: String,
    /// Its session; empty for none.
    pub session_id: String,
    /// The agent that stored it.
    pub agent: String,
    /// The text.
    pub text: String,
}

/// Why an entry left the hot tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// Its time to live ran out.
    Expired,
    /// The tenant's tier was full and it was the least recently used.
    Evicted,
}

/// An entry leaving the hot tier, to be moved to long-term memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Departed {
    /// The tenant it belonged to.
    pub tenant: String,
    /// The entry.
    pub entry: HotEntry,
    /// Why it left.
    pub why: Departure,
}

/// What every hot-tier backend offers.
pub trait HotTier: Send + Sync {
    /// Stores or replaces `entry`; returns what the store pushed out.
    fn put(&self, tenant: &str, entry: HotEntry) -> Vec<Departed>;
    /// The entry with this id, marking it recently used.
    fn get(&self, tenant: &str, id: &str) -> Option<HotEntry>;
    /// The newest `limit` entries of a session (all sessions when empty), newest first.
    fn recent(&self, tenant: &str, session_id: &str, limit: usize) -> Vec<HotEntry>;
    /// Removes and returns every entry whose time to live has run out.
    fn take_expired(&self) -> Vec<Departed>;
    /// Removes one entry; whether it was there.
    fn remove(&self, tenant: &str, id: &str) -> bool;
    /// Removes every entry of the tenant for which `matches` holds; how many.
    fn remove_where(&self, tenant: &str, matches: &dyn Fn(&HotEntry) -> bool) -> u64;
    /// Entries held for the tenant.
    fn len(&self, tenant: &str) -> usize;
}

struct Slot {
    entry: HotEntry,
    expires: Instant,
    /// Position in `Tenant::order` (larger is more recent).
    tick: u64,
    /// When it was written (larger is newer), for `recent`.
    written: u64,
}

#[derive(Default)]
struct Tenant {
    slots: HashMap<String, Slot>,
    /// Least recently used first.
    order: BTreeMap<u64, String>,
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, Tenant>,
    clock: u64,
}

/// The in-process hot tier: per tenant at most `capacity` entries, each
/// living `ttl` after its last write.
pub struct LruHotTier {
    state: Mutex<State>,
    capacity: usize,
    ttl: Duration,
}

impl LruHotTier {
    /// A tier keeping at most `capacity` entries per tenant for `ttl` each.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

impl HotTier for LruHotTier {
    fn put(&self, tenant: &str, entry: HotEntry) -> Vec<Departed> {
        let now = Instant::now();
        let mut state = self.lock();
        let tick = state.tick();
        let t = state.tenants.entry(tenant.to_owned()).or_default();
        if let Some(old) = t.slots.remove(&entry.id) {
            t.order.remove(&old.tick);
        }
        let mut departed = Vec::new();
        while t.slots.len() >= self.capacity {
            let Some((_, id)) = t.order.pop_first() else {
                break;
            };
            if let Some(slot) = t.slots.remove(&id) {
                let why = if slot.expires <= now {
                    Departure::Expired
                } else {
                    Departure::Evicted
                };
                departed.push(Departed {
                    tenant: tenant.to_owned(),
                    entry: slot.entry,
                    why,
                });
            }
        }
        t.order.insert(tick, entry.id.clone());
        t.slots.insert(
            entry.id.clone(),
            Slot {
                entry,
                expires: now + self.ttl,
                tick,
                written: tick,
            },
        );
        departed
    }

    fn get(&self, tenant: &str, id: &str) -> Option<HotEntry> {
        let now = Instant::now();
        let mut state = self.lock();
        let tick = state.tick();
        let t = state.tenants.get_mut(tenant)?;
        let slot = t.slots.get_mut(id)?;
        if slot.expires <= now {
            return None;
        }
        t.order.remove(&slot.tick);
        slot.tick = tick;
        t.order.insert(tick, id.to_owned());
        Some(slot.entry.clone())
    }

    fn recent(&self, tenant: &str, session_id: &str, limit: usize) -> Vec<HotEntry> {
        let now = Instant::now();
        let state = self.lock();
        let Some(t) = state.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut live: Vec<&Slot> = t
            .slots
            .values()
            .filter(|s| s.expires > now)
            .filter(|s| session_id.is_empty() || s.entry.session_id == session_id)
            .collect();
        live.sort_by_key(|s| std::cmp::Reverse(s.written));
        live.into_iter()
            .take(limit)
            .map(|s| s.entry.clone())
            .collect()
    }

    fn take_expired(&self) -> Vec<Departed> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut departed = Vec::new();
        for (tenant, t) in &mut state.tenants {
            let gone: Vec<String> = t
                .slots
                .iter()
                .filter(|(_, s)| s.expires <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                if let Some(slot) = t.slots.remove(&id) {
                    t.order.remove(&slot.tick);
                    departed.push(Departed {
                        tenant: tenant.clone(),
                        entry: slot.entry,
                        why: Departure::Expired,
                    });
                }
            }
        }
        state.tenants.retain(|_, t| !t.slots.is_empty());
        departed
    }

    fn remove(&self, tenant: &str, id: &str) -> bool {
        let mut state = self.lock();
        let Some(t) = state.tenants.get_mut(tenant) else {
            return false;
        };
        match t.slots.remove(id) {
            Some(slot) => {
                t.order.remove(&slot.tick);
                true
            }
            None => false,
        }
    }

    fn remove_where(&self, tenant: &str, matches: &dyn Fn(&HotEntry) -> bool) -> u64 {
        let mut state = self.lock();
        let Some(t) = state.tenants.get_mut(tenant) else {
            return 0;
        };
        let gone: Vec<(String, u64)> = t
            .slots
            .iter()
            .filter(|(_, s)| matches(&s.entry))
            .map(|(id, s)| (id.clone(), s.tick))
            .collect();
        for (id, tick) in &gone {
            t.slots.remove(id);
            t.order.remove(tick);
        }
        gone.len() as u64
    }

    fn len(&self, tenant: &str) -> usize {
        self.lock().tenants.get(tenant).map_or(0, |t| t.slots.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, session: &str) -> HotEntry {
        HotEntry {
            id: id.into(),
            session_id: session.into(),
            agent: "researcher".into(),
            text: format!("text of {id}"),
        }
    }

    fn ids(entries: &[HotEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.id.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn least_recently_used_overflows_out() {
        let tier = LruHotTier::new(2, Duration::from_secs(60));
        assert!(tier.put("acme", entry("a", "s")).is_empty());
        assert!(tier.put("acme", entry("b", "s")).is_empty());
        // Reading `a` makes `b` the least recently used.
        assert!(tier.get("acme", "a").is_some());
        let out = tier.put("acme", entry("c", "s"));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].entry.id, "b");
        assert_eq!(out[0].why, Departure::Evicted);
        assert_eq!(out[0].tenant, "acme");
        assert_eq!(ids(&tier.recent("acme", "", 10)), ["c", "a"]);
        // Other tenants have their own capacity.
        assert!(tier.put("other", entry("a", "s")).is_empty());
        assert_eq!(tier.len("acme"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let tier = LruHotTier::new(10, Duration::from_secs(60));
        tier.put("acme", entry("old", "s1"));
        tokio::time::advance(Duration::from_secs(30)).await;
        tier.put("acme", entry("new", "s2"));
        assert!(tier.take_expired().is_empty());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            tier.get("acme", "old").is_none(),
            "expired entries are not served"
        );
        assert_eq!(ids(&tier.recent("acme", "", 10)), ["new"]);
        let out = tier.take_expired();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].entry.id, "old");
        assert_eq!(out[0].why, Departure::Expired);
        assert!(tier.take_expired().is_empty(), "taken once");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(tier.take_expired().len(), 1);
        assert_eq!(tier.len("acme"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rewriting_refreshes_the_ttl_and_remove_works() {
        let tier = LruHotTier::new(10, Duration::from_secs(60));
        tier.put("acme", entry("a", "s1"));
        tier.put("acme", entry("b", "s1"));
        tier.put("acme", entry("c", "s2"));
        tokio::time::advance(Duration::from_secs(50)).await;
        tier.put("acme", entry("a", "s1"));
        tokio::time::advance(Duration::from_secs(20)).await;
        let expired = tier.take_expired();
        let mut gone: Vec<&str> = expired.iter().map(|d| d.entry.id.as_str()).collect();
        gone.sort_unstable();
        assert_eq!(gone, ["b", "c"]);
        assert_eq!(ids(&tier.recent("acme", "s1", 10)), ["a"]);
        tier.put("acme", entry("d", "s2"));
        assert!(tier.remove("acme", "a"));
        assert!(!tier.remove("acme", "a"));
        assert!(!tier.remove("other", "d"));
        assert_eq!(tier.remove_where("acme", &|e| e.session_id == "s2"), 1);
        assert_eq!(tier.len("acme"), 0);
    }
}
