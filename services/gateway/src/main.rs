//! `amaos-gateway`: the REST gateway as its own process.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    amaos_mesh::process::run_service(
        "gateway",
        |c| &c.gateway,
        |config, _policy, listener, metrics, shutdown| {
            amaos_gateway::serve(config, listener, metrics, shutdown)
        },
    )
}
