//! The `amaos` command line: its commands, options and arguments (clap).

use std::path::PathBuf;
use std::time::Duration;

use amaos_proto::orchestrator::v1::TaskState;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "amaos",
    version,
    about = "AMAOS: durable multi-agent orchestration"
)]
pub(crate) struct Cli {
    /// A TOML config file (AMAOS_* variables override it).
    #[arg(long, global = true, env = "AMAOS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The API key; defaults to <data_dir>/admin.key when that file exists.
    #[arg(long, global = true, env = "AMAOS_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Start all six services in this process, on loopback, until Ctrl-C.
    Up,
    /// Submit a team spec with an input, stream its events, print the output.
    Run {
        /// The team spec (YAML).
        spec: PathBuf,
        /// The input for the team.
        input: String,
        /// Scope the team's memory to this session.
        #[arg(long)]
        session: Option<String>,
        /// How long the task may take (e.g. 30s, 10m).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Submit a task and print its id.
    Submit {
        /// A team served by name.
        #[arg(long, conflicts_with = "spec", required_unless_present = "spec")]
        team: Option<String>,
        /// A team spec file sent with the task.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// The input for the team.
        input: String,
        /// Scope the team's memory to this session.
        #[arg(long)]
        session: Option<String>,
        /// Makes the submission safe to retry.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// How long the task may take (e.g. 30s, 10m).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// List tasks, newest first.
    Tasks {
        /// Only tasks in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only tasks of this team.
        #[arg(long)]
        team: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show usage (tokens, cost, model and tool calls, wall time) and
    /// budgets: this month by team, unless told otherwise.
    Usage {
        /// Another tenant, or `*` for all (an admin of the platform tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Only this team.
        #[arg(long)]
        team: Option<String>,
        /// Only this task (all its attempts).
        #[arg(long)]
        task: Option<String>,
        /// From this UTC day (2026-11-01) or this long ago (7d).
        #[arg(long)]
        since: Option<String>,
        /// Up to this UTC day, inclusive.
        #[arg(long)]
        until: Option<String>,
        /// How rows are grouped.
        #[arg(long, value_enum, default_value_t = GroupArg::Team)]
        by: GroupArg,
    },
    /// Show one task.
    Task {
        /// The task id.
        id: String,
    },
    /// Stream a task's events until it finishes.
    Watch {
        /// The task id.
        id: String,
        /// Start after this event sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Cancel a task.
    Cancel {
        /// The task id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print the REST API's OpenAPI 3.1 document (the gateway serves the
    /// same at /openapi.json), for client generators and API gateways.
    Openapi {
        /// Only this service's routes (orchestrator, agents, router, tools,
        /// memory, auth).
        #[arg(long)]
        service: Option<String>,
    },
    /// Check a team spec locally; errors name the line and field.
    Validate {
        /// The team spec (YAML).
        spec: PathBuf,
    },
    /// Run a benchmark scenario against a mesh started in this process.
    Bench {
        /// The scenario: `crew` (3 agents, 3 sequential tasks) or `group_chat`
        /// (3 agents, round robin, 6 messages), on the replay model; or
        /// `memory` (embedding throughput, recall@10 and search latency on
        /// the long-term tier); or `sandbox` (sandboxed `true` against a bare
        /// spawn); or `chaos` (the six services as processes on Redis, a
        /// batch of side-effecting tasks, one fault mid-batch: what survived);
        /// or `rest` (submit + get over gRPC and through the REST gateway,
        /// `--tasks` rounds: the gateway's overhead).
        #[arg(long, default_value = "crew")]
        scenario: String,
        /// For `chaos`: the fault (worker-kill, replica-kill,
        /// worker-then-replica, tools-restart, tools-replica, redis-crash,
        /// replica-sigterm, watch-quiet) or `all`.
        #[arg(long, default_value = "all")]
        fault: String,
        /// Stored vectors for the `memory` scenario.
        #[arg(long, default_value_t = 100_000)]
        vectors: usize,
        /// Where tasks live: `memory` or `redis`.
        #[arg(long, value_enum, default_value = "memory")]
        backend: BackendArg,
        /// Tasks in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Tasks in all (default 5000 unless --duration is given).
        #[arg(long)]
        tasks: Option<u64>,
        /// Run for this long instead of a task count (e.g. 30s).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// How long the replay model waits per call.
        #[arg(long, default_value_t = 0)]
        model_latency_ms: u64,
        /// For `crew` and `group_chat`: the services in this process
        /// (`in-process`), or as separate processes on Redis with two
        /// orchestrator replicas and two agents workers (`processes`; needs
        /// `--backend redis` and the built `amaos-<service>` binaries).
        #[arg(long, value_enum, default_value = "in-process")]
        topology: TopologyArg,
    },
    /// Check the configuration (the --config file and the AMAOS_* variables):
    /// every section, as all the services together read it, without
    /// starting anything.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check the audit trail: names the first edited, deleted or reordered record.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Tool calls waiting for a person: list, approve, reject.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Answer a task waiting for a person's message (a swarm that handed
    /// the conversation to `user`); the conversation goes on with it.
    Input {
        /// The task id.
        task: String,
        /// The message.
        message: String,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Certificates for mTLS between services (`tls.mode = rustls`).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
pub(crate) enum CertsCommand {
    /// Make a development CA and a certificate per service and for the CLI,
    /// with Linkerd-form identities, in `tls.dir` (default `<data_dir>/tls`).
    Init {
        /// Where to write them (overrides `tls.dir`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace certificates that are already there.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Load and validate the configuration; exit 64 with one line naming the
    /// key when it is wrong, 0 and a summary when it is right.
    Check,
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the audit trail: its keyed hash chain, and its ends against the checkpoint.
    Verify {
        /// The audit file; defaults to the configured `auth.audit_file`.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key; its secret is the last line printed.
    Create {
        /// A name for people.
        name: String,
        /// The tenant (platform admins only; defaults to your own).
        #[arg(long)]
        tenant: Option<String>,
        /// A role (admin, operator, developer, viewer, agent); repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// List keys.
    List {
        /// The tenant (platform admins only; defaults to your own).
        #[arg(long)]
        tenant: Option<String>,
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key.
    Revoke {
        /// The key id.
        id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum BackendArg {
    Memory,
    Redis,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum TopologyArg {
    InProcess,
    Processes,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum GroupArg {
    Tenant,
    Team,
    Day,
}

#[derive(Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// List pending approvals of your tenant (newest first).
    List {
        /// Only this team's.
        #[arg(long)]
        team: Option<String>,
        /// Only this task's.
        #[arg(long)]
        task: Option<String>,
        /// Decided ones too.
        #[arg(long)]
        all: bool,
    },
    /// Approve a waiting call: it runs with exactly the shown arguments.
    Approve {
        /// The task id.
        task: String,
        /// The approval id.
        approval: String,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a waiting call: the model receives the rejection (or the
    /// task fails, per its spec).
    Reject {
        /// The task id.
        task: String,
        /// The approval id.
        approval: String,
        /// Why; the model sees it.
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum StateArg {
    Pending,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    InputRequired,
}

impl From<StateArg> for TaskState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Pending => TaskState::Pending,
            StateArg::Queued => TaskState::Queued,
            StateArg::Running => TaskState::Running,
            StateArg::Succeeded => TaskState::Succeeded,
            StateArg::Failed => TaskState::Failed,
            StateArg::Cancelled => TaskState::Cancelled,
            StateArg::TimedOut => TaskState::TimedOut,
            StateArg::InputRequired => TaskState::InputRequired,
        }
    }
}
