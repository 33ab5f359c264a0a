//! `amaos-memory`: the memory service as its own process.

// The memory service keeps glibc's allocator: under mimalloc it idled at
// 296 MiB instead of 132 (the model load's freed buffers stay mapped), and
// its work is not allocation-bound (ARCHITECTURE.md, Decisions).

fn main() -> std::process::ExitCode {
    amaos_mesh::process::run_service(
        "memory",
        |c| &c.memory,
        |config, policy, listener, metrics, shutdown| {
            amaos_memory::serve(config, policy, listener, metrics, shutdown)
        },
    )
}
