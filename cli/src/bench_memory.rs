//! `amaos bench --scenario memory`: the memory service's engines measured
//! directly, in this process, with the production code paths.
//!
//! - Embedding throughput of the configured MiniLM model at batch 32
//!   (sentences per second), to compare with sentence-transformers on the
//!   same machine (`services/memory/benches/st_throughput.py`).
//! - Long-term recall on qdrant-edge with `vectors` stored 384-d vectors of
//!   one tenant: the time to store and index them, recall@10 of the
//!   HNSW search against exact search, p50/p99 latency of a tenant-filtered
//!   top-10 search (as Recall runs it), and the memory and disk footprint.
//!
//! The stored vectors are synthetic: unit vectors around 1,000 random
//! centres (a clustered layout like real embeddings'), not random noise,
//! which no index searches well. Embedding a million real sentences would
//! take hours on a CPU.

use std::time::Instant;

use amaos_memory::embed::MiniLm;
use amaos_memory::item::{Item, Kind, Stored, dot};
use amaos_memory::longterm::{EdgeLongTerm, LongTerm};
use amaos_mesh::config::Config;
use rand::{Rng, SeedableRng};

use crate::bench::{peak_rss_mib, percentile};

/// Vector length (all-MiniLM-L6-v2's).
const DIMENSION: usize = 384;
/// Queries measured.
const QUERIES: usize = 300;
/// Clusters the synthetic vectors gather around.
const CENTRES: usize = 1000;

/// The figures of one memory run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryReport {
    /// Sentences embedded per second at batch 32.
    pub embed_sentences_per_s: f64,
    /// Vectors stored.
    pub vectors: usize,
    /// Seconds to upsert them.
    pub upsert_s: f64,
    /// Seconds to build the HNSW index.
    pub index_s: f64,
    /// Mean recall@10 of HNSW against exact search.
    pub recall_at_10: f64,
    /// Median search latency, ms.
    pub p50_ms: f64,
    /// 99th percentile search latency, ms.
    pub p99_ms: f64,
    /// Peak resident memory of this process, MiB.
    pub peak_rss_mib: f64,
    /// The store's size on disk, MiB.
    pub disk_mib: f64,
}

impl MemoryReport {
    /// The report as text.
    pub fn text(&self) -> String {
        format!(
            "scenario memory\n\
             embeddings  {:.0} sentences/s  (all-MiniLM-L6-v2 on candle, CPU, batch 32)\n\
             long-term   {} vectors of 384-d on qdrant-edge: upsert {:.1} s, index {:.1} s\n\
             recall@10   {:.3} against exact search ({QUERIES} queries)\n\
             search      p50 {:.2} ms  p99 {:.2} ms  (top 10, tenant-filtered)\n\
             footprint   peak RSS {:.0} MiB, on disk {:.0} MiB\n",
            self.embed_sentences_per_s,
            self.vectors,
            self.upsert_s,
            self.index_s,
            self.recall_at_10,
            self.p50_ms,
            self.p99_ms,
            self.peak_rss_mib,
            self.disk_mib
        )
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn gaussian(rng: &mut impl Rng) -> f32 {
    // Box-Muller.
    let u1: f32 = rng.r#gen::<f32>().max(1e-12);
    let u2: f32 = rng.r#gen::<f32>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

fn near(centre: &[f32], spread: f32, rng: &mut impl Rng) -> Vec<f32> {
    unit(centre.iter().map(|c| c + spread * gaussian(rng)).collect())
}

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Runs the memory scenario with `vectors` stored vectors.
pub async fn run(config: &Config, vectors: usize) -> Result<MemoryReport, amaos_mesh::BoxError> {
    let model = MiniLm::load(&config.memory.model_dir(&config.data_dir), 32)?;
    let sentences: Vec<String> = (0..512)
        .map(|i| {
            format!(
                "memory item {i}: the agent noted that task {} needs {} more steps",
                i % 17,
                i % 5
            )
        })
        .collect();
    let embed_sentences_per_s = tokio::task::spawn_blocking(move || {
        model.embed_blocking(&sentences[..64])?;
        let start = Instant::now();
        model.embed_blocking(&sentences)?;
        Ok::<_, amaos_memory::embed::EmbedError>(
            sentences.len() as f64 / start.elapsed().as_secs_f64(),
        )
    })
    .await??;

    let dir = tempfile::tempdir()?;
    let long = EdgeLongTerm::open(&dir.path().join("edge"), DIMENSION)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let centres: Vec<Vec<f32>> = (0..CENTRES)
        .map(|_| unit((0..DIMENSION).map(|_| gaussian(&mut rng)).collect()))
        .collect();
    let spread = 0.6 / (DIMENSION as f32).sqrt() * 2.0;
    let mut all: Vec<Vec<f32>> = Vec::with_capacity(vectors);
    let mut ids: Vec<String> = Vec::with_capacity(vectors);
    let start = Instant::now();
    let tenant = "bench";
    for chunk in 0..vectors.div_ceil(1000) {
        let n = 1000.min(vectors - chunk * 1000);
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            let v = near(&centres[rng.gen_range(0..CENTRES)], spread, &mut rng);
            let id = amaos_mesh::new_id();
            batch.push(Stored {
                item: Item {
                    id: id.clone(),
                    team: "bench".into(),
                    agent: "bench".into(),
                    session_id: String::new(),
                    kind: Kind::Note,
                    text: format!("memory {}", ids.len()),
                    metadata: Default::default(),
                    created_ms: amaos_memory::item::now_ms(),
                    expires_ms: None,
                },
                vector: v.clone(),
            });
            all.push(v);
            ids.push(id);
        }
        long.upsert(tenant, batch).await?;
    }
    let upsert_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    long.maintain().await?;
    let index_s = start.elapsed().as_secs_f64();

    let filter = amaos_memory::item::Filter::default();
    let mut recall_sum = 0.0;
    let mut latencies = Vec::with_capacity(QUERIES);
    for _ in 0..QUERIES {
        let q = near(&centres[rng.gen_range(0..CENTRES)], spread, &mut rng);
        let start = Instant::now();
        let hits = long.search(tenant, &q, &filter, 10).await?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        let mut exact: Vec<(f32, usize)> = all
            .iter()
            .enumerate()
            .map(|(i, v)| (dot(&q, v), i))
            .collect();
        exact.select_nth_unstable_by(9, |a, b| b.0.total_cmp(&a.0));
        let truth: std::collections::HashSet<&str> =
            exact[..10].iter().map(|(_, i)| ids[*i].as_str()).collect();
        let found = hits
            .iter()
            .filter(|(item, _)| truth.contains(item.id.as_str()))
            .count();
        recall_sum += found as f64 / 10.0;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(MemoryReport {
        embed_sentences_per_s,
        vectors,
        upsert_s,
        index_s,
        recall_at_10: recall_sum / QUERIES as f64,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        peak_rss_mib: peak_rss_mib(),
        disk_mib: dir_size(dir.path()) as f64 / (1024.0 * 1024.0),
    })
}
