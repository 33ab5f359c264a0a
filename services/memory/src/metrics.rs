//! The memory service's own metrics: items per tier, moves between tiers,
//! embedding latency and batch size, recall latency.

use std::time::Duration;

use amaos_mesh::metrics::{Metrics, seconds_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tier {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Move {
    from: &'static str,
    to: &'static str,
}

/// The memory service's metrics. [`Default`] counts without being
/// registered anywhere (tests).
#[derive(Clone)]
pub struct MemoryMetrics {
    items: Family<Tier, Gauge>,
    moves: Family<Move, Counter>,
    embedding: Histogram,
    batch: Histogram,
    recall: Histogram,
}

impl Default for MemoryMetrics {
    fn default() -> Self {
        Self {
            items: Family::default(),
            moves: Family::default(),
            embedding: seconds_histogram(),
            // 1 to 256 texts.
            batch: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            recall: seconds_histogram(),
        }
    }
}

impl MemoryMetrics {
    /// Registers the memory service's metrics in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        let m = metrics;
        m.register(
            "memory_items",
            "memories held per tier (hot, long_term), summed over the tenants this replica counted recently",
            this.items.clone(),
        );
        m.register(
            "memory_tier_moves",
            "memories moved between tiers, by from and to",
            this.moves.clone(),
        );
        m.register(
            "embedding_duration_seconds",
            "time to embed one batch of texts, in seconds",
            this.embedding.clone(),
        );
        m.register(
            "embedding_batch_size",
            "texts per embedding call",
            this.batch.clone(),
        );
        m.register(
            "memory_recall_duration_seconds",
            "Recall latency in seconds: embedding the query, searching both tiers, ranking",
            this.recall.clone(),
        );
        this.moved_to_long_term(0);
        this
    }

    /// Items held now, per tier.
    pub fn items(&self, hot: u64, long_term: u64) {
        for (tier, n) in [("hot", hot), ("long_term", long_term)] {
            self.items
                .get_or_create(&Tier { tier })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// `n` memories moved from the hot tier to long-term memory.
    pub fn moved_to_long_term(&self, n: u64) {
        self.moves
            .get_or_create(&Move {
                from: "hot",
                to: "long_term",
            })
            .inc_by(n);
    }

    /// An embedding call of `texts` texts took `took`.
    pub fn embedded(&self, texts: usize, took: Duration) {
        self.embedding.observe(took.as_secs_f64());
        self.batch.observe(texts as f64);
    }

    /// A recall took `took`.
    pub fn recalled(&self, took: Duration) {
        self.recall.observe(took.as_secs_f64());
    }
}
