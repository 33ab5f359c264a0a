//! What a submission passes before it is stored: its tasks built with the
//! checks that need configuration or work (sizes, the inline spec and its
//! input rule), the audit decision recorded, a named team checked against
//! the router, and the tenant and team submission rates.

use std::time::{Duration, SystemTime};

use amaos_mesh::caller::Caller;

use crate::Inner;
use crate::authn::require;
use crate::error::OrchestratorError;
use crate::request::{NewTask, TeamChoice, invalid};
use crate::task::{Task, TaskState, TeamSource};

impl Inner {
    /// Builds one task (not yet stored) from what a request asked for,
    /// with the checks that need this service's configuration: the spec and
    /// input sizes, the inline spec itself and its `input` rule.
    pub(crate) async fn build_task(
        &self,
        caller: &Caller,
        task: NewTask,
        session_id: &str,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<Task, OrchestratorError> {
        let NewTask {
            team,
            input,
            timeout,
            retry,
            fallbacks,
        } = task;
        // A named team's spec is the worker's: it holds its tasks to the
        // spec's `input` rule when it runs them.
        let (team, source, input_rule) = match team {
            TeamChoice::Named(name) => (name, TeamSource::Named, amaos_teams::Input::Optional),
            TeamChoice::Inline(yaml) => {
                if yaml.len() > self.max_spec_bytes {
                    return Err(invalid(
                        "team.spec_yaml",
                        format!(
                            "the spec is {} bytes; the limit is {}",
                            yaml.len(),
                            self.max_spec_bytes
                        ),
                    ));
                }
                // Parsing is CPU work bounded by the spec's size and
                // nesting: off the async threads.
                let text = yaml.clone();
                let spec = tokio::task::spawn_blocking(move || amaos_teams::parse(&text))
                    .await
                    .map_err(|_| invalid("team.spec_yaml", "the spec could not be parsed"))?
                    .map_err(OrchestratorError::InvalidSpec)?;
                (spec.name, TeamSource::Inline(yaml), spec.input)
            }
        };
        if input.len() > self.max_input_bytes {
            return Err(invalid(
                "input",
                format!(
                    "is {} bytes; the limit is {}",
                    input.len(),
                    self.max_input_bytes
                ),
            ));
        }
        if let Some(why) = input_rule.refuses(&input) {
            return Err(invalid("input", why));
        }
        let retry = retry.apply(self.default_retry.clone());
        let timeout = timeout.unwrap_or(self.task_timeout);
        let now = SystemTime::now();
        Ok(Task {
            id: amaos_mesh::new_id(),
            tenant: caller.tenant.clone(),
            submitted_by: caller.principal.clone(),
            roles: caller.roles.clone(),
            team,
            source,
            input,
            session_id: session_id.to_owned(),
            labels,
            state: TaskState::Pending,
            attempt: 0,
            stage_attempts: 0,
            stage: 0,
            retry,
            fallbacks,
            output: None,
            error: None,
            worker_id: String::new(),
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            deadline: now + timeout,
            workflow_id: String::new(),
            workflow_key: String::new(),
            depends_on: Vec::new(),
            dependents: Vec::new(),
            approvals: Vec::new(),
        })
    }

    /// Appends one decision to the audit trail: when the trail cannot be
    /// written, nothing happens.
    pub(crate) async fn record(
        &self,
        caller: &Caller,
        audit_action: &str,
        object: &str,
        allowed: bool,
    ) -> Result<(), OrchestratorError> {
        self.audit
            .append_async(amaos_mesh::audit::Entry {
                principal: &caller.principal,
                tenant: &caller.tenant,
                action: audit_action,
                object,
                allowed,
            })
            .await
            .map(|_| ())
            .map_err(|e| OrchestratorError::AuditDown(e.to_string()))
    }

    /// Checks `caller` may do `action`; a refusal is recorded at once. An
    /// allowed caller's decision is recorded by [`Inner::settle`] once the
    /// request has passed every other check, so a request refused later
    /// (bad input, another tenant's task, admission) is recorded as denied,
    /// never as allowed.
    pub(crate) async fn permitted(
        &self,
        caller: &Caller,
        action: &str,
        audit_action: &str,
        object: &str,
    ) -> Result<(), OrchestratorError> {
        let decision = require(&self.policy, caller, action);
        if decision.is_err() {
            self.record(caller, audit_action, object, false).await?;
        }
        decision
    }

    /// Records the outcome of the checks a permitted request went through:
    /// denied when `checked` is an error (which is returned), allowed
    /// otherwise — before the action takes effect.
    pub(crate) async fn settle<T>(
        &self,
        caller: &Caller,
        audit_action: &str,
        object: &str,
        checked: Result<T, OrchestratorError>,
    ) -> Result<T, OrchestratorError> {
        self.record(caller, audit_action, object, checked.is_ok())
            .await?;
        checked
    }

    /// Refuses a team no worker has declared: NOT_FOUND at submission beats
    /// a task that fails later. Answers are cached for a few seconds.
    pub(crate) async fn check_team_served(&self, team: &str) -> Result<(), OrchestratorError> {
        const FRESH: Duration = Duration::from_secs(5);
        if let Some(seen) = self
            .known_teams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(team)
            && seen.elapsed() < FRESH
        {
            return Ok(());
        }
        let workers = self
            .router
            .clone()
            .list_workers(amaos_proto::router::v1::ListWorkersRequest {
                team: team.to_owned(),
                include_expired: true,
            })
            .await
            .map_err(|status| OrchestratorError::Dependency {
                service: "router",
                status,
            })?
            .into_inner()
            .workers;
        if workers.is_empty() {
            return Err(OrchestratorError::TeamNotServed(team.to_owned()));
        }
        let mut known = self.known_teams.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= 10_000 {
            known.clear();
        }
        known.insert(team.to_owned(), std::time::Instant::now());
        Ok(())
    }

    /// Applies the tenant and team submission rates.
    pub(crate) async fn admit(
        &self,
        caller: &Caller,
        teams: &[&str],
    ) -> Result<(), OrchestratorError> {
        let (rate, burst) = self.tenant_rate;
        if rate > 0.0
            && let Some(wait) = self
                .limiter
                .check(&format!("tenant:{}", caller.tenant), rate, burst)
                .await?
        {
            return Err(OrchestratorError::RateLimited {
                scope: format!("tenant `{}`", caller.tenant),
                retry_after: wait,
            });
        }
        let (rate, burst) = self.team_rate;
        if rate > 0.0 {
            for team in teams {
                let key = format!("team:{}:{team}", caller.tenant);
                if let Some(wait) = self.limiter.check(&key, rate, burst).await? {
                    return Err(OrchestratorError::RateLimited {
                        scope: format!("team `{team}`"),
                        retry_after: wait,
                    });
                }
            }
        }
        Ok(())
    }
}
