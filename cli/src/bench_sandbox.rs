//! `amaos bench --scenario sandbox`: how much the tool sandbox costs.
//! Runs `/bin/true` through the `amaos-sandbox` helper (namespaces,
//! read-only root, rlimits, seccomp — everything a `shell` call gets) and
//! as a bare spawn, one after the other, and prints runs per second and the
//! p50/p99 latency of each, and the overhead.

use std::time::{Duration, Instant};

use amaos_tools::sandbox::{Limits, Sandbox};

use crate::bench::percentile;

/// The figures of one sandbox run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SandboxReport {
    /// Runs of each kind.
    pub runs: usize,
    /// Sandboxed runs per second.
    pub sandboxed_per_s: f64,
    /// Sandboxed p50, ms.
    pub sandboxed_p50_ms: f64,
    /// Sandboxed p99, ms.
    pub sandboxed_p99_ms: f64,
    /// Bare spawns per second.
    pub bare_per_s: f64,
    /// Bare p50, ms.
    pub bare_p50_ms: f64,
    /// Bare p99, ms.
    pub bare_p99_ms: f64,
}

impl SandboxReport {
    /// The report as text.
    pub fn text(&self) -> String {
        format!(
            "scenario sandbox  ({} runs of /bin/true each)\n\
             sandboxed  {:.0} runs/s  p50 {:.2} ms  p99 {:.2} ms\n\
             bare spawn {:.0} runs/s  p50 {:.2} ms  p99 {:.2} ms\n\
             overhead   p50 +{:.2} ms  p99 +{:.2} ms\n",
            self.runs,
            self.sandboxed_per_s,
            self.sandboxed_p50_ms,
            self.sandboxed_p99_ms,
            self.bare_per_s,
            self.bare_p50_ms,
            self.bare_p99_ms,
            self.sandboxed_p50_ms - self.bare_p50_ms,
            self.sandboxed_p99_ms - self.bare_p99_ms,
        )
    }
}

fn summary(mut ms: Vec<f64>, total: Duration) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    (
        ms.len() as f64 / total.as_secs_f64(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
    )
}

/// Runs the sandbox scenario, `runs` of each kind.
pub async fn run(
    config: &amaos_mesh::Config,
    runs: usize,
) -> Result<SandboxReport, amaos_mesh::BoxError> {
    let runs = runs.max(10);
    let helper = amaos_tools::sandbox_helper(&config.tools)?;
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let sandbox = Sandbox::new(helper, config.tools.sandbox_uid_base, 1, Limits::default());
    let argv = ["/bin/true".to_owned()];
    sandbox.run(&work, &argv, Duration::from_secs(10)).await?;
    let mut sandboxed = Vec::with_capacity(runs);
    let started = Instant::now();
    for _ in 0..runs {
        let t = Instant::now();
        let outcome = sandbox.run(&work, &argv, Duration::from_secs(10)).await?;
        if outcome.exit_code != 0 {
            return Err(format!(
                "sandboxed true exited with {}: {}",
                outcome.exit_code, outcome.stderr
            )
            .into());
        }
        sandboxed.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let sandboxed_total = started.elapsed();
    let mut bare = Vec::with_capacity(runs);
    let started = Instant::now();
    for _ in 0..runs {
        let t = Instant::now();
        let status = tokio::process::Command::new("/bin/true").status().await?;
        if !status.success() {
            return Err("bare true failed".into());
        }
        bare.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let bare_total = started.elapsed();
    let (sandboxed_per_s, sandboxed_p50_ms, sandboxed_p99_ms) = summary(sandboxed, sandboxed_total);
    let (bare_per_s, bare_p50_ms, bare_p99_ms) = summary(bare, bare_total);
    Ok(SandboxReport {
        runs,
        sandboxed_per_s,
        sandboxed_p50_ms,
        sandboxed_p99_ms,
        bare_per_s,
        bare_p50_ms,
        bare_p99_ms,
    })
}
