//! Property tests on every parser network input reaches in the tools
//! service: the built-in tools' argument checks (and the workspace path
//! checks behind them), the shell tool's arguments, `web_fetch`'s argument,
//! URL and address checks and its HTML reduction, the MCP registration
//! checks and the JSON Schema validation of MCP tool arguments (through a
//! real, in-process MCP server whose tools' schemas are hostile).
//!
//! Each property asserts that nothing panics, that the parsers agree with
//! an independent statement of their rules, and that work stays bounded by
//! construction (outputs no larger than inputs, inputs at and just past the
//! size limits are decided). No wall-clock time is asserted.
//!
//! # Layout
//!
//! - `builtins`: the built-in tools' arguments and workspace paths, and the shell tool's arguments.
//! - `web_checks`: `web_fetch`'s argument, address and URL checks, and its HTML reduction.
//! - `mcp_checks`: MCP registration checks and argument validation against hostile schemas.

mod builtins;
mod mcp_checks;
mod web_checks;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amaos_tools::ToolError;
use amaos_tools::builtin::{Builtin, Call, FileLimits};
use amaos_tools::mcp::{self, AddressPolicy, Mcp, Scope, Transport};
use amaos_tools::shell::{self, ShellCall};
use amaos_tools::web;
use amaos_tools::workspace::{Bounds, Workspace};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Map, Number, Value};

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Text that is hard on parsers: path pieces, NUL, unicode, escapes.
fn piece() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("...".to_owned()),
        Just("a".to_owned()),
        Just("dir".to_owned()),
        Just("file.txt".to_owned()),
        Just("escape".to_owned()),
        Just("\0".to_owned()),
        Just("x\0y".to_owned()),
        Just("é".to_owned()),
        Just("🦀".to_owned()),
        Just("\u{202e}".to_owned()),
        Just("\u{feff}".to_owned()),
        Just("a b".to_owned()),
        Just("\\".to_owned()),
        Just("..\\..".to_owned()),
        Just("C:".to_owned()),
        Just("~".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("\n".to_owned()),
        Just(" ".to_owned()),
        Just("n".repeat(300)),
        "[a-z0-9._-]{1,12}",
        any::<String>().prop_map(|s| s.chars().take(16).collect()),
    ]
    .boxed()
}

/// A path-like string: pieces joined by separators, maybe rooted.
fn path_like() -> BoxedStrategy<String> {
    (
        prop_oneof![Just(""), Just("/"), Just("//"), Just("./"), Just("../")],
        vec(piece(), 0..6),
        prop_oneof![Just("/"), Just("//"), Just("/./")],
        any::<bool>(),
    )
        .prop_map(|(lead, parts, sep, trailing)| {
            let mut s = format!("{lead}{}", parts.join(sep));
            if trailing {
                s.push('/');
            }
            s
        })
        .boxed()
}

/// Strings of any kind, including ones at and just past the size limits.
fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => piece(),
        4 => path_like(),
        2 => any::<String>(),
        1 => (0usize..4, prop_oneof![Just("a"), Just("é"), Just("🦀"), Just(" ")], prop_oneof![
            Just(1usize), Just(1024), Just(4096), Just(shell::MAX_COMMAND_BYTES), Just(5000)
        ])
            .prop_map(|(extra, unit, limit)| {
                let n = (limit / unit.len()).saturating_sub(1) + extra;
                unit.repeat(n)
            }),
        1 => (1usize..3000).prop_map(|n| "a/".repeat(n)),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        (0u64..400).prop_map(|n| Value::Number(n.into())),
        (-1e6f64..1e6).prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        (1u32..300).prop_filter_map("float", |n| Number::from_f64(f64::from(n))
            .map(Value::Number)),
    ]
    .boxed()
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        hostile_string().prop_map(Value::String),
    ]
    .boxed()
}

/// Keys the tools know, mixed with hostile ones.
fn key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop_oneof![
            Just("path"),
            Just("content"),
            Just("append"),
            Just("query"),
            Just("command"),
            Just("timeout_seconds"),
            Just("url"),
            Just("Path"),
            Just("path\0"),
        ]
        .prop_map(str::to_owned),
        1 => hostile_string(),
    ]
    .boxed()
}

/// Any JSON value, nested at most `depth` levels, bounded in size.
fn json(depth: u32) -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(depth, 96, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// An argument map: known keys, typed well or badly, and stray ones.
fn args() -> BoxedStrategy<Map<String, Value>> {
    let value = prop_oneof![
        3 => hostile_string().prop_map(Value::String),
        1 => leaf(),
        1 => json(4),
    ];
    btree_map(key(), value, 0..5)
        .prop_map(|m| m.into_iter().collect())
        .boxed()
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn field_of(e: &ToolError) -> Option<&str> {
    match e {
        ToolError::InvalidArgument { field, .. } => Some(field),
        _ => None,
    }
}

fn schema_valid(schema: &Value, instance: &Map<String, Value>) -> bool {
    jsonschema::validator_for(schema)
        .expect("the tool's own schema compiles")
        .is_valid(&Value::Object(instance.clone()))
}
