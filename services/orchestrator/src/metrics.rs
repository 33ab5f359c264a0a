//! The orchestrator's own metrics: tasks by team and final state, the
//! queue, attempts and what became of them, admission refusals by tenant,
//! and the latencies the SLOs are written over (`deploy/observability/`).
//!
//! Team and tenant labels are bounded by [`Metrics::team`] and
//! [`Metrics::tenant`]; tenant classes come from `telemetry.tenant_classes`.

use std::time::{Duration, SystemTime};

use amaos_mesh::metrics::{Metrics, seconds_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::task::{Task, TaskState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Team {
    team: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamClass {
    team: String,
    tenant_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finished {
    team: String,
    tenant_class: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Class {
    tenant_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rejection {
    tenant: String,
    reason: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Why a submission was refused before it was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The tenant's or team's submission rate.
    RateLimit,
    /// The store holds as many unfinished tasks as it may.
    Capacity,
    /// A monthly budget is spent.
    Budget,
}

/// The orchestrator's metrics, registered in its service registry.
#[derive(Clone)]
pub struct TaskMetrics {
    metrics: Metrics,
    submitted: Family<TeamClass, Counter>,
    finished: Family<Finished, Counter>,
    queue_depth: Gauge,
    queue_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    attempts: Family<Team, Counter>,
    retries: Family<Team, Counter>,
    fallbacks: Family<Team, Counter>,
    takeovers: Counter,
    running: Gauge,
    rejections: Family<Rejection, Counter>,
    duration: Histograms<Team>,
    submit_latency: Histograms<Class>,
    first_event: Histograms<Class>,
}

impl TaskMetrics {
    /// Registers the orchestrator's metrics in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            metrics: metrics.clone(),
            submitted: Family::default(),
            finished: Family::default(),
            queue_depth: Gauge::default(),
            queue_oldest: Gauge::default(),
            attempts: Family::default(),
            retries: Family::default(),
            fallbacks: Family::default(),
            takeovers: Counter::default(),
            running: Gauge::default(),
            rejections: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram),
            submit_latency: Family::new_with_constructor(seconds_histogram),
            first_event: Family::new_with_constructor(seconds_histogram),
        };
        let m = metrics;
        m.register(
            "tasks_submitted",
            "tasks accepted, by team and tenant class",
            this.submitted.clone(),
        );
        m.register(
            "tasks_finished",
            "tasks that reached a final state, by team, tenant class and state",
            this.finished.clone(),
        );
        m.register(
            "task_queue_depth",
            "tasks waiting for a dispatcher: queued, or due for a delayed retry",
            this.queue_depth.clone(),
        );
        m.register(
            "task_queue_oldest_age_seconds",
            "how long the oldest queued task has waited, in seconds (0 when none waits)",
            this.queue_oldest.clone(),
        );
        m.register(
            "task_attempts",
            "attempts started by this replica, by team",
            this.attempts.clone(),
        );
        m.register(
            "task_retries",
            "failed attempts followed by a retry of the same team, by team",
            this.retries.clone(),
        );
        m.register(
            "task_fallbacks",
            "failed attempts followed by a move to the next fallback team, by the team that failed",
            this.fallbacks.clone(),
        );
        m.register(
            "task_takeovers",
            "attempts taken over from a dispatcher whose lease expired",
            this.takeovers.clone(),
        );
        m.register(
            "task_attempts_running",
            "attempts running on this replica",
            this.running.clone(),
        );
        m.register(
            "admission_rejections",
            "submissions refused before they were stored, by tenant and reason (rate_limit, capacity, budget)",
            this.rejections.clone(),
        );
        m.register(
            "task_duration_seconds",
            "from submission to a final state, in seconds, by team",
            this.duration.clone(),
        );
        m.register(
            "task_submit_duration_seconds",
            "SubmitTask latency until the task is stored, in seconds, by tenant class",
            this.submit_latency.clone(),
        );
        m.register(
            "task_first_event_seconds",
            "from submission to the first event of its first attempt's run, in seconds, by tenant class",
            this.first_event.clone(),
        );
        this
    }

    /// A task was accepted after `took`.
    pub fn submitted(&self, task: &Task, took: Duration) {
        let class = self.metrics.tenant_class(&task.tenant);
        self.submit_latency
            .get_or_create(&Class {
                tenant_class: class.clone(),
            })
            .observe(took.as_secs_f64());
        self.submitted
            .get_or_create(&TeamClass {
                team: self.metrics.team(&task.team),
                tenant_class: class,
            })
            .inc();
    }

    /// A submission by `tenant` was refused.
    pub fn rejected(&self, tenant: &str, why: Rejected) {
        let reason = match why {
            Rejected::RateLimit => "rate_limit",
            Rejected::Capacity => "capacity",
            Rejected::Budget => "budget",
        };
        self.rejections
            .get_or_create(&Rejection {
                tenant: self.metrics.tenant(tenant),
                reason,
            })
            .inc();
    }

    /// `task` reached final state `state` (through a dispatcher or a cancel).
    pub fn finished(&self, task: &Task, state: TaskState) {
        let state = match state {
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::TimedOut => "timed_out",
            TaskState::NeedsReview => "needs_review",
            TaskState::Pending
            | TaskState::Queued
            | TaskState::Running
            | TaskState::InputRequired => return,
        };
        let team = self.metrics.team(&task.team);
        self.finished
            .get_or_create(&Finished {
                team: team.clone(),
                tenant_class: self.metrics.tenant_class(&task.tenant),
                state,
            })
            .inc();
        let took = SystemTime::now()
            .duration_since(task.created_at)
            .unwrap_or_default();
        self.duration
            .get_or_create(&Team { team })
            .observe(took.as_secs_f64());
    }

    /// An attempt of `task` starts here.
    pub fn attempt_started(&self, task: &Task) {
        self.attempts
            .get_or_create(&Team {
                team: self.metrics.team(&task.team),
            })
            .inc();
        self.running.inc();
    }

    /// An attempt whose dispatcher stopped renewing its lease is taken over.
    pub fn took_over(&self) {
        self.takeovers.inc();
    }

    /// An attempt started with [`TaskMetrics::attempt_started`] ended.
    pub fn attempt_ended(&self) {
        self.running.dec();
    }

    /// A failed attempt of `task` is followed by another: of the same team,
    /// or of the next fallback.
    pub fn retried(&self, task: &Task, next_stage: bool) {
        let family = if next_stage {
            &self.fallbacks
        } else {
            &self.retries
        };
        family
            .get_or_create(&Team {
                team: self.metrics.team(&task.team),
            })
            .inc();
    }

    /// The first attempt of `task` produced its first run event.
    pub fn first_event(&self, task: &Task) {
        let took = SystemTime::now()
            .duration_since(task.created_at)
            .unwrap_or_default();
        self.first_event
            .get_or_create(&Class {
                tenant_class: self.metrics.tenant_class(&task.tenant),
            })
            .observe(took.as_secs_f64());
    }

    /// The queue as last measured.
    pub fn queue(&self, depth: u64, oldest: Duration) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.queue_oldest.set(oldest.as_secs_f64());
    }
}
