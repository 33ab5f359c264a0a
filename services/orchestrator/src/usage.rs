//! Usage and budgets: what each tenant's runs used (tokens, cost, model and
//! tool calls, wall time), by team and UTC day and by task, kept in a
//! [`UsageStore`] beside the task store (in Redis when tasks are), and the
//! monthly cost caps checked at submission and while a run goes on.
//!
//! The dispatcher adds an attempt's usage once, when the attempt ends
//! (counted from the run events it recorded), so a crew's hot path writes
//! nothing more. Every attempt counts: retried ones cost money too.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amaos_proto::agents::v1 as agents;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::orchestrator::v1 as pb;

use crate::backend::BackendError;
use crate::error::OrchestratorError;

/// The longest range one query may cover, in days.
pub const MAX_RANGE_DAYS: i64 = 366;
/// Tasks whose own usage the in-process store keeps.
const MAX_TASKS_KEPT: usize = 100_000;
/// How long a tenant's month-to-date spend is reused by budget checks.
const SPEND_CACHE: Duration = Duration::from_secs(5);
/// Tenants a `*` query may cover.
pub const MAX_TENANTS: usize = 10_000;

/// What runs used.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Prompt tokens sent to models.
    pub input_tokens: u64,
    /// Completion tokens received.
    pub output_tokens: u64,
    /// Estimated model cost in US dollars.
    pub cost_usd: f64,
    /// Model calls.
    pub model_calls: u64,
    /// Tool calls.
    pub tool_calls: u64,
    /// Milliseconds attempts ran, summed.
    pub wall_ms: u64,
    /// Attempts that ended.
    pub attempts: u64,
}

impl Usage {
    /// The usage the run events in `batch` report.
    pub fn of_events(batch: &[agents::RunEvent]) -> Self {
        let mut usage = Self::default();
        for event in batch {
            match &event.payload {
                Some(Payload::TokenUsage(t)) => {
                    usage.model_calls += 1;
                    usage.input_tokens = usage.input_tokens.saturating_add(t.prompt_tokens);
                    usage.output_tokens = usage.output_tokens.saturating_add(t.completion_tokens);
                    if t.cost_usd.is_finite() && t.cost_usd > 0.0 {
                        usage.cost_usd += t.cost_usd;
                    }
                }
                Some(Payload::ToolCall(_)) => usage.tool_calls += 1,
                _ => {}
            }
        }
        usage
    }

    /// Adds `other` to this.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_usd += other.cost_usd;
        self.model_calls = self.model_calls.saturating_add(other.model_calls);
        self.tool_calls = self.tool_calls.saturating_add(other.tool_calls);
        self.wall_ms = self.wall_ms.saturating_add(other.wall_ms);
        self.attempts = self.attempts.saturating_add(other.attempts);
    }

    /// The fields and their values, as the Redis store keeps them.
    pub(crate) fn fields(&self) -> [(&'static str, FieldValue); 7] {
        [
            ("in", FieldValue::Int(self.input_tokens)),
            ("out", FieldValue::Int(self.output_tokens)),
            ("cost", FieldValue::Float(self.cost_usd)),
            ("models", FieldValue::Int(self.model_calls)),
            ("tools", FieldValue::Int(self.tool_calls)),
            ("wall_ms", FieldValue::Int(self.wall_ms)),
            ("attempts", FieldValue::Int(self.attempts)),
        ]
    }

    /// Sets the field `name` (as [`Usage::fields`] names it) from `text`;
    /// unknown names and unreadable numbers are ignored.
    pub(crate) fn set_field(&mut self, name: &str, text: &str) {
        let int = || text.parse::<u64>().unwrap_or(0);
        match name {
            "in" => self.input_tokens = int(),
            "out" => self.output_tokens = int(),
            "cost" => self.cost_usd = text.parse().unwrap_or(0.0),
            "models" => self.model_calls = int(),
            "tools" => self.tool_calls = int(),
            "wall_ms" => self.wall_ms = int(),
            "attempts" => self.attempts = int(),
            _ => {}
        }
    }
}

/// A value of one usage field.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FieldValue {
    Int(u64),
    Float(f64),
}

impl From<&Usage> for pb::Usage {
    fn from(u: &Usage) -> Self {
        pb::Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cost_usd: u.cost_usd,
            model_calls: u.model_calls,
            tool_calls: u.tool_calls,
            wall_time: Some(amaos_proto::time::proto_duration(Duration::from_millis(
                u.wall_ms,
            ))),
            attempts: u.attempts,
        }
    }
}

/// A UTC day: days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    /// The day `at` falls on.
    pub fn of(at: SystemTime) -> Self {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Day(secs.div_euclid(86_400))
    }

    /// The first day of this day's month.
    pub fn month_start(self) -> Self {
        let (y, m, _) = civil(self.0);
        Day(days_from_civil(y, m, 1))
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, m, d) = civil(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// (year, month, day) of days since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a (year, month, day).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One stored row: a tenant's use of a team on a day.
#[derive(Clone, Debug, PartialEq)]
pub struct DayRow {
    /// The tenant.
    pub tenant: String,
    /// The team.
    pub team: String,
    /// The UTC day.
    pub day: Day,
    /// What was used.
    pub usage: Usage,
}

/// Where usage is kept.
#[tonic::async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Adds an attempt's `usage` to its tenant, team and day, and to its task.
    async fn add(
        &self,
        tenant: &str,
        team: &str,
        task_id: &str,
        day: Day,
        usage: &Usage,
    ) -> Result<(), BackendError>;

    /// The rows of `tenants` (each) from `from` to `to`, both inclusive.
    async fn days(
        &self,
        tenants: &[String],
        from: Day,
        to: Day,
    ) -> Result<Vec<DayRow>, BackendError>;

    /// Every tenant with usage (at most [`MAX_TENANTS`]).
    async fn tenants(&self) -> Result<Vec<String>, BackendError>;

    /// One task's usage, all its attempts.
    async fn task(&self, tenant: &str, task_id: &str) -> Result<Option<Usage>, BackendError>;
}

/// Usage kept in this process (the embedded default).
#[derive(Default)]
pub struct MemoryUsage {
    inner: Mutex<MemoryInner>,
    /// Days kept.
    retention_days: i64,
}

#[derive(Default)]
struct MemoryInner {
    days: BTreeMap<(String, Day), BTreeMap<String, Usage>>,
    tasks: HashMap<(String, String), Usage>,
    task_order: VecDeque<(String, String)>,
    /// The day days past the retention were last dropped.
    pruned: Option<Day>,
}

impl MemoryUsage {
    /// An empty store keeping `retention` of days.
    pub fn new(retention: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            retention_days: (retention.as_secs() / 86_400).max(1) as i64,
        }
    }
}

#[tonic::async_trait]
impl UsageStore for MemoryUsage {
    async fn add(
        &self,
        tenant: &str,
        team: &str,
        task_id: &str,
        day: Day,
        usage: &Usage,
    ) -> Result<(), BackendError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .days
            .entry((tenant.to_owned(), day))
            .or_default()
            .entry(team.to_owned())
            .or_default()
            .add(usage);
        if inner.pruned.is_none_or(|p| p < day) {
            inner.pruned = Some(day);
            let oldest = Day(day.0 - self.retention_days);
            inner.days.retain(|(_, d), _| *d > oldest);
        }
        let key = (tenant.to_owned(), task_id.to_owned());
        if !inner.tasks.contains_key(&key) {
            if inner.task_order.len() >= MAX_TASKS_KEPT
                && let Some(old) = inner.task_order.pop_front()
            {
                inner.tasks.remove(&old);
            }
            inner.task_order.push_back(key.clone());
        }
        inner.tasks.entry(key).or_default().add(usage);
        Ok(())
    }

    async fn days(
        &self,
        tenants: &[String],
        from: Day,
        to: Day,
    ) -> Result<Vec<DayRow>, BackendError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = Vec::new();
        for tenant in tenants {
            let range = (tenant.clone(), from)..=(tenant.clone(), to);
            for ((tenant, day), teams) in inner.days.range(range) {
                for (team, usage) in teams {
                    rows.push(DayRow {
                        tenant: tenant.clone(),
                        team: team.clone(),
                        day: *day,
                        usage: *usage,
                    });
                }
            }
        }
        Ok(rows)
    }

    async fn tenants(&self) -> Result<Vec<String>, BackendError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut tenants: Vec<String> = inner.days.keys().map(|(t, _)| t.clone()).collect();
        tenants.dedup();
        tenants.truncate(MAX_TENANTS);
        Ok(tenants)
    }

    async fn task(&self, tenant: &str, task_id: &str) -> Result<Option<Usage>, BackendError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(inner
            .tasks
            .get(&(tenant.to_owned(), task_id.to_owned()))
            .copied())
    }
}

/// What a cap holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CapScope {
    /// A tenant's spend on every team.
    Tenant,
    /// A tenant's spend on this team.
    Team(String),
}

impl CapScope {
    /// The part of a tenant's month-to-date `spend` (by team) this cap holds.
    pub fn spent(&self, spend: &BTreeMap<String, f64>) -> f64 {
        match self {
            CapScope::Tenant => spend.values().sum(),
            CapScope::Team(team) => spend.get(team).copied().unwrap_or(0.0),
        }
    }
}

impl std::fmt::Display for CapScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CapScope::Tenant => f.write_str("tenant"),
            CapScope::Team(team) => write!(f, "team:{team}"),
        }
    }
}

/// A monthly cap and where it is set.
#[derive(Clone, Debug, PartialEq)]
pub struct Cap {
    /// What it holds.
    pub scope: CapScope,
    /// In US dollars.
    pub limit: f64,
    /// The config key.
    pub key: String,
}

/// The monthly caps of `[orchestrator]` and the spend they are held to.
pub struct Budgets {
    tenants: BTreeMap<String, f64>,
    default: Option<f64>,
    teams: BTreeMap<String, f64>,
    store: Arc<dyn UsageStore>,
    /// Month-to-date spend per tenant (by team), and when it was read.
    spend: Mutex<SpendCache>,
}

/// Per tenant: spend this month by team, and when it was read.
type SpendCache = HashMap<String, (BTreeMap<String, f64>, Instant)>;

impl Budgets {
    /// The caps of `config` over `store`.
    pub fn new(
        config: &amaos_mesh::config::OrchestratorConfig,
        store: Arc<dyn UsageStore>,
    ) -> Self {
        Self {
            tenants: config.tenant_budgets_usd.clone(),
            default: config.default_tenant_budget_usd,
            teams: config.team_budgets_usd.clone(),
            store,
            spend: Mutex::default(),
        }
    }

    /// The store usage is kept in.
    pub fn store(&self) -> &Arc<dyn UsageStore> {
        &self.store
    }

    /// The caps that hold `tenant`'s use of `team` (every team's when `team`
    /// is `None`).
    pub fn caps(&self, tenant: &str, team: Option<&str>) -> Vec<Cap> {
        let mut caps = Vec::new();
        match self.tenants.get(tenant) {
            Some(limit) => caps.push(Cap {
                scope: CapScope::Tenant,
                limit: *limit,
                key: format!("orchestrator.tenant_budgets_usd.{tenant}"),
            }),
            None => {
                if let Some(limit) = self.default {
                    caps.push(Cap {
                        scope: CapScope::Tenant,
                        limit,
                        key: "orchestrator.default_tenant_budget_usd".into(),
                    });
                }
            }
        }
        for (name, limit) in &self.teams {
            if team.is_none_or(|t| t == name) {
                caps.push(Cap {
                    scope: CapScope::Team(name.clone()),
                    limit: *limit,
                    key: format!("orchestrator.team_budgets_usd.{name}"),
                });
            }
        }
        caps
    }

    /// Whether any cap is configured at all.
    pub fn any(&self) -> bool {
        !self.tenants.is_empty() || self.default.is_some() || !self.teams.is_empty()
    }

    /// `tenant`'s spend this month, by team (cached for a few seconds).
    pub async fn month_spend(&self, tenant: &str) -> Result<BTreeMap<String, f64>, BackendError> {
        if let Some((spend, at)) = self
            .spend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            && at.elapsed() < SPEND_CACHE
        {
            return Ok(spend.clone());
        }
        self.read_month_spend(tenant).await
    }

    /// `tenant`'s spend this month, by team, read from the store now (and
    /// cached for [`Budgets::month_spend`]).
    pub async fn read_month_spend(
        &self,
        tenant: &str,
    ) -> Result<BTreeMap<String, f64>, BackendError> {
        let today = Day::of(SystemTime::now());
        let rows = self
            .store
            .days(&[tenant.to_owned()], today.month_start(), today)
            .await?;
        let mut spend = BTreeMap::new();
        for row in rows {
            *spend.entry(row.team).or_insert(0.0) += row.usage.cost_usd;
        }
        let mut cache = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_TENANTS {
            cache.clear();
        }
        cache.insert(tenant.to_owned(), (spend.clone(), Instant::now()));
        Ok(spend)
    }

    /// The first cap `tenant`'s use of `team` has reached, counting
    /// `pending` dollars not yet stored; `Ok(())` when none (or none set).
    pub async fn check(
        &self,
        tenant: &str,
        team: &str,
        pending: f64,
    ) -> Result<(), OrchestratorError> {
        let caps = self.caps(tenant, Some(team));
        if caps.is_empty() {
            return Ok(());
        }
        let spend = self.month_spend(tenant).await?;
        for cap in caps {
            let spent = cap.scope.spent(&spend) + pending;
            if spent >= cap.limit {
                let scope = match cap.scope {
                    CapScope::Tenant => format!("tenant `{tenant}`"),
                    CapScope::Team(_) => format!("team `{team}` of tenant `{tenant}`"),
                };
                return Err(OrchestratorError::OverBudget {
                    scope,
                    spent,
                    limit: cap.limit,
                    key: cap.key,
                });
            }
        }
        Ok(())
    }
}

/// Groups day rows as `grouping` says; largest cost first.
pub fn group(rows: Vec<DayRow>, grouping: pb::UsageGrouping) -> Vec<pb::UsageRow> {
    let mut groups: BTreeMap<(String, String, String), Usage> = BTreeMap::new();
    for row in rows {
        let key = match grouping {
            pb::UsageGrouping::Tenant => (row.tenant, String::new(), String::new()),
            pb::UsageGrouping::Day => (row.tenant, row.team, row.day.to_string()),
            pb::UsageGrouping::Team | pb::UsageGrouping::Unspecified => {
                (row.tenant, row.team, String::new())
            }
        };
        groups.entry(key).or_default().add(&row.usage);
    }
    let mut out: Vec<pb::UsageRow> = groups
        .into_iter()
        .map(|((tenant, team, day), usage)| pb::UsageRow {
            tenant,
            team,
            day,
            usage: Some((&usage).into()),
        })
        .collect();
    let cost = |r: &pb::UsageRow| r.usage.as_ref().map_or(0.0, |u| u.cost_usd);
    out.sort_by(|a, b| cost(b).total_cmp(&cost(a)));
    out
}

impl crate::Inner {
    /// The answer to a GetUsage by `caller`: its own tenant's usage, or, for
    /// an admin of the platform tenant, another's or every tenant's.
    pub(crate) async fn usage(
        &self,
        caller: &amaos_mesh::caller::Caller,
        query: crate::request::UsageQuery,
    ) -> Result<pb::GetUsageResponse, OrchestratorError> {
        use crate::request::{UsageTenant, invalid};
        let platform_admin = caller.tenant == amaos_mesh::identity::PLATFORM_TENANT
            && caller.roles.iter().any(|r| r == "admin");
        let tenants = match &query.tenant {
            UsageTenant::Own => vec![caller.tenant.clone()],
            UsageTenant::Named(t) if *t == caller.tenant => vec![t.clone()],
            UsageTenant::Named(_) | UsageTenant::All if !platform_admin => {
                self.record(caller, "usage.read", "usage", false).await?;
                return Err(OrchestratorError::Forbidden(
                    "only an admin of the platform tenant may read another tenant's usage".into(),
                ));
            }
            UsageTenant::Named(t) => vec![t.clone()],
            UsageTenant::All => self.budgets.store().tenants().await?,
        };
        let store = self.budgets.store();
        if let Some(task_id) = &query.task_id {
            let usage = store.task(&tenants[0], task_id).await?;
            let Some(usage) = usage else {
                return Err(OrchestratorError::TaskNotFound(task_id.clone()));
            };
            return Ok(pb::GetUsageResponse {
                rows: Vec::new(),
                total: Some((&usage).into()),
                budgets: Vec::new(),
            });
        }
        let today = Day::of(SystemTime::now());
        let to = query.to.unwrap_or(today).min(today);
        let from = query.from.unwrap_or(to.month_start());
        if from > to {
            return Err(invalid("since", "must not be after `until` (or today)"));
        }
        if to.0 - from.0 >= MAX_RANGE_DAYS {
            return Err(invalid(
                "since",
                format!("the range is at most {MAX_RANGE_DAYS} days"),
            ));
        }
        let rows: Vec<DayRow> = store
            .days(&tenants, from, to)
            .await?
            .into_iter()
            .filter(|r| query.team.as_ref().is_none_or(|t| *t == r.team))
            .collect();
        let mut total = Usage::default();
        for row in &rows {
            total.add(&row.usage);
        }
        let mut budgets = Vec::new();
        if let [tenant] = tenants.as_slice() {
            let caps = self.budgets.caps(tenant, query.team.as_deref());
            if !caps.is_empty() {
                let spend = self.budgets.read_month_spend(tenant).await?;
                for cap in caps {
                    budgets.push(pb::BudgetStatus {
                        spent_usd: cap.scope.spent(&spend),
                        scope: cap.scope.to_string(),
                        limit_usd: cap.limit,
                        config_key: cap.key,
                    });
                }
            }
        }
        Ok(pb::GetUsageResponse {
            rows: group(rows, query.group_by),
            total: Some((&total).into()),
            budgets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_name_their_utc_date_and_month() {
        assert_eq!(Day(0).to_string(), "1970-01-01");
        // 2026-12-02T17:00:00Z
        let day = Day::of(UNIX_EPOCH + Duration::from_secs(1_796_230_800));
        assert_eq!(day.to_string(), "2026-12-02");
        assert_eq!(day.month_start().to_string(), "2026-12-01");
        assert_eq!(Day(day.0 - 2).month_start().to_string(), "2026-11-01");
        for d in [-800_000, -1, 0, 59, 60, 11_016, 20_000, 2_932_896] {
            let (y, m, dd) = civil(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(Day(19_782).to_string(), "2024-02-29");
    }

    #[test]
    fn usage_counts_model_and_tool_calls_from_run_events() {
        let event = |payload| agents::RunEvent {
            payload: Some(payload),
            ..Default::default()
        };
        let batch = [
            event(Payload::TokenUsage(agents::TokenUsage {
                model: "m".into(),
                prompt_tokens: 10,
                completion_tokens: 4,
                cost_usd: 0.25,
            })),
            event(Payload::TokenUsage(agents::TokenUsage {
                cost_usd: f64::NAN,
                ..Default::default()
            })),
            event(Payload::ToolCall(Default::default())),
        ];
        let usage = Usage::of_events(&batch);
        assert_eq!(usage.model_calls, 2);
        assert_eq!((usage.input_tokens, usage.output_tokens), (10, 4));
        assert_eq!(usage.cost_usd, 0.25, "a NaN cost is not added");
        assert_eq!(usage.tool_calls, 1);
    }

    #[tokio::test]
    async fn a_budget_refuses_once_the_month_reached_it_naming_its_key() {
        let store: Arc<dyn UsageStore> =
            Arc::new(MemoryUsage::new(Duration::from_secs(86_400 * 400)));
        let mut config = amaos_mesh::config::OrchestratorConfig::default();
        config.tenant_budgets_usd.insert("acme".into(), 1.0);
        config.team_budgets_usd.insert("research".into(), 0.5);
        let budgets = Budgets::new(&config, store.clone());
        assert!(budgets.check("acme", "research", 0.0).await.is_ok());
        let today = Day::of(SystemTime::now());
        let spent = Usage {
            cost_usd: 0.6,
            ..Default::default()
        };
        store
            .add("acme", "research", "t1", today, &spent)
            .await
            .unwrap();
        // The spend is cached for a few seconds: a fresh view sees it.
        let budgets = Budgets::new(&config, store.clone());
        let err = budgets.check("acme", "research", 0.0).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("orchestrator.team_budgets_usd.research"),
            "{err}"
        );
        assert!(budgets.check("acme", "writing", 0.0).await.is_ok());
        let err = budgets.check("acme", "writing", 0.5).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("orchestrator.tenant_budgets_usd.acme"),
            "{err}"
        );
        assert!(budgets.check("globex", "research", 0.0).await.is_ok());
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn rows_group_by_tenant_team_or_day() {
        let store = MemoryUsage::new(Duration::from_secs(86_400 * 400));
        let u = |cost| Usage {
            cost_usd: cost,
            attempts: 1,
            ..Default::default()
        };
        for (tenant, team, task, day, cost) in [
            ("acme", "a", "t1", 100, 1.0),
            ("acme", "b", "t2", 101, 3.0),
            ("acme", "a", "t3", 101, 1.0),
            ("globex", "a", "t4", 101, 9.0),
        ] {
            store
                .add(tenant, team, task, Day(day), &u(cost))
                .await
                .unwrap();
        }
        let rows = store
            .days(&["acme".into()], Day(100), Day(101))
            .await
            .unwrap();
        let by_team = group(rows.clone(), pb::UsageGrouping::Team);
        assert_eq!(by_team.len(), 2);
        assert_eq!(by_team[0].team, "b", "largest cost first");
        assert_eq!(by_team[1].usage.as_ref().unwrap().attempts, 2);
        assert_eq!(group(rows.clone(), pb::UsageGrouping::Day).len(), 3);
        assert_eq!(group(rows, pb::UsageGrouping::Tenant).len(), 1);
        assert_eq!(
            store.task("acme", "t2").await.unwrap().unwrap().cost_usd,
            3.0
        );
        assert_eq!(store.task("globex", "t2").await.unwrap(), None);
        assert_eq!(store.tenants().await.unwrap(), ["acme", "globex"]);
    }
}
