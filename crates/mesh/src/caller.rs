//! Who is calling: a verified identity, and how it travels on.
//!
//! Public edges (the orchestrator, auth) accept an API key or a token in
//! `authorization: Bearer …`. Every other hop carries a signed token that the
//! receiving service verifies locally ([`crate::token::TokenVerifier`]); the
//! tenant always comes from the verified credential, never from a request.

use tonic::metadata::{MetadataMap, MetadataValue};

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The tenant the caller acts in.
    pub tenant: String,
    /// The principal: an API key id, or the subject of a token.
    pub principal: String,
    /// The caller's roles.
    pub roles: Vec<String>,
    /// The token that proved it, forwarded on calls made for this caller.
    pub token: Option<String>,
    /// The run a run token is scoped to; `None` for callers not bound to
    /// one task (users' keys and tokens).
    pub task: Option<RunScope>,
}

/// What a run token is good for: one attempt of one task, the team that
/// attempt runs and the session its memory belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunScope {
    /// The task.
    pub task: String,
    /// The attempt of the task.
    pub attempt: u32,
    /// The team the attempt runs: its memory is the only memory the token
    /// reaches (empty in tokens minted before the claim existed: no memory).
    pub team: String,
    /// The session the task belongs to (empty: none).
    pub session: String,
    /// The gated tool calls a person approved for this attempt, as
    /// [`crate::approval::grant`]s.
    pub approved: Vec<String>,
}

impl RunScope {
    /// Whether a person approved the call with idempotency key `call_id`
    /// and arguments fingerprint `sha256` (hex) for this attempt.
    pub fn approves(&self, call_id: &str, sha256: &str) -> bool {
        let wanted = crate::approval::grant(call_id, sha256);
        self.approved.contains(&wanted)
    }
}

impl Caller {
    /// Wraps a message in a request carrying this caller's token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            // A token that came through metadata fits back into it.
            let _ = set_bearer(request.metadata_mut(), token);
        }
        request
    }

    /// Refuses a run token used for another task than `task_id`: a token
    /// captured from one run must not reach another task's files or runs.
    pub fn check_task(&self, task_id: &str) -> Result<(), tonic::Status> {
        match &self.task {
            Some(scope) if scope.task != task_id => Err(tonic::Status::permission_denied(format!(
                "this run token is scoped to task `{}`, not `{task_id}`",
                scope.task
            ))),
            _ => Ok(()),
        }
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
    fn bearer_is_parsed() {
        let mut md = MetadataMap::new();
        set_bearer(&mut md, "amaos_abc").unwrap();
        assert_eq!(bearer(&md), Some("amaos_abc"));
        md.insert("authorization", MetadataValue::from_static("Basic xyz"));
        assert_eq!(bearer(&md), None);
    }
}
