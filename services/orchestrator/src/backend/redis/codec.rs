//! What goes into Redis and back: state names, and task data and events
//! sealed at rest when encryption is on.

use std::sync::Arc;

use amaos_mesh::seal::Sealer;
use amaos_proto::orchestrator::v1 as pb;
use prost::Message;

use super::RedisBackend;
use crate::backend::{BackendError, event};
use crate::task::TaskState;

pub(super) fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "Pending",
        TaskState::Queued => "Queued",
        TaskState::Running => "Running",
        TaskState::Succeeded => "Succeeded",
        TaskState::Failed => "Failed",
        TaskState::Cancelled => "Cancelled",
        TaskState::TimedOut => "TimedOut",
        TaskState::NeedsReview => "NeedsReview",
        TaskState::InputRequired => "InputRequired",
    }
}

pub(super) fn parse_state(name: &str) -> Option<TaskState> {
    Some(match name {
        "Pending" => TaskState::Pending,
        "Queued" => TaskState::Queued,
        "Running" => TaskState::Running,
        "Succeeded" => TaskState::Succeeded,
        "Failed" => TaskState::Failed,
        "Cancelled" => TaskState::Cancelled,
        "TimedOut" => TaskState::TimedOut,
        "NeedsReview" => TaskState::NeedsReview,
        "InputRequired" => TaskState::InputRequired,
        _ => return None,
    })
}

/// The key context of everything stored for task `id`: a sealed value
/// copied to another task does not open.
fn context(id: &str) -> String {
    format!("task/{id}")
}

impl RedisBackend {
    /// Stores task data and event payloads sealed with `sealer` from now on;
    /// values stored in clear before stay readable.
    pub fn with_sealer(mut self, sealer: Arc<Sealer>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// What is stored for `plain` of task `id`: sealed when encryption is on.
    pub(super) fn seal(&self, id: &str, plain: Vec<u8>) -> Result<Vec<u8>, BackendError> {
        match &self.sealer {
            Some(sealer) => sealer
                .seal_bytes(&context(id), &plain)
                .map(String::into_bytes)
                .map_err(|e| BackendError::Unavailable(e.to_string())),
            None => Ok(plain),
        }
    }

    /// The plain bytes of what is stored for task `id`.
    pub(super) fn open(&self, id: &str, stored: Vec<u8>) -> Result<Vec<u8>, BackendError> {
        match &self.sealer {
            _ if !Sealer::is_sealed(&stored) => Ok(stored),
            Some(sealer) => sealer
                .open_bytes(&context(id), &stored)
                .map_err(|e| BackendError::Unavailable(format!("task {id}: {e}"))),
            None => Err(BackendError::Unavailable(format!(
                "task {id} is sealed but encryption is off (orchestrator.encrypt)"
            ))),
        }
    }

    /// An event without its sequence number (the stream id carries it),
    /// encoded and sealed.
    pub(super) fn blob(
        &self,
        id: &str,
        kind: pb::task_event::Kind,
    ) -> Result<Vec<u8>, BackendError> {
        self.seal(id, event(id, 0, kind).encode_to_vec())
    }

    pub(super) fn decode_event(
        &self,
        id: &str,
        entry: &redis::streams::StreamId,
    ) -> Option<pb::TaskEvent> {
        let sequence: u64 = entry.id.strip_prefix("0-")?.parse().ok()?;
        let stored: Vec<u8> = redis::from_redis_value_ref(entry.map.get("e")?).ok()?;
        let bytes = match self.open(id, stored) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(task_id = id, sequence, %error, "an event does not open; skipped");
                return None;
            }
        };
        let mut event = pb::TaskEvent::decode(bytes.as_slice()).ok()?;
        event.sequence = sequence;
        event.task_id = id.to_owned();
        Some(event)
    }
}
