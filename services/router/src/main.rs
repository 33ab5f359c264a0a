//! `amaos-router`: the router as its own process.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    amaos_mesh::process::run_service(
        "router",
        |c| &c.router,
        |config, policy, listener, metrics, shutdown| {
            amaos_router::serve(config, policy, listener, metrics, shutdown)
        },
    )
}
