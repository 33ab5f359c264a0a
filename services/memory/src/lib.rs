//! The memory service: what agents remember and recall, always within the
//! caller's tenant (read from the forwarded caller metadata, never from a
//! request field).
//!
//! # Layout
//!
//! - [`embed`]: the [`embed::Embedder`] trait, MiniLM on candle, and an
//!   OpenAI-compatible backend.
//! - [`hot`]: the hot tier trait and its in-process LRU-with-TTL backend.
//! - [`store`]: the embedded in-process store with keyword recall.
//! - this file: the gRPC service, its errors and their mapping, and [`serve`].

pub mod embed;
pub mod hot;
pub mod store;

use std::sync::Arc;

use amaos_mesh::config::Limits;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::server::GrpcService;
use amaos_mesh::token::TokenVerifier;
use amaos_mesh::{BoxError, Config, limit_messages, status};
use amaos_proto::memory::v1 as pb;
use amaos_proto::memory::v1::memory_service_server::{MemoryService, MemoryServiceServer};
use amaos_proto::time::{duration, system_time, timestamp};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::store::{Filter, Item, Kind, MemoryStore, NewItem};

/// What can go wrong in the memory service.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A request field is invalid.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The memory does not exist in the caller's tenant.
    #[error("memory `{0}` not found")]
    NotFound(String),
}

impl From<MemoryError> for Status {
    fn from(error: MemoryError) -> Self {
        match error {
            MemoryError::InvalidArgument { field, message } => {
                status::invalid_field(field, message)
            }
            MemoryError::NotFound(_) => Status::not_found(error.to_string()),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> MemoryError {
    MemoryError::InvalidArgument {
        field,
        message: message.into(),
    }
}

/// Most metadata entries on one memory.
const MAX_METADATA: usize = 32;

/// The memory service.
#[derive(Clone)]
pub struct Memory {
    verifier: Arc<TokenVerifier>,
    store: Arc<MemoryStore>,
    max_text_bytes: usize,
}

impl Memory {
    /// A memory service over a new embedded store, verifying callers'
    /// tokens with keys from auth.
    pub fn new(config: &Config) -> Result<Self, BoxError> {
        Ok(Self {
            verifier: Arc::new(TokenVerifier::from_auth(&config.auth.url, &config.limits)?),
            store: Arc::new(MemoryStore::new(config.memory.max_items_per_tenant)),
            max_text_bytes: config.memory.max_text_bytes,
        })
    }
}

fn kind_from(value: i32) -> Kind {
    match pb::MemoryKind::try_from(value).unwrap_or(pb::MemoryKind::Unspecified) {
        pb::MemoryKind::Fact => Kind::Fact,
        pb::MemoryKind::Turn => Kind::Turn,
        pb::MemoryKind::Result => Kind::Result,
        pb::MemoryKind::Note | pb::MemoryKind::Unspecified => Kind::Note,
    }
}

fn kind_to(kind: Kind) -> pb::MemoryKind {
    match kind {
        Kind::Fact => pb::MemoryKind::Fact,
        Kind::Turn => pb::MemoryKind::Turn,
        Kind::Result => pb::MemoryKind::Result,
        Kind::Note => pb::MemoryKind::Note,
    }
}

fn filter_from(filter: Option<pb::MemoryFilter>) -> Filter {
    let Some(pb::MemoryFilter {
        team,
        agent,
        session_id,
        kinds,
        after,
        before,
    }) = filter
    else {
        return Filter::default();
    };
    Filter {
        team,
        agent,
        session_id,
        kinds: kinds.into_iter().map(kind_from).collect(),
        after: after.as_ref().and_then(system_time),
        before: before.as_ref().and_then(system_time),
    }
}

fn item_to(item: Item) -> pb::MemoryItem {
    pb::MemoryItem {
        memory_id: item.id,
        team: item.team,
        agent: item.agent,
        session_id: item.session_id,
        kind: kind_to(item.kind) as i32,
        text: item.text,
        metadata: item.metadata,
        created_at: Some(timestamp(item.created_at)),
        expires_at: item.expires_at.map(timestamp),
        tier: pb::MemoryTier::Hot as i32,
    }
}

#[tonic::async_trait]
impl MemoryService for Memory {
    async fn remember(
        &self,
        request: Request<pb::RememberRequest>,
    ) -> Result<Response<pb::RememberResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        let pb::RememberRequest {
            team,
            agent,
            session_id,
            kind,
            text,
            metadata,
            ttl,
            idempotency_key,
        } = request.into_inner();
        if text.trim().is_empty() {
            return Err(invalid("text", "must not be empty").into());
        }
        if text.len() > self.max_text_bytes {
            return Err(invalid(
                "text",
                format!(
                    "is {} bytes; the limit is {}",
                    text.len(),
                    self.max_text_bytes
                ),
            )
            .into());
        }
        if metadata.len() > MAX_METADATA {
            return Err(invalid("metadata", format!("at most {MAX_METADATA} entries")).into());
        }
        let ttl = match ttl {
            Some(ttl) => Some(
                duration(&ttl)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| invalid("ttl", "must be positive"))?,
            ),
            None => None,
        };
        let memory_id = self.store.remember(
            &caller.tenant,
            NewItem {
                team,
                agent,
                session_id,
                kind: kind_from(kind),
                text,
                metadata,
                ttl,
                idempotency_key: Some(idempotency_key).filter(|k| !k.is_empty()),
            },
        );
        Ok(Response::new(pb::RememberResponse { memory_id }))
    }

    async fn recall(
        &self,
        request: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        let pb::RecallRequest {
            query,
            filter,
            top_k,
            min_score,
        } = request.into_inner();
        if query.len() > self.max_text_bytes {
            return Err(invalid(
                "query",
                format!("the limit is {} bytes", self.max_text_bytes),
            )
            .into());
        }
        if !(0.0..=1.0).contains(&min_score) {
            return Err(invalid("min_score", "must be between 0 and 1").into());
        }
        let top_k = match top_k {
            0 => 5,
            k => k.min(100) as usize,
        };
        let hits = self.store.recall(
            &caller.tenant,
            &query,
            &filter_from(filter),
            top_k,
            min_score,
        );
        Ok(Response::new(pb::RecallResponse {
            memories: hits
                .into_iter()
                .map(|(item, score)| pb::RecalledMemory {
                    item: Some(item_to(item)),
                    score,
                })
                .collect(),
            mode: pb::RecallMode::Keyword as i32,
        }))
    }

    async fn recent(
        &self,
        request: Request<pb::RecentRequest>,
    ) -> Result<Response<pb::RecentResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        let pb::RecentRequest { filter, limit } = request.into_inner();
        let limit = match limit {
            0 => 20,
            n => n.min(1000) as usize,
        };
        let items = self
            .store
            .recent(&caller.tenant, &filter_from(filter), limit);
        Ok(Response::new(pb::RecentResponse {
            items: items.into_iter().map(item_to).collect(),
        }))
    }

    async fn forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        let pb::ForgetRequest {
            target,
            idempotency_key: _,
        } = request.into_inner();
        let forgotten = match target {
            Some(pb::forget_request::Target::MemoryId(id)) => {
                // Forgetting is idempotent: a memory already gone is not an error
                // for a retry, but an unknown id on the first try is reported.
                let n = self.store.forget_id(&caller.tenant, &id);
                if n == 0 {
                    return Err(MemoryError::NotFound(id).into());
                }
                n
            }
            Some(pb::forget_request::Target::Scope(scope)) => self
                .store
                .forget_matching(&caller.tenant, &filter_from(Some(scope))),
            None => return Err(invalid("target", "name a memory_id or a scope").into()),
        };
        Ok(Response::new(pb::ForgetResponse { forgotten }))
    }
}

/// The memory service, ready for [`amaos_mesh::server::serve`].
pub fn grpc_service(memory: Memory, limits: &Limits) -> GrpcService {
    GrpcService::public(
        "memory",
        limit_messages!(MemoryServiceServer::new(memory), limits),
    )
}

/// Serves the memory service on `listener` until `shutdown`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let service = grpc_service(Memory::new(&config)?, &config.limits);
    amaos_mesh::server::serve(service, listener, &config.limits, metrics, shutdown).await?;
    Ok(())
}
