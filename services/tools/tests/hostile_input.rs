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

// ---------------------------------------------------------------------------
// Built-in tools
// ---------------------------------------------------------------------------

/// The rules of the built-in tools' arguments, stated independently.
fn builtin_accepts(tool: Builtin, args: &Map<String, Value>) -> bool {
    let allowed: &[&str] = match tool {
        Builtin::FileRead | Builtin::FileList => &["path"],
        Builtin::FileWrite => &["path", "content", "append"],
        Builtin::FileSearch => &["query", "path"],
    };
    if args.keys().any(|k| !allowed.contains(&k.as_str())) {
        return false;
    }
    let is_str = |k: &str| matches!(args.get(k), Some(Value::String(_)));
    let str_or_absent = |k: &str| args.get(k).is_none() || is_str(k);
    match tool {
        Builtin::FileRead => is_str("path"),
        Builtin::FileList => str_or_absent("path"),
        Builtin::FileWrite => {
            is_str("path")
                && is_str("content")
                && matches!(args.get("append"), None | Some(Value::Bool(_)))
        }
        Builtin::FileSearch => {
            str_or_absent("path")
                && matches!(args.get("query"), Some(Value::String(q)) if !q.is_empty() && q.len() <= 1024)
        }
    }
}

/// Builtin::parse on arbitrary argument maps: never panics, accepts exactly
/// what its rules accept, errors name an `arguments.` field, and what it
/// accepts its published JSON Schema accepts too.
#[test]
fn builtin_arguments_are_parsed_without_panic_and_match_their_schema() {
    runner(1024)
        .run(
            &(prop::sample::select(Builtin::ALL.to_vec()), args()),
            |(tool, args)| {
                let parsed = tool.parse(&args);
                prop_assert_eq!(parsed.is_ok(), builtin_accepts(tool, &args), "{:?}", parsed);
                match &parsed {
                    Ok(call) => {
                        prop_assert!(schema_valid(&tool.schema(), &args));
                        let given = |k: &str| args.get(k).and_then(Value::as_str);
                        match call {
                            Call::Read { path } => {
                                prop_assert_eq!(Some(path.as_str()), given("path"))
                            }
                            Call::Write {
                                path,
                                content,
                                append,
                            } => {
                                prop_assert_eq!(Some(path.as_str()), given("path"));
                                prop_assert_eq!(Some(content.as_str()), given("content"));
                                prop_assert_eq!(
                                    *append,
                                    args.get("append") == Some(&Value::Bool(true))
                                );
                            }
                            Call::List { path } => {
                                prop_assert_eq!(path.as_str(), given("path").unwrap_or("."))
                            }
                            Call::Search { path, query } => {
                                prop_assert_eq!(path.as_str(), given("path").unwrap_or("."));
                                prop_assert_eq!(Some(query.as_str()), given("query"));
                            }
                        }
                    }
                    Err(e) => {
                        let field = field_of(e).expect("argument errors are InvalidArgument");
                        prop_assert!(field.starts_with("arguments."), "{}", field);
                        // The only argument the schema allows and parse refuses:
                        // a query of at most 1024 characters but more bytes.
                        if schema_valid(&tool.schema(), &args) {
                            prop_assert_eq!(tool, Builtin::FileSearch);
                            prop_assert!(args["query"].as_str().is_some_and(|q| q.len() > 1024));
                        }
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

/// Every regular file under `dir` (not following links), with its bytes,
/// skipping `skip`.
fn snapshot(dir: &Path, skip: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path == skip {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.push((path.clone(), Vec::new()));
            snapshot(&path, skip, out);
        } else if kind.is_symlink() {
            out.push((
                path.clone(),
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            ));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
}

/// Whether the text of `path` may name something in the workspace: no NUL,
/// no `..`, not absolute (the workspace's rules, stated independently).
fn path_allowed(path: &str) -> bool {
    !path.contains('\0') && !path.starts_with('/') && !path.split('/').any(|seg| seg == "..")
}

/// Built-in calls with hostile paths and contents up to and past the size
/// limit, run in a real workspace with a symlink leading out of it: never
/// panic; `..`, NUL and absolute paths are refused; nothing outside the
/// workspace changes; nothing larger than the limit is written or read;
/// listings and searches stay within their caps.
#[test]
fn builtin_calls_with_hostile_paths_stay_in_the_workspace_and_in_bounds() {
    const MAX_FILE: usize = 2048;
    const MAX_LIST: usize = 4;
    let limits = FileLimits {
        max_file_bytes: MAX_FILE,
        max_list_entries: MAX_LIST,
    };
    let bounds = Bounds {
        max_bytes: 64 * 1024,
        max_files: 64,
        max_workspaces: 4,
    };
    let content = prop_oneof![
        "[a-zA-Z \n]{0,64}",
        any::<String>(),
        (MAX_FILE - 2..MAX_FILE + 3).prop_map(|n| "x".repeat(n)),
        (1usize..40).prop_map(|n| "🦀 line\n".repeat(n * 10)),
    ];
    let call = prop_oneof![
        (hostile_string(), content.clone(), any::<bool>()).prop_map(|(path, content, append)| {
            Call::Write {
                path,
                content,
                append,
            }
        }),
        hostile_string().prop_map(|path| Call::Read { path }),
        hostile_string().prop_map(|path| Call::List { path }),
        (hostile_string(), prop_oneof!["[a-z]{1,3}", piece()])
            .prop_map(|(path, query)| { Call::Search { path, query } }),
    ];
    runner(384)
        .run(&vec(call, 1..6), |calls| {
            let base = tempfile::tempdir().unwrap();
            std::fs::write(base.path().join("secret"), b"outside").unwrap();
            let ws = Workspace::open_bounded(base.path(), "acme", "task-1", bounds).unwrap();
            let other = Workspace::open_bounded(base.path(), "acme", "task-2", bounds).unwrap();
            std::fs::write(other.root().join("file.txt"), b"another task's").unwrap();
            std::fs::create_dir(ws.root().join("dir")).unwrap();
            std::fs::write(ws.root().join("dir/file.txt"), "é line\n🦀 a\n").unwrap();
            std::fs::write(ws.root().join("a"), "a\n".repeat(10)).unwrap();
            std::os::unix::fs::symlink("../../../secret", ws.root().join("escape")).unwrap();
            std::os::unix::fs::symlink("../task-2", ws.root().join("sibling")).unwrap();
            let mut before = Vec::new();
            snapshot(base.path(), ws.root(), &mut before);

            for call in calls {
                let (path, kind) = match &call {
                    Call::Read { path } => (path.clone(), 'r'),
                    Call::Write { path, .. } => (path.clone(), 'w'),
                    Call::List { path } => (path.clone(), 'l'),
                    Call::Search { path, .. } => (path.clone(), 's'),
                };
                let written = match &call {
                    Call::Write { content, .. } => content.len(),
                    _ => 0,
                };
                let result = call.run(&ws, limits);
                if !path_allowed(&path) {
                    // Refused: for the path, or (a write) first for its size.
                    prop_assert!(
                        matches!(result, Err(ToolError::PermissionDenied(_)))
                            || (kind == 'w'
                                && written > MAX_FILE
                                && matches!(result, Err(ToolError::TooLarge(_)))),
                        "{:?} {:?}",
                        path,
                        result
                    );
                }
                if let Ok(value) = &result {
                    match kind {
                        'r' => prop_assert!(value["content"].as_str().unwrap().len() <= MAX_FILE),
                        'w' => prop_assert!(written <= MAX_FILE),
                        'l' => prop_assert!(value["entries"].as_array().unwrap().len() <= MAX_LIST),
                        _ => prop_assert!(value["matches"].as_array().unwrap().len() <= MAX_LIST),
                    }
                }
            }
            let mut after = Vec::new();
            snapshot(base.path(), ws.root(), &mut after);
            prop_assert_eq!(before, after, "something outside the workspace changed");
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// The shell tool
// ---------------------------------------------------------------------------

/// ShellCall::parse on arbitrary argument maps: never panics, accepts
/// exactly a non-blank command of at most MAX_COMMAND_BYTES bytes without
/// NUL and an optional integer timeout from 1 to MAX_TIMEOUT_SECONDS; what it
/// accepts its schema accepts; the argv is `/bin/sh -c <command>`.
#[test]
fn shell_arguments_are_parsed_without_panic_and_within_limits() {
    runner(1024)
        .run(&args(), |args| {
            let parsed = ShellCall::parse(&args);
            let expected = args.keys().all(|k| k == "command" || k == "timeout_seconds")
                && matches!(args.get("command"), Some(Value::String(c))
                    if !c.trim().is_empty() && c.len() <= shell::MAX_COMMAND_BYTES && !c.contains('\0'))
                && match args.get("timeout_seconds") {
                    None => true,
                    Some(v) => v.as_u64().is_some_and(|n| (1..=shell::MAX_TIMEOUT_SECONDS).contains(&n)),
                };
            prop_assert_eq!(parsed.is_ok(), expected, "{:?}", parsed);
            match parsed {
                Ok(call) => {
                    prop_assert!(schema_valid(&shell::schema(), &args));
                    prop_assert!(call.timeout >= Duration::from_secs(1));
                    prop_assert!(call.timeout <= Duration::from_secs(shell::MAX_TIMEOUT_SECONDS));
                    let argv = call.argv();
                    prop_assert_eq!(&argv[..2], &["/bin/sh".to_owned(), "-c".to_owned()]);
                    prop_assert_eq!(Some(argv[2].as_str()), args["command"].as_str());
                }
                Err(e) => {
                    let field = field_of(&e).expect("argument errors are InvalidArgument");
                    prop_assert!(field.starts_with("arguments."), "{}", field);
                }
            }
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// web_fetch
// ---------------------------------------------------------------------------

/// web::parse_args on arbitrary argument maps: never panics, accepts exactly
/// a `url` string of 1 to 4096 bytes, and what it accepts its schema accepts.
#[test]
fn web_fetch_arguments_are_parsed_without_panic() {
    runner(1024)
        .run(&args(), |args| {
            let parsed = web::parse_args(&args);
            let expected = args.keys().all(|k| k == "url")
                && matches!(args.get("url"), Some(Value::String(u)) if !u.is_empty() && u.len() <= 4096);
            prop_assert_eq!(parsed.is_ok(), expected, "{:?}", parsed);
            match parsed {
                Ok(url) => {
                    prop_assert!(schema_valid(&web::schema(), &args));
                    prop_assert_eq!(Some(url.as_str()), args["url"].as_str());
                }
                Err(e) => {
                    let field = field_of(&e).expect("argument errors are InvalidArgument");
                    prop_assert!(field.starts_with("arguments."), "{}", field);
                }
            }
            Ok(())
        })
        .unwrap();
}

fn v4_of(ip: Ipv4Addr) -> u32 {
    u32::from(ip)
}

/// web::blocked on every kind of address: never panics; an IPv4 address
/// is judged the same however IPv6 wraps it (mapped, compatible, NAT64,
/// 6to4); the ranges that reach the mesh or the cloud are always blocked.
#[test]
fn address_classification_agrees_across_ipv4_embeddings() {
    runner(4096)
        .run(
            &(any::<u32>(), any::<u128>(), any::<u16>()),
            |(v4, v6, low)| {
                let ip4 = Ipv4Addr::from(v4);
                let verdict = web::blocked(IpAddr::V4(ip4));
                let [a, b, c, d] = ip4.octets();
                let embedded =
                    |segments: [u16; 8]| web::blocked(IpAddr::V6(Ipv6Addr::from(segments)));
                let (hi, lo) = ((v4 >> 16) as u16, v4 as u16);
                prop_assert_eq!(web::blocked(IpAddr::V6(ip4.to_ipv6_mapped())), verdict);
                prop_assert_eq!(embedded([0x64, 0xff9b, 0, 0, 0, 0, hi, lo]), verdict);
                prop_assert_eq!(embedded([0x2002, hi, lo, low, 0, 0, 0, 1]), verdict);
                if v4_of(ip4) > 1 {
                    prop_assert_eq!(web::blocked(IpAddr::V6(ip4.to_ipv6_compatible())), verdict);
                }
                let must_block = a == 0
                    || a == 10
                    || a == 127
                    || (a, b) == (169, 254)
                    || (a == 172 && (16..32).contains(&b))
                    || (a, b) == (192, 168)
                    || (a == 100 && (64..128).contains(&b))
                    || a >= 224
                    || (a, b, c) == (192, 0, 0);
                if must_block {
                    prop_assert!(verdict.is_some(), "{}.{}.{}.{} passes", a, b, c, d);
                }
                // Any IPv6 address is judged without panicking.
                let ip6 = Ipv6Addr::from(v6);
                let verdict6 = web::blocked(IpAddr::V6(ip6));
                if ip6.is_loopback()
                    || ip6.is_unspecified()
                    || (ip6.segments()[0] & 0xfe00) == 0xfc00
                    || (ip6.segments()[0] & 0xffc0) == 0xfe80
                    || ip6.segments()[0] >= 0xff00
                {
                    prop_assert!(verdict6.is_some(), "{} passes", ip6);
                }
                Ok(())
            },
        )
        .unwrap();
}

/// A URL-like string: schemes, credentials, hosts in every literal form
/// (dotted, decimal, hex, octal, short, IPv6, mapped), ports and paths.
fn url_like() -> BoxedStrategy<String> {
    let scheme = prop_oneof![
        Just("http"),
        Just("https"),
        Just("HTTP"),
        Just("ftp"),
        Just("file"),
        Just("gopher"),
        Just("javascript"),
        Just("data"),
        Just("ws"),
        Just("unix"),
    ];
    let creds = prop_oneof![
        3 => Just(String::new()),
        1 => Just("user@".to_owned()),
        1 => Just("user:pw@".to_owned()),
        1 => Just(":pw@".to_owned()),
        1 => Just("@".to_owned()),
    ];
    let host = prop_oneof![
        any::<u32>().prop_map(|n| Ipv4Addr::from(n).to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| format!("0x{n:x}")),
        (any::<u8>(), any::<u32>()).prop_map(|(a, n)| format!("{a}.{}", n & 0xff_ffff)),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("0{a:o}.0x{b:x}.0.1")),
        any::<u128>().prop_map(|n| format!("[{}]", Ipv6Addr::from(n))),
        any::<u32>().prop_map(|n| format!("[::ffff:{}]", Ipv4Addr::from(n))),
        any::<u32>().prop_map(|n| format!("[64:ff9b::{}]", Ipv4Addr::from(n))),
        Just("[::1]".to_owned()),
        Just("127.0.0.1".to_owned()),
        Just("169.254.169.254".to_owned()),
        Just("[fe80::1%25eth0]".to_owned()),
        Just(String::new()),
        piece(),
    ];
    let port = prop_oneof![
        Just(String::new()),
        any::<u16>().prop_map(|p| format!(":{p}")),
        Just(":99999".to_owned()),
        Just(":".to_owned()),
    ];
    let path = prop_oneof![
        Just(String::new()),
        path_like().prop_map(|p| format!("/{p}"))
    ];
    prop_oneof![
        8 => (scheme, prop_oneof![Just("://"), Just(":"), Just(":///"), Just(":\\\\")], creds, host, port, path)
            .prop_map(|(s, sep, c, h, p, rest)| format!("{s}{sep}{c}{h}{p}{rest}")),
        1 => any::<String>(),
        1 => hostile_string(),
    ]
    .boxed()
}

/// A parsed URL whose check would resolve a name (network): skipped.
fn resolves_a_name(url: &url::Url) -> bool {
    matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && matches!(url.host(), Some(url::Host::Domain(_)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// web::check_url (the form and address policy shared by web_fetch and MCP
/// servers' URLs) on hostile URLs with literal hosts: never panics; only
/// http(s) without credentials passes, and only to an address `blocked`
/// allows, on the URL's own port.
#[test]
fn url_checks_refuse_hostile_urls_without_panic() {
    let rt = runtime();
    runner(2048)
        .run(&url_like(), |text| {
            let Ok(url) = url::Url::parse(&text) else {
                return Ok(());
            };
            if resolves_a_name(&url) {
                return Ok(());
            }
            let result = rt.block_on(web::check_url(&url, &|_| false));
            let http = matches!(url.scheme(), "http" | "https");
            let creds = !url.username().is_empty() || url.password().is_some();
            if !http || creds {
                prop_assert!(
                    matches!(result, Err(ToolError::PermissionDenied(_))),
                    "{} {:?}",
                    url,
                    result
                );
                return Ok(());
            }
            let ip = match url.host() {
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
                other => return Err(TestCaseError::fail(format!("{url}: host {other:?}"))),
            };
            match (web::blocked(ip), result) {
                (None, Ok(address)) => {
                    prop_assert_eq!(address.ip(), ip);
                    prop_assert_eq!(Some(address.port()), url.port_or_known_default());
                }
                (Some(_), Err(ToolError::PermissionDenied(_))) => {}
                (verdict, result) => {
                    return Err(TestCaseError::fail(format!(
                        "{url}: {verdict:?} but {result:?}"
                    )));
                }
            }
            // With every address exempt, the form alone decides.
            prop_assert!(rt.block_on(web::check_url(&url, &|_| true)).is_ok());
            Ok(())
        })
        .unwrap();
}

/// HTML-ish text: tags, comments, scripts, entities, unicode, unclosed
/// constructs, with any text between.
fn html_like() -> BoxedStrategy<String> {
    let token = prop_oneof![
        Just("<"),
        Just(">"),
        Just("<p>"),
        Just("</p>"),
        Just("<br/>"),
        Just("<DIV class=x>"),
        Just("<script>"),
        Just("<SCRIPT src=x>"),
        Just("</script>"),
        Just("<style>"),
        Just("</STYLE>"),
        Just("<!--"),
        Just("-->"),
        Just("&amp;"),
        Just("&lt;"),
        Just("&gt;"),
        Just("&nbsp;"),
        Just("&quot;"),
        Just("&#39;"),
        Just("&amp;lt;"),
        Just("&"),
        Just("é"),
        Just("🦀"),
        Just("İ"),
        Just("\u{2028}"),
        Just("\r\n"),
        Just("\n"),
        Just(" "),
        Just("\t"),
        Just("text"),
    ]
    .prop_map(str::to_owned);
    prop_oneof![
        4 => vec(prop_oneof![4 => token, 1 => any::<String>()], 0..64).prop_map(|t| t.concat()),
        1 => any::<String>(),
        1 => (1usize..2000, prop_oneof![Just("<"), Just("<script"), Just("<!--"), Just("<a"), Just("&amp;")])
            .prop_map(|(n, t)| t.repeat(n)),
    ]
    .boxed()
}

/// web::html_to_text on hostile HTML: never panics, its output is never
/// longer than its input (the work is one pass), holds no blank lines and
/// no surrounding whitespace, and drops what scripts hold.
#[test]
fn html_reduction_is_panic_free_and_never_grows() {
    runner(2048)
        .run(&html_like(), |html| {
            let text = web::html_to_text(&html);
            prop_assert!(text.len() <= html.len(), "{:?} -> {:?}", html, text);
            for line in text.split('\n').filter(|_| !text.is_empty()) {
                prop_assert!(!line.is_empty(), "{:?} -> {:?}", html, text);
                prop_assert_eq!(line, line.trim());
            }
            Ok(())
        })
        .unwrap();
    runner(256)
        .run(&("[a-z ]{0,20}", "[A-Z]{8}"), |(around, payload)| {
            let html = format!(
                "{around}<script>{payload}</script><style>{payload}</style><!--{payload}-->{around}"
            );
            prop_assert!(!web::html_to_text(&html).contains(&payload));
            Ok(())
        })
        .unwrap();
}

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
