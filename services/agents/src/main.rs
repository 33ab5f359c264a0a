//! `amaos-agents`: an agents worker as its own process.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    amaos_mesh::process::run_service(
        "agents",
        |c| &c.agents,
        |config, _policy, listener, metrics, shutdown| {
            amaos_agents::serve(config, listener, metrics, shutdown)
        },
    )
}
