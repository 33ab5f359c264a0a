//! The journal in this process: reservations and results in a map, the
//! recorded ones in recording order for eviction. Lost on restart and not
//! shared with other replicas.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::time::Instant;

use super::{Journal, JournalError, JournalLimits, Recorded, Reserve};

type Key = (String, String);

enum State {
    /// Reserved by `owner` until `until`.
    Pending { owner: String, until: Instant },
    /// Recorded, replayable until `until`; `seq` tells this recording from
    /// an earlier one of the same key in the eviction order.
    Done {
        result: serde_json::Value,
        until: Instant,
        seq: u64,
    },
}

struct Entry {
    fingerprint: [u8; 32],
    state: State,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        match &self.state {
            State::Pending { until, .. } | State::Done { until, .. } => *until > now,
        }
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Recorded keys, oldest first, with their recording's `seq`.
    order: VecDeque<(Key, u64)>,
    /// Recorded entries in `entries`.
    done: usize,
    next_seq: u64,
    /// When abandoned reservations (of calls dropped mid-run) are next
    /// swept out.
    next_sweep: Option<Instant>,
}

impl Inner {
    /// The live entry of `k`, dropping an expired one.
    fn live(&mut self, k: &Key, now: Instant) -> Option<&mut Entry> {
        if self.entries.get(k).is_some_and(|e| !e.live(now)) {
            self.remove(k);
        }
        self.entries.get_mut(k)
    }

    fn remove(&mut self, k: &Key) {
        if let Some(Entry {
            state: State::Done { .. },
            ..
        }) = self.entries.remove(k)
        {
            self.done -= 1;
        }
    }

    /// Drops every expired entry, at most once per `every`.
    fn sweep(&mut self, now: Instant, every: std::time::Duration) {
        if self.next_sweep.is_some_and(|t| t > now) {
            return;
        }
        self.next_sweep = Some(now + every);
        self.entries.retain(|_, e| e.live(now));
        self.done = self
            .entries
            .values()
            .filter(|e| matches!(e.state, State::Done { .. }))
            .count();
    }

    /// Drops expired results and the oldest beyond `max`.
    fn evict(&mut self, max: usize, now: Instant) {
        while let Some((k, seq)) = self.order.front().cloned() {
            let current = match self.entries.get(&k) {
                Some(Entry {
                    state: State::Done { seq: s, until, .. },
                    ..
                }) if *s == seq => Some(*until),
                _ => None,
            };
            match current {
                // Stale: the key was dropped or recorded again since.
                None => {}
                Some(until) if until <= now || self.done > max => self.remove(&k),
                Some(_) => break,
            }
            self.order.pop_front();
        }
    }
}

/// The in-process journal.
pub struct MemoryJournal {
    inner: Mutex<Inner>,
    limits: JournalLimits,
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new(limits: JournalLimits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(tenant: &str, key: &str) -> Key {
    (tenant.to_owned(), key.to_owned())
}

#[tonic::async_trait]
impl Journal for MemoryJournal {
    fn limits(&self) -> JournalLimits {
        self.limits
    }

    async fn reserve(
        &self,
        tenant: &str,
        idem: &str,
        fingerprint: &[u8; 32],
        owner: &str,
    ) -> Result<Reserve, JournalError> {
        let now = Instant::now();
        let k = key(tenant, idem);
        let mut inner = self.lock();
        inner.sweep(
            now,
            self.limits.lease.max(std::time::Duration::from_secs(1)),
        );
        let until = now + self.limits.lease;
        match inner.live(&k, now) {
            None => {
                inner.entries.insert(
                    k,
                    Entry {
                        fingerprint: *fingerprint,
                        state: State::Pending {
                            owner: owner.to_owned(),
                            until,
                        },
                    },
                );
                Ok(Reserve::Reserved)
            }
            Some(e) if e.fingerprint != *fingerprint => Ok(Reserve::Conflict),
            Some(Entry {
                state: State::Done { result, .. },
                ..
            }) => Ok(Reserve::Recorded(result.clone())),
            Some(Entry {
                state: State::Pending { owner: o, until: u },
                ..
            }) if o == owner => {
                *u = until;
                Ok(Reserve::Reserved)
            }
            Some(_) => Ok(Reserve::Pending),
        }
    }

    async fn renew(&self, tenant: &str, idem: &str, owner: &str) -> Result<bool, JournalError> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.live(&key(tenant, idem), now) {
            Some(Entry {
                state: State::Pending { owner: o, until },
                ..
            }) if o == owner => {
                *until = now + self.limits.lease;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record(
        &self,
        tenant: &str,
        idem: &str,
        fingerprint: &[u8; 32],
        owner: &str,
        result: &serde_json::Value,
    ) -> Result<Recorded, JournalError> {
        let now = Instant::now();
        let k = key(tenant, idem);
        let mut inner = self.lock();
        match inner.live(&k, now) {
            Some(e) if e.fingerprint != *fingerprint => return Ok(Recorded::Conflict),
            Some(Entry {
                state: State::Done { .. },
                ..
            }) => return Ok(Recorded::AlreadyRecorded),
            Some(Entry {
                state: State::Pending { owner: o, .. },
                ..
            }) if o != owner => return Ok(Recorded::Lost),
            Some(_) => inner.remove(&k),
            None => {}
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.entries.insert(
            k.clone(),
            Entry {
                fingerprint: *fingerprint,
                state: State::Done {
                    result: result.clone(),
                    until: now + self.limits.ttl,
                    seq,
                },
            },
        );
        inner.done += 1;
        inner.order.push_back((k, seq));
        inner.evict(self.limits.max_entries, now);
        Ok(Recorded::Stored)
    }

    async fn release(&self, tenant: &str, idem: &str, owner: &str) -> Result<(), JournalError> {
        let k = key(tenant, idem);
        let mut inner = self.lock();
        if matches!(
            inner.entries.get(&k),
            Some(Entry { state: State::Pending { owner: o, .. }, .. }) if o == owner
        ) {
            inner.entries.remove(&k);
        }
        Ok(())
    }
}
