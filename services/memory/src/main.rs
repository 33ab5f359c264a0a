//! `amaos-memory`: the memory service as its own process.

fn main() -> std::process::ExitCode {
    amaos_mesh::process::run_service(
        "memory",
        |c| &c.memory,
        |config, policy, listener, metrics, shutdown| {
            amaos_memory::serve(config, policy, listener, metrics, shutdown)
        },
    )
}
