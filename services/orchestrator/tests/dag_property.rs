//! Property test of the DAG scheduler on the in-process backend: for random
//! DAGs, driven by a dispatcher that claims and finishes in random order,
//! every task runs exactly once and never before all its dependencies
//! succeeded.

mod support {
    pub mod fixtures;
}

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use amaos_orchestrator::backend::memory::MemoryBackend;
use amaos_orchestrator::backend::{Claimed, Outcome, TaskBackend};
use amaos_orchestrator::task::TaskState;
use proptest::prelude::*;
use support::fixtures;

/// A DAG on `n` nodes: node i may depend on any j < i (so it is acyclic).
fn dags() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..24).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                proptest::collection::vec(0..i.max(1), 0..=i.min(3)).prop_map(move |deps| {
                    let mut deps: Vec<usize> = deps.into_iter().filter(|&d| d < i).collect();
                    deps.sort_unstable();
                    deps.dedup();
                    deps
                })
            })
            .collect::<Vec<_>>()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn every_task_runs_once_after_its_dependencies(dag in dags(), order_seed in any::<u64>()) {
        // Paused time: an empty claim's short wait for work passes at once.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(async move {
            let mut limits = fixtures::limits();
            limits.max_running_per_tenant = 1_000;
            let backend: Arc<dyn TaskBackend> = Arc::new(MemoryBackend::new(limits));
            let tenant = "prop";
            let mut tasks: Vec<_> = (0..dag.len()).map(|_| fixtures::sample(tenant)).collect();
            let workflow = amaos_mesh::new_id();
            for (i, deps) in dag.iter().enumerate() {
                tasks[i].workflow_id = workflow.clone();
                tasks[i].workflow_key = format!("n{i}");
                tasks[i].depends_on = deps.iter().map(|&d| tasks[d].id.clone()).collect();
            }
            for (i, deps) in dag.iter().enumerate() {
                for &d in deps {
                    let id = tasks[i].id.clone();
                    tasks[d].dependents.push(id);
                }
            }
            let index: HashMap<String, usize> = tasks.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
            backend.create(tenant, &workflow, tasks.clone(), None).await.unwrap();

            let mut done: HashSet<usize> = HashSet::new();
            let mut runs: HashMap<usize, usize> = HashMap::new();
            let mut held = Vec::new();
            let mut rng = order_seed;
            let mut idle_rounds = 0;
            while done.len() < dag.len() {
                // Claim everything ready, then finish one held attempt at random.
                while let Claimed::Attempt(claim) = backend.claim("p", Duration::from_secs(60)).await.unwrap() {
                    let i = index[&claim.task.id];
                    for d in &dag[i] {
                        assert!(done.contains(d), "task {i} ran before its dependency {d} succeeded");
                    }
                    *runs.entry(i).or_default() += 1;
                    held.push(*claim);
                }
                if held.is_empty() {
                    idle_rounds += 1;
                    assert!(idle_rounds < 3, "nothing is ready but {} tasks are unfinished", dag.len() - done.len());
                    continue;
                }
                idle_rounds = 0;
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let pick = (rng >> 33) as usize % held.len();
                let claim = held.swap_remove(pick);
                let i = index[&claim.task.id];
                backend.finish(&claim, Outcome::Succeeded { output: format!("out {i}") }).await.unwrap();
                done.insert(i);
            }
            for (i, task) in tasks.iter().enumerate() {
                assert_eq!(runs.get(&i), Some(&1), "task {i} ran {:?} times", runs.get(&i));
                let t = backend.get(tenant, &task.id).await.unwrap().unwrap();
                assert_eq!(t.state, TaskState::Succeeded);
            }
        });
    }
}
