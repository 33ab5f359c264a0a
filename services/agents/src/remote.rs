//! Remote agents of other systems, reached over the Agent2Agent protocol
//! (A2A v1.0, gRPC binding): a team member with `kind: a2a` takes its turns
//! by sending one message to its remote and answering with the remote
//! task's output.
//!
//! Only the remotes the worker's configuration lists (`agents.a2a_remotes`)
//! can be called, with the credential configured there: a spec — even one a
//! tenant sends inline — names a URL, never a key, and cannot make the
//! worker call an address the platform did not allow.
//!
//! Each turn's message id is derived from the run and the step, so a retried
//! call (and a later attempt of the same task) sends the same id: a remote
//! that deduplicates by message id — AMAOS does — runs the turn once.

use std::collections::HashMap;
use std::time::Duration;

use amaos_mesh::api_client::ApiKey;
use amaos_mesh::config::A2aRemote;
use amaos_mesh::secrets::SecretStore;
use amaos_proto::lf::a2a::v1 as a2a;
use amaos_proto::lf::a2a::v1::a2a_service_client::A2aServiceClient;
use amaos_teams::RemoteAgent;
use std::sync::Arc;
use tonic::transport::{Channel, Endpoint};

/// Largest answer accepted from a remote.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Pause before retrying a call.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Why a remote turn failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The spec names a remote this worker may not call.
    #[error(
        "A2A remote `{0}` is not allowed on this worker: list it in `agents.a2a_remotes` (with its credential)"
    )]
    NotAllowed(String),
    /// The remote could not be reached or refused the call.
    #[error("A2A remote `{url}`: {message}")]
    Call {
        /// Which remote.
        url: String,
        /// What went wrong.
        message: String,
    },
}

struct Remote {
    client: A2aServiceClient<Channel>,
    key: ApiKey,
    timeout: Duration,
    max_retries: u32,
}

/// The remotes a worker may call, by URL.
#[derive(Default)]
pub struct Remotes {
    by_url: HashMap<String, Remote>,
}

impl Remotes {
    /// The remotes of `configured`, with keys from the environment or `secrets`.
    pub fn new(
        configured: &[A2aRemote],
        secrets: Option<&Arc<dyn SecretStore>>,
        max_message_bytes: usize,
    ) -> Result<Self, amaos_mesh::BoxError> {
        let mut by_url = HashMap::new();
        for (i, remote) in configured.iter().enumerate() {
            let key = ApiKey::configured(
                remote.api_key_env.as_deref(),
                remote.api_key_secret.as_deref(),
                secrets,
                |field| format!("agents.a2a_remotes[{i}].{field}"),
            )?;
            let endpoint = Endpoint::from_shared(remote.url.clone())
                .map_err(|e| format!("agents.a2a_remotes[{i}].url: {e}"))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(remote.timeout);
            let client = A2aServiceClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(max_message_bytes.min(MAX_ANSWER_BYTES));
            by_url.insert(
                remote.url.clone(),
                Remote {
                    client,
                    key,
                    timeout: remote.timeout,
                    max_retries: remote.max_retries,
                },
            );
        }
        Ok(Self { by_url })
    }

    /// Sends `text` to `agent`'s remote as message `message_id` of `context`
    /// and waits for its task to finish: the output.
    pub async fn ask(
        &self,
        agent: &RemoteAgent,
        message_id: &str,
        context: &str,
        text: &str,
    ) -> Result<String, RemoteError> {
        let remote = self
            .by_url
            .get(&agent.url)
            .ok_or_else(|| RemoteError::NotAllowed(agent.url.clone()))?;
        let fail = |message: String| RemoteError::Call {
            url: agent.url.clone(),
            message,
        };
        let key = remote.key.get().await.map_err(fail)?;
        let mut message = a2a::Message {
            message_id: message_id.to_owned(),
            context_id: context.to_owned(),
            role: a2a::Role::User as i32,
            parts: vec![a2a::Part {
                content: Some(a2a::part::Content::Text(text.to_owned())),
                media_type: "text/plain".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        if let Some(skill) = &agent.skill {
            message.metadata = Some(prost_types::Struct {
                fields: [(
                    "skill".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(skill.clone())),
                    },
                )]
                .into(),
            });
        }
        let request = a2a::SendMessageRequest {
            message: Some(message),
            configuration: Some(a2a::SendMessageConfiguration {
                accepted_output_modes: vec!["text/plain".into()],
                history_length: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut tries = 0;
        let answer = loop {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(remote.timeout);
            call.metadata_mut().insert(
                "a2a-version",
                tonic::metadata::MetadataValue::from_static("1.0"),
            );
            if let Some(key) = &key {
                let value = format!("Bearer {}", key.expose())
                    .parse()
                    .map_err(|_| fail("the credential is not a valid header value".into()))?;
                call.metadata_mut().insert("authorization", value);
            }
            match remote.client.clone().send_message(call).await {
                Ok(answer) => break answer.into_inner(),
                Err(status)
                    if tries < remote.max_retries
                        && matches!(status.code(), tonic::Code::Unavailable) =>
                {
                    tries += 1;
                    tokio::time::sleep(RETRY_PAUSE * tries).await;
                }
                Err(status) => {
                    let said = key.as_ref().map_or_else(
                        || status.message().to_owned(),
                        |k| k.scrub(status.message()),
                    );
                    return Err(fail(format!("{:?}: {said}", status.code())));
                }
            }
        };
        output_of(answer).map_err(fail)
    }
}

/// The text of a remote's answer: a finished task's artifacts (or its
/// status message), or a direct message.
fn output_of(answer: a2a::SendMessageResponse) -> Result<String, String> {
    use a2a::send_message_response::Payload;
    match answer.payload {
        Some(Payload::Message(message)) => Ok(text_of(&message.parts)),
        Some(Payload::Task(task)) => {
            let status = task.status.unwrap_or_default();
            let state = a2a::TaskState::try_from(status.state).unwrap_or_default();
            let said = status
                .message
                .map(|m| text_of(&m.parts))
                .unwrap_or_default();
            if state != a2a::TaskState::Completed {
                return Err(format!(
                    "task `{}` ended {}{}",
                    task.id,
                    state.as_str_name(),
                    if said.is_empty() {
                        String::new()
                    } else {
                        format!(": {said}")
                    }
                ));
            }
            let output: Vec<String> = task
                .artifacts
                .iter()
                .map(|a| text_of(&a.parts))
                .filter(|t| !t.is_empty())
                .collect();
            Ok(if output.is_empty() {
                said
            } else {
                output.join("\n\n")
            })
        }
        None => Err("the answer holds neither a task nor a message".into()),
    }
}

fn text_of(parts: &[a2a::Part]) -> String {
    parts
        .iter()
        .filter_map(|p| match &p.content {
            Some(a2a::part::Content::Text(text)) => Some(text.clone()),
            Some(a2a::part::Content::Data(data)) => {
                serde_json::to_string(&amaos_proto::json::value_to_json(data)).ok()
            }
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: a2a::TaskState, output: Option<&str>, said: &str) -> a2a::SendMessageResponse {
        let part = |t: &str| a2a::Part {
            content: Some(a2a::part::Content::Text(t.into())),
            ..Default::default()
        };
        a2a::SendMessageResponse {
            payload: Some(a2a::send_message_response::Payload::Task(a2a::Task {
                id: "t1".into(),
                status: Some(a2a::TaskStatus {
                    state: state as i32,
                    message: (!said.is_empty()).then(|| a2a::Message {
                        parts: vec![part(said)],
                        ..Default::default()
                    }),
                    timestamp: None,
                }),
                artifacts: output
                    .map(|o| a2a::Artifact {
                        parts: vec![part(o)],
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_completed_task_answers_with_its_artifacts() {
        assert_eq!(
            output_of(task(a2a::TaskState::Completed, Some("the brief"), "")).unwrap(),
            "the brief"
        );
    }

    #[test]
    fn any_other_end_is_an_error_saying_why() {
        let failed = output_of(task(a2a::TaskState::Failed, None, "tool broke")).unwrap_err();
        assert!(
            failed.contains("TASK_STATE_FAILED") && failed.contains("tool broke"),
            "{failed}"
        );
        let waiting = output_of(task(a2a::TaskState::InputRequired, None, "")).unwrap_err();
        assert!(waiting.contains("INPUT_REQUIRED"), "{waiting}");
    }

    #[tokio::test]
    async fn a_remote_not_configured_is_refused_before_any_call() {
        let remotes = Remotes::default();
        let refused = remotes
            .ask(
                &RemoteAgent {
                    url: "http://169.254.169.254:80".into(),
                    skill: None,
                },
                "m1",
                "c1",
                "hi",
            )
            .await
            .unwrap_err();
        assert!(matches!(refused, RemoteError::NotAllowed(_)), "{refused}");
    }
}
