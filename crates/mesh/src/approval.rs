//! What the agents engine, the tools service and the orchestrator agree on
//! about gated tool calls: a call's fingerprint (tool and canonical
//! arguments), the grant a run token carries for an approved call, and the
//! status a tools service answers when a call needs approval.

use sha2::{Digest, Sha256};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo` reason of the FAILED_PRECONDITION a tools service
/// answers for a gated call without a grant.
pub const REASON: &str = "APPROVAL_REQUIRED";

/// Who "decided" an approval nobody decided before it expired.
pub const EXPIRY: &str = "expiry";

/// The `tool` of a request for a person's message rather than a tool call:
/// a swarm's handoff to `user` that waits (`handoff_to_user: wait`). Its
/// approval's comment is the person's message.
pub const INPUT: &str = "user";

/// The `ErrorInfo` domain of [`REASON`].
pub const DOMAIN: &str = "tools.amaos.io";

/// SHA-256 of a tool's name and its arguments as canonical JSON: object
/// keys sorted at every depth, whatever order the map keeps (serde_json's
/// `preserve_order` may be on in a build). The tools journal keys calls by
/// it, and an approval holds it: the approved call must run with exactly
/// these arguments.
pub fn fingerprint(tool: &str, args: &serde_json::Map<String, serde_json::Value>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tool.as_bytes());
    h.update([0]);
    let mut text = String::new();
    canonical_object(args, &mut text);
    h.update(text.as_bytes());
    h.finalize().into()
}

fn canonical_object(map: &serde_json::Map<String, serde_json::Value>, out: &mut String) {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(key.clone()).to_string());
        out.push(':');
        canonical(value, out);
    }
    out.push('}');
}

fn canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => canonical_object(map, out),
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// [`fingerprint`] as lowercase hex: what approvals and grants carry.
pub fn arguments_sha256(tool: &str, args: &serde_json::Map<String, serde_json::Value>) -> String {
    hex::encode(fingerprint(tool, args))
}

/// The grant a run token carries (claim `apv`) for the call `call_id` with
/// arguments fingerprint `sha256`.
pub fn grant(call_id: &str, sha256: &str) -> String {
    format!("{sha256}:{call_id}")
}

/// FAILED_PRECONDITION saying `tool` needs a person's approval, with an
/// `ErrorInfo` ([`REASON`]) the agents engine recognises.
pub fn required(tool: &str, why: &str) -> tonic::Status {
    tonic::Status::with_error_details(
        tonic::Code::FailedPrecondition,
        format!("`{tool}` needs a person's approval: {why}"),
        ErrorDetails::with_error_info(REASON, DOMAIN, [("tool".to_owned(), tool.to_owned())]),
    )
}

/// Whether `status` is [`required`]'s answer.
pub fn is_required(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == REASON && info.domain == DOMAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ignores_key_order_and_sees_every_value() {
        let a = serde_json::json!({"path": "a.md", "content": "x"});
        let b = serde_json::json!({"content": "x", "path": "a.md"});
        let c = serde_json::json!({"content": "y", "path": "a.md"});
        let map = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert_eq!(
            arguments_sha256("file_write", &map(a.clone())),
            arguments_sha256("file_write", &map(b))
        );
        assert_ne!(
            arguments_sha256("file_write", &map(a.clone())),
            arguments_sha256("file_write", &map(c))
        );
        assert_ne!(
            arguments_sha256("file_write", &map(a.clone())),
            arguments_sha256("file_read", &map(a))
        );
    }

    #[test]
    fn the_fingerprint_of_sorted_arguments_is_their_plain_json_hash() {
        // What the journal recorded before keys were sorted explicitly
        // (arguments arrive through a protobuf Struct, sorted) still matches.
        let args = serde_json::json!({"a": {"x": 1, "y": [true, null]}, "b": "t"});
        let mut h = Sha256::new();
        h.update(b"tool\0");
        h.update(args.to_string().as_bytes());
        let plain: [u8; 32] = h.finalize().into();
        assert_eq!(fingerprint("tool", args.as_object().unwrap()), plain);
    }

    #[test]
    fn only_the_approval_status_is_recognised() {
        assert!(is_required(&required("shell", "policy")));
        assert!(!is_required(&tonic::Status::failed_precondition(
            "`shell` needs a person's approval"
        )));
        assert!(!is_required(&tonic::Status::permission_denied("no")));
    }

    #[test]
    fn a_scope_approves_only_the_granted_call_and_arguments() {
        let scope = crate::caller::RunScope {
            approved: vec![grant("run:3:1:0", "ab12")],
            ..Default::default()
        };
        assert!(scope.approves("run:3:1:0", "ab12"));
        assert!(!scope.approves("run:3:1:0", "ab13"));
        assert!(!scope.approves("run:3:1:1", "ab12"));
    }
}
