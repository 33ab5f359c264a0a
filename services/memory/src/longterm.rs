//! The long-term tier: memories with their embeddings, searched by vector
//! similarity under filters, always within one tenant.
//!
//! [`LongTerm`] is what every backend offers; [`EdgeLongTerm`] is Qdrant's
//! engine in this process (qdrant-edge, persisted under the data
//! directory), and [`crate::qdrant::QdrantLongTerm`] is a Qdrant server.
//! Both keep one collection for all tenants with the tenant as an indexed
//! payload key (Qdrant's multitenancy layout), and every query carries a
//! tenant condition built here, never by the caller.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use qdrant_edge::external::serde_json::{Map, Value};
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Direction, Distance, EdgeConfigBuilder, EdgeShard,
    EdgeVectorParamsBuilder, FieldCondition, FieldIndexOperations, Filter as QFilter, JsonPath,
    KeywordIndexParams, Match, OrderBy, OrderByInterface, PayloadFieldSchema, PayloadSchemaParams,
    PayloadSchemaType, PointId, PointInsertOperations, PointOperations, PointStruct, QueryEnum,
    Range, ScrollRequest, SearchParams, SearchRequest, UpdateOperation, WithPayloadInterface,
    WithVector,
};

use crate::hot::TierError;
use crate::item::{Filter, Item, Kind, Stored};

/// Which long-term memories a deletion selects: all conditions hold.
#[derive(Clone, Debug, Default)]
pub struct Selector<'a> {
    /// Only this tenant; `None` for every tenant (retention sweeps).
    pub tenant: Option<&'a str>,
    /// Not these tenants (they have their own retention).
    pub not_tenants: &'a [String],
    /// The memories' fields.
    pub filter: Filter,
    /// Only memories whose own expiry is at or before this time (ms).
    pub expired_by: Option<u64>,
}

/// What every long-term backend offers.
pub trait LongTerm: Send + Sync {
    /// The backend's name, for errors and metrics.
    fn name(&self) -> &'static str;
    /// Stores (or replaces, by id) these memories of the tenant.
    fn upsert<'a>(
        &'a self,
        tenant: &'a str,
        batch: Vec<Stored>,
    ) -> BoxFuture<'a, Result<(), TierError>>;
    /// The `top_k` memories of the tenant nearest to `vector` among those
    /// `filter` selects, best first, with their cosine similarity.
    fn search<'a>(
        &'a self,
        tenant: &'a str,
        vector: &'a [f32],
        filter: &'a Filter,
        top_k: usize,
    ) -> BoxFuture<'a, Result<Vec<(Item, f32)>, TierError>>;
    /// The tenant's newest memories `filter` selects, newest first.
    fn recent<'a>(
        &'a self,
        tenant: &'a str,
        filter: &'a Filter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Item>, TierError>>;
    /// Deletes these memories of the tenant; how many were there.
    fn delete_ids<'a>(
        &'a self,
        tenant: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, TierError>>;
    /// Deletes what `selector` selects; how many.
    fn delete<'a>(&'a self, selector: &'a Selector<'a>) -> BoxFuture<'a, Result<u64, TierError>>;
    /// How many memories the tenant has in this tier.
    fn count<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<u64, TierError>>;
    /// Index upkeep between sweeps (building HNSW graphs for grown segments).
    fn maintain(&self) -> BoxFuture<'_, Result<(), TierError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The payload of one memory, as both Qdrant backends store it.
pub fn payload(tenant: &str, item: &Item) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("tenant".into(), tenant.into());
    p.insert("memory_id".into(), item.id.clone().into());
    p.insert("team".into(), item.team.clone().into());
    p.insert("agent".into(), item.agent.clone().into());
    p.insert("session_id".into(), item.session_id.clone().into());
    p.insert("kind".into(), item.kind.as_str().into());
    p.insert("text".into(), item.text.clone().into());
    p.insert(
        "metadata".into(),
        Value::Object(
            item.metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    );
    p.insert("created_ms".into(), item.created_ms.into());
    if let Some(e) = item.expires_ms {
        p.insert("expires_ms".into(), e.into());
    }
    p
}

/// The memory a payload holds; `None` when it is not one of ours.
pub fn from_payload(p: &Map<String, Value>) -> Option<Item> {
    let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(Item {
        id: text("memory_id")?,
        team: text("team").unwrap_or_default(),
        agent: text("agent").unwrap_or_default(),
        session_id: text("session_id").unwrap_or_default(),
        kind: Kind::parse(&text("kind")?)?,
        text: text("text")?,
        metadata: p
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
        created_ms: p.get("created_ms").and_then(Value::as_u64)?,
        expires_ms: p.get("expires_ms").and_then(Value::as_u64),
    })
}

/// Payload keys with an index: the tenant (marked as the tenant key, so
/// Qdrant keeps each tenant's points together), the filterable fields, and
/// the creation time for ranges and ordering.
pub const KEYWORD_FIELDS: [&str; 5] = ["tenant", "team", "agent", "session_id", "kind"];
/// The integer payload keys with an index.
pub const INTEGER_FIELDS: [&str; 2] = ["created_ms", "expires_ms"];

/// HNSW beam width at search time: recall@10 ≥ 0.95 on 384-d vectors.
pub const SEARCH_EF: usize = 128;

fn key(name: &str) -> JsonPath {
    // Only this module's constant, plain field names get here.
    name.parse().expect("a plain payload key parses")
}

fn matches(field: &str, value: &str) -> Condition {
    Condition::Field(FieldCondition::new_match(
        key(field),
        Match::from(value.to_owned()),
    ))
}

fn edge_filter(tenant: Option<&str>, not_tenants: &[String], filter: &Filter) -> QFilter {
    let mut must = Vec::new();
    if let Some(t) = tenant {
        must.push(matches("tenant", t));
    }
    for (field, value) in [
        ("team", &filter.team),
        ("agent", &filter.agent),
        ("session_id", &filter.session_id),
    ] {
        if !value.is_empty() {
            must.push(matches(field, value));
        }
    }
    if !filter.kinds.is_empty() {
        must.push(Condition::Field(FieldCondition::new_match(
            key("kind"),
            Match::from(
                filter
                    .kinds
                    .iter()
                    .map(|k| k.as_str().to_owned())
                    .collect::<Vec<_>>(),
            ),
        )));
    }
    if filter.after_ms.is_some() || filter.before_ms.is_some() {
        must.push(Condition::Field(FieldCondition::new_range(
            key("created_ms"),
            Range {
                gte: filter.after_ms.map(|v| (v as f64).into()),
                lt: filter.before_ms.map(|v| (v as f64).into()),
                gt: None,
                lte: None,
            },
        )));
    }
    let must_not: Vec<Condition> = not_tenants.iter().map(|t| matches("tenant", t)).collect();
    QFilter {
        must: Some(must),
        must_not: (!must_not.is_empty()).then_some(must_not),
        should: None,
        min_should: None,
    }
}

/// Qdrant's engine in this process: one shard under `dir`.
pub struct EdgeLongTerm {
    shard: Arc<EdgeShard>,
}

fn edge_error(e: impl ToString) -> TierError {
    TierError::new("qdrant-edge", e)
}

impl EdgeLongTerm {
    /// Opens the shard in `dir`, creating it (with its payload indexes) the
    /// first time, for vectors of `dimension`.
    pub fn open(dir: &Path, dimension: usize) -> Result<Self, TierError> {
        std::fs::create_dir_all(dir).map_err(|e| edge_error(format!("{}: {e}", dir.display())))?;
        let fresh = !dir.join("segments").is_dir();
        let config = EdgeConfigBuilder::new()
            .vector(
                "",
                EdgeVectorParamsBuilder::new(dimension, Distance::Cosine).build(),
            )
            .build();
        let shard = if fresh {
            EdgeShard::new(dir, config).map_err(edge_error)?
        } else {
            EdgeShard::load(dir, None).map_err(edge_error)?
        };
        let vectors = shard.config().vectors.get("").map(|v| v.size);
        if vectors != Some(dimension) {
            return Err(edge_error(format!(
                "{} holds vectors of {vectors:?} dimensions; the embedder makes {dimension}",
                dir.display()
            )));
        }
        if fresh {
            for field in KEYWORD_FIELDS {
                let schema = PayloadFieldSchema::FieldParams(PayloadSchemaParams::Keyword(
                    KeywordIndexParams {
                        is_tenant: Some(field == "tenant"),
                        ..Default::default()
                    },
                ));
                create_index(&shard, field, schema)?;
            }
            for field in INTEGER_FIELDS {
                create_index(
                    &shard,
                    field,
                    PayloadFieldSchema::FieldType(PayloadSchemaType::Integer),
                )?;
            }
        }
        Ok(Self {
            shard: Arc::new(shard),
        })
    }

    /// Builds HNSW indexes for segments that grew past the indexing
    /// threshold (blocking; the lifecycle runs it on the blocking pool).
    pub fn optimize(&self) -> Result<bool, TierError> {
        self.shard.optimize().map_err(edge_error)
    }

    /// Runs `f` on the shard on the blocking pool.
    fn blocking<'a, T: Send + 'static>(
        &'a self,
        f: impl FnOnce(&EdgeShard) -> Result<T, TierError> + Send + 'static,
    ) -> BoxFuture<'a, Result<T, TierError>> {
        let shard = self.shard.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&shard))
                .await
                .map_err(edge_error)?
        })
    }
}

fn create_index(
    shard: &EdgeShard,
    field: &str,
    schema: PayloadFieldSchema,
) -> Result<(), TierError> {
    shard
        .update(UpdateOperation::FieldIndexOperation(
            FieldIndexOperations::CreateIndex(CreateIndex {
                field_name: key(field),
                field_schema: Some(schema),
            }),
        ))
        .map_err(edge_error)
}

fn point_id(id: &str) -> Result<PointId, TierError> {
    id.parse::<qdrant_edge::external::uuid::Uuid>()
        .map(PointId::Uuid)
        .map_err(|_| edge_error(format!("memory id `{id}` is not a UUID")))
}

fn count_edge(shard: &EdgeShard, filter: QFilter) -> Result<u64, TierError> {
    shard
        .count(CountRequest {
            filter: Some(filter),
            exact: true,
        })
        .map(|n| n as u64)
        .map_err(edge_error)
}

impl LongTerm for EdgeLongTerm {
    fn name(&self) -> &'static str {
        "qdrant-edge"
    }

    fn upsert<'a>(
        &'a self,
        tenant: &'a str,
        batch: Vec<Stored>,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        let tenant = tenant.to_owned();
        self.blocking(move |shard| {
            let points = batch
                .into_iter()
                .map(|s| {
                    Ok(PointStruct::new(
                        point_id(&s.item.id)?,
                        s.vector,
                        Value::Object(payload(&tenant, &s.item)),
                    )
                    .0)
                })
                .collect::<Result<Vec<_>, TierError>>()?;
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
                ))
                .map_err(edge_error)
        })
    }

    fn search<'a>(
        &'a self,
        tenant: &'a str,
        vector: &'a [f32],
        filter: &'a Filter,
        top_k: usize,
    ) -> BoxFuture<'a, Result<Vec<(Item, f32)>, TierError>> {
        let q = edge_filter(Some(tenant), &[], filter);
        let vector = vector.to_vec();
        self.blocking(move |shard| {
            let points = shard
                .search(SearchRequest {
                    query: QueryEnum::Nearest(qdrant_edge::NamedQuery {
                        query: vector.into(),
                        using: None,
                    }),
                    filter: Some(q),
                    params: Some(SearchParams {
                        hnsw_ef: Some(SEARCH_EF),
                        ..Default::default()
                    }),
                    limit: top_k,
                    offset: 0,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: Some(WithVector::Bool(false)),
                    score_threshold: None,
                })
                .map_err(edge_error)?;
            Ok(points
                .into_iter()
                .filter_map(|p| Some((from_payload(&p.payload?.0)?, p.score)))
                .collect())
        })
    }

    fn recent<'a>(
        &'a self,
        tenant: &'a str,
        filter: &'a Filter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Item>, TierError>> {
        let q = edge_filter(Some(tenant), &[], filter);
        self.blocking(move |shard| {
            let (records, _) = shard
                .scroll(ScrollRequest {
                    offset: None,
                    limit: Some(limit),
                    filter: Some(q),
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(false),
                    order_by: Some(OrderByInterface::Struct(OrderBy {
                        key: key("created_ms"),
                        direction: Some(Direction::Desc),
                        start_from: None,
                    })),
                })
                .map_err(edge_error)?;
            Ok(records
                .into_iter()
                .filter_map(|r| from_payload(&r.payload?.0))
                .collect())
        })
    }

    fn delete_ids<'a>(
        &'a self,
        tenant: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, TierError>> {
        let tenant = tenant.to_owned();
        let ids = ids.to_vec();
        self.blocking(move |shard| {
            // Only the tenant's own points, whatever ids were asked for.
            let mut q = edge_filter(Some(&tenant), &[], &Filter::default());
            if let Some(must) = q.must.as_mut() {
                must.push(Condition::Field(FieldCondition::new_match(
                    key("memory_id"),
                    Match::from(ids),
                )));
            }
            let n = count_edge(shard, q.clone())?;
            if n > 0 {
                shard
                    .update(UpdateOperation::PointOperation(
                        PointOperations::DeletePointsByFilter(q),
                    ))
                    .map_err(edge_error)?;
            }
            Ok(n)
        })
    }

    fn delete<'a>(&'a self, selector: &'a Selector<'a>) -> BoxFuture<'a, Result<u64, TierError>> {
        let mut q = edge_filter(selector.tenant, selector.not_tenants, &selector.filter);
        if let Some(by) = selector.expired_by
            && let Some(must) = q.must.as_mut()
        {
            must.push(Condition::Field(FieldCondition::new_range(
                key("expires_ms"),
                Range {
                    lte: Some((by as f64).into()),
                    lt: None,
                    gt: None,
                    gte: None,
                },
            )));
        }
        self.blocking(move |shard| {
            let n = count_edge(shard, q.clone())?;
            if n > 0 {
                shard
                    .update(UpdateOperation::PointOperation(
                        PointOperations::DeletePointsByFilter(q),
                    ))
                    .map_err(edge_error)?;
            }
            Ok(n)
        })
    }

    fn count<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<u64, TierError>> {
        let q = edge_filter(Some(tenant), &[], &Filter::default());
        self.blocking(move |shard| count_edge(shard, q))
    }

    fn maintain(&self) -> BoxFuture<'_, Result<(), TierError>> {
        self.blocking(|shard| shard.optimize().map(|_| ()).map_err(edge_error))
    }
}
