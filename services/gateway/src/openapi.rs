//! OpenAPI 3.1 documents generated from the same route table and
//! descriptors the gateway transcodes with: one for every service together
//! (`/openapi.json`) and one per service (`/openapi/<service>.json`).
//! Schemas follow the proto3 JSON mapping the gateway speaks:
//! lowerCamelCase names, 64-bit integers as strings, enums as names,
//! `Timestamp` as RFC 3339, `Duration` as `"1.5s"`.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use crate::routes::Route;

/// The rendered documents.
pub struct Documents {
    all: String,
    services: BTreeMap<&'static str, String>,
}

impl Documents {
    /// Renders every document once, at start.
    pub fn build(pool: &DescriptorPool, routes: &[Route]) -> Self {
        let all = document(pool, routes, "AMAOS API").to_string();
        let mut names: Vec<&'static str> = routes.iter().map(|r| r.service).collect();
        names.dedup();
        names.sort_unstable();
        names.dedup();
        let services = names
            .into_iter()
            .map(|name| {
                let own: Vec<Route> = routes
                    .iter()
                    .filter(|r| r.service == name)
                    .cloned()
                    .collect();
                (
                    name,
                    document(pool, &own, &format!("AMAOS {name} API")).to_string(),
                )
            })
            .collect();
        Self { all, services }
    }

    /// The document of every service.
    pub fn all(&self) -> &str {
        &self.all
    }

    /// One service's document.
    pub fn service(&self, name: &str) -> Option<&str> {
        self.services.get(name).map(String::as_str)
    }

    /// The services with a document.
    pub fn names(&self) -> Vec<&'static str> {
        self.services.keys().copied().collect()
    }
}

/// One document for `routes`.
pub fn document(pool: &DescriptorPool, routes: &[Route], title: &str) -> Value {
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for route in routes {
        let binding = seen.entry(route.rpc.full_name().to_owned()).or_default();
        let operation = operation(route, *binding, &mut wanted);
        *binding += 1;
        paths
            .entry(route.template.openapi_path())
            .or_default()
            .insert(route.method.as_str().to_ascii_lowercase(), operation);
    }
    wanted.insert("google.rpc.Status".to_owned());
    let mut schemas = serde_json::Map::new();
    let mut queue: Vec<String> = wanted.into_iter().collect();
    while let Some(name) = queue.pop() {
        if schemas.contains_key(&name) {
            continue;
        }
        let Some(message) = pool.get_message_by_name(&name) else {
            continue;
        };
        let mut refs = BTreeSet::new();
        schemas.insert(name.clone(), message_schema(&message, &mut refs));
        queue.extend(refs.into_iter().filter(|r| !schemas.contains_key(r)));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "v1",
            "description": "REST over the AMAOS gRPC services, generated from their google.api.http rules. Errors are google.rpc.Status as JSON; server streams are text/event-stream or application/x-ndjson by Accept."
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An AMAOS API key (amaos_…) or a token issued by the auth service."
                }
            }
        }
    })
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn operation(route: &Route, binding: usize, wanted: &mut BTreeSet<String>) -> Value {
    let input = route.rpc.input();
    let output = route.rpc.output();
    let service = route.service;
    let mut parameters = Vec::new();
    let bound: Vec<&str> = route
        .template
        .variables()
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    for variable in route.template.variables() {
        let schema = crate::transcode::field_path(&input, &variable.field)
            .ok()
            .and_then(|p| p.last().cloned())
            .map(|f| field_schema(&f, &mut BTreeSet::new()))
            .unwrap_or_else(|| json!({ "type": "string" }));
        parameters.push(json!({
            "name": variable.field,
            "in": "path",
            "required": true,
            "schema": schema,
        }));
    }
    if route.body != "*" {
        for field in input.fields() {
            let top = field.name();
            if bound.iter().any(|b| b.split('.').next() == Some(top)) || route.body == top {
                continue;
            }
            if let Some(schema) = query_schema(&field) {
                parameters.push(json!({
                    "name": field.json_name(),
                    "in": "query",
                    "required": false,
                    "schema": schema,
                }));
            }
        }
    }
    if route.rpc.is_server_streaming() {
        parameters.push(json!({
            "name": "Last-Event-ID",
            "in": "header",
            "required": false,
            "description": "Resume after this event sequence number (SSE).",
            "schema": { "type": "string" },
        }));
    }
    let mut op = serde_json::Map::new();
    op.insert("operationId".into(), json!(route.operation_id(binding)));
    op.insert("tags".into(), json!([service]));
    op.insert(
        "summary".into(),
        json!(format!("{} ({})", route.rpc.name(), route.rpc.full_name())),
    );
    if !parameters.is_empty() {
        op.insert("parameters".into(), Value::Array(parameters));
    }
    let body_schema = match route.body.as_str() {
        "" => None,
        "*" => {
            wanted.insert(input.full_name().to_owned());
            Some(reference(input.full_name()))
        }
        field => input
            .get_field_by_name(field)
            .map(|f| field_schema(&f, wanted)),
    };
    if let Some(schema) = body_schema {
        op.insert(
            "requestBody".into(),
            json!({ "required": true, "content": { "application/json": { "schema": schema } } }),
        );
    }
    let response_schema = if route.response_body.is_empty() {
        wanted.insert(output.full_name().to_owned());
        reference(output.full_name())
    } else {
        output
            .get_field_by_name(&route.response_body)
            .map(|f| field_schema(&f, wanted))
            .unwrap_or_else(|| json!({}))
    };
    let ok = if route.rpc.is_server_streaming() {
        json!({
            "description": "A stream of messages: Server-Sent Events (`id:` is the sequence, `event: end` closes it) or one JSON object per line.",
            "content": {
                "text/event-stream": { "schema": { "type": "string" } },
                "application/x-ndjson": { "schema": response_schema },
            }
        })
    } else {
        json!({
            "description": "OK",
            "content": { "application/json": { "schema": response_schema } }
        })
    };
    op.insert(
        "responses".into(),
        json!({
            "200": ok,
            "default": {
                "description": "An error: google.rpc.Status, with details (BadRequest, RetryInfo, …).",
                "content": { "application/json": { "schema": reference("google.rpc.Status") } }
            }
        }),
    );
    Value::Object(op)
}

/// A field as a query parameter: scalars, enums, their lists, and
/// well-known types written as strings.
fn query_schema(field: &FieldDescriptor) -> Option<Value> {
    if field.is_map() {
        return None;
    }
    let scalar = match field.kind() {
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask" => well_known(m.full_name())?,
            _ => return None,
        },
        _ => kind_schema(&field.kind(), &mut BTreeSet::new()),
    };
    Some(if field.is_list() {
        json!({ "type": "array", "items": scalar })
    } else {
        scalar
    })
}

fn message_schema(message: &MessageDescriptor, refs: &mut BTreeSet<String>) -> Value {
    if let Some(schema) = well_known(message.full_name()) {
        return schema;
    }
    let mut properties = serde_json::Map::new();
    for field in message.fields() {
        properties.insert(field.json_name().to_owned(), field_schema(&field, refs));
    }
    json!({ "type": "object", "properties": properties })
}

fn field_schema(field: &FieldDescriptor, refs: &mut BTreeSet<String>) -> Value {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        let value = entry.map_entry_value_field();
        return json!({
            "type": "object",
            "additionalProperties": kind_schema(&value.kind(), refs),
        });
    }
    let schema = kind_schema(&field.kind(), refs);
    if field.is_list() {
        json!({ "type": "array", "items": schema })
    } else {
        schema
    }
}

fn kind_schema(kind: &Kind, refs: &mut BTreeSet<String>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({ "type": "number" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({ "type": "integer", "format": "int32" })
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "format": "int64", "minimum": 0 })
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]+$" })
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]+$" })
        }
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            json!({ "type": "string", "enum": names })
        }
        Kind::Message(m) => match well_known(m.full_name()) {
            Some(schema) => schema,
            None => {
                refs.insert(m.full_name().to_owned());
                reference(m.full_name())
            }
        },
    }
}

/// The JSON forms of the well-known types.
fn well_known(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => {
            json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$", "examples": ["30s", "1.5s"] })
        }
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.FieldMask" => json!({ "type": "string" }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } },
            "required": ["@type"],
            "additionalProperties": true
        }),
        "google.protobuf.StringValue" => json!({ "type": "string" }),
        "google.protobuf.BoolValue" => json!({ "type": "boolean" }),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({ "type": "number" }),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({ "type": "integer" })
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => json!({ "type": "string" }),
        "google.protobuf.BytesValue" => json!({ "type": "string", "contentEncoding": "base64" }),
        _ => return None,
    })
}
