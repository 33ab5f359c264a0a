//! What the memory tests share: where the embedding model is.

#![allow(dead_code)]

use std::path::PathBuf;

use amaos_memory::embed::MiniLm;

/// Where the model is, by the rule `scripts/fetch-embedding-model` follows:
/// `AMAOS_EMBED_MODEL_DIR`, else `<data_dir>/models/all-MiniLM-L6-v2` with
/// `AMAOS_DATA_DIR` (default `.amaos`) taken from the repository root.
pub fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AMAOS_EMBED_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data =
        std::env::var_os("AMAOS_DATA_DIR").map_or_else(|| PathBuf::from(".amaos"), PathBuf::from);
    root.join(data).join("models/all-MiniLM-L6-v2")
}

/// The model, batch `batch`; a missing model fails the test saying how to fetch it.
pub fn load_model(batch: usize) -> MiniLm {
    match MiniLm::load(&model_dir(), batch) {
        Ok(model) => model,
        Err(e) => panic!("{e}"),
    }
}
