//! Authorization: Casbin with the RBAC-with-domains model, the domain being
//! the tenant. Every service asks [`allows`] with (subject, tenant, object,
//! action) before acting; the tenant always comes from the caller's verified
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
use std::sync::{Arc, OnceLock, RwLock};
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

static ACTIVE: OnceLock<RwLock<Arc<Active>>> = OnceLock::new();

/// The enforcer every check uses, with the decisions it has made: a Casbin
/// enforcement (matcher evaluation over every rule) cost more than a whole
/// RPC on the hot path, and a decision only changes with the policy — a new
/// policy is a new `Active`, with an empty memo.
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

fn active() -> Arc<Active> {
    ACTIVE
        .get_or_init(|| {
            // The built-in texts are checked by this module's tests.
            RwLock::new(Arc::new(Active::new(
                build(DEFAULT_MODEL, DEFAULT_POLICY).unwrap_or_else(|e| panic!("built-in {e}")),
            )))
        })
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Makes `enforcer` the one every check uses.
pub fn install(enforcer: Enforcer) {
    let mut fresh = Some(enforcer);
    let slot = ACTIVE.get_or_init(|| {
        RwLock::new(Arc::new(Active::new(fresh.take().unwrap_or_else(|| {
            build(DEFAULT_MODEL, DEFAULT_POLICY).unwrap_or_else(|e| panic!("built-in {e}"))
        }))))
    });
    if let Some(enforcer) = fresh {
        *slot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Active::new(enforcer));
    }
}

/// The rule that lets `principal` (with `roles`) do `action` on `object` in
/// `tenant`, if any.
pub fn allows(
    principal: &str,
    roles: &[String],
    tenant: &str,
    object: &str,
    action: &str,
) -> Option<String> {
    let active = active();
    let mut subjects: Vec<&str> = roles.iter().map(String::as_str).collect();
    subjects.push(principal);
    subjects.into_iter().find_map(|subject| {
        active
            .enforce(subject, tenant, object, action)
            .then(|| format!("`{subject}` may `{action}` on `{object}` in tenant `{tenant}`"))
    })
}

/// [`allows`] against a given enforcer.
pub fn allows_with(
    enforcer: &Enforcer,
    principal: &str,
    roles: &[String],
    tenant: &str,
    object: &str,
    action: &str,
) -> Option<String> {
    let mut subjects: Vec<&str> = roles.iter().map(String::as_str).collect();
    subjects.push(principal);
    subjects.into_iter().find_map(|subject| {
        enforcer
            .enforce((subject, tenant, object, action))
            .ok()
            .filter(|allowed| *allowed)
            .map(|_| format!("`{subject}` may `{action}` on `{object}` in tenant `{tenant}`"))
    })
}

fn stamp(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Loads the configured files (if any) and watches them until `shutdown`,
/// reloading on change. Fails when the files cannot be loaded at start.
/// Each reload (and each refused one) is appended to the audit trail at
/// `audit` first; a new policy is not installed unless its record is written.
pub fn init(
    model: Option<PathBuf>,
    policy: Option<PathBuf>,
    every: Duration,
    audit: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    if model.is_none() && policy.is_none() {
        return Ok(());
    }
    // A file not configured is the built-in text.
    let load = |model: &Option<PathBuf>, policy: &Option<PathBuf>| -> Result<Enforcer, String> {
        let text = |p: &Option<PathBuf>, builtin: &str| -> Result<String, String> {
            match p {
                Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())),
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
    install(load(&model, &policy)?);
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
                        install(enforcer);
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
    Ok(())
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
        let enforcer = build(DEFAULT_MODEL, DEFAULT_POLICY).unwrap();
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
                        let got = allows_with(
                            &enforcer,
                            "key-1",
                            &[role.to_string()],
                            tenant,
                            object,
                            action,
                        )
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
        assert!(allows_with(&enforcer, "key-1", &[], "acme", "tasks", "read").is_none());
        assert!(
            allows_with(
                &enforcer,
                "key-1",
                &["stranger".into()],
                "acme",
                "tasks",
                "read"
            )
            .is_none()
        );
    }

    #[test]
    fn tenant_rules_and_principal_grants_stay_in_their_tenant() {
        let policy = format!(
            "{DEFAULT_POLICY}p, developer, acme, keys*, read\ng, key-7, operator, globex\n"
        );
        let enforcer = build(DEFAULT_MODEL, &policy).unwrap();
        let dev = ["developer".to_owned()];
        assert!(allows_with(&enforcer, "k", &dev, "acme", "keys", "read").is_some());
        assert!(allows_with(&enforcer, "k", &dev, "globex", "keys", "read").is_none());
        // key-7 is an operator in globex only.
        assert!(allows_with(&enforcer, "key-7", &[], "globex", "workers", "write").is_some());
        assert!(allows_with(&enforcer, "key-7", &[], "acme", "workers", "write").is_none());
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
