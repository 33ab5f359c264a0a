//! The memory service: what agents remember and recall, always within the
//! caller's tenant (from the caller's verified token, never from a request
//! field), in two tiers with a lifecycle between them.
//!
//! # Layout
//!
//! - [`item`]: what a memory is, filters, keyword scoring.
//! - [`embed`]: the [`embed::Embedder`] trait, MiniLM on candle, and an
//!   OpenAI-compatible backend.
//! - [`hot`]: the hot tier trait; an in-process LRU with TTL and Redis.
//! - [`longterm`]: the long-term tier trait; Qdrant's engine in-process
//!   (qdrant-edge) — and [`qdrant`], a Qdrant server through qdrant-client.
//! - [`tiers`]: Remember/Recall/Recent/Forget across the tiers, and the
//!   lifecycle sweep.
//! - encryption at rest of memory texts: `amaos_mesh::seal` (envelope, per tenant).
//! - `backends`: the embedder and the tiers' backends built from config
//!   ([`embedder`], [`tiers`]).
//! - this file: the gRPC service, its errors and their mapping, and
//!   [`serve`].

mod backends;
pub mod embed;
pub mod hot;
pub mod item;
pub mod longterm;
pub mod metrics;
pub mod qdrant;
pub mod tiers;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amaos_mesh::authn::Authenticator;
use amaos_mesh::caller::Caller;
use amaos_mesh::config::Limits;
use amaos_mesh::live::LiveRuns;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::policy::Policy;
use amaos_mesh::server::GrpcService;
use amaos_mesh::{BoxError, Config, limit_messages, status};
use amaos_proto::memory::v1 as pb;
use amaos_proto::memory::v1::memory_service_server::{MemoryService, MemoryServiceServer};
use amaos_proto::time::{duration, system_time, timestamp};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub use crate::backends::{embedder, tiers};
use crate::item::{Filter, Item, Kind, to_ms};
use crate::tiers::{NewItem, Tiers, TiersError};

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
    /// The tenant holds as many memories as it may.
    #[error("{0}")]
    Full(String),
    /// A tier or the embedder failed; the request can be retried.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's roles do not allow it (the RBAC policy).
    #[error("permission denied: {0}")]
    Forbidden(String),
}

impl From<TiersError> for MemoryError {
    fn from(error: TiersError) -> Self {
        match error {
            TiersError::Full { .. } => MemoryError::Full(error.to_string()),
            TiersError::Tier(_) | TiersError::Embed(_) | TiersError::Seal(_) => {
                MemoryError::Unavailable(error.to_string())
            }
        }
    }
}

impl From<MemoryError> for Status {
    fn from(error: MemoryError) -> Self {
        match error {
            MemoryError::InvalidArgument { field, message } => {
                status::invalid_field(field, message)
            }
            MemoryError::NotFound(_) => Status::not_found(error.to_string()),
            MemoryError::Full(_) => Status::resource_exhausted(error.to_string()),
            MemoryError::Unavailable(_) => Status::unavailable(error.to_string()),
            MemoryError::Forbidden(_) => Status::permission_denied(error.to_string()),
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
    /// Callers: a token (verified locally) or an API key (checked by auth, cached).
    verifier: Arc<Authenticator>,
    /// Refuses run tokens whose attempt no longer runs.
    live: Arc<LiveRuns>,
    tiers: Arc<Tiers>,
    max_text_bytes: usize,
    /// The RBAC policy callers are held to.
    policy: Policy,
}

impl Memory {
    /// A memory service over `tiers`, verifying callers' tokens with keys
    /// from auth and authorizing them by `policy`.
    pub fn new(config: &Config, tiers: Arc<Tiers>, policy: Policy) -> Result<Self, BoxError> {
        let dialer = amaos_mesh::client::Dialer::new(config, "memory")?;
        Ok(Self {
            verifier: Arc::new(Authenticator::from_auth(
                &dialer,
                &config.auth.url,
                config.auth.key_cache_ttl,
            )?),
            live: Arc::new(LiveRuns::new(
                dialer.channel("orchestrator", &config.orchestrator.url)?,
            )),
            tiers,
            max_text_bytes: config.memory.max_text_bytes,
            policy,
        })
    }
}

/// Checks `policy`: `read` (Recall, Recent) or `write` (Remember, Forget)
/// on `memory`, in the caller's tenant.
fn authorize(
    policy: &Policy,
    caller: &amaos_mesh::caller::Caller,
    action: &str,
) -> Result<(), MemoryError> {
    policy
        .allows(
            &caller.principal,
            &caller.roles,
            &caller.tenant,
            "memory",
            action,
        )
        .map(|_| ())
        .ok_or_else(|| {
            MemoryError::Forbidden(format!(
                "roles [{}] may not `{action}` memory",
                caller.roles.join(", ")
            ))
        })
}

/// Confines a run token to its run's memory: the team its attempt runs and
/// its task's session. A field naming another team or session is refused;
/// an empty one is filled in. Users' keys and tokens are not confined.
fn confine(caller: &Caller, team: &mut String, session_id: &mut String) -> Result<(), MemoryError> {
    let Some(run) = &caller.task else {
        return Ok(());
    };
    if run.team.is_empty() {
        return Err(MemoryError::Forbidden(
            "this run token names no team, so it reaches no memory".into(),
        ));
    }
    for (field, asked, own) in [
        ("team", &mut *team, &run.team),
        ("session_id", &mut *session_id, &run.session),
    ] {
        if !asked.is_empty() && asked != own {
            return Err(MemoryError::Forbidden(format!(
                "this run token reaches the memory of {field} `{own}` only, not `{asked}`"
            )));
        }
        asked.clone_from(own);
    }
    Ok(())
}

/// [`confine`] for a filter (a missing one becomes the run's scope).
fn confine_filter(
    caller: &Caller,
    filter: Option<pb::MemoryFilter>,
) -> Result<Option<pb::MemoryFilter>, MemoryError> {
    if caller.task.is_none() {
        return Ok(filter);
    }
    let mut filter = filter.unwrap_or_default();
    confine(caller, &mut filter.team, &mut filter.session_id)?;
    Ok(Some(filter))
}

/// A time filter in milliseconds; a timestamp out of range is
/// INVALID_ARGUMENT naming the field, not a silently dropped filter.
fn ms(field: &'static str, t: Option<prost_types::Timestamp>) -> Result<Option<u64>, MemoryError> {
    t.map(|t| {
        system_time(&t)
            .map(to_ms)
            .ok_or_else(|| invalid(field, "must be a time between 1970 and 9999"))
    })
    .transpose()
}

/// The longest a memory may be kept with a TTL.
const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

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

fn filter_from(filter: Option<pb::MemoryFilter>) -> Result<Filter, MemoryError> {
    let Some(pb::MemoryFilter {
        team,
        agent,
        session_id,
        kinds,
        after,
        before,
    }) = filter
    else {
        return Ok(Filter::default());
    };
    Ok(Filter {
        team,
        agent,
        session_id,
        kinds: kinds.into_iter().map(kind_from).collect(),
        after_ms: ms("filter.after", after)?,
        before_ms: ms("filter.before", before)?,
    })
}

fn item_to(item: Item, tier: pb::MemoryTier) -> pb::MemoryItem {
    let created_at: SystemTime = item.created_at();
    let expires_at = item.expires_at();
    pb::MemoryItem {
        memory_id: item.id,
        team: item.team,
        agent: item.agent,
        session_id: item.session_id,
        kind: kind_to(item.kind) as i32,
        text: item.text,
        metadata: item.metadata,
        created_at: Some(timestamp(created_at)),
        expires_at: expires_at.map(timestamp),
        tier: tier as i32,
    }
}

#[tonic::async_trait]
impl MemoryService for Memory {
    async fn remember(
        &self,
        request: Request<pb::RememberRequest>,
    ) -> Result<Response<pb::RememberResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        authorize(&self.policy, &caller, "write")?;
        self.live.check(&caller).await?;
        let pb::RememberRequest {
            mut team,
            agent,
            mut session_id,
            kind,
            text,
            mut metadata,
            ttl,
            idempotency_key,
        } = request.into_inner();
        confine(&caller, &mut team, &mut session_id)?;
        if let Some(run) = &caller.task {
            // Labelled with the task that wrote it, whatever the caller says.
            metadata.insert("task_id".to_owned(), run.task.clone());
        }
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
                    .filter(|d| !d.is_zero() && *d <= MAX_TTL)
                    .ok_or_else(|| invalid("ttl", "must be positive and at most 100 years"))?,
            ),
            None => None,
        };
        let memory_id = self
            .tiers
            .remember(
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
            )
            .await
            .map_err(MemoryError::from)?;
        Ok(Response::new(pb::RememberResponse { memory_id }))
    }

    async fn recall(
        &self,
        request: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        authorize(&self.policy, &caller, "read")?;
        self.live.check(&caller).await?;
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
        if query.trim().is_empty() {
            return Err(invalid("query", "must not be empty").into());
        }
        let hits = self
            .tiers
            .recall(
                &caller.tenant,
                &query,
                &filter_from(confine_filter(&caller, filter)?)?,
                top_k,
                min_score,
            )
            .await
            .map_err(MemoryError::from)?;
        Ok(Response::new(pb::RecallResponse {
            memories: hits
                .into_iter()
                .map(|(item, score)| pb::RecalledMemory {
                    item: Some(item_to(item, pb::MemoryTier::Unspecified)),
                    score,
                })
                .collect(),
            mode: pb::RecallMode::Hybrid as i32,
        }))
    }

    async fn recent(
        &self,
        request: Request<pb::RecentRequest>,
    ) -> Result<Response<pb::RecentResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        authorize(&self.policy, &caller, "read")?;
        self.live.check(&caller).await?;
        let pb::RecentRequest { filter, limit } = request.into_inner();
        let filter = confine_filter(&caller, filter)?;
        let limit = match limit {
            0 => 20,
            n => n.min(1000) as usize,
        };
        let items = self
            .tiers
            .recent(&caller.tenant, &filter_from(filter)?, limit)
            .await
            .map_err(MemoryError::from)?;
        Ok(Response::new(pb::RecentResponse {
            items: items
                .into_iter()
                .map(|i| item_to(i, pb::MemoryTier::Unspecified))
                .collect(),
        }))
    }

    async fn forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        authorize(&self.policy, &caller, "write")?;
        self.live.check(&caller).await?;
        let pb::ForgetRequest {
            target,
            idempotency_key: _,
        } = request.into_inner();
        if caller.task.is_some() && matches!(target, Some(pb::forget_request::Target::MemoryId(_)))
        {
            return Err(MemoryError::Forbidden(
                "a run token forgets by its run's scope, not by memory id".into(),
            )
            .into());
        }
        let forgotten = match target {
            Some(pb::forget_request::Target::MemoryId(id)) => {
                // Forgetting is idempotent: a memory already gone is not an error
                // for a retry, but an unknown id on the first try is reported.
                let n = self
                    .tiers
                    .forget_id(&caller.tenant, &id)
                    .await
                    .map_err(MemoryError::from)?;
                if n == 0 {
                    return Err(MemoryError::NotFound(id).into());
                }
                n
            }
            // An empty scope forgets everything of the caller's tenant.
            Some(pb::forget_request::Target::Scope(scope)) => self
                .tiers
                .forget_scope(
                    &caller.tenant,
                    &filter_from(confine_filter(&caller, Some(scope))?)?,
                )
                .await
                .map_err(MemoryError::from)?,
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

/// Serves the memory service on `listener` until `shutdown`, authorizing by
/// `policy`.
pub async fn serve(
    config: Config,
    policy: Policy,
    listener: impl Into<amaos_mesh::server::Listener> + Send,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let tiers = Arc::new(
        tiers(&config)
            .await?
            .with_metrics(metrics::MemoryMetrics::register(&metrics)),
    );
    let sweeper = tokio::spawn(lifecycle(
        tiers.clone(),
        config.memory.sweep_interval,
        shutdown.clone(),
    ));
    let service = grpc_service(Memory::new(&config, tiers, policy)?, &config.limits);
    let served = amaos_mesh::server::serve(service, listener, &config, metrics, shutdown).await;
    // Wait for the sweeper to let go of the tiers, so the long-term store
    // is flushed and closed before this returns.
    sweeper.abort();
    let _ = sweeper.await;
    served?;
    Ok(())
}

/// Sweeps the tiers every `interval` until `shutdown`: due memories move to
/// long-term memory, expired and retained-out ones are deleted. A failed
/// sweep is logged and tried again next time; nothing is removed from the
/// hot tier before it is stored long-term.
pub async fn lifecycle(tiers: Arc<Tiers>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match tiers.sweep().await {
            Ok(swept) if swept.moved + swept.dropped > 0 => {
                tracing::debug!(
                    moved = swept.moved,
                    dropped = swept.dropped,
                    "memory lifecycle sweep"
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "memory lifecycle sweep failed; retrying next interval")
            }
        }
    }
}
