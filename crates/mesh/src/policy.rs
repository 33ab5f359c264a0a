//! Which role may do what: a static role → permission table that every
//! service asks before acting (auth for keys and audit, the orchestrator for
//! tasks, tools for tool calls). A policy engine with per-tenant rules can
//! replace it behind the same `allows` question.

/// The roles AMAOS knows.
pub const ROLES: &[&str] = &[
    "admin",
    "operator",
    "developer",
    "viewer",
    "agent",
    "service",
];

/// `(role, object, action)`; `*` matches anything.
const RULES: &[(&str, &str, &str)] = &[
    ("admin", "*", "*"),
    ("operator", "tasks", "*"),
    ("operator", "teams", "*"),
    ("operator", "workers", "*"),
    ("operator", "keys", "read"),
    ("operator", "audit", "read"),
    ("developer", "tasks", "*"),
    ("developer", "teams", "*"),
    ("developer", "workers", "read"),
    ("developer", "memory", "read"),
    ("developer", "tools", "read"),
    ("viewer", "tasks", "read"),
    ("viewer", "teams", "read"),
    ("viewer", "workers", "read"),
    ("agent", "tools", "*"),
    ("agent", "memory", "*"),
    ("service", "tokens", "issue"),
];

/// The rule that lets one of `roles` do `action` on `object`, if any.
pub fn allows(roles: &[String], object: &str, action: &str) -> Option<String> {
    // `tools/file_read` is governed by the rules for `tools`.
    let family = object.split('/').next().unwrap_or(object);
    roles.iter().find_map(|role| {
        RULES
            .iter()
            .find(|(r, o, a)| {
                r == role && (*o == "*" || *o == family) && (*a == "*" || *a == action)
            })
            .map(|(r, o, a)| format!("role `{r}` may `{a}` on `{o}`"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(r: &str) -> Vec<String> {
        vec![r.to_owned()]
    }

    #[test]
    fn the_table_answers_as_documented() {
        let table = [
            ("admin", "keys", "write", true),
            ("operator", "keys", "write", false),
            ("operator", "keys", "read", true),
            ("developer", "tasks", "submit", true),
            ("developer", "keys", "read", false),
            ("viewer", "tasks", "submit", false),
            ("viewer", "tasks", "read", true),
            ("agent", "tools/file_read", "invoke", true),
            ("agent", "tasks", "submit", false),
        ];
        for (role, object, action, expected) in table {
            assert_eq!(
                allows(&roles(role), object, action).is_some(),
                expected,
                "{role} {object} {action}"
            );
        }
        assert!(allows(&[], "tasks", "read").is_none());
    }
}
