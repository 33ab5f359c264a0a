//! `amaos-auth`: the auth service as its own process.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    amaos_mesh::process::run_service(
        "auth",
        |c| &c.auth,
        |config, policy, listener, metrics, shutdown| {
            amaos_auth::serve(config, policy, listener, metrics, shutdown)
        },
    )
}
