//! Memory benchmark: embedding throughput of all-MiniLM-L6-v2 on candle at
//! batch 32 (compare with `st_throughput.py`, sentence-transformers on the
//! same machine). Prints figures; asserts nothing.
//!
//! `cargo bench -p amaos-memory --bench memory` (model from
//! `AMAOS_EMBED_MODEL_DIR`, else `.amaos/models/all-MiniLM-L6-v2` at the
//! repository root, as `scripts/fetch-embedding-model` puts it).

use std::path::PathBuf;
use std::time::Instant;

use amaos_memory::embed::MiniLm;

fn main() {
    let dir = std::env::var_os("AMAOS_EMBED_MODEL_DIR").map_or_else(
        || {
            let data = std::env::var_os("AMAOS_DATA_DIR")
                .map_or_else(|| PathBuf::from(".amaos"), PathBuf::from);
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(data)
                .join("models/all-MiniLM-L6-v2")
        },
        PathBuf::from,
    );
    let model = match MiniLm::load(&dir, 32) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    // The same sentences as st_throughput.py.
    let sentences: Vec<String> = (0..512)
        .map(|i| {
            format!(
                "memory item {i}: the agent noted that task {} needs {} more steps",
                i % 17,
                i % 5
            )
        })
        .collect();
    model.embed_blocking(&sentences[..64]).unwrap();
    let start = Instant::now();
    let vectors = model.embed_blocking(&sentences).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(vectors.len(), sentences.len());
    println!(
        "candle all-MiniLM-L6-v2: {:.1} sentences/s at batch 32 ({} sentences in {:.2} s)",
        sentences.len() as f64 / elapsed,
        sentences.len(),
        elapsed
    );
}
