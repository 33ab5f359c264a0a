//! The auth service's own metrics: API-key authentications by outcome,
//! tokens issued by kind, signing-key rotations. (Audit append failures
//! are counted by every service: `amaos_audit_append_failures_total`.)

use amaos_mesh::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

/// The auth service's metrics, counted from the start and registered with
/// [`AuthMetrics::register`] when the service is served.
#[derive(Clone, Default)]
pub struct AuthMetrics {
    authentications: Family<Outcome, Counter>,
    tokens: Family<Kind, Counter>,
    rotations: Counter,
}

/// What kind of token was issued.
#[derive(Clone, Copy, Debug)]
pub enum TokenKind {
    /// For an API key, by `Authenticate`.
    Access,
    /// Scoped to a task's attempt, by `IssueToken`.
    Run,
    /// Another token `IssueToken` made (a service acting for a tenant).
    Service,
    /// A run-signing delegation.
    Delegation,
}

impl AuthMetrics {
    /// Adds these metrics to `metrics`.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(
            "authentications",
            "API keys presented, by outcome (ok, invalid, missing, error)",
            self.authentications.clone(),
        );
        metrics.register(
            "tokens_issued",
            "tokens signed by auth, by kind (access, run, service, delegation)",
            self.tokens.clone(),
        );
        metrics.register(
            "key_rotations",
            "token signing keys rotated",
            self.rotations.clone(),
        );
    }

    /// An API key was checked with `outcome`.
    pub fn authenticated(&self, outcome: &'static str) {
        self.authentications
            .get_or_create(&Outcome { outcome })
            .inc();
    }

    /// A token of `kind` was signed.
    pub fn issued(&self, kind: TokenKind) {
        let kind = match kind {
            TokenKind::Access => "access",
            TokenKind::Run => "run",
            TokenKind::Service => "service",
            TokenKind::Delegation => "delegation",
        };
        self.tokens.get_or_create(&Kind { kind }).inc();
    }

    /// The signing key was rotated.
    pub fn rotated(&self) {
        self.rotations.inc();
    }
}
