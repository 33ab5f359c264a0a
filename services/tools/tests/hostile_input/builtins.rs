//! Built-in tools: their arguments and workspace paths; the shell tool's arguments.

use super::*;

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
