//! `amaos-orchestrator`: the orchestrator as its own process.

fn main() -> std::process::ExitCode {
    amaos_mesh::process::run_service(
        "orchestrator",
        |c| &c.orchestrator,
        |config, policy, listener, metrics, shutdown| {
            amaos_orchestrator::serve(config, policy, listener, metrics, shutdown)
        },
    )
}
