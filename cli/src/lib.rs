//! The `amaos` command as a library, so tests drive what users run.
//!
//! # Layout
//!
//! - [`up`]: the whole mesh in one process (`amaos up`).
//! - [`bench`]: `amaos bench`, scenarios run against an in-process mesh.
//!   [`bench_memory`] (`--scenario memory`: the memory engines measured
//!   directly), [`bench_sandbox`] (`--scenario sandbox`: what the tool
//!   sandbox costs) and [`bench_rest`] (`--scenario rest`: the REST
//!   gateway's overhead over gRPC) are scenarios of their own.
//! - [`chaos`]: `amaos bench --scenario chaos`, faults injected into the six
//!   services run as processes on Redis, and what survived them.
//! - [`commands`]: the client commands (run, submit, tasks, task, watch,
//!   cancel, keys).
//! - [`render`]: readable and JSON output of tasks and events.

pub mod bench;
pub mod bench_memory;
pub mod bench_redis;
pub mod bench_rest;
pub mod bench_sandbox;
pub mod chaos;
pub mod commands;
pub mod render;
pub mod up;
