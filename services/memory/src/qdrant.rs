//! The long-term tier on a Qdrant server, through qdrant-client (gRPC).
//!
//! The same layout as the embedded engine ([`crate::longterm`]): one
//! collection for every tenant, the tenant an indexed payload key marked
//! `is_tenant`, the same payload fields. The request builders are plain
//! functions so the contract test can check what is sent without a server;
//! the conformance suite runs against a real server when `AMAOS_QDRANT_URL`
//! is set.

use std::time::Duration;

use futures::future::BoxFuture;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Direction, Distance, FieldType, Filter as QFilter,
    KeywordIndexParamsBuilder, OrderByBuilder, PointId, PointStruct, Range, ScrollPointsBuilder,
    SearchParamsBuilder, SearchPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder,
};

use crate::hot::TierError;
use crate::item::{Filter, Item, Stored};
use crate::longterm::{
    INTEGER_FIELDS, KEYWORD_FIELDS, LongTerm, SEARCH_EF, Selector, from_payload, payload,
};

fn qdrant_error(e: impl ToString) -> TierError {
    TierError::new("qdrant", e)
}

/// The Qdrant filter selecting `filter`'s memories, of `tenant` when given,
/// not of `not_tenants`, expired by `expired_by` when given.
pub fn filter(
    tenant: Option<&str>,
    not_tenants: &[String],
    filter: &Filter,
    expired_by: Option<u64>,
) -> QFilter {
    let mut must = Vec::new();
    if let Some(t) = tenant {
        must.push(Condition::matches("tenant", t.to_owned()));
    }
    for (field, value) in [
        ("team", &filter.team),
        ("agent", &filter.agent),
        ("session_id", &filter.session_id),
    ] {
        if !value.is_empty() {
            must.push(Condition::matches(field, value.clone()));
        }
    }
    if !filter.kinds.is_empty() {
        must.push(Condition::matches(
            "kind",
            filter
                .kinds
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect::<Vec<_>>(),
        ));
    }
    if filter.after_ms.is_some() || filter.before_ms.is_some() {
        must.push(Condition::range(
            "created_ms",
            Range {
                gte: filter.after_ms.map(|v| v as f64),
                lt: filter.before_ms.map(|v| v as f64),
                ..Default::default()
            },
        ));
    }
    if let Some(by) = expired_by {
        must.push(Condition::range(
            "expires_ms",
            Range {
                lte: Some(by as f64),
                ..Default::default()
            },
        ));
    }
    let mut f = QFilter::must(must);
    f.must_not = not_tenants
        .iter()
        .map(|t| Condition::matches("tenant", t.clone()))
        .collect();
    f
}

/// The point one memory is stored as.
pub fn point(tenant: &str, stored: Stored) -> PointStruct {
    let p = payload(tenant, &stored.item);
    PointStruct::new(stored.item.id, stored.vector, p)
}

fn item_of(
    payload: std::collections::HashMap<String, qdrant_client::qdrant::Value>,
) -> Option<Item> {
    let map: serde_json::Map<String, serde_json::Value> = payload
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::from(v)))
        .collect();
    from_payload(&map)
}

/// A Qdrant server's collection.
pub struct QdrantLongTerm {
    client: Qdrant,
    collection: String,
}

impl QdrantLongTerm {
    /// Connects to `url` (gRPC, e.g. `http://127.0.0.1:6334`) and creates
    /// `collection` with its payload indexes if it does not exist.
    pub async fn connect(
        url: &str,
        collection: &str,
        api_key_env: Option<&str>,
        dimension: usize,
    ) -> Result<Self, TierError> {
        let api_key = match api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                qdrant_error(format!(
                    "config key `memory.qdrant_api_key_env`: environment variable {var} is not set"
                ))
            })?),
            None => None,
        };
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(qdrant_error)?;
        let this = Self {
            client,
            collection: collection.to_owned(),
        };
        if !this
            .client
            .collection_exists(collection)
            .await
            .map_err(qdrant_error)?
        {
            this.client
                .create_collection(
                    CreateCollectionBuilder::new(collection).vectors_config(
                        VectorParamsBuilder::new(dimension as u64, Distance::Cosine),
                    ),
                )
                .await
                .map_err(qdrant_error)?;
            for field in KEYWORD_FIELDS {
                let mut index =
                    CreateFieldIndexCollectionBuilder::new(collection, field, FieldType::Keyword)
                        .wait(true);
                if field == "tenant" {
                    index = index
                        .field_index_params(KeywordIndexParamsBuilder::default().is_tenant(true));
                }
                this.client
                    .create_field_index(index)
                    .await
                    .map_err(qdrant_error)?;
            }
            for field in INTEGER_FIELDS {
                this.client
                    .create_field_index(
                        CreateFieldIndexCollectionBuilder::new(
                            collection,
                            field,
                            FieldType::Integer,
                        )
                        .wait(true),
                    )
                    .await
                    .map_err(qdrant_error)?;
            }
        }
        Ok(this)
    }

    async fn count_filter(&self, f: QFilter) -> Result<u64, TierError> {
        Ok(self
            .client
            .count(
                CountPointsBuilder::new(&self.collection)
                    .filter(f)
                    .exact(true),
            )
            .await
            .map_err(qdrant_error)?
            .result
            .map_or(0, |r| r.count))
    }

    async fn delete_filter(&self, f: QFilter) -> Result<u64, TierError> {
        let n = self.count_filter(f.clone()).await?;
        if n > 0 {
            self.client
                .delete_points(
                    DeletePointsBuilder::new(&self.collection)
                        .points(f)
                        .wait(true),
                )
                .await
                .map_err(qdrant_error)?;
        }
        Ok(n)
    }
}

impl LongTerm for QdrantLongTerm {
    fn name(&self) -> &'static str {
        "qdrant"
    }

    fn upsert<'a>(
        &'a self,
        tenant: &'a str,
        batch: Vec<Stored>,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move {
            let points: Vec<PointStruct> = batch.into_iter().map(|s| point(tenant, s)).collect();
            self.client
                .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
                .await
                .map_err(qdrant_error)?;
            Ok(())
        })
    }

    fn search<'a>(
        &'a self,
        tenant: &'a str,
        vector: &'a [f32],
        f: &'a Filter,
        top_k: usize,
    ) -> BoxFuture<'a, Result<Vec<(Item, f32)>, TierError>> {
        Box::pin(async move {
            let response = self
                .client
                .search_points(
                    SearchPointsBuilder::new(&self.collection, vector.to_vec(), top_k as u64)
                        .filter(filter(Some(tenant), &[], f, None))
                        .params(SearchParamsBuilder::default().hnsw_ef(SEARCH_EF as u64))
                        .with_payload(true),
                )
                .await
                .map_err(qdrant_error)?;
            Ok(response
                .result
                .into_iter()
                .filter_map(|p| Some((item_of(p.payload)?, p.score)))
                .collect())
        })
    }

    fn recent<'a>(
        &'a self,
        tenant: &'a str,
        f: &'a Filter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Item>, TierError>> {
        Box::pin(async move {
            let response = self
                .client
                .scroll(
                    ScrollPointsBuilder::new(&self.collection)
                        .filter(filter(Some(tenant), &[], f, None))
                        .limit(limit as u32)
                        .with_payload(true)
                        .order_by(
                            OrderByBuilder::new("created_ms").direction(Direction::Desc as i32),
                        ),
                )
                .await
                .map_err(qdrant_error)?;
            Ok(response
                .result
                .into_iter()
                .filter_map(|p| item_of(p.payload))
                .collect())
        })
    }

    fn delete_ids<'a>(
        &'a self,
        tenant: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, TierError>> {
        Box::pin(async move {
            let mut f = filter(Some(tenant), &[], &Filter::default(), None);
            f.must.push(Condition::has_id(
                ids.iter().map(|id| PointId::from(id.clone())),
            ));
            self.delete_filter(f).await
        })
    }

    fn delete<'a>(&'a self, selector: &'a Selector<'a>) -> BoxFuture<'a, Result<u64, TierError>> {
        Box::pin(async move {
            self.delete_filter(filter(
                selector.tenant,
                selector.not_tenants,
                &selector.filter,
                selector.expired_by,
            ))
            .await
        })
    }

    fn count<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<u64, TierError>> {
        Box::pin(async move {
            self.count_filter(filter(Some(tenant), &[], &Filter::default(), None))
                .await
        })
    }
}
