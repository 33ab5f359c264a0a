//! The dashboard in a real browser: headless Debian Chromium driven by
//! `playwright-core` (services/gateway/tests/browser/dashboard.mjs) against
//! the in-process mesh's gateway. It signs in, submits the research crew
//! from the page, watches its timeline reach SUCCEEDED live, opens the team
//! graph, the workers and the audit trail (whose chain must verify), and
//! saves screenshots — 1280×800 light and dark, and a phone's width — to
//! `target/dashboard-screenshots/`. It also runs the example team
//! `approved-payout`, whose second agent's tool call waits for a person:
//! the task shows INPUT_REQUIRED, the Approvals page lists the call, a
//! viewer's Approve is refused (403) and a decision made elsewhere is
//! refused as stale, both visibly; the admin's Approve resumes the task to
//! SUCCEEDED.
//!
//! This test uses outside resources: Node, `/usr/bin/chromium` (or
//! `$CHROMIUM`) and the npm packages of the browser test. `scripts/test`
//! installs them; without them the test fails and says so, rather than
//! passing without a browser.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{TestMesh, repo_root};

/// How long the whole browser run may take (a few seconds of crew, a dozen
/// page loads and screenshots, Chromium's start).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

fn browser_dir() -> PathBuf {
    repo_root().join("services/gateway/tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// What is missing to run the browser test, if anything.
fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    if node.is_none() {
        missing.push("node (Debian: apt-get install nodejs npm)".to_owned());
    }
    if !chromium().exists() {
        missing.push(format!(
            "{} (Debian: apt-get install chromium)",
            chromium().display()
        ));
    }
    let package = browser_dir().join("node_modules/playwright-core/package.json");
    if !package.exists() {
        missing.push(format!(
            "playwright-core (npm ci in {})",
            browser_dir().display()
        ));
    }
    missing
}

fn screenshots() -> PathBuf {
    repo_root().join("target/dashboard-screenshots")
}

fn listed(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".png"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_runs_a_crew_in_a_real_browser() {
    let missing = missing();
    assert!(
        missing.is_empty(),
        "the browser test cannot run: missing {}. Run scripts/test, which installs them \
         (as root: apt-get install chromium; and npm ci in services/gateway/tests/browser).",
        missing.join(", ")
    );
    let mesh = TestMesh::start().await;
    // A viewer of the admin's tenant: may list approvals, may not decide.
    let viewer = mesh
        .create_key(amaos_mesh::identity::PLATFORM_TENANT, "viewer")
        .await;
    let out = screenshots();
    let _ = std::fs::remove_dir_all(&out);

    let run = tokio::process::Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .arg(&mesh.config.gateway.url)
        .arg(&mesh.admin_key)
        .arg(&out)
        .arg(&viewer)
        .env("CHROMIUM", chromium())
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_TIMEOUT, run)
        .await
        .expect("the browser test did not finish in time")
        .expect("node could not be started");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("dashboard: all checks passed"), "{stdout}");

    // The screenshots are the artifacts of this test.
    let shots = listed(&out);
    for wanted in [
        "task-light.png",
        "task-dark.png",
        "task-phone.png",
        "teams-light.png",
        "workers-light.png",
        "audit-light.png",
        "task-approval-light.png",
        "approvals-light.png",
        "approvals-refused-light.png",
        "approvals-decided-light.png",
        "approvals-dark.png",
        "approvals-phone.png",
    ] {
        assert!(
            shots.iter().any(|s| s == wanted),
            "{wanted} is missing from {}: {shots:?}",
            out.display()
        );
    }
    mesh.stop().await;
}
