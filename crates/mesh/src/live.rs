//! Whether the run a run token is scoped to still runs.
//!
//! A run token lives until its task's deadline, but the attempt it was minted
//! for may end long before: the task finishes, is cancelled, or another
//! replica takes it over with a new attempt. Tools and memory ask the
//! orchestrator (with the token itself, which may read its own task) and
//! refuse a token whose attempt is no longer the task's running one. An
//! answer that the run is live is cached briefly; an answer that it is over
//! is final and cached until the cache is full.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient;

use crate::caller::{Caller, RunScope};
use crate::client::MeshChannel;

/// How long "the attempt is running" is believed without asking again.
pub const LIVE_FOR: Duration = Duration::from_secs(2);
/// Bound on remembered answers.
const MAX_ENTRIES: usize = 10_000;

#[derive(Clone, Copy)]
enum Verdict {
    Live(Instant),
    Over,
}

/// Checks run tokens against the orchestrator.
pub struct LiveRuns {
    orchestrator: OrchestratorServiceClient<MeshChannel>,
    verdicts: Mutex<HashMap<(String, u32), Verdict>>,
}

impl LiveRuns {
    /// A checker asking the orchestrator over `channel`.
    pub fn new(channel: MeshChannel) -> Self {
        Self {
            orchestrator: OrchestratorServiceClient::new(channel),
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses a run token whose attempt no longer runs; any other caller
    /// passes. UNAVAILABLE when the orchestrator cannot be asked (the
    /// caller retries), PERMISSION_DENIED when the run is over.
    pub async fn check(&self, caller: &Caller) -> Result<(), tonic::Status> {
        let Some(run) = &caller.task else {
            return Ok(());
        };
        let key = (run.task.clone(), run.attempt);
        let known = self
            .verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let verdict = match known {
            Some(Verdict::Live(at)) if at.elapsed() < LIVE_FOR => Verdict::Live(at),
            Some(Verdict::Over) => Verdict::Over,
            _ => {
                let verdict = self.ask(caller, run).await?;
                let mut verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
                if verdicts.len() >= MAX_ENTRIES {
                    verdicts.clear();
                }
                verdicts.insert(key, verdict);
                verdict
            }
        };
        match verdict {
            Verdict::Live(_) => Ok(()),
            Verdict::Over => Err(tonic::Status::permission_denied(format!(
                "this run token is for attempt {} of task `{}`, which no longer runs",
                run.attempt, run.task
            ))),
        }
    }

    async fn ask(&self, caller: &Caller, run: &RunScope) -> Result<Verdict, tonic::Status> {
        let request = caller.request(pb::GetTaskRequest {
            task_id: run.task.clone(),
        });
        match self.orchestrator.clone().get_task(request).await {
            Ok(response) => {
                let live = response.into_inner().task.is_some_and(|task| {
                    task.state == pb::TaskState::Running as i32 && task.attempt == run.attempt
                });
                Ok(if live {
                    Verdict::Live(Instant::now())
                } else {
                    Verdict::Over
                })
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(Verdict::Over),
            Err(status) => Err(tonic::Status::unavailable(format!(
                "cannot check that this run token's task still runs: {}",
                status.message()
            ))),
        }
    }
}
