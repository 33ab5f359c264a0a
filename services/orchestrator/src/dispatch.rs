//! Running one attempt of a task on the agents worker the router chose:
//! stream its run events into the task's log, then record the outcome:
//! SUCCEEDED, FAILED, TIMED_OUT at the deadline, or nothing more when the
//! task was cancelled (dropping the stream tells the worker to stop).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use amaos_mesh::caller::Caller;
use amaos_mesh::client::{self, MeshChannel};
use amaos_mesh::config::Limits;
use amaos_proto::agents::v1 as agents;
use amaos_proto::agents::v1::agents_service_client::AgentsServiceClient;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::orchestrator::v1::ErrorClass;
use tokio_util::sync::CancellationToken;

use crate::store::TaskStore;
use crate::task::{Task, TaskState, TeamSource};

const MAX_CACHED_CHANNELS: usize = 1024;

/// Channels to agents workers, by address.
pub struct WorkerChannels {
    channels: Mutex<HashMap<String, MeshChannel>>,
    limits: Limits,
}

impl WorkerChannels {
    /// An empty cache.
    pub fn new(limits: Limits) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// The channel to `address`.
    pub fn get(&self, address: &str) -> Result<MeshChannel, client::ChannelError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        if channels.len() >= MAX_CACHED_CHANNELS {
            channels.clear();
        }
        let channel = client::channel(address, &self.limits)?;
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

fn class_of(class: &str) -> ErrorClass {
    match class {
        "budget" => ErrorClass::Budget,
        "provider" => ErrorClass::Provider,
        "tool" => ErrorClass::Tool,
        "invalid" => ErrorClass::Invalid,
        "transient" => ErrorClass::Transient,
        _ => ErrorClass::Internal,
    }
}

type Failure = (ErrorClass, String);

/// Runs attempt `attempt` of `task` on the worker behind `channel`.
pub async fn run_attempt(
    store: Arc<TaskStore>,
    channel: MeshChannel,
    task: Task,
    attempt: u32,
    caller: Caller,
    cancel: CancellationToken,
) {
    let id = task.id.clone();
    let remaining = task
        .deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + remaining;
    let stream_events = async {
        let mut client = AgentsServiceClient::new(channel);
        let mut request = caller.request(agents::RunTeamRequest {
            run_id: id.clone(),
            attempt,
            team: Some(match &task.source {
                TeamSource::Named => agents::run_team_request::Team::TeamName(task.team.clone()),
                TeamSource::Inline(yaml) => {
                    agents::run_team_request::Team::TeamSpecYaml(yaml.clone())
                }
            }),
            input: task.input.clone(),
            session_id: task.session_id.clone(),
            context: Vec::new(),
            budget: None,
            model_alias_override: String::new(),
        });
        request.set_timeout(remaining);
        let mut stream = client
            .run_team(request)
            .await
            .map_err(|s| {
                (
                    ErrorClass::Transient,
                    format!("agents worker refused the run: {}", s.message()),
                )
            })?
            .into_inner();
        let mut running = false;
        loop {
            let event = match stream.message().await {
                Ok(Some(response)) => match response.event {
                    Some(event) => event,
                    None => continue,
                },
                Ok(None) => {
                    return Err::<String, Failure>((
                        ErrorClass::Transient,
                        "the agents worker ended the run without a result".into(),
                    ));
                }
                Err(status) => {
                    return Err((
                        ErrorClass::Transient,
                        format!("agents worker: {}", status.message()),
                    ));
                }
            };
            if !running {
                store.transition(
                    &id,
                    attempt,
                    TaskState::Running,
                    "the worker started the run",
                    |_| {},
                );
                running = true;
            }
            let end = match &event.payload {
                Some(Payload::RunCompleted(done)) => Some(Ok(done.output.clone())),
                Some(Payload::RunFailed(failed)) => {
                    Some(Err((class_of(&failed.class), failed.reason.clone())))
                }
                _ => None,
            };
            if store.run_event(&id, attempt, event).is_err() {
                return Err((
                    ErrorClass::Internal,
                    "the run emitted more events than a task may keep".into(),
                ));
            }
            if let Some(end) = end {
                return end;
            }
        }
    };
    tokio::select! {
        // CancelTask has recorded the state; dropping the stream stops the worker.
        () = cancel.cancelled() => {}
        outcome = tokio::time::timeout_at(deadline, stream_events) => {
            match outcome {
                Ok(Ok(output)) => {
                    store.transition(&id, attempt, TaskState::Succeeded, "the team finished", |t| {
                        t.output = Some(output);
                    });
                }
                Ok(Err((class, message))) => {
                    store.transition(&id, attempt, TaskState::Failed, &message.clone(), |t| {
                        t.error = Some((class, message));
                    });
                }
                Err(_) => {
                    store.transition(&id, attempt, TaskState::TimedOut, "the deadline passed", |t| {
                        t.error = Some((ErrorClass::Transient, "the task did not finish before its deadline".into()));
                    });
                }
            }
        }
    }
}
