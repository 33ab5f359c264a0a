//! Checking a workflow's DAG before anything is stored: unique keys, known
//! references, no cycles. Errors name the task at fault.

use std::collections::HashMap;

/// Most tasks in one workflow.
pub const MAX_WORKFLOW_TASKS: usize = 1000;

/// What is wrong with a DAG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    /// No tasks, or too many.
    #[error("a workflow has 1 to {MAX_WORKFLOW_TASKS} tasks")]
    Size,
    /// A key is empty, too long or repeated.
    #[error("task `{0}`: keys must be unique, 1 to 64 characters")]
    BadKey(String),
    /// A dependency names no task of the workflow.
    #[error("task `{task}` depends on `{missing}`, which is not a task of this workflow")]
    Unknown {
        /// The task.
        task: String,
        /// The unknown key.
        missing: String,
    },
    /// The dependencies form a cycle through this task.
    #[error("task `{0}` is part of a dependency cycle")]
    Cycle(String),
}

/// Checks `(key, depends_on)` pairs and returns the keys in an order where
/// every task comes after its dependencies.
pub fn check(tasks: &[(String, Vec<String>)]) -> Result<Vec<String>, DagError> {
    if tasks.is_empty() || tasks.len() > MAX_WORKFLOW_TASKS {
        return Err(DagError::Size);
    }
    let mut index = HashMap::new();
    for (i, (key, _)) in tasks.iter().enumerate() {
        if key.is_empty() || key.len() > 64 || index.insert(key.as_str(), i).is_some() {
            return Err(DagError::BadKey(key.clone()));
        }
    }
    for (key, deps) in tasks {
        if let Some(missing) = deps.iter().find(|d| !index.contains_key(d.as_str())) {
            return Err(DagError::Unknown {
                task: key.clone(),
                missing: missing.clone(),
            });
        }
    }
    // Kahn's algorithm; what is left over lies on a cycle.
    let mut waiting: Vec<usize> = tasks.iter().map(|(_, deps)| deps.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (i, (_, deps)) in tasks.iter().enumerate() {
        for d in deps {
            dependents[index[d.as_str()]].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..tasks.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(tasks.len());
    while let Some(i) = ready.pop() {
        order.push(tasks[i].0.clone());
        for &j in &dependents[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(j);
            }
        }
    }
    if order.len() < tasks.len() {
        let stuck = (0..tasks.len()).find(|&i| waiting[i] > 0).unwrap_or(0);
        return Err(DagError::Cycle(tasks[stuck].0.clone()));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(key: &str, deps: &[&str]) -> (String, Vec<String>) {
        (key.into(), deps.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn orders_dependencies_first() {
        let order = check(&[t("c", &["a", "b"]), t("a", &[]), t("b", &["a"])]).unwrap();
        let pos = |k: &str| order.iter().position(|x| x == k).unwrap();
        assert!(pos("a") < pos("b") && pos("b") < pos("c"));
    }

    #[test]
    fn names_unknown_references_and_cycles() {
        assert_eq!(
            check(&[t("a", &["zzz"])]),
            Err(DagError::Unknown {
                task: "a".into(),
                missing: "zzz".into()
            })
        );
        assert!(
            matches!(check(&[t("a", &["b"]), t("b", &["a"]), t("c", &[])]), Err(DagError::Cycle(k)) if k == "a" || k == "b")
        );
        assert_eq!(
            check(&[t("a", &[]), t("a", &[])]),
            Err(DagError::BadKey("a".into()))
        );
        assert_eq!(check(&[]), Err(DagError::Size));
    }
}
