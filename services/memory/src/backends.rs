//! The memory service's backends built from config: the embedder (MiniLM,
//! or an embeddings server with its API key from the secret store), the hot
//! tier (in-process or Redis), long-term memory (qdrant-edge or a Qdrant
//! server), and sealing of memory texts at rest.

use std::sync::Arc;

use amaos_mesh::api_client::ApiKey;
use amaos_mesh::config::{EmbedderBackend, LongTermBackend, StoreBackend};
use amaos_mesh::secrets::SecretStore;
use amaos_mesh::{BoxError, Config};

use crate::embed::{Embedder, EmbeddingsServer, MiniLm, OpenAiEmbedder};
use crate::hot::{HotTier, LruHotTier, RedisHotTier};
use crate::longterm::{EdgeLongTerm, LongTerm};
use crate::qdrant;
use crate::tiers::Tiers;

/// The embedder `config` names, an embeddings server's API key read from
/// `secrets` when `memory.embed_api_key_secret` names one. A missing MiniLM
/// model is an error that says how to fetch it: the service never falls
/// back to something else.
pub fn embedder(
    config: &Config,
    secrets: Option<&Arc<dyn SecretStore>>,
) -> Result<Arc<dyn Embedder>, BoxError> {
    let m = &config.memory;
    Ok(match m.embedder {
        EmbedderBackend::Minilm => {
            Arc::new(MiniLm::load(&m.model_dir(&config.data_dir), m.embed_batch)?)
        }
        EmbedderBackend::Openai => {
            let api_key = ApiKey::configured(
                m.embed_api_key_env.as_deref(),
                m.embed_api_key_secret.as_deref(),
                secrets,
                |field| format!("memory.embed_{field}"),
            )?;
            Arc::new(OpenAiEmbedder::new(
                EmbeddingsServer {
                    base_url: &m.embed_url,
                    api_key,
                    timeout: m.embed_timeout,
                    max_retries: m.embed_max_retries,
                },
                m.embed_model.clone(),
                m.embed_dimension,
                m.embed_batch,
            )?)
        }
    })
}

/// The tiers `config` names, connected and opened.
pub async fn tiers(config: &Config) -> Result<Tiers, BoxError> {
    let m = &config.memory;
    // The secret store is opened only for an embeddings key kept there.
    let secrets = match (&m.embedder, &m.embed_api_key_secret) {
        (EmbedderBackend::Openai, Some(_)) => {
            Some(amaos_mesh::secrets::open_audited(config, "memory").await?)
        }
        _ => None,
    };
    let embedder = embedder(config, secrets.as_ref())?;
    let hot: Arc<dyn HotTier> = match m.hot {
        StoreBackend::Memory => Arc::new(LruHotTier::new(m.hot_capacity, m.hot_ttl)),
        StoreBackend::Redis => Arc::new(
            RedisHotTier::connect(&m.redis_url, &m.redis_prefix, m.hot_capacity, m.hot_ttl).await?,
        ),
    };
    let long: Arc<dyn LongTerm> = match m.long_term {
        LongTermBackend::Edge => {
            let dir = m.edge_dir(&config.data_dir);
            let dimension = embedder.dimension();
            Arc::new(
                tokio::task::spawn_blocking(move || EdgeLongTerm::open(&dir, dimension)).await??,
            )
        }
        LongTermBackend::Qdrant => Arc::new(
            qdrant::QdrantLongTerm::connect(
                &m.qdrant_url,
                &m.qdrant_collection,
                m.qdrant_api_key_env.as_deref(),
                embedder.dimension(),
            )
            .await?,
        ),
    };
    let tiers = Tiers::new(m, hot, long, embedder);
    Ok(if m.encrypt {
        let path = m
            .key_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("memory.keys"));
        let sealer = amaos_mesh::seal::open_configured(path, &config.secrets).await?;
        tiers.with_sealer(Arc::new(sealer))
    } else {
        tiers
    })
}
