//! Generated gRPC contracts of the AMAOS services.
//!
//! # Layout
//!
//! One module per `proto/amaos/<svc>/v1` package, [`lf::a2a::v1`] (A2A), [`FILE_DESCRIPTOR_SET`]
//! (the encoded descriptors, for reflection and the REST gateway) and
//! [`json`], the conversions between `google.protobuf.Struct`/`Value` and
//! `serde_json`, and [`time`], those between `Timestamp`/`Duration` and std
//! time. Nothing else lives here: domain types are in the services.

#![allow(missing_docs, clippy::all)]

/// The encoded `FileDescriptorSet` of every AMAOS contract.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/amaos_descriptor.bin"));

/// `google.api` annotations (HTTP rules) used by the contracts.
pub mod google {
    /// HTTP rules.
    pub mod api {
        include!(concat!(env!("OUT_DIR"), "/google.api.rs"));
    }
}

/// The orchestrator's contract.
pub mod orchestrator {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/amaos.orchestrator.v1.rs"));
    }
}

/// The router's contract.
pub mod router {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/amaos.router.v1.rs"));
    }
}

/// The agents service's contract.
pub mod agents {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/amaos.agents.v1.rs"));
    }
}

/// The tools service's contract.
pub mod tools {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/amaos.tools.v1.rs"));
    }
}

/// The memory service's contract.
pub mod memory {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/amaos.memory.v1.rs"));
    }
}

/// The auth service's contract.
pub mod auth {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/amaos.auth.v1.rs"));
    }
}

/// The Agent2Agent protocol (A2A v1.0, gRPC binding), which the
/// orchestrator serves and the agents service calls.
pub mod lf {
    /// `lf.a2a`.
    pub mod a2a {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/lf.a2a.v1.rs"));
        }
    }
}

pub mod json;
pub mod time;
