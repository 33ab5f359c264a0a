//! `amaos-memory`: the memory service as its own process.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    amaos_mesh::process::run_service(
        "memory",
        |c| &c.memory,
        |config, policy, listener, metrics, shutdown| {
            amaos_memory::serve(config, policy, listener, metrics, shutdown)
        },
    )
}
