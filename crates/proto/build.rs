//! Compiles the contracts under `proto/` with protox (no protoc needed) and
//! writes the encoded descriptor set next to the generated code, for gRPC
//! reflection and the REST gateway.
//!
//! The set is encoded by protox itself, not through `prost_types`: those
//! types have no room for extension options, so re-encoding them dropped
//! every `google.api.http` rule (and any other custom option).

use std::path::PathBuf;

const FILES: &[&str] = &[
    "amaos/orchestrator/v1/orchestrator.proto",
    "amaos/router/v1/router.proto",
    "amaos/agents/v1/agents.proto",
    "amaos/tools/v1/tools.proto",
    "amaos/memory/v1/memory.proto",
    "amaos/auth/v1/auth.proto",
    "lf/a2a/v1/a2a.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());

    let files: Vec<PathBuf> = FILES.iter().map(|f| root.join(f)).collect();
    let mut compiler = protox::Compiler::new([&root])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(&files)?;
    let fds = compiler.file_descriptor_set();

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("amaos_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // The A2A package is generated on its own and referred to by path from
    // the AMAOS packages: prost's relative paths assume a module tree that
    // mirrors every package from a common root, which `amaos_proto` (one
    // module per service, no `amaos` level) does not have. The AMAOS pass
    // runs first without the A2A service, so the A2A pass writes the whole
    // `lf.a2a.v1.rs` last.
    let is_a2a = |f: &prost_types::FileDescriptorProto| f.package() == "lf.a2a.v1";
    let mut amaos = fds.clone();
    for file in amaos.file.iter_mut().filter(|f| is_a2a(f)) {
        file.service.clear();
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".lf.a2a.v1", "crate::lf::a2a::v1")
        .compile_fds(amaos)?;
    let mut a2a = fds;
    a2a.file
        .retain(|f| is_a2a(f) || f.package() == "google.protobuf");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(a2a)?;
    Ok(())
}
