use super::*;

fn ws() -> (tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::open(dir.path(), "acme", "task-1").unwrap();
    (dir, ws)
}

#[test]
fn files_round_trip_inside_the_workspace() {
    let (_dir, ws) = ws();
    ws.write("notes/a.md", "hello", false, 100).unwrap();
    ws.write("notes/a.md", " world", true, 100).unwrap();
    assert_eq!(ws.read("notes/a.md", 100).unwrap(), "hello world");
    let (entries, truncated) = ws.list(".", 10).unwrap();
    assert_eq!(entries, vec![("notes".to_owned(), true, entries[0].2)]);
    assert!(!truncated);
}

#[test]
fn escapes_are_denied() {
    let (dir, ws) = ws();
    for bad in ["../x", "/etc/passwd", "a/../../x", "a\0b"] {
        assert!(
            matches!(ws.read(bad, 10), Err(ToolError::PermissionDenied(_)))
                && matches!(
                    ws.write(bad, "x", false, 10),
                    Err(ToolError::PermissionDenied(_))
                ),
            "{bad}"
        );
    }
    std::fs::write(dir.path().join("secret"), "s").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), ws.root().join("link")).unwrap();
    assert!(matches!(
        ws.read("link", 100),
        Err(ToolError::PermissionDenied(_))
    ));
    std::os::unix::fs::symlink(dir.path(), ws.root().join("dirlink")).unwrap();
    assert!(matches!(
        ws.read("dirlink/secret", 100),
        Err(ToolError::PermissionDenied(_))
    ));
}

#[test]
fn sizes_are_capped() {
    let (_dir, ws) = ws();
    assert!(matches!(
        ws.write("a", "123456", false, 5),
        Err(ToolError::TooLarge(_))
    ));
    ws.write("a", "12345", false, 5).unwrap();
    assert_eq!(ws.read("a", 5).unwrap(), "12345");
    assert!(matches!(ws.read("a", 4), Err(ToolError::TooLarge(_))));
}

#[test]
fn unsafe_task_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Workspace::open(dir.path(), "acme", "../x").is_err());
}

#[test]
fn a_symlink_swapped_in_mid_operation_never_leads_out() {
    let (dir, ws) = ws();
    let root = dir.path().join("acme/task-1");
    std::fs::create_dir_all(root.join("real")).unwrap();
    std::fs::write(root.join("real/passwd"), "inside").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (root, stop) = (root.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::remove_file(root.join("swap"));
                let _ = std::os::unix::fs::symlink("real", root.join("swap"));
                let _ = std::fs::remove_file(root.join("swap"));
                let _ = std::os::unix::fs::symlink("/etc", root.join("swap"));
            }
        })
    };
    let mut denied = 0;
    for _ in 0..2000 {
        match ws.read("swap/passwd", 1 << 20) {
            Ok(text) => assert_eq!(text, "inside", "read through a link"),
            Err(ToolError::PermissionDenied(_)) | Err(ToolError::NotFound(_)) => denied += 1,
            Err(e) => panic!("{e}"),
        }
        // Either refused, or written inside (when `swap` was briefly absent
        // and became a real directory): never through the link.
        let _ = ws.write("swap/x", "y", false, 10);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(denied > 0);
    assert!(!std::path::Path::new("/etc/x").exists());
}

#[test]
fn search_finds_lines_beneath_and_skips_links() {
    let (dir, ws) = ws();
    ws.write("notes/a.md", "Alpha\nthe Needle here\n", false, 100)
        .unwrap();
    ws.write("b.txt", "needle again", false, 100).unwrap();
    std::fs::write(dir.path().join("outside.txt"), "needle outside").unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside.txt"), ws.root().join("link.txt")).unwrap();
    let (hits, truncated) = ws.search(".", "NEEDLE", 1000, 10).unwrap();
    let mut found: Vec<(String, usize)> = hits.iter().map(|(p, l, _)| (p.clone(), *l)).collect();
    found.sort();
    assert_eq!(
        found,
        [("b.txt".to_owned(), 1), ("notes/a.md".to_owned(), 2)]
    );
    assert!(!truncated);
    assert!(matches!(
        ws.search("../", "x", 10, 10),
        Err(ToolError::PermissionDenied(_))
    ));
    let (one, truncated) = ws.search(".", "needle", 1000, 1).unwrap();
    assert_eq!((one.len(), truncated), (1, true));
}

#[test]
fn option_like_paths_are_plain_names_in_the_workspace() {
    let (_dir, ws) = ws();
    for name in ["-rf", "--help", "-"] {
        ws.write(name, "data", false, 100).unwrap();
        assert_eq!(ws.read(name, 100).unwrap(), "data");
    }
    let (entries, _) = ws.list(".", 10).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["-", "--help", "-rf"]);
}

fn bounded(max_bytes: u64, max_files: u64) -> (tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    let bounds = Bounds {
        max_bytes,
        max_files,
        max_workspaces: 2,
    };
    let ws = Workspace::open_bounded(dir.path(), "acme", "task-1", bounds).unwrap();
    (dir, ws)
}

#[test]
fn file_write_past_the_workspace_bounds_fails() {
    let (_dir, ws) = bounded(64 * 1024, 1000);
    let chunk = "x".repeat(20 * 1024);
    for name in ["a", "b", "c"] {
        ws.write(name, &chunk, false, 1 << 20).unwrap();
    }
    match ws.write("d", &chunk, false, 1 << 20) {
        Err(ToolError::Quota(m)) => assert!(m.contains("65536 bytes"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ws.write("a", &chunk, true, 1 << 20),
        Err(ToolError::Quota(_))
    ));
    // Refused before anything changed; replacing a file frees its bytes.
    assert!(!ws.root().join("d").exists());
    assert_eq!(ws.read("a", 1 << 20).unwrap().len(), chunk.len());
    ws.write("a", &chunk, false, 1 << 20).unwrap();
    assert!(ws.usage().unwrap().bytes <= 64 * 1024);
}

#[test]
fn file_write_past_the_workspace_file_count_fails() {
    let (_dir, ws) = bounded(1 << 20, 16);
    for i in 0..16 {
        ws.write(&format!("f{i}"), "x", false, 100).unwrap();
    }
    assert!(matches!(
        ws.write("one-more", "x", false, 100),
        Err(ToolError::Quota(_))
    ));
    assert!(matches!(
        ws.write("new/dir/file", "x", false, 100),
        Err(ToolError::Quota(_))
    ));
    // An existing file can still be rewritten.
    ws.write("f0", "y", false, 100).unwrap();
    assert_eq!(ws.usage().unwrap().files, 16);
}

#[test]
fn created_files_are_0600_and_directories_0700() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, ws) = bounded(1 << 20, 100);
    ws.write("notes/deep/a.md", "secret", false, 100).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ws.root().join("notes/deep/a.md")), 0o600);
    assert_eq!(mode(&ws.root().join("notes")), 0o700);
    assert_eq!(mode(&ws.root().join("notes/deep")), 0o700);
    assert_eq!(mode(ws.root()), 0o700);
    // The tenant's directory can be passed through, not listed.
    assert_eq!(mode(&dir.path().join("acme")), 0o711);
}

#[test]
fn a_tenant_has_at_most_its_workspaces() {
    let dir = tempfile::tempdir().unwrap();
    let bounds = Bounds {
        max_workspaces: 2,
        ..Bounds::default()
    };
    Workspace::open_bounded(dir.path(), "acme", "t1", bounds).unwrap();
    Workspace::open_bounded(dir.path(), "acme", "t2", bounds).unwrap();
    assert!(matches!(
        Workspace::open_bounded(dir.path(), "acme", "t3", bounds),
        Err(ToolError::Quota(_))
    ));
    // Its own are opened again; other tenants are not affected.
    Workspace::open_bounded(dir.path(), "acme", "t1", bounds).unwrap();
    Workspace::open_bounded(dir.path(), "globex", "t1", bounds).unwrap();
}

#[test]
fn the_sweeper_removes_workspaces_untouched_past_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let old = Workspace::open(dir.path(), "acme", "old").unwrap();
    old.write("a/b/c.txt", "done", false, 100).unwrap();
    let kept = Workspace::open(dir.path(), "acme", "kept").unwrap();
    kept.write("x.txt", "busy", false, 100).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // `kept` is used again (any tool call opens it); `old` is not.
    Workspace::open(dir.path(), "acme", "kept").unwrap();
    let retention = std::time::Duration::from_millis(200);
    assert_eq!(sweep(dir.path(), retention).unwrap(), 1);
    assert!(!dir.path().join("acme/old").exists());
    assert!(dir.path().join("acme/kept/x.txt").exists());
    // Nothing hidden is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("acme"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["kept"]);
    assert_eq!(sweep(dir.path(), retention).unwrap(), 0);
}
