//! The tools service's own metrics: calls by tool and outcome with their
//! duration, the sandbox (available, failures), idempotency-journal
//! replays and refused outgoing addresses (SSRF).
//!
//! Tool names are bounded by a [`LabelBound`]: MCP servers name their own
//! tools, so past `telemetry.metric_label_limit` names they are `other`.

use std::sync::Arc;
use std::time::Duration;

use amaos_mesh::metrics::{LabelBound, Metrics, seconds_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    tool: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tool {
    tool: String,
}

/// The tools service's metrics. [`Default`] counts without being
/// registered anywhere (tests, embedders).
#[derive(Clone)]
pub struct ToolMetrics {
    tools: Arc<LabelBound>,
    calls: Family<Call, Counter>,
    duration: Family<Tool, Histogram, fn() -> Histogram>,
    sandbox_available: Gauge,
    sandbox_failures: Counter,
    replays: Counter,
    /// Outgoing addresses refused by the address policy.
    pub ssrf_refusals: Counter,
}

impl Default for ToolMetrics {
    fn default() -> Self {
        Self {
            tools: Arc::new(LabelBound::new(&[], 20)),
            calls: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram),
            sandbox_available: Gauge::default(),
            sandbox_failures: Counter::default(),
            replays: Counter::default(),
            ssrf_refusals: Counter::default(),
        }
    }
}

impl ToolMetrics {
    /// Registers the tools service's metrics in `metrics`, with
    /// `ssrf_refusals` counted by the address policy.
    pub fn register(metrics: &Metrics, ssrf_refusals: Counter) -> Self {
        let this = Self {
            tools: Arc::new(metrics.label_bound()),
            ssrf_refusals,
            ..Self::default()
        };
        let m = metrics;
        m.register(
            "tool_calls",
            "tool calls by tool and outcome (ok, replayed, permission_denied, quota, timeout, sandbox_error, …)",
            this.calls.clone(),
        );
        m.register(
            "tool_call_duration_seconds",
            "tool call duration in seconds, by tool",
            this.duration.clone(),
        );
        m.register(
            "sandbox_available",
            "1 when the sandbox passed its start-up probe, 0 when the shell tool is not offered",
            this.sandbox_available.clone(),
        );
        m.register(
            "sandbox_failures",
            "tool calls that failed in the sandbox itself (not the command's own failure)",
            this.sandbox_failures.clone(),
        );
        m.register(
            "tool_journal_replays",
            "calls answered from the idempotency journal instead of being run again",
            this.replays.clone(),
        );
        m.register(
            "ssrf_refusals",
            "outgoing requests refused by the address policy (private, loopback, metadata, allowlist)",
            this.ssrf_refusals.clone(),
        );
        this
    }

    /// Whether the sandbox is there.
    pub fn sandbox(&self, available: bool) {
        self.sandbox_available.set(i64::from(available));
    }

    /// A call of `tool` ended with `outcome` after `took`.
    pub fn call(&self, tool: &str, outcome: &'static str, took: Duration) {
        let tool = self.tools.label(tool);
        match outcome {
            "replayed" => {
                self.replays.inc();
            }
            "sandbox_error" => {
                self.sandbox_failures.inc();
            }
            _ => {}
        }
        self.duration
            .get_or_create(&Tool { tool: tool.clone() })
            .observe(took.as_secs_f64());
        self.calls.get_or_create(&Call { tool, outcome }).inc();
    }
}
