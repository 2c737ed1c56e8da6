//! Plain domain values shared by the steps and the audit trail: states and decisions as types,
//! so the compiler checks every match. This module imports nothing of the gateway.

use schemars::JsonSchema;
use serde::Serialize;
use std::sync::Arc;

/// The longest `reason` a request may give, in characters (`POST /sync`'s body, a chat
/// command's text): the audit schema's bound on `reason` leaves room above it.
pub const MAX_REASON_CHARS: usize = 500;

/// Lower-case hex of bytes (hashes, trace and span ids).
pub fn hex(h: &[u8]) -> String {
    // By table: `write!` per byte was 1% of a proxied request's CPU (one `prev` per record).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(h.len() * 2);
    for b in h {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// The gateway's own verdict on a request: its checks (authentication, policy, limits) passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Authentication, policy and limits passed (the request may still fail later).
    Allowed,
    /// One of the gateway's checks refused the request.
    Denied,
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for `not_before` (and for the running run of the tenant to finish).
    Scheduled,
    /// Calling Graph (possibly between retries).
    Running,
    /// Graph accepted the sync.
    Succeeded,
    /// Graph refused or failed beyond the retry budget; `error` says why.
    Failed,
    /// The gateway stopped before the run could start.
    Abandoned,
}

impl RunState {
    /// The state's name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Scheduled => "scheduled",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Abandoned => "abandoned",
        }
    }

    /// True once nothing more will happen to the run.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Abandoned
        )
    }
}

/// A change in a run's life: the `event` of a `run` audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunEvent {
    /// Created to start when the cooldown ends.
    Scheduled,
    /// The first attempt is about to be sent (durable before the call).
    Started,
    /// A retry is about to be sent (durable before the call).
    Attempt,
    /// Graph said "not now" (409/429): waits again.
    Rescheduled,
    /// Its requests moved into the tenant's scheduled run.
    Merged,
    /// Succeeded or failed.
    Finished,
    /// The gateway stopped before it could start.
    Abandoned,
}

impl RunEvent {
    /// The event's name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            RunEvent::Scheduled => "scheduled",
            RunEvent::Started => "started",
            RunEvent::Attempt => "attempt",
            RunEvent::Rescheduled => "rescheduled",
            RunEvent::Merged => "merged",
            RunEvent::Finished => "finished",
            RunEvent::Abandoned => "abandoned",
        }
    }

    /// Whether the record lists the requests the run covers.
    pub fn lists_covers(self) -> bool {
        matches!(
            self,
            RunEvent::Scheduled
                | RunEvent::Started
                | RunEvent::Finished
                | RunEvent::Abandoned
                | RunEvent::Merged
        )
    }

    /// Whether the record lists every attempt so far with Graph's answers.
    pub fn lists_attempts(self) -> bool {
        matches!(
            self,
            RunEvent::Rescheduled | RunEvent::Finished | RunEvent::Abandoned | RunEvent::Merged
        )
    }
}

/// Where a request stands against one policy, for the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// The policy's name: `per-caller` or `per-tenant`.
    pub policy: &'static str,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// Seconds until the policy's quota is whole again (on refusal: until the next request may pass).
    pub reset_secs: u64,
    /// The `RateLimit-Policy` field value naming every policy.
    pub policies: Arc<str>,
}

/// Who called, or whose identity was acted as, as far as it is known. Never carries a token.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CallerSummary {
    /// `user`, `app`, `service_identity` (a delegated service account acted),
    /// `application_identity` (the gateway's own application acted, with an application
    /// permission: `app_id` is the gateway's client id) or `hook` (a webhook source,
    /// `POST /hooks/{source}`).
    #[schemars(extend("enum" = ["user", "app", "service_identity", "application_identity", "hook"]))]
    pub kind: &'static str,
    /// The caller's `tid`.
    pub tenant_id: String,
    /// The caller's `oid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// The user's UPN, when the token names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    // A bound on what a token can carry; the schema also admits its `hmac-sha256:` hash.
    #[schemars(length(max = 600))]
    pub upn: Option<String>,
    /// The client application that obtained the token (`azp` / `appid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The identity's name (`[identities.NAME]`), when one was acted as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// An Entra ID tenant id: a GUID, in the lower-case hyphenated form Entra writes in tokens
/// (`tid`). Only [`TenantId::parse`] makes one, so a value of this type is always well formed
/// (parse, don't validate).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// `text` as a tenant id, or `None` when it is not a GUID.
    pub fn parse(text: &str) -> Option<TenantId> {
        let id = uuid::Uuid::parse_str(text.trim()).ok()?;
        Some(TenantId(id.hyphenated().to_string()))
    }

    /// The id as Entra writes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for TenantId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for TenantId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TenantId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for TenantId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

/// The longest replica id: a DNS label's length, so any pod name (a StatefulSet's `name-0`, a
/// Deployment's `name-hash-suffix`) fits, and a file name or stream built from it stays short.
pub const MAX_REPLICA_ID_CHARS: usize = 63;

/// Which replica wrote an audit chain (`state.replica_id`, by default the pod name): 1 to
/// [`MAX_REPLICA_ID_CHARS`] characters of `A-Z a-z 0-9 . _ -`, so it can go into a file name,
/// a PostgreSQL value and a JSON string as it is. Only [`ReplicaId::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ReplicaId(String);

impl ReplicaId {
    /// `text` as a replica id, or `None` when it is empty, too long or has another character
    /// (a `/` would leave the audit directory, a space or quote would need escaping).
    pub fn parse(text: &str) -> Option<ReplicaId> {
        let ok = !text.is_empty()
            && text.len() <= MAX_REPLICA_ID_CHARS
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            // `.` and `..` name directories, not files.
            && text.bytes().any(|b| b != b'.');
        ok.then(|| ReplicaId(text.to_string()))
    }

    /// The id as written in records, file names and streams.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_id_is_1_to_63_file_name_safe_characters() {
        for good in [
            "sync-gateway-0",
            "gw-7d9f8c6b5-x2k4q",
            "a",
            "node_1.example",
            &"x".repeat(63),
        ] {
            assert_eq!(ReplicaId::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            &"x".repeat(64),
            "a/b",
            "../x",
            ".",
            "..",
            "pod 0",
            "pod\"0",
            "pöd",
            "a:b",
        ] {
            assert!(ReplicaId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_tenant_id_is_a_guid_in_entras_lower_case_form() {
        let t = TenantId::parse(" 11111111-AAAA-1111-1111-111111111111 ").unwrap();
        assert_eq!(t.as_str(), "11111111-aaaa-1111-1111-111111111111");
        assert!(TenantId::parse("contoso.onmicrosoft.com").is_none());
        assert!(TenantId::parse("").is_none());
    }
}
