//! Who is calling, as carried in request metadata.
//!
//! Public edges (the orchestrator, auth) verify an API key from
//! `authorization: Bearer <key>`. The verified identity then travels to the
//! internal services (agents, tools, memory) in `x-amaos-tenant`,
//! `x-amaos-principal` and `x-amaos-roles`. Those headers are trusted only on
//! the mesh's internal network; ARCHITECTURE.md records this boundary, which
//! signed tokens verified in every service replace.

use tonic::metadata::{MetadataMap, MetadataValue};

/// The metadata key holding the caller's tenant.
pub const TENANT_KEY: &str = "x-amaos-tenant";
/// The metadata key holding the caller's principal.
pub const PRINCIPAL_KEY: &str = "x-amaos-principal";
/// The metadata key holding the caller's roles, comma-separated.
pub const ROLES_KEY: &str = "x-amaos-roles";

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The tenant the caller acts in.
    pub tenant: String,
    /// The principal: an API key id, or a service's name.
    pub principal: String,
    /// The caller's roles.
    pub roles: Vec<String>,
}

impl Caller {
    /// Reads the caller forwarded by a trusted service; UNAUTHENTICATED when absent.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Self, tonic::Status> {
        let get = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let tenant = get(TENANT_KEY).filter(|t| valid_tenant(t)).ok_or_else(|| {
            tonic::Status::unauthenticated(format!("missing or invalid `{TENANT_KEY}` metadata"))
        })?;
        let principal = get(PRINCIPAL_KEY).unwrap_or_default();
        let roles = get(ROLES_KEY)
            .map(|r| {
                r.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            tenant,
            principal,
            roles,
        })
    }

    /// Writes this caller into outgoing request metadata.
    pub fn apply(&self, metadata: &mut MetadataMap) {
        for (key, value) in [
            (TENANT_KEY, self.tenant.as_str()),
            (PRINCIPAL_KEY, self.principal.as_str()),
            (ROLES_KEY, &self.roles.join(",")),
        ] {
            if let Ok(value) = MetadataValue::try_from(value) {
                metadata.insert(key, value);
            }
        }
    }

    /// Wraps a message in a request carrying this caller.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        self.apply(request.metadata_mut());
        request
    }

    /// True when the caller holds the role.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// A tenant name: 1 to 64 of `[a-z0-9_-]`, starting with a letter or digit.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && tenant.as_bytes()[0].is_ascii_alphanumeric()
}

/// The API key in `authorization: Bearer <key>`, if any.
pub fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    let key = key.trim();
    (!key.is_empty()).then_some(key)
}

/// Adds `authorization: Bearer <key>` to outgoing metadata.
pub fn set_bearer(metadata: &mut MetadataMap, key: &str) -> Result<(), tonic::Status> {
    let value = MetadataValue::try_from(format!("Bearer {key}")).map_err(|_| {
        tonic::Status::invalid_argument("the API key has characters not allowed in metadata")
    })?;
    metadata.insert("authorization", value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_round_trips_through_metadata() {
        let caller = Caller {
            tenant: "acme".into(),
            principal: "key-1".into(),
            roles: vec!["admin".into(), "agent".into()],
        };
        let mut md = MetadataMap::new();
        caller.apply(&mut md);
        assert_eq!(Caller::from_metadata(&md).unwrap(), caller);
    }

    #[test]
    fn missing_or_bad_tenant_is_unauthenticated() {
        let md = MetadataMap::new();
        assert_eq!(
            Caller::from_metadata(&md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut md = MetadataMap::new();
        md.insert(TENANT_KEY, MetadataValue::from_static("../etc"));
        assert_eq!(
            Caller::from_metadata(&md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn bearer_is_parsed() {
        let mut md = MetadataMap::new();
        set_bearer(&mut md, "amaos_abc").unwrap();
        assert_eq!(bearer(&md), Some("amaos_abc"));
        md.insert("authorization", MetadataValue::from_static("Basic xyz"));
        assert_eq!(bearer(&md), None);
    }
}
