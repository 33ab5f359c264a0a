//! The tiers together: what Remember, Recall, Recent and Forget do across
//! the hot and long-term tiers, and the lifecycle that moves memories from
//! one to the other and applies retention.
//!
//! A memory is embedded once, when it is remembered, and keeps its vector
//! in both tiers: the hot tier is scored by brute force (it is small and
//! bounded), the long-term tier by its vector index. Recall merges both,
//! so a memory is found the moment Remember returns, whichever tier it is
//! in.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amaos_mesh::config::MemoryConfig;

use crate::embed::Embedder;
use crate::hot::{HotTier, TierError};
use crate::item::{Filter, Item, Kind, Stored, dot, keyword_score, now_ms, words};
use crate::longterm::{LongTerm, Selector};

/// A memory to store.
#[derive(Clone, Debug)]
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
    /// How long it is served at most.
    pub ttl: Option<Duration>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
}

/// Why a tier operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TiersError {
    /// A tier's backend failed.
    #[error(transparent)]
    Tier(#[from] TierError),
    /// Embedding failed.
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    /// Sealing or opening a text failed.
    #[error(transparent)]
    Seal(#[from] amaos_mesh::seal::SealError),
    /// The tenant holds as many memories as it may.
    #[error("the tenant holds {held} memories; the limit is {limit}")]
    Full {
        /// How many it holds.
        held: u64,
        /// The limit.
        limit: u64,
    },
}

/// Weight of keyword overlap in a hybrid score; the rest is cosine similarity.
const KEYWORD_WEIGHT: f64 = 0.15;
/// Memories moved per sweep step.
const SWEEP_BATCH: usize = 256;
/// How long a tenant's memory count is trusted before it is counted again.
const COUNT_TTL: Duration = Duration::from_secs(5);

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Memories moved from the hot tier to long-term memory.
    pub moved: u64,
    /// Memories dropped: past their own expiry or their tenant's retention.
    pub dropped: u64,
}

/// Per tenant: (hot, long-term) items, and when they were counted.
type Counts = HashMap<String, ((u64, u64), Instant)>;

/// The tiers and the embedder.
pub struct Tiers {
    hot: Arc<dyn HotTier>,
    long: Arc<dyn LongTerm>,
    embedder: Arc<dyn Embedder>,
    retention: Duration,
    tenant_retention: BTreeMap<String, Duration>,
    max_items: u64,
    hot_capacity: usize,
    counts: Mutex<Counts>,
    sealer: Option<Arc<amaos_mesh::seal::Sealer>>,
    metrics: crate::metrics::MemoryMetrics,
}

impl Tiers {
    /// The tiers of `config` over these backends.
    pub fn new(
        config: &MemoryConfig,
        hot: Arc<dyn HotTier>,
        long: Arc<dyn LongTerm>,
        embedder: Arc<dyn Embedder>,
    ) -> Self {
        Self {
            hot,
            long,
            embedder,
            retention: config.retention,
            tenant_retention: config.tenant_retention.clone(),
            max_items: config.max_items_per_tenant as u64,
            hot_capacity: config.hot_capacity,
            counts: Mutex::new(HashMap::new()),
            sealer: None,
            metrics: Default::default(),
        }
    }

    /// The tiers, reporting in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::MemoryMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Stores texts sealed (encrypted at rest) with `sealer`, in every tier.
    pub fn with_sealer(mut self, sealer: Arc<amaos_mesh::seal::Sealer>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// `item` with its text opened, when texts are sealed.
    fn reveal(&self, tenant: &str, mut item: Item) -> Result<Item, TiersError> {
        if let Some(sealer) = &self.sealer {
            item.text = sealer.open(tenant, &item.text)?;
        }
        Ok(item)
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    fn oldest_kept_ms(&self, tenant: &str, now: u64) -> u64 {
        let keep = self
            .tenant_retention
            .get(tenant)
            .copied()
            .unwrap_or(self.retention);
        now.saturating_sub(keep.as_millis() as u64)
    }

    fn live(&self, tenant: &str, item: &Item, now: u64) -> bool {
        !item.expired(now) && item.created_ms >= self.oldest_kept_ms(tenant, now)
    }

    async fn embed_one(&self, text: &str) -> Result<Vec<f32>, TiersError> {
        let started = Instant::now();
        let embedded = self.embedder.embed(&[text.to_owned()]).await;
        self.metrics.embedded(1, started.elapsed());
        let mut vectors = embedded?;
        vectors.pop().ok_or_else(|| {
            TiersError::Embed(crate::embed::EmbedError::Inference(
                "the embedder returned no vector".into(),
            ))
        })
    }

    async fn held(&self, tenant: &str) -> Result<u64, TiersError> {
        if let Some((n, at)) = self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            && at.elapsed() < COUNT_TTL
        {
            return Ok(n.0 + n.1);
        }
        let long = self.long.count(tenant).await?;
        let hot = self.hot.len(tenant).await?;
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.insert(tenant.to_owned(), ((hot, long), Instant::now()));
        let (all_hot, all_long) = counts
            .values()
            .fold((0u64, 0u64), |(h, l), ((hot, long), _)| {
                (h.saturating_add(*hot), l.saturating_add(*long))
            });
        self.metrics.items(all_hot, all_long);
        Ok(hot + long)
    }

    /// Stores a memory in the hot tier (embedded now); what that pushes
    /// out moves to long-term memory before this returns. The same
    /// idempotency key returns the first memory's id and stores nothing.
    pub async fn remember(&self, tenant: &str, new: NewItem) -> Result<String, TiersError> {
        let held = self.held(tenant).await?;
        if held >= self.max_items {
            return Err(TiersError::Full {
                held,
                limit: self.max_items,
            });
        }
        let id = amaos_mesh::new_id();
        if let Some(key) = &new.idempotency_key {
            let first = self.hot.claim_key(tenant, key, &id).await?;
            if first != id {
                return Ok(first);
            }
        }
        let vector = self.embed_one(&new.text).await?;
        let text = match &self.sealer {
            Some(sealer) => sealer.seal(tenant, &new.text)?,
            None => new.text,
        };
        let now = now_ms();
        let item = Item {
            id: id.clone(),
            team: new.team,
            agent: new.agent,
            session_id: new.session_id,
            kind: new.kind,
            text,
            metadata: new.metadata,
            created_ms: now,
            expires_ms: new
                .ttl
                .map(|t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
        };
        let pushed_out = self.hot.put(tenant, Stored { item, vector }).await?;
        if !pushed_out.is_empty() {
            self.move_to_long_term(tenant, pushed_out).await?;
        }
        if let Some((n, _)) = self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(tenant)
        {
            n.0 += 1;
        }
        Ok(id)
    }

    /// Upserts what is still live into long-term memory; returns (moved, dropped).
    async fn move_to_long_term(
        &self,
        tenant: &str,
        batch: Vec<Stored>,
    ) -> Result<(u64, u64), TiersError> {
        let now = now_ms();
        let total = batch.len() as u64;
        let live: Vec<Stored> = batch
            .into_iter()
            .filter(|s| self.live(tenant, &s.item, now))
            .collect();
        let moved = live.len() as u64;
        if !live.is_empty() {
            self.long.upsert(tenant, live).await?;
            self.metrics.moved_to_long_term(moved);
        }
        Ok((moved, total - moved))
    }

    /// The `top_k` memories of the tenant most similar to `query` among
    /// those `filter` selects, from both tiers, best first. The score is
    /// the cosine similarity, blended with keyword overlap when the query
    /// shares words with the memory.
    pub async fn recall(
        &self,
        tenant: &str,
        query: &str,
        filter: &Filter,
        top_k: usize,
        min_score: f64,
    ) -> Result<Vec<(Item, f64)>, TiersError> {
        let started = Instant::now();
        let recalled = self
            .recall_ranked(tenant, query, filter, top_k, min_score)
            .await;
        self.metrics.recalled(started.elapsed());
        recalled
    }

    async fn recall_ranked(
        &self,
        tenant: &str,
        query: &str,
        filter: &Filter,
        top_k: usize,
        min_score: f64,
    ) -> Result<Vec<(Item, f64)>, TiersError> {
        let vector = self.embed_one(query).await?;
        let query_words = words(query);
        let now = now_ms();
        let (hot, long) = tokio::join!(
            self.hot.scan(tenant, filter, self.hot_capacity),
            self.long.search(tenant, &vector, filter, top_k),
        );
        let mut best: HashMap<String, (Item, f64)> = HashMap::new();
        let candidates = hot?
            .into_iter()
            .map(|s| {
                let cos = dot(&vector, &s.vector);
                (s.item, cos)
            })
            .chain(long?);
        for (item, cos) in candidates {
            if !self.live(tenant, &item, now) {
                continue;
            }
            let item = self.reveal(tenant, item)?;
            let kw = keyword_score(&query_words, &item.text);
            let score = if kw > 0.0 {
                (1.0 - KEYWORD_WEIGHT) * cos as f64 + KEYWORD_WEIGHT * kw
            } else {
                cos as f64
            };
            // No minimum (0) keeps even dissimilar memories (negative cosine).
            if min_score > 0.0 && score < min_score {
                continue;
            }
            // A memory moving between tiers may be seen in both: keep one.
            best.entry(item.id.clone()).or_insert((item, score));
        }
        let mut hits: Vec<(Item, f64)> = best.into_values().collect();
        hits.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(b.0.created_ms.cmp(&a.0.created_ms))
        });
        hits.truncate(top_k);
        Ok(hits)
    }

    /// The tenant's newest memories `filter` selects, newest first, from both tiers.
    pub async fn recent(
        &self,
        tenant: &str,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Item>, TiersError> {
        let now = now_ms();
        let (hot, long) = tokio::join!(
            self.hot.scan(tenant, filter, limit),
            self.long.recent(tenant, filter, limit),
        );
        let mut seen = std::collections::HashSet::new();
        let mut items: Vec<Item> = hot?
            .into_iter()
            .map(|s| s.item)
            .chain(long?)
            .filter(|i| self.live(tenant, i, now) && seen.insert(i.id.clone()))
            .map(|i| self.reveal(tenant, i))
            .collect::<Result<_, _>>()?;
        items.sort_by_key(|i| std::cmp::Reverse(i.created_ms));
        items.truncate(limit);
        Ok(items)
    }

    /// Removes one memory of the tenant from every tier; how many copies were found.
    pub async fn forget_id(&self, tenant: &str, id: &str) -> Result<u64, TiersError> {
        let ids = [id.to_owned()];
        let hot = self.hot.remove(tenant, &ids).await?;
        let long = self.long.delete_ids(tenant, &ids).await?;
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
        Ok(hot.max(long))
    }

    /// Removes every memory of the tenant `filter` selects (a session, an
    /// agent, a team, or the whole tenant) from every tier; how many.
    pub async fn forget_scope(&self, tenant: &str, filter: &Filter) -> Result<u64, TiersError> {
        let mut forgotten = 0;
        loop {
            let batch = self.hot.scan(tenant, filter, SWEEP_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            let ids: Vec<String> = batch.into_iter().map(|s| s.item.id).collect();
            forgotten += self.hot.remove(tenant, &ids).await?;
        }
        forgotten += self
            .long
            .delete(&Selector {
                tenant: Some(tenant),
                filter: filter.clone(),
                ..Selector::default()
            })
            .await?;
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
        Ok(forgotten)
    }

    /// One lifecycle pass: moves memories whose hot time is up to
    /// long-term memory (removing them from the hot tier only once they are
    /// stored there), deletes long-term memories past their own expiry or
    /// their tenant's retention, and lets the long-term backend maintain
    /// its index.
    pub async fn sweep(&self) -> Result<Swept, TiersError> {
        let mut swept = Swept::default();
        loop {
            let due = self.hot.due(SWEEP_BATCH).await?;
            if due.is_empty() {
                break;
            }
            let mut by_tenant: HashMap<String, Vec<Stored>> = HashMap::new();
            for (tenant, stored) in due {
                by_tenant.entry(tenant).or_default().push(stored);
            }
            for (tenant, batch) in by_tenant {
                let ids: Vec<String> = batch.iter().map(|s| s.item.id.clone()).collect();
                let (moved, dropped) = self.move_to_long_term(&tenant, batch).await?;
                self.hot.remove(&tenant, &ids).await?;
                swept.moved += moved;
                swept.dropped += dropped;
            }
        }
        let now = now_ms();
        let overridden: Vec<String> = self.tenant_retention.keys().cloned().collect();
        let mut selectors = vec![
            Selector {
                expired_by: Some(now),
                ..Selector::default()
            },
            Selector {
                not_tenants: &overridden,
                filter: Filter {
                    before_ms: Some(now.saturating_sub(self.retention.as_millis() as u64)),
                    ..Filter::default()
                },
                ..Selector::default()
            },
        ];
        for (tenant, keep) in &self.tenant_retention {
            selectors.push(Selector {
                tenant: Some(tenant),
                filter: Filter {
                    before_ms: Some(now.saturating_sub(keep.as_millis() as u64)),
                    ..Filter::default()
                },
                ..Selector::default()
            });
        }
        for selector in &selectors {
            swept.dropped += self.long.delete(selector).await?;
        }
        self.long.maintain().await?;
        Ok(swept)
    }
}
