//! `amaos-orchestrator`: the orchestrator as its own process.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    amaos_mesh::process::run_service(
        "orchestrator",
        |c| &c.orchestrator,
        |config, policy, listener, metrics, shutdown| {
            amaos_orchestrator::serve(config, policy, listener, metrics, shutdown)
        },
    )
}
