//! The idempotency journal: recorded tool results by (tenant, idempotency
//! key), so a retried call gets the recorded result instead of running again.
//!
//! A call with a key first *reserves* it ([`begin`]): a pending reservation
//! owned by this attempt, under a lease the running call renews. A second
//! caller with the same key waits (polling with a small backoff, bounded by
//! its own deadline) for the recorded result and replays it; a reservation
//! whose owner died (its lease ran out with no result) is taken over by the
//! next caller; the same key with other arguments is a [`JournalError::Conflict`].
//! A successful call records its result ([`Reservation::record`]); a failed
//! one releases the key ([`Reservation::release`]) so a retry runs again.
//!
//! Two stores keep the same contract ([`Journal`]): [`memory::MemoryJournal`]
//! (this process only) and [`redis::RedisJournal`] (shared by every replica,
//! kept across restarts, results sealed at rest). `tests/journal.rs` runs one
//! conformance suite over both. Both keep at most `max_entries` results
//! (oldest dropped first) for at most `ttl`.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use amaos_mesh::retry::Backoff;
use tokio::time::Instant;

pub use amaos_mesh::approval::fingerprint;

/// How much a journal keeps, and how long.
#[derive(Clone, Copy, Debug)]
pub struct JournalLimits {
    /// Recorded results kept (oldest dropped first).
    pub max_entries: usize,
    /// How long a recorded result stays replayable.
    pub ttl: Duration,
    /// How long a reservation lasts without renewal.
    pub lease: Duration,
}

/// What a reservation attempt found.
#[derive(Debug)]
pub enum Reserve {
    /// The key is now reserved by the asking owner (it was free, its owner's
    /// lease had run out, or the owner already held it).
    Reserved,
    /// The result recorded for the same call.
    Recorded(serde_json::Value),
    /// Another owner holds a live reservation for the same call.
    Pending,
    /// The key was used for a different call.
    Conflict,
}

/// What recording found.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The result is recorded.
    Stored,
    /// A result was already recorded (another owner's); it stays.
    AlreadyRecorded,
    /// Another owner took the key over (this owner's lease ran out); nothing
    /// was stored.
    Lost,
    /// The key was used for a different call; nothing was stored.
    Conflict,
}

/// Why the journal could not answer.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The key was used for a different call.
    #[error("the idempotency key was recorded for a different call")]
    Conflict,
    /// Another attempt still holds the key at the caller's deadline.
    #[error("another attempt of this call is still running")]
    Busy,
    /// The store failed.
    #[error("tool journal: {0}")]
    Store(String),
}

/// A store of reservations and recorded results. Keys are scoped by tenant:
/// the same idempotency key of two tenants names two entries.
#[tonic::async_trait]
pub trait Journal: Send + Sync + 'static {
    /// The store's limits.
    fn limits(&self) -> JournalLimits;

    /// Reserves `key` for `owner`, or says why not.
    async fn reserve(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &[u8; 32],
        owner: &str,
    ) -> Result<Reserve, JournalError>;

    /// Extends `owner`'s reservation by a lease; false when it holds none.
    async fn renew(&self, tenant: &str, key: &str, owner: &str) -> Result<bool, JournalError>;

    /// Records `result` for the call `owner` ran. Stored when `owner` holds
    /// the reservation or nobody does.
    async fn record(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &[u8; 32],
        owner: &str,
        result: &serde_json::Value,
    ) -> Result<Recorded, JournalError>;

    /// Drops `owner`'s reservation (a recorded result stays).
    async fn release(&self, tenant: &str, key: &str, owner: &str) -> Result<(), JournalError>;
}

/// What [`begin`] decided.
pub enum Begin {
    /// Run the call, then record or release.
    Run(Reservation),
    /// The recorded result of the same call.
    Replay(serde_json::Value),
}

/// Waits between polls of a pending reservation: 10 ms doubling to 250 ms.
const POLL: Backoff = Backoff::doubling(Duration::from_millis(10), Duration::from_millis(250));
/// Waits between tries to record a result: 50 ms, then 100 ms.
const RECORD_RETRY: Backoff =
    Backoff::doubling(Duration::from_millis(50), Duration::from_millis(200));

/// Reserves `key` for a new attempt, waiting (until `deadline`) while another
/// live attempt holds it.
pub async fn begin(
    journal: Arc<dyn Journal>,
    tenant: &str,
    key: &str,
    fingerprint: [u8; 32],
    deadline: Instant,
) -> Result<Begin, JournalError> {
    let owner = amaos_mesh::new_id();
    let mut polls = 0u32;
    loop {
        match journal.reserve(tenant, key, &fingerprint, &owner).await? {
            Reserve::Reserved => {
                return Ok(Begin::Run(Reservation::start(
                    journal,
                    tenant,
                    key,
                    fingerprint,
                    owner,
                )));
            }
            Reserve::Recorded(result) => return Ok(Begin::Replay(result)),
            Reserve::Conflict => return Err(JournalError::Conflict),
            Reserve::Pending => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(JournalError::Busy);
        }
        polls = polls.saturating_add(1);
        tokio::time::sleep(POLL.wait(polls).min(deadline - now)).await;
    }
}

/// A reserved key: renewed in the background until recorded, released or
/// dropped. Dropped without either (the call was cancelled), it is no longer
/// renewed and falls to the next caller when its lease runs out.
pub struct Reservation {
    journal: Arc<dyn Journal>,
    tenant: String,
    key: String,
    fingerprint: [u8; 32],
    owner: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Reservation {
    fn start(
        journal: Arc<dyn Journal>,
        tenant: &str,
        key: &str,
        fingerprint: [u8; 32],
        owner: String,
    ) -> Self {
        let every = (journal.limits().lease / 3).max(Duration::from_millis(10));
        let renewer = tokio::spawn({
            let (journal, tenant, key, owner) = (
                journal.clone(),
                tenant.to_owned(),
                key.to_owned(),
                owner.clone(),
            );
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    match journal.renew(&tenant, &key, &owner).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(%tenant, "a running tool call lost its idempotency reservation (its lease ran out)");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(%tenant, error = %e, "renewing an idempotency reservation failed")
                        }
                    }
                }
            }
        });
        Self {
            journal,
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            fingerprint,
            owner,
            renewer,
        }
    }

    /// The attempt that holds the key.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Records the call's result (retrying the store briefly). The call ran:
    /// a result that cannot be recorded is logged, not returned as an error.
    pub async fn record(self, result: &serde_json::Value) -> Recorded {
        self.renewer.abort();
        for attempt in 1..=3 {
            match self
                .journal
                .record(
                    &self.tenant,
                    &self.key,
                    &self.fingerprint,
                    &self.owner,
                    result,
                )
                .await
            {
                Ok(Recorded::Stored) => return Recorded::Stored,
                Ok(other) => {
                    tracing::warn!(tenant = %self.tenant, outcome = ?other, "a tool result was not recorded");
                    return other;
                }
                Err(e) if attempt < 3 => {
                    tracing::warn!(tenant = %self.tenant, error = %e, "recording a tool result failed; retrying");
                    tokio::time::sleep(RECORD_RETRY.wait(attempt)).await;
                }
                Err(e) => {
                    tracing::error!(tenant = %self.tenant, error = %e, "a tool result could not be recorded: a retry runs the call again");
                }
            }
        }
        Recorded::Lost
    }

    /// Gives the key up: the call failed, so a retry runs it again.
    pub async fn release(self) {
        self.renewer.abort();
        if let Err(e) = self
            .journal
            .release(&self.tenant, &self.key, &self.owner)
            .await
        {
            tracing::warn!(tenant = %self.tenant, error = %e, "releasing an idempotency reservation failed; it lapses with its lease");
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// `bytes` in lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The journal `config` asks for: `tools.journal`, or where the orchestrator
/// keeps tasks when that is unset; in Redis, at `orchestrator.redis_url`
/// under `orchestrator.redis_prefix`, sealed when `tools.journal_encrypt`.
pub async fn open(config: &amaos_mesh::Config) -> Result<Arc<dyn Journal>, amaos_mesh::BoxError> {
    use amaos_mesh::config::StoreBackend;
    let t = &config.tools;
    let limits = JournalLimits {
        max_entries: t.max_journal_entries,
        ttl: t.journal_ttl,
        lease: t.journal_lease,
    };
    let o = &config.orchestrator;
    Ok(match t.journal.unwrap_or(o.backend) {
        StoreBackend::Memory => Arc::new(memory::MemoryJournal::new(limits)),
        StoreBackend::Redis => {
            let journal = redis::RedisJournal::connect(&o.redis_url, &o.redis_prefix, limits)
                .await
                .map_err(|e| {
                    format!("config key `tools.journal` (Redis at orchestrator.redis_url): {e}")
                })?;
            if t.journal_encrypt {
                let path = t
                    .journal_key_file
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("tools.keys"));
                let sealer = amaos_mesh::seal::open_configured(path, &config.secrets).await?;
                Arc::new(journal.with_sealer(Arc::new(sealer)))
            } else {
                Arc::new(journal)
            }
        }
    })
}
