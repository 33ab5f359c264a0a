//! The suite every [`TaskBackend`] passes: one scenario per async function,
//! each on a fresh backend, so the in-process and Redis backends are held to
//! the same behaviour. `tests/conformance.rs` runs each scenario as its own
//! test on each backend; the rate limiters have their own scenario.

mod approvals;
mod deadlines;
mod lifecycle;
mod limits;
mod watching;
mod workflows;

pub use approvals::*;
pub use deadlines::*;
pub use lifecycle::*;
pub use limits::*;
pub use watching::*;
pub use workflows::*;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amaos_orchestrator::backend::{
    Applied, Claim, Claimed, Lease, Outcome, RateLimiter, Record, Swept, TaskBackend,
};
use amaos_orchestrator::task::{ErrorClass, Task, TaskError, TaskState};
use amaos_proto::agents::v1 as agents;
use amaos_proto::orchestrator::v1 as pb;

use super::fixtures::sample;

fn run_event(id: &str, attempt: u32) -> agents::RunEvent {
    agents::RunEvent {
        sequence: 1,
        run_id: id.into(),
        attempt,
        at: None,
        agent: "a".into(),
        payload: Some(agents::run_event::Payload::Message(agents::Message {
            role: "assistant".into(),
            content: "hi".into(),
        })),
    }
}

fn states(events: &[pb::TaskEvent]) -> Vec<TaskState> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::task_event::Kind::StateChanged(s)) => TaskState::from_proto(s.to),
            _ => None,
        })
        .collect()
}

const LEASE: Duration = Duration::from_secs(30);

async fn claim(backend: &dyn TaskBackend) -> Option<Claim> {
    for _ in 0..20 {
        if let Claimed::Attempt(claim) = backend.claim("c1", LEASE).await.unwrap() {
            return Some(*claim);
        }
    }
    None
}

fn failed(message: &str) -> TaskError {
    TaskError {
        class: ErrorClass::Transient,
        message: message.into(),
    }
}

/// Sweeps until a whole pass over the store has been made since the call:
/// two ends of a pass. The store may be a Redis that other tests and runs
/// have filled with many keys, so the number of steps is not fixed.
async fn sweep(b: &dyn TaskBackend) -> Swept {
    let mut total = Swept::default();
    let mut ends = 0;
    for _ in 0..100_000 {
        if ends == 2 {
            return total;
        }
        let s = b.sweep(LEASE, 10_000).await.unwrap();
        ends += usize::from(s.pass_ended);
        total.examined += s.examined;
        total.requeued += s.requeued;
        total.timed_out += s.timed_out;
        total.ended += s.ended;
        total.expired += s.expired;
        total.consumers_removed += s.consumers_removed;
    }
    panic!("no whole sweep pass in 100,000 steps: {total:?}");
}

/// A workflow of `tenant`: one task per (name, names of the tasks it depends on).
fn workflow(tenant: &str, edges: &[(&str, &[&str])]) -> Vec<Task> {
    let wf = amaos_mesh::new_id();
    let mut tasks: Vec<Task> = edges
        .iter()
        .map(|(key, _)| {
            let mut t = sample(tenant);
            t.workflow_id = wf.clone();
            t.workflow_key = (*key).into();
            t
        })
        .collect();
    let id_of = |tasks: &[Task], key: &str| {
        tasks
            .iter()
            .find(|t| t.workflow_key == key)
            .unwrap()
            .id
            .clone()
    };
    for (i, (_, deps)) in edges.iter().enumerate() {
        let ids: Vec<String> = deps.iter().map(|d| id_of(&tasks, d)).collect();
        for dep in &ids {
            let j = tasks.iter().position(|t| &t.id == dep).unwrap();
            let me = tasks[i].id.clone();
            tasks[j].dependents.push(me);
        }
        tasks[i].depends_on = ids;
    }
    tasks
}
