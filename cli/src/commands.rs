//! The client commands: each connects to the orchestrator or auth service of
//! the configured mesh, authenticates with an API key, and prints readable
//! text or, with `--json`, JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use amaos_mesh::caller;
use amaos_mesh::client::{self, MeshChannel};
use amaos_mesh::config::{Config, EXIT_CONFIG};
use amaos_proto::auth::v1 as auth;
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient;
use amaos_proto::time::proto_duration;
use tonic::Request;

use crate::render;

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// The message.
    pub message: String,
    /// The exit code.
    pub code: u8,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
        }
    }
}

/// Exit code of a task that did not succeed.
pub const EXIT_TASK_FAILED: u8 = 1;
/// Exit code of invalid input (bad spec, bad argument).
pub const EXIT_INVALID: u8 = 2;
/// Exit code of a call the mesh refused or could not answer.
pub const EXIT_RPC: u8 = 3;

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        use tonic_types::StatusExt;
        let mut message = format!("{:?}: {}", status.code(), status.message());
        if let Some(bad) = status.get_details_bad_request() {
            for v in &bad.field_violations {
                message.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
        }
        let code = match status.code() {
            tonic::Code::InvalidArgument => EXIT_INVALID,
            _ => EXIT_RPC,
        };
        Failure { message, code }
    }
}

/// Where and as whom the client connects.
pub struct Client {
    config: Config,
    api_key: Option<String>,
}

impl Client {
    /// A client for `config`, with the given key or the local admin key.
    pub fn new(config: Config, api_key: Option<String>) -> Self {
        let api_key = api_key.filter(|k| !k.is_empty()).or_else(|| {
            std::fs::read_to_string(config.data_dir.join("admin.key"))
                .ok()
                .map(|k| k.trim().to_owned())
        });
        Self { config, api_key }
    }

    /// A channel to service `peer` at `url`, as the `cli` principal (its
    /// certificate under `tls.mode = rustls`).
    fn channel(&self, peer: &str, url: &str) -> Result<MeshChannel, Failure> {
        client::Dialer::new(&self.config, "cli")
            .map_err(|e| Failure::new(EXIT_CONFIG as u8, e.to_string()))?
            .channel(peer, url)
            .map_err(|e| Failure::new(EXIT_RPC, e.to_string()))
    }

    fn orchestrator(&self) -> Result<OrchestratorServiceClient<MeshChannel>, Failure> {
        let limit = self.config.limits.max_message_bytes;
        Ok(OrchestratorServiceClient::new(
            self.channel("orchestrator", &self.config.orchestrator.url)?,
        )
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit))
    }

    fn auth(&self) -> Result<AuthServiceClient<MeshChannel>, Failure> {
        Ok(AuthServiceClient::new(
            self.channel("auth", &self.config.auth.url)?,
        ))
    }

    fn request<T>(&self, message: T) -> Result<Request<T>, Failure> {
        let mut request = Request::new(message);
        let key = self.api_key.as_deref().ok_or_else(|| {
            Failure::new(
                EXIT_RPC,
                format!(
                    "no API key: pass --api-key, set AMAOS_API_KEY, or run where {} exists",
                    self.config.data_dir.join("admin.key").display()
                ),
            )
        })?;
        caller::set_bearer(request.metadata_mut(), key)?;
        Ok(request)
    }
}

/// How to name the team of a submission.
pub enum TeamArg {
    /// A team served by name.
    Name(String),
    /// A spec file, sent inline.
    SpecFile(PathBuf),
}

/// Reads and checks a spec file locally, so errors name the file and line.
pub fn read_spec(path: &Path) -> Result<String, Failure> {
    let yaml = std::fs::read_to_string(path)
        .map_err(|e| Failure::new(EXIT_INVALID, format!("cannot read {}: {e}", path.display())))?;
    amaos_teams::parse(&yaml).map_err(|errors| {
        let lines: Vec<String> = errors
            .0
            .iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect();
        Failure::new(EXIT_INVALID, lines.join("\n"))
    })?;
    Ok(yaml)
}

/// What to submit.
pub struct Submission {
    /// The team.
    pub team: TeamArg,
    /// The input.
    pub input: String,
    /// The memory session.
    pub session: Option<String>,
    /// The idempotency key.
    pub idempotency_key: Option<String>,
    /// The task timeout.
    pub timeout: Option<Duration>,
}

async fn submit_task(client: &Client, s: Submission) -> Result<pb::SubmitTaskResponse, Failure> {
    let team = match s.team {
        TeamArg::Name(name) => pb::team_ref::Team::Name(name),
        TeamArg::SpecFile(path) => pb::team_ref::Team::SpecYaml(read_spec(&path)?),
    };
    let request = client.request(pb::SubmitTaskRequest {
        team: Some(pb::TeamRef { team: Some(team) }),
        input: s.input,
        session_id: s.session.unwrap_or_default(),
        idempotency_key: s.idempotency_key.unwrap_or_default(),
        timeout: s.timeout.map(proto_duration),
        retry: None,
        fallbacks: Vec::new(),
        labels: Default::default(),
    })?;
    Ok(client
        .orchestrator()?
        .submit_task(request)
        .await?
        .into_inner())
}

/// `amaos submit`: prints the task id (or the task as JSON).
pub async fn submit(client: &Client, s: Submission, json: bool) -> Result<(), Failure> {
    let response = submit_task(client, s).await?;
    if json {
        let task = response.task.as_ref().map(render::task_json);
        println!(
            "{}",
            serde_json::json!({"task_id": response.task_id, "deduplicated": response.deduplicated, "task": task})
        );
    } else {
        println!("{}", response.task_id);
    }
    Ok(())
}

/// Streams a task's events until it finishes; returns the finished task.
async fn follow(
    client: &Client,
    task_id: &str,
    after: u64,
    json: bool,
) -> Result<pb::Task, Failure> {
    let mut orchestrator = client.orchestrator()?;
    let mut stream = orchestrator
        .watch_task(client.request(pb::WatchTaskRequest {
            task_id: task_id.to_owned(),
            after_sequence: after,
        })?)
        .await?
        .into_inner();
    let mut progress = render::Progress::default();
    while let Some(response) = stream.message().await? {
        let Some(event) = response.event else {
            continue;
        };
        if json {
            println!("{}", render::event_json(&event));
        } else if let Some(line) = progress.line(&event) {
            eprintln!("{line}");
        }
    }
    returned(
        orchestrator
            .get_task(client.request(pb::GetTaskRequest {
                task_id: task_id.to_owned(),
            })?)
            .await?
            .into_inner()
            .task,
    )
}

fn finish(task: &pb::Task, json: bool) -> Result<(), Failure> {
    if json {
        println!(
            "{}",
            serde_json::json!({"type": "result", "task": render::task_json(task)})
        );
    }
    if task.state == pb::TaskState::Succeeded as i32 {
        if !json {
            println!("{}", task.output);
        }
        Ok(())
    } else {
        let reason = task
            .error
            .as_ref()
            .map(|e| e.message.as_str())
            .unwrap_or("no reason given");
        Err(Failure::new(
            EXIT_TASK_FAILED,
            format!(
                "task {} {}: {reason}",
                task.task_id,
                render::state_name(task.state)
            ),
        ))
    }
}

/// `amaos run`: submits, streams events live, prints the output.
pub async fn run(client: &Client, s: Submission, json: bool) -> Result<(), Failure> {
    let response = submit_task(client, s).await?;
    if !json {
        eprintln!("task {} submitted", response.task_id);
    }
    let task = follow(client, &response.task_id, 0, json).await?;
    finish(&task, json)
}

/// `amaos watch`: streams a task's events; exits like `run`.
pub async fn watch(client: &Client, task_id: &str, after: u64, json: bool) -> Result<(), Failure> {
    let task = follow(client, task_id, after, json).await?;
    finish(&task, json)
}

/// `amaos task`: one task.
pub async fn task(client: &Client, task_id: &str, json: bool) -> Result<(), Failure> {
    let task = returned(
        client
            .orchestrator()?
            .get_task(client.request(pb::GetTaskRequest {
                task_id: task_id.to_owned(),
            })?)
            .await?
            .into_inner()
            .task,
    )?;
    if json {
        println!("{}", render::task_json(&task));
    } else {
        print!("{}", render::task_details(&task));
    }
    Ok(())
}

/// `amaos tasks`: the newest tasks.
pub async fn tasks(
    client: &Client,
    state: Option<pb::TaskState>,
    team: Option<String>,
    limit: u32,
    json: bool,
) -> Result<(), Failure> {
    let response = client
        .orchestrator()?
        .list_tasks(client.request(pb::ListTasksRequest {
            page_size: limit,
            page_token: String::new(),
            state: state.map(|s| s as i32).unwrap_or_default(),
            team: team.unwrap_or_default(),
        })?)
        .await?
        .into_inner();
    if json {
        let tasks: Vec<_> = response.tasks.iter().map(render::task_json).collect();
        println!(
            "{}",
            serde_json::json!({"tasks": tasks, "next_page_token": response.next_page_token})
        );
    } else if response.tasks.is_empty() {
        println!("no tasks");
    } else {
        for t in &response.tasks {
            println!("{}", render::task_line(t));
        }
    }
    Ok(())
}

/// `amaos cancel`.
pub async fn cancel(
    client: &Client,
    task_id: &str,
    reason: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let task = returned(
        client
            .orchestrator()?
            .cancel_task(client.request(pb::CancelTaskRequest {
                task_id: task_id.to_owned(),
                reason: reason.unwrap_or_default(),
                idempotency_key: String::new(),
            })?)
            .await?
            .into_inner()
            .task,
    )?;
    if json {
        println!("{}", render::task_json(&task));
    } else {
        println!("{} {}", task.task_id, render::state_name(task.state));
    }
    Ok(())
}

/// `amaos approvals list`.
pub async fn approvals_list(
    client: &Client,
    team: Option<String>,
    task: Option<String>,
    all: bool,
    json: bool,
) -> Result<(), Failure> {
    let approvals = client
        .orchestrator()?
        .list_approvals(client.request(pb::ListApprovalsRequest {
            team: team.unwrap_or_default(),
            task_id: task.unwrap_or_default(),
            include_decided: all,
            page_size: 0,
        })?)
        .await?
        .into_inner()
        .approvals;
    for a in &approvals {
        if json {
            println!("{}", render::approval_json(a));
        } else {
            println!("{}", render::approval_line(a));
        }
    }
    if approvals.is_empty() && !json {
        eprintln!("no approvals");
    }
    Ok(())
}

/// `amaos approvals approve|reject`.
pub async fn approvals_decide(
    client: &Client,
    task_id: String,
    approval_id: String,
    approve: bool,
    comment: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let answer = client
        .orchestrator()?
        .decide_approval(client.request(pb::DecideApprovalRequest {
            task_id,
            approval_id,
            decision: if approve {
                pb::Decision::Approve
            } else {
                pb::Decision::Reject
            } as i32,
            comment: comment.unwrap_or_default(),
        })?)
        .await?
        .into_inner();
    let approval = answer
        .approval
        .ok_or_else(|| Failure::new(EXIT_RPC, "the orchestrator returned no approval"))?;
    if json {
        println!("{}", render::approval_json(&approval));
    } else {
        println!("{}", render::approval_line(&approval));
    }
    Ok(())
}

/// `amaos input`: a person's message to a task waiting for one.
pub async fn send_input(
    client: &Client,
    task_id: String,
    message: String,
    json: bool,
) -> Result<(), Failure> {
    let task = returned(
        client
            .orchestrator()?
            .send_input(client.request(pb::SendInputRequest { task_id, message })?)
            .await?
            .into_inner()
            .task,
    )?;
    if json {
        println!("{}", render::task_json(&task));
    } else {
        println!("{}", render::task_line(&task));
    }
    Ok(())
}

fn key_json(k: &auth::ApiKey) -> serde_json::Value {
    serde_json::json!({
        "key_id": k.key_id, "name": k.name, "tenant": k.tenant, "roles": k.roles, "prefix": k.prefix,
        "revoked": k.revoked_at.is_some(),
    })
}

/// `amaos keys create`: prints the secret as the last line.
pub async fn keys_create(
    client: &Client,
    name: String,
    tenant: Option<String>,
    roles: Vec<String>,
    json: bool,
) -> Result<(), Failure> {
    let response = client
        .auth()?
        .create_api_key(client.request(auth::CreateApiKeyRequest {
            name,
            tenant: tenant.unwrap_or_default(),
            roles,
            ttl: None,
            idempotency_key: String::new(),
        })?)
        .await?
        .into_inner();
    let key = response.api_key.unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::json!({"api_key": key_json(&key), "secret": response.secret})
        );
    } else {
        eprintln!(
            "created key {} ({}) for tenant {} with roles [{}]; the secret is shown once:",
            key.key_id,
            key.name,
            key.tenant,
            key.roles.join(", ")
        );
        println!("{}", response.secret);
    }
    Ok(())
}

/// `amaos keys list`.
pub async fn keys_list(
    client: &Client,
    tenant: Option<String>,
    all: bool,
    json: bool,
) -> Result<(), Failure> {
    let response = client
        .auth()?
        .list_api_keys(client.request(auth::ListApiKeysRequest {
            include_revoked: all,
            tenant: tenant.unwrap_or_default(),
        })?)
        .await?
        .into_inner();
    if json {
        let keys: Vec<_> = response.keys.iter().map(key_json).collect();
        println!("{}", serde_json::json!({"keys": keys}));
    } else {
        for k in &response.keys {
            let revoked = if k.revoked_at.is_some() {
                "  (revoked)"
            } else {
                ""
            };
            println!(
                "{}  amaos_{}_…  {:<12} {:<24} [{}]{revoked}",
                k.key_id,
                k.prefix,
                k.tenant,
                k.name,
                k.roles.join(",")
            );
        }
    }
    Ok(())
}

/// `amaos keys revoke`.
pub async fn keys_revoke(client: &Client, key_id: String, json: bool) -> Result<(), Failure> {
    let response = client
        .auth()?
        .revoke_api_key(client.request(auth::RevokeApiKeyRequest {
            key_id,
            idempotency_key: String::new(),
        })?)
        .await?
        .into_inner();
    let key = response.api_key.unwrap_or_default();
    if json {
        println!("{}", key_json(&key));
    } else {
        println!("revoked {}", key.key_id);
    }
    Ok(())
}

/// What `amaos usage` asks for.
pub struct UsageArgs {
    /// Another tenant, or `*`.
    pub tenant: Option<String>,
    /// Only this team.
    pub team: Option<String>,
    /// Only this task.
    pub task: Option<String>,
    /// From (a day or a duration ago).
    pub since: Option<String>,
    /// Until (a day or a duration ago).
    pub until: Option<String>,
    /// How rows are grouped.
    pub group_by: pb::UsageGrouping,
}

/// A day (`2026-11-01`) or a time this long ago (`7d`), for `--since`.
fn parse_when(flag: &str, text: &str) -> Result<std::time::SystemTime, Failure> {
    let invalid = || Failure {
        message: format!("{flag}: `{text}` is neither a day (2026-11-01) nor a duration (7d)"),
        code: EXIT_INVALID,
    };
    if text.len() == 10 && text.as_bytes()[4] == b'-' {
        return humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).map_err(|_| invalid());
    }
    let ago = humantime::parse_duration(text).map_err(|_| invalid())?;
    std::time::SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(invalid)
}

/// `amaos usage`.
pub async fn usage(client: &Client, args: UsageArgs, json: bool) -> Result<(), Failure> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_when("--since", s))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_when("--until", s))
        .transpose()?;
    let response = client
        .orchestrator()?
        .get_usage(client.request(pb::GetUsageRequest {
            tenant: args.tenant.unwrap_or_default(),
            team: args.team.unwrap_or_default(),
            task_id: args.task.clone().unwrap_or_default(),
            since: since.map(amaos_proto::time::timestamp),
            until: until.map(amaos_proto::time::timestamp),
            group_by: args.group_by as i32,
        })?)
        .await?
        .into_inner();
    if json {
        println!("{}", render::usage_json(&response));
    } else {
        print!("{}", render::usage_table(&response, args.task.is_some()));
    }
    Ok(())
}

/// The task an orchestrator answer carries, which it always should.
fn returned(task: Option<pb::Task>) -> Result<pb::Task, Failure> {
    task.ok_or_else(|| Failure::new(EXIT_RPC, "the orchestrator returned no task"))
}
