//! The formats the audit record types declare for their generated schema: patterns, the format
//! version, and rules no derive can say. A leaf, so the record types and the schema generator
//! (`super::schema`) both use it without using each other.

use crate::domain::RunEvent;
use schemars::{json_schema, Schema, SchemaGenerator};
use serde_json::{json, Value};

/// The version of the record format.
pub const FORMAT_VERSION: u32 = 1;

/// A SHA-256 in lower-case hex (`prev`, `config_sha256`, `torn_sha256`).
pub const SHA256_HEX: &str = "^[0-9a-f]{64}$";

/// A key id: the first 16 hex digits of a SHA-256 (checkpoint and hashing keys).
pub const KEY_ID: &str = "^[0-9a-f]{16}$";

/// A problem kind (`code`, a run's `error`): lower-case words joined by `-`.
pub const PROBLEM_KIND: &str = "^[a-z-]+$";

/// A replica id (`state.replica_id`, `crate::domain::ReplicaId`): 1 to 63 characters of
/// `A-Z a-z 0-9 . _ -`, not only dots (the length is the field's own bound).
pub const REPLICA_ID: &str = "^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$";

/// A base64 Ed25519 signature (64 bytes).
pub const SIGNATURE: &str = "^[A-Za-z0-9+/]{86}==$";

/// The schema of `v`: the format version, and nothing else.
pub(crate) fn format_version(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "description": "Record format version.", "const": FORMAT_VERSION })
}

/// An IP address in clear: schemars' own `format: ip` is not a format validators know.
pub(crate) fn ip_address(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The TCP peer.",
        "anyOf": [
            { "type": "string", "format": "ipv4" },
            { "type": "string", "format": "ipv6" },
        ],
    })
}

/// What each `run` event must carry, beyond the fields every run record has.
pub(crate) fn run_requirements(schema: &mut Schema) {
    use RunEvent::*;
    let rules: [(&[RunEvent], &[&str]); 5] = [
        // Durable before each Graph call: who acts and which attempt goes out.
        (&[Started, Attempt], &["acting_as", "attempt"]),
        (&[Started], &["covers"]),
        (&[Scheduled], &["not_before", "covers"]),
        (&[Merged], &["merged_into"]),
        (&[Finished, Abandoned], &["covers"]),
    ];
    let all_of: Vec<Value> = rules
        .iter()
        .map(|(events, fields)| {
            let names: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
            json!({
                "if": { "properties": { "event": { "enum": names } } },
                "then": { "required": fields },
            })
        })
        .collect();
    schema.insert("allOf".into(), Value::Array(all_of));
}
