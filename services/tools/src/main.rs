//! `amaos-tools`: the tools service as its own process.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    amaos_mesh::process::run_service(
        "tools",
        |c| &c.tools,
        |config, policy, listener, metrics, shutdown| {
            amaos_tools::serve(config, policy, listener, metrics, shutdown)
        },
    )
}
