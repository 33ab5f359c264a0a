//! MCP: registration checks (no network) and argument validation against hostile schemas served by an in-process MCP server.

use super::web_checks::{resolves_a_name, runtime, url_like};
use super::*;

// ---------------------------------------------------------------------------
// MCP: registration checks (no network) and schema validation of arguments
// ---------------------------------------------------------------------------

/// mcp::tenant_secret, mcp::env_name_of and Scope::object on hostile
/// text: never panic; a tenant's secret is always under
/// `tenants/<tenant>/` with no empty, `.` or `..` segment; an environment
/// name is made only of `A-Z0-9_`, one per character.
#[test]
fn mcp_secret_paths_and_names_are_checked_without_panic() {
    let tenant = prop_oneof![Just("acme".to_owned()), "[a-z0-9-]{1,8}", piece()];
    let path = prop_oneof![
        (tenant.clone(), path_like()).prop_map(|(t, p)| format!("tenants/{t}/{p}")),
        path_like(),
        hostile_string(),
    ];
    runner(2048)
        .run(&(tenant, path), |(tenant, path)| {
            if mcp::tenant_secret(&tenant, &path) {
                let rest = path
                    .strip_prefix(&format!("{}/{tenant}/", mcp::TENANT_SECRETS))
                    .expect("under the tenant's prefix");
                prop_assert!(!rest.is_empty());
                for seg in rest.split('/') {
                    prop_assert!(
                        !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\')
                    );
                }
                // Another tenant never reaches it, unless one's name is the other's
                // followed by a path (`acme` vs `acme/x`), which tenant names cannot be.
                let other = format!("{tenant}x");
                prop_assert!(!mcp::tenant_secret(&other, &path));
            }
            let env = mcp::env_name_of(&path);
            prop_assert_eq!(env.chars().count(), path.chars().count());
            prop_assert!(
                env.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            );
            let object = Scope::Tenant(tenant.clone()).object(&path);
            prop_assert_eq!(object, format!("mcp/{tenant}/{path}"));
            Ok(())
        })
        .unwrap();
}

/// Mcp::check (a registration's checks, before any connection) on hostile
/// names, commands, secret paths and literal-host URLs: never panics; what
/// passes has a valid name, an absolute command, only the tenant's secrets
/// and a URL whose address `blocked` allows.
#[test]
fn mcp_registrations_are_checked_without_panic() {
    let rt = runtime();
    let mcp = Mcp::new(None, PathBuf::from("/nonexistent/mcp"), None);
    let name = prop_oneof![
        Just("demo".to_owned()),
        "[a-z0-9_-]{0,70}",
        hostile_string()
    ];
    let scope = prop_oneof![
        Just(Scope::Platform),
        Just(Scope::Tenant("acme".to_owned())),
        piece().prop_map(Scope::Tenant),
    ];
    let secret = prop_oneof![
        path_like().prop_map(|p| format!("tenants/acme/{p}")),
        path_like().prop_map(|p| format!("GITHUB_TOKEN=tenants/acme/{p}")),
        hostile_string(),
        (hostile_string(), hostile_string()).prop_map(|(a, b)| format!("{a}={b}")),
    ];
    // (argv, secret_env) for stdio, (url, bearer_secret) for http: Transport has no Debug.
    let transport = prop_oneof![
        (vec(hostile_string(), 0..3), vec(secret.clone(), 0..3)).prop_map(Ok),
        (
            Just(vec!["/bin/server".to_owned()]),
            vec(secret.clone(), 0..3)
        )
            .prop_map(Ok),
        (url_like(), prop::option::of(secret)).prop_map(Err),
    ];
    runner(1024)
        .run(&(scope, name, transport), |(scope, name, transport)| {
            let transport = match transport {
                Ok((argv, secret_env)) => Transport::Stdio {
                    argv,
                    read_only: Vec::new(),
                    secret_env,
                },
                Err((url, bearer_secret)) => Transport::Http { url, bearer_secret },
            };
            // Registrations that would resolve a name (network) are skipped.
            if let Transport::Http { url, .. } = &transport
                && url::Url::parse(url).is_ok_and(|u| resolves_a_name(&u))
            {
                return Ok(());
            }
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            let secret_ok = |path: &str| match &scope {
                Scope::Platform => true,
                Scope::Tenant(t) => mcp::tenant_secret(t, path),
            };
            let expected = name_ok
                && match &transport {
                    Transport::Stdio {
                        argv, secret_env, ..
                    } => {
                        argv.first().is_some_and(|c| c.starts_with('/'))
                            && secret_env.iter().all(|e| {
                                secret_ok(e.split_once('=').map_or(e.as_str(), |(_, p)| p))
                            })
                    }
                    Transport::Http { url, bearer_secret } => {
                        bearer_secret.as_deref().is_none_or(secret_ok)
                            && url::Url::parse(url).is_ok_and(|u| {
                                matches!(u.scheme(), "http" | "https")
                                    && u.username().is_empty()
                                    && u.password().is_none()
                                    && match u.host() {
                                        Some(url::Host::Ipv4(ip)) => {
                                            web::blocked(IpAddr::V4(ip)).is_none()
                                        }
                                        Some(url::Host::Ipv6(ip)) => {
                                            web::blocked(IpAddr::V6(ip)).is_none()
                                        }
                                        _ => false,
                                    }
                            })
                    }
                };
            let result = rt.block_on(mcp.check(&scope, &name, transport));
            prop_assert_eq!(result.is_ok(), expected, "{:?}", result.err());
            Ok(())
        })
        .unwrap();
}

/// Keyword-shaped JSON Schemas, nested, with values of the right type or
/// not, `$ref`s (local, recursive, dangling, remote), hostile patterns and
/// formats, and arbitrary objects.
fn schema(depth: u32) -> BoxedStrategy<Value> {
    let leaf_schema = prop_oneof![
        Just(Value::Bool(true)),
        Just(Value::Bool(false)),
        prop::sample::select(vec![
            "string", "integer", "number", "object", "array", "boolean", "null", "bogus"
        ])
        .prop_map(|t| serde_json::json!({"type": t})),
        Just(serde_json::json!({"$ref": "#"})),
        Just(serde_json::json!({"$ref": "#/properties/a"})),
        Just(serde_json::json!({"$ref": "#/$defs/loop"})),
        Just(serde_json::json!({"$ref": "#/nowhere/%25/~2"})),
        Just(serde_json::json!({"$ref": "http://169.254.169.254/latest/meta-data"})),
        Just(serde_json::json!({"$ref": "file:///etc/passwd"})),
        Just(serde_json::json!({"$dynamicRef": "#meta"})),
        prop_oneof![
            Just("^(a+)+$"),
            Just("(a|aa)*b"),
            Just("(?=a)*"),
            Just("["),
            Just("\\p{L}+"),
            Just("(?<n>a)\\k<n>"),
            Just("a{1000000}"),
        ]
        .prop_map(|p| serde_json::json!({"type": "string", "pattern": p})),
        prop::sample::select(vec![
            "email",
            "uri",
            "date-time",
            "ipv4",
            "regex",
            "idn-hostname",
            "json-pointer"
        ])
        .prop_map(|f| serde_json::json!({"format": f})),
        json(2),
    ];
    leaf_schema
        .prop_recursive(depth, 48, 4, |inner| {
            let keyword = prop_oneof![
                (btree_map(key(), inner.clone(), 0..4)).prop_map(|p| (
                    "properties".to_owned(),
                    Value::Object(p.into_iter().collect())
                )),
                vec(key().prop_map(Value::String), 0..4)
                    .prop_map(|r| ("required".to_owned(), Value::Array(r))),
                inner.clone().prop_map(|s| ("items".to_owned(), s)),
                inner
                    .clone()
                    .prop_map(|s| ("additionalProperties".to_owned(), s)),
                inner.clone().prop_map(|s| ("not".to_owned(), s)),
                inner.clone().prop_map(|s| ("contains".to_owned(), s)),
                inner.clone().prop_map(|s| ("propertyNames".to_owned(), s)),
                inner.clone().prop_map(|s| ("if".to_owned(), s)),
                inner.clone().prop_map(|s| ("then".to_owned(), s)),
                vec(inner.clone(), 0..4).prop_map(|v| ("anyOf".to_owned(), Value::Array(v))),
                vec(inner.clone(), 0..4).prop_map(|v| ("oneOf".to_owned(), Value::Array(v))),
                vec(inner.clone(), 0..4).prop_map(|v| ("allOf".to_owned(), Value::Array(v))),
                vec(inner.clone(), 0..4).prop_map(|v| ("prefixItems".to_owned(), Value::Array(v))),
                (btree_map(key(), inner.clone(), 0..3))
                    .prop_map(|d| ("$defs".to_owned(), Value::Object(d.into_iter().collect()))),
                inner
                    .clone()
                    .prop_map(|s| ("$defs".to_owned(), serde_json::json!({"loop": s}))),
                (btree_map("[a-z^$.*]{0,4}", inner.clone(), 0..3)).prop_map(|p| (
                    "patternProperties".to_owned(),
                    Value::Object(p.into_iter().collect())
                )),
                (
                    prop::sample::select(vec![
                        "minLength",
                        "maxLength",
                        "minimum",
                        "maximum",
                        "exclusiveMinimum",
                        "multipleOf",
                        "minItems",
                        "maxItems",
                        "minProperties",
                        "uniqueItems",
                        "enum",
                        "const",
                        "type",
                        "$schema",
                        "$id",
                        "$anchor",
                        "$dynamicAnchor",
                        "format",
                        "default",
                        "pattern",
                    ]),
                    leaf()
                )
                    .prop_map(|(k, v)| (k.to_owned(), v)),
                (key(), json(2)),
            ];
            vec(keyword, 0..5).prop_map(|kws| Value::Object(kws.into_iter().collect()))
        })
        .boxed()
}

/// An MCP server whose single tool's schema the test sets before each
/// registration; every call succeeds.
#[derive(Clone)]
struct Hostile {
    schema: Arc<Mutex<Map<String, Value>>>,
}

impl rmcp::ServerHandler for Hostile {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_tools()
                .build(),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let schema = self.schema.lock().unwrap().clone();
        Ok(rmcp::model::ListToolsResult::with_all_items(vec![
            rmcp::model::Tool::new("t", "hostile", schema),
        ]))
    }

    async fn call_tool(
        &self,
        _request: rmcp::model::CallToolRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        Ok(
            rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text("ok")])
                .into(),
        )
    }
}

/// Starts the hostile server on loopback; its URL.
async fn serve_hostile(schema: Arc<Mutex<Map<String, Value>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let sessions: Arc<
        rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
    > = Default::default();
    let config = rmcp::transport::streamable_http_server::StreamableHttpServerConfig::default()
        .with_allowed_hosts(["localhost".to_owned(), "127.0.0.1".into()]);
    let service = rmcp::transport::streamable_http_server::StreamableHttpService::new(
        move || {
            Ok(Hostile {
                schema: schema.clone(),
            })
        },
        sessions,
        config,
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/mcp")
}

/// The JSON Schema validation of MCP tool arguments (Mcp::connect compiles
/// each tool's schema, Mcp::call validates against it), through a real MCP
/// server offering hostile, deeply nested schemas and arbitrary arguments:
/// nothing panics; a schema that does not compile is refused at
/// registration; a call is refused as INVALID_ARGUMENT naming an
/// `arguments` path exactly when the schema rejects the arguments, and
/// otherwise reaches the server.
#[test]
fn mcp_arguments_are_validated_against_hostile_schemas_without_panic() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shared = Arc::new(Mutex::new(Map::new()));
    let url = rt.block_on(serve_hostile(shared.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mcp = Mcp::new(None, dir.path().join("mcp"), None).with_policy(AddressPolicy {
        exempt: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        platform_exempt: vec![],
    });
    let schema_object = schema(6).prop_map(|s| match s {
        Value::Object(m) => m,
        other => [("items".to_owned(), other)].into_iter().collect(),
    });
    let arguments = prop_oneof![
        args(),
        json(6).prop_map(|v| [("a".to_owned(), v)].into_iter().collect())
    ];
    // (schemas that compile, valid calls, refused calls): the test must not
    // degenerate into refusing every schema or every call.
    let seen = Mutex::new((0usize, 0usize, 0usize));
    runner(256)
        .run(&(schema_object, vec(arguments, 1..4)), |(schema, calls)| {
            *shared.lock().unwrap() = schema.clone();
            let oracle = jsonschema::validator_for(&Value::Object(schema.clone()));
            let registered = rt.block_on(mcp.register(
                &Scope::Tenant("acme".into()),
                "hostile",
                Transport::Http {
                    url: url.clone(),
                    bearer_secret: None,
                },
            ));
            let validator = match (oracle, registered) {
                (Ok(v), Ok(tools)) => {
                    prop_assert_eq!(tools.len(), 1);
                    prop_assert_eq!(&tools[0].2, &schema);
                    seen.lock().unwrap().0 += 1;
                    v
                }
                (Err(_), Err(ToolError::Sandbox(m))) if m.contains("invalid schema") => {
                    return Ok(());
                }
                (oracle, registered) => {
                    return Err(TestCaseError::fail(format!(
                        "schema compiles: {}, registration: {:?}",
                        oracle.is_ok(),
                        registered.map(|_| ())
                    )));
                }
            };
            for args in calls {
                let valid = validator.is_valid(&Value::Object(args.clone()));
                let result =
                    rt.block_on(mcp.call("acme", "hostile.t", args, Duration::from_secs(10)));
                match result {
                    Ok(answer) => {
                        prop_assert!(valid);
                        prop_assert_eq!(&answer["content"][0]["text"], "ok");
                        seen.lock().unwrap().1 += 1;
                    }
                    Err(ToolError::InvalidArgument { field, .. }) => {
                        prop_assert!(!valid);
                        prop_assert!(field.starts_with("arguments"), "{}", field);
                        seen.lock().unwrap().2 += 1;
                    }
                    Err(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
                }
            }
            Ok(())
        })
        .unwrap();
    let (compiled, valid, refused) = *seen.lock().unwrap();
    eprintln!("schemas compiled: {compiled}, calls passed: {valid}, refused: {refused}");
    assert!(compiled > 0 && valid > 0 && refused > 0);

    // Deep nesting, kept under serde_json's 128-level limit on the wire
    // (past it, the MCP messages cannot be read and registration or the
    // call only ends at its timeout):
    // a chain of `items` (or `not`, `anyOf`, `$ref` back to the root) and
    // arguments nested as deep; arguments the schema rejects are refused
    // naming their path, others are not refused as arguments (the server
    // may fail to read them).
    let deep = (1usize..50, 1usize..100, 0usize..4, any::<bool>());
    runner(48)
        .run(&deep, |(schema_depth, args_depth, kind, leaf_ok)| {
            let mut node = serde_json::json!({"type": "integer"});
            for _ in 0..schema_depth {
                node = match kind {
                    0 => serde_json::json!({"type": "array", "items": node}),
                    1 => serde_json::json!({"not": {"not": node}}),
                    2 => serde_json::json!({"anyOf": [node, {"$ref": "#"}]}),
                    _ => serde_json::json!({"type": "array", "items": node, "$defs": {"r": {"$ref": "#"}}}),
                };
            }
            let schema: Map<String, Value> =
                serde_json::json!({"type": "object", "properties": {"a": node}})
                    .as_object()
                    .unwrap()
                    .clone();
            let mut arg = if leaf_ok { serde_json::json!(1) } else { serde_json::json!("x") };
            for _ in 0..args_depth {
                arg = Value::Array(vec![arg]);
            }
            let args: Map<String, Value> = [("a".to_owned(), arg)].into_iter().collect();
            *shared.lock().unwrap() = schema.clone();
            let validator = jsonschema::validator_for(&Value::Object(schema.clone()));
            let registered = rt.block_on(mcp.register(
                &Scope::Tenant("acme".into()),
                "hostile",
                Transport::Http {
                    url: url.clone(),
                    bearer_secret: None,
                },
            ));
            let (Ok(validator), Ok(_)) = (validator, registered) else {
                return Ok(());
            };
            let valid = validator.is_valid(&Value::Object(args.clone()));
            let result = rt.block_on(mcp.call("acme", "hostile.t", args, Duration::from_secs(10)));
            match result {
                Err(ToolError::InvalidArgument { field, .. }) => {
                    prop_assert!(!valid);
                    prop_assert!(field.starts_with("arguments"), "{}", field);
                }
                _ => prop_assert!(valid, "{:?}", result),
            }
            Ok(())
        })
        .unwrap();
}
