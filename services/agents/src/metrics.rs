//! The agents service's own metrics: model calls by alias, provider and
//! outcome with their latency, tokens and cost; each alias's breaker; cost
//! and tokens by tenant; team runs by kind and how they stopped; the
//! judge's verdicts.
//!
//! Aliases come from `[models]` (bounded by the config); tenants are
//! bounded by [`Metrics::tenant`].

use std::time::Duration;

use amaos_mesh::metrics::{Metrics, seconds_histogram};
use amaos_proto::agents::v1 as pb;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::engine::RunError;

type FloatCounter = Counter<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    alias: String,
    provider: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Model {
    alias: String,
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelTokens {
    alias: String,
    provider: &'static str,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Alias {
    alias: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantTokens {
    tenant: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Run {
    kind: &'static str,
    stop_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Verdict {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Guard {
    reason: &'static str,
}

/// How a model call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// It answered.
    Ok,
    /// It failed.
    Error,
    /// Its breaker was open; it was not made.
    BreakerOpen,
}

/// The agents service's metrics.
#[derive(Clone)]
pub struct AgentMetrics {
    metrics: Metrics,
    calls: Family<Call, Counter>,
    latency: Family<Model, Histogram, fn() -> Histogram>,
    tokens: Family<ModelTokens, Counter>,
    cost: Family<Model, FloatCounter>,
    breaker: Family<Alias, Gauge>,
    tenant_cost: Family<Tenant, FloatCounter>,
    tenant_tokens: Family<TenantTokens, Counter>,
    runs: Family<Run, Counter>,
    verdicts: Family<Verdict, Counter>,
    guards: Family<Guard, Counter>,
}

impl AgentMetrics {
    /// Registers the agents service's metrics in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            metrics: metrics.clone(),
            calls: Family::default(),
            latency: Family::new_with_constructor(seconds_histogram),
            tokens: Family::default(),
            cost: Family::default(),
            breaker: Family::default(),
            tenant_cost: Family::default(),
            tenant_tokens: Family::default(),
            runs: Family::default(),
            verdicts: Family::default(),
            guards: Family::default(),
        };
        let m = metrics;
        m.register(
            "model_calls",
            "model calls by alias, provider and outcome (ok, error, breaker_open)",
            this.calls.clone(),
        );
        m.register(
            "model_call_duration_seconds",
            "model call latency in seconds, by alias and provider",
            this.latency.clone(),
        );
        m.register(
            "model_tokens",
            "tokens of model calls by alias, provider and direction (input, output)",
            this.tokens.clone(),
        );
        m.register(
            "model_cost_usd",
            "estimated cost of model calls in US dollars, by alias and provider",
            this.cost.clone(),
        );
        m.register(
            "model_breaker_open",
            "1 while the alias's circuit breaker is open, else 0",
            this.breaker.clone(),
        );
        m.register(
            "tenant_cost_usd",
            "estimated model cost in US dollars, by tenant",
            this.tenant_cost.clone(),
        );
        m.register(
            "tenant_tokens",
            "model tokens by tenant and direction (input, output)",
            this.tenant_tokens.clone(),
        );
        m.register(
            "team_runs",
            "team runs that ended, by kind (crew, group_chat, hybrid) and stop reason",
            this.runs.clone(),
        );
        m.register(
            "judge_verdicts",
            "judge verdicts by kind (accept, revise, escalate)",
            this.verdicts.clone(),
        );
        m.register(
            "run_guard_stops",
            "runs stopped by a guard, by reason (loop, budget)",
            this.guards.clone(),
        );
        for reason in ["loop", "budget"] {
            this.guards.get_or_create(&Guard { reason }).inc_by(0);
        }
        this
    }

    /// A call to `alias` (of `provider`) ended after `took`.
    pub fn model_call(
        &self,
        alias: &str,
        provider: &'static str,
        outcome: CallOutcome,
        took: Duration,
    ) {
        let outcome_label = match outcome {
            CallOutcome::Ok => "ok",
            CallOutcome::Error => "error",
            CallOutcome::BreakerOpen => "breaker_open",
        };
        self.calls
            .get_or_create(&Call {
                alias: alias.to_owned(),
                provider,
                outcome: outcome_label,
            })
            .inc();
        if outcome != CallOutcome::BreakerOpen {
            self.latency
                .get_or_create(&Model {
                    alias: alias.to_owned(),
                    provider,
                })
                .observe(took.as_secs_f64());
        }
    }

    /// A call to `alias` answered with `usage` costing `cost_usd`.
    pub fn model_usage(
        &self,
        alias: &str,
        provider: &'static str,
        input: u64,
        output: u64,
        cost_usd: f64,
    ) {
        for (direction, n) in [("input", input), ("output", output)] {
            self.tokens
                .get_or_create(&ModelTokens {
                    alias: alias.to_owned(),
                    provider,
                    direction,
                })
                .inc_by(n);
        }
        self.cost
            .get_or_create(&Model {
                alias: alias.to_owned(),
                provider,
            })
            .inc_by(cost_usd.max(0.0));
    }

    /// `alias`'s breaker is open or not.
    pub fn breaker(&self, alias: &str, open: bool) {
        self.breaker
            .get_or_create(&Alias {
                alias: alias.to_owned(),
            })
            .set(i64::from(open));
    }

    /// Counts what a run event says: usage by tenant, verdicts.
    pub fn event(&self, tenant: &str, payload: &pb::run_event::Payload) {
        use pb::run_event::Payload;
        match payload {
            Payload::TokenUsage(usage) => {
                let tenant = self.metrics.tenant(tenant);
                for (direction, n) in [
                    ("input", usage.prompt_tokens),
                    ("output", usage.completion_tokens),
                ] {
                    self.tenant_tokens
                        .get_or_create(&TenantTokens {
                            tenant: tenant.clone(),
                            direction,
                        })
                        .inc_by(n);
                }
                self.tenant_cost
                    .get_or_create(&Tenant { tenant })
                    .inc_by(usage.cost_usd.max(0.0));
            }
            Payload::Verdict(verdict) => {
                let verdict = match pb::VerdictKind::try_from(verdict.kind) {
                    Ok(pb::VerdictKind::Pass) => "accept",
                    Ok(pb::VerdictKind::Revise) => "revise",
                    Ok(pb::VerdictKind::Escalate) => "escalate",
                    _ => "unspecified",
                };
                self.verdicts.get_or_create(&Verdict { verdict }).inc();
            }
            _ => {}
        }
    }

    /// A run of a `kind` team ended with `result`.
    pub fn run_ended(&self, kind: &'static str, result: &Result<String, RunError>) {
        let stop_reason = stop_reason(result);
        if matches!(stop_reason, "loop" | "budget") {
            self.guards
                .get_or_create(&Guard {
                    reason: stop_reason,
                })
                .inc();
        }
        self.runs.get_or_create(&Run { kind, stop_reason }).inc();
    }
}

/// Why a run stopped, as the `stop_reason` label says it.
fn stop_reason(result: &Result<String, RunError>) -> &'static str {
    match result {
        Ok(_) => "done",
        Err(RunError::Budget(message)) if message.starts_with("loop detected") => "loop",
        Err(RunError::Budget(_)) => "budget",
        Err(RunError::Provider(_) | RunError::Dependency(_)) => "error",
        Err(RunError::Invalid(_)) => "invalid",
        Err(RunError::Cancelled) => "cancelled",
        Err(RunError::NeedsReview(_)) => "review",
        Err(RunError::InputRequired { .. }) => "input_required",
        Err(RunError::Rejected(_)) => "rejected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_told_from_another_budget_stop() {
        let looped = Err(RunError::Budget(
            "loop detected: the same message 3 times in a row".into(),
        ));
        assert_eq!(stop_reason(&looped), "loop");
        assert_eq!(
            stop_reason(&Err(RunError::Budget("the run used 10 steps".into()))),
            "budget"
        );
        assert_eq!(stop_reason(&Ok("out".into())), "done");
    }
}
