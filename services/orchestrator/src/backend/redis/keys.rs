//! Key naming: everything under the configured prefix (the table in the
//! module documentation of [`super`]).

use super::RedisBackend;

impl RedisBackend {
    /// `P:<kind>:<id>`: a task's hash or events, a tenant's task index, an
    /// idempotency key, a workflow, a rate.
    pub(super) fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    /// The ready queue: a stream with the consumer group [`super::GROUP`].
    pub(super) fn queue(&self) -> String {
        format!("{}:queue", self.prefix)
    }

    /// Retries and deferred claims by due time (ms).
    pub(super) fn delayed(&self) -> String {
        format!("{}:delayed", self.prefix)
    }

    /// Attempts running per tenant.
    pub(super) fn running(&self) -> String {
        format!("{}:running", self.prefix)
    }
}
