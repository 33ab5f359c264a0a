//! Authorization: Casbin with the RBAC-with-domains model, the domain being
//! the tenant. Every service holds a [`Policy`] (given to it at start, so
//! several meshes in one process each have their own) and asks
//! [`Policy::allows`] with (subject, tenant, object, action) before acting; the tenant always comes from the caller's verified
//! credential. Subjects are the caller's roles (from its token or key) and
//! its principal (so a policy can grant one key a role in one tenant with a
//! `g` line).
//!
//! The model and policy are built in ([`DEFAULT_MODEL`], [`DEFAULT_POLICY`]);
//! `auth.rbac_model` and `auth.rbac_policy` name files instead, which are
//! watched and reloaded when they change (a broken file is refused and the
//! running policy kept). Objects are families with optional detail
//! (`tasks`, `tools/file_read`); policy objects match with Casbin's
//! `keyMatch` (`tools*`, `*`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};
use tokio_util::sync::CancellationToken;

/// The roles AMAOS knows.
pub const ROLES: &[&str] = &[
    "admin",
    "operator",
    "developer",
    "viewer",
    "agent",
    "service",
    "worker",
];

/// The built-in model: RBAC with domains (tenants); `*` in a policy's domain
/// means every tenant.
pub const DEFAULT_MODEL: &str = include_str!("../rbac/model.conf");

/// The built-in policy.
pub const DEFAULT_POLICY: &str = include_str!("../rbac/policy.csv");

/// An enforcer with the decisions it has made: a Casbin enforcement (matcher
/// evaluation over every rule) cost more than a whole RPC on the hot path,
/// and a decision only changes with the policy — a new policy is a new
/// `Active`, with an empty memo.
struct Active {
    enforcer: Enforcer,
    decisions: std::sync::Mutex<std::collections::HashMap<String, bool>>,
}

/// Bound on remembered decisions (cleared when reached).
const MAX_DECISIONS: usize = 65_536;

impl Active {
    fn new(enforcer: Enforcer) -> Self {
        Self {
            enforcer,
            decisions: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn enforce(&self, subject: &str, tenant: &str, object: &str, action: &str) -> bool {
        let key = format!("{subject}\u{1f}{tenant}\u{1f}{object}\u{1f}{action}");
        if let Some(allowed) = self
            .decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return *allowed;
        }
        let allowed = self
            .enforcer
            .enforce((subject, tenant, object, action))
            .unwrap_or(false);
        let mut decisions = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        if decisions.len() >= MAX_DECISIONS {
            decisions.clear();
        }
        decisions.insert(key, allowed);
        allowed
    }
}

/// The RBAC policy a service enforces: one enforcer and its decision cache,
/// replaced whole when the policy files change. Clones share the enforcer
/// (a mesh started in one process gives every service the same one);
/// separate `Policy` values share nothing.
#[derive(Clone)]
pub struct Policy {
    active: Arc<RwLock<Arc<Active>>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").finish_non_exhaustive()
    }
}

impl Policy {
    /// A policy enforcing `enforcer`.
    pub fn new(enforcer: Enforcer) -> Self {
        Self {
            active: Arc::new(RwLock::new(Arc::new(Active::new(enforcer)))),
        }
    }

    /// The built-in model and policy ([`DEFAULT_MODEL`], [`DEFAULT_POLICY`]).
    pub fn builtin() -> Self {
        // The built-in texts are checked by this module's tests.
        Self::new(build(DEFAULT_MODEL, DEFAULT_POLICY).unwrap_or_else(|e| panic!("built-in {e}")))
    }

    /// Makes `enforcer` the one this policy (and every clone of it) uses,
    /// with an empty decision cache.
    pub fn install(&self, enforcer: Enforcer) {
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Active::new(enforcer));
    }

    fn current(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The rule that lets `principal` (with `roles`) do `action` on `object`
    /// in `tenant`, if any.
    pub fn allows(
        &self,
        principal: &str,
        roles: &[String],
        tenant: &str,
        object: &str,
        action: &str,
    ) -> Option<String> {
        let active = self.current();
        let mut subjects: Vec<&str> = roles.iter().map(String::as_str).collect();
        subjects.push(principal);
        subjects.into_iter().find_map(|subject| {
            active
                .enforce(subject, tenant, object, action)
                .then(|| format!("`{subject}` may `{action}` on `{object}` in tenant `{tenant}`"))
        })
    }

    /// The configured files (if any; the built-in policy otherwise), watched
    /// until `shutdown` and reloaded on change. Fails when the files cannot
    /// be loaded at start. Each reload (and each refused one) is appended to
    /// the audit trail at `audit` first; a new policy is not installed
    /// unless its record is written.
    pub fn load(
        model: Option<PathBuf>,
        policy: Option<PathBuf>,
        every: Duration,
        audit: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        if model.is_none() && policy.is_none() {
            return Ok(Self::builtin());
        }
        // A file not configured is the built-in text.
        let load =
            |model: &Option<PathBuf>, policy: &Option<PathBuf>| -> Result<Enforcer, String> {
                let text = |p: &Option<PathBuf>, builtin: &str| -> Result<String, String> {
                    match p {
                        Some(p) => {
                            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
                        }
                        None => Ok(builtin.to_owned()),
                    }
                };
                build(&text(model, DEFAULT_MODEL)?, &text(policy, DEFAULT_POLICY)?)
            };
        let files: Vec<PathBuf> = model.iter().chain(&policy).cloned().collect();
        let trail = audit.map(|path| crate::audit::AuditLog::append_only(&path));
        let object = files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let record = move |allowed: bool| -> Result<(), String> {
            match &trail {
                Some(trail) => trail
                    .append(crate::audit::Entry {
                        principal: "policy-watcher",
                        tenant: "",
                        action: "policy.reload",
                        object: &object,
                        allowed,
                    })
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            }
        };
        // The stamp is taken before loading, so a change made meanwhile is seen.
        let mut seen = stamp(&files);
        let loaded = Self::new(load(&model, &policy)?);
        let watched = loaded.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let now = stamp(&files);
                if now == seen {
                    continue;
                }
                seen = now;
                match load(&model, &policy) {
                    Ok(enforcer) => match record(true) {
                        Ok(()) => {
                            watched.install(enforcer);
                            tracing::info!(target: "audit", action = "policy_reload", decision = "allow", outcome = "ok", files = ?files, "RBAC policy reloaded");
                        }
                        Err(error) => {
                            tracing::error!(target: "audit", action = "policy_reload", outcome = "refused", %error, "RBAC policy not reloaded: the audit trail cannot be written; the running policy stays");
                        }
                    },
                    Err(error) => {
                        let _ = record(false);
                        tracing::error!(target: "audit", action = "policy_reload", outcome = "refused", %error, "RBAC policy not reloaded; the running policy stays");
                    }
                }
            }
        });
        Ok(loaded)
    }
}

/// Checks each policy line's shape (Casbin itself pads short lines), so a
/// broken file is refused with the line at fault.
fn check_lines(policy: &str) -> Result<(), String> {
    for (n, line) in policy.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let ok = match fields[0] {
            "p" => fields.len() == 5,
            "g" => fields.len() == 4,
            _ => false,
        } && fields.iter().all(|f| !f.is_empty());
        if !ok {
            return Err(format!(
                "the RBAC policy, line {}: expected `p, subject, tenant, object, action` or `g, subject, role, tenant`",
                n + 1
            ));
        }
    }
    Ok(())
}

/// Builds an enforcer from model and policy text, refusing either when
/// malformed.
pub fn build(model: &str, policy: &str) -> Result<Enforcer, String> {
    check_lines(policy)?;
    let enforcer = futures::executor::block_on(async {
        let model = DefaultModel::from_str(model)
            .await
            .map_err(|e| format!("the RBAC model: {e}"))?;
        Enforcer::new(model, StringAdapter::new(policy))
            .await
            .map_err(|e| format!("the RBAC policy: {e}"))
    })?;
    // A model that cannot answer a four-part request is not one of ours.
    enforcer
        .enforce(("probe", "probe", "probe", "probe"))
        .map_err(|e| {
            format!("the RBAC model cannot answer (subject, tenant, object, action): {e}")
        })?;
    Ok(enforcer)
}

fn stamp(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference table the built-in policy must agree with:
    /// `(role, object family, action)`, `*` matching anything.
    const REFERENCE: &[(&str, &str, &str)] = &[
        ("admin", "*", "*"),
        ("operator", "tasks", "*"),
        ("operator", "teams", "*"),
        ("operator", "workers", "*"),
        ("operator", "keys", "read"),
        ("operator", "audit", "read"),
        ("developer", "tasks", "*"),
        ("developer", "teams", "*"),
        ("developer", "memory", "read"),
        ("developer", "tools", "read"),
        ("viewer", "tasks", "read"),
        ("viewer", "teams", "read"),
        ("agent", "tools", "*"),
        ("agent", "memory", "*"),
        ("service", "tokens", "issue"),
    ];

    fn reference(role: &str, object: &str, action: &str) -> bool {
        let family = object.split('/').next().unwrap_or(object);
        REFERENCE.iter().any(|(r, o, a)| {
            *r == role && (*o == "*" || *o == family) && (*a == "*" || *a == action)
        })
    }

    #[test]
    fn the_built_in_policy_agrees_with_the_reference_for_every_role_action_and_tenant() {
        let policy = Policy::new(build(DEFAULT_MODEL, DEFAULT_POLICY).unwrap());
        let objects = [
            "tasks",
            "teams",
            "workers",
            "keys",
            "audit",
            "memory",
            "tools",
            "tools/shell",
            "tools/demo.add",
            "tokens",
            "secrets",
        ];
        let actions = [
            "read", "submit", "cancel", "write", "invoke", "issue", "delete",
        ];
        let mut checked = 0;
        for role in ROLES {
            for object in objects {
                for action in actions {
                    for tenant in ["acme", "globex", "default"] {
                        let got = policy
                            .allows("key-1", &[role.to_string()], tenant, object, action)
                            .is_some();
                        assert_eq!(
                            got,
                            reference(role, object, action),
                            "{role} {action} {object} in {tenant}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, ROLES.len() * objects.len() * actions.len() * 3);
        assert!(
            policy
                .allows("key-1", &[], "acme", "tasks", "read")
                .is_none()
        );
        assert!(
            policy
                .allows("key-1", &["stranger".into()], "acme", "tasks", "read")
                .is_none()
        );
    }

    #[test]
    fn tenant_rules_and_principal_grants_stay_in_their_tenant() {
        let policy = format!(
            "{DEFAULT_POLICY}p, developer, acme, keys*, read\ng, key-7, operator, globex\n"
        );
        let policy = Policy::new(build(DEFAULT_MODEL, &policy).unwrap());
        let dev = ["developer".to_owned()];
        assert!(policy.allows("k", &dev, "acme", "keys", "read").is_some());
        assert!(policy.allows("k", &dev, "globex", "keys", "read").is_none());
        // key-7 is an operator in globex only.
        assert!(
            policy
                .allows("key-7", &[], "globex", "workers", "write")
                .is_some()
        );
        assert!(
            policy
                .allows("key-7", &[], "acme", "workers", "write")
                .is_none()
        );
    }

    #[test]
    fn separate_policies_share_neither_rules_nor_decisions() {
        let dev = ["developer".to_owned()];
        let builtin = Policy::builtin();
        let granted = Policy::new(
            build(
                DEFAULT_MODEL,
                &format!("{DEFAULT_POLICY}p, developer, acme, keys*, read\n"),
            )
            .unwrap(),
        );
        // Each decides (and caches) the same question its own way.
        for _ in 0..2 {
            assert!(granted.allows("k", &dev, "acme", "keys", "read").is_some());
            assert!(builtin.allows("k", &dev, "acme", "keys", "read").is_none());
        }
        // Installing into one reaches its clones, not the other policy.
        let clone = builtin.clone();
        builtin.install(
            build(
                DEFAULT_MODEL,
                &format!("{DEFAULT_POLICY}p, developer, acme, keys*, read\n"),
            )
            .unwrap(),
        );
        assert!(clone.allows("k", &dev, "acme", "keys", "read").is_some());
        granted.install(build(DEFAULT_MODEL, DEFAULT_POLICY).unwrap());
        assert!(granted.allows("k", &dev, "acme", "keys", "read").is_none());
        assert!(builtin.allows("k", &dev, "acme", "keys", "read").is_some());
    }

    #[test]
    fn a_broken_policy_is_refused() {
        let Err(error) = build(DEFAULT_MODEL, "p, admin, *, *, *\np, admin\n") else {
            panic!("a short line is refused")
        };
        assert!(error.contains("line 2"), "{error}");
        assert!(build("[request_definition]\nr = sub\n", DEFAULT_POLICY).is_err());
        assert!(build("not a model", DEFAULT_POLICY).is_err());
    }
}
