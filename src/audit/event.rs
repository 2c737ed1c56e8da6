//! The record format (`"v": 1`), documented in `docs/audit.md`; `docs/audit.schema.json` is
//! generated from these types (`super::schema`), so their `schemars` attributes are the schema.
//! One `request` record per caller request, `run` records for each change in a run's life (the
//! pre-call ones made durable before Graph is called), and `admin` records for what happens to
//! the gateway itself. The writer adds `seq` and `prev` to every record (see `chain.rs`);
//! records here never carry them.

pub use super::formats::FORMAT_VERSION;
use super::formats::{format_version, ip_address, KEY_ID, PROBLEM_KIND, SHA256_HEX};
pub use crate::domain::CallerSummary;
use crate::domain::{Decision, RunEvent, RunState};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
use uuid::Uuid;

/// One line of the audit trail.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// The outcome of one caller request.
    Request(RequestRecord),
    /// A change in a run's life (scheduled, started, attempt, finished, ...).
    Run(RunRecord),
    /// Something that happened to the gateway itself: start, stop, configuration, keys.
    Admin(AdminRecord),
}

/// Something that happened to the gateway itself: the record of an [`AdminEvent`], whose
/// `event` names it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AdminRecord {
    /// Record format version.
    #[schemars(schema_with = "format_version")]
    pub v: u32,
    /// This record's id.
    pub id: Uuid,
    /// When it happened (UTC).
    pub time: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub event: AdminEvent,
}

impl AdminRecord {
    /// A record of `event`, now.
    pub fn now(event: AdminEvent) -> AdminRecord {
        AdminRecord {
            v: FORMAT_VERSION,
            id: Uuid::now_v7(),
            time: Utc::now(),
            event,
        }
    }
}

/// What happened to the gateway (the `event` field of an `admin` record). Other modules record
/// theirs with [`crate::audit::AuditLog::admin`]; the audit writer records the last four itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AdminEvent {
    /// The gateway started and its trail is open.
    Start {
        /// The gateway's version.
        version: String,
        /// The durable sink (`file`, `postgres`).
        sink: String,
        /// The id of the key signing checkpoints, when checkpoints are on.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(pattern(KEY_ID))]
        signing_key_id: Option<String>,
        /// The id of the key hashing sensitive values, when hashing is on.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(pattern(KEY_ID))]
        hmac_key_id: Option<String>,
    },
    /// The gateway is stopping; nothing is recorded after this but a final checkpoint.
    Stop,
    /// The configuration the gateway runs with (secrets masked before hashing).
    ConfigLoaded {
        /// SHA-256 (hex) of the effective configuration as `check-config` prints it.
        #[schemars(pattern(SHA256_HEX))]
        config_sha256: String,
    },
    /// A key changed: the checkpoint key, the hashing key, or a credential (issue 4).
    KeyRotation {
        /// Which key (`audit-signing`, `audit-hmac`, `client-secret`, ...).
        key: String,
        /// The id of the key used before, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        previous_key_id: Option<String>,
        /// The id of the key used from now on.
        key_id: String,
    },
    /// A service identity (`[identities.NAME]`) was signed in by `sync-gateway login`; recorded
    /// by the gateway when it takes the stored session up.
    IdentityLogin {
        /// The identity's NAME.
        identity: String,
        /// The tenant signed in to.
        tenant_id: String,
        /// How the session was obtained (`device_code`).
        method: String,
        /// `succeeded` or `failed`.
        outcome: String,
    },
    /// At start, the last line was incomplete (a crash mid-write); it was cut off and the
    /// chain resumes after the last complete record. The cut bytes were never acknowledged.
    TornTailRecovered {
        /// The file that ended in the torn line.
        file: String,
        /// How many bytes were cut.
        #[schemars(range(min = 1))]
        torn_bytes: u64,
        /// SHA-256 (hex) of the cut bytes.
        #[schemars(pattern(SHA256_HEX))]
        torn_sha256: String,
        /// The `seq` of the last complete record, which the chain continues from.
        resumed_after_seq: u64,
    },
    /// Writes failed for a while (the requests were answered 503); recorded once they work
    /// again.
    WriteFailed {
        /// The first error's kind, e.g. `StorageFull`.
        error: String,
        /// Group commits that failed.
        #[schemars(range(min = 1))]
        failed_commits: u64,
    },
    /// Records became durable only after their callers had given up waiting (a commit that
    /// outlived `audit.write_timeout_ms`): those requests were answered 503, and for pre-call
    /// records nothing was sent upstream, whatever the records say (an outcome record among
    /// them still tells what had already happened).
    LateCommit {
        /// The `seq`s of those records.
        #[schemars(length(min = 1), inner(range(min = 1)))]
        seqs: Vec<u64>,
    },
    /// A follow-up message to a chat sender (a run's outcome, or a reschedule), or a follow-up
    /// URL refused before any post.
    HookReply {
        /// The NAME of `[hooks.NAME]`.
        source: String,
        /// The run it reports on.
        #[serde(skip_serializing_if = "Option::is_none")]
        run_id: Option<Uuid>,
        /// Where: scheme, host and the first path segment only (the rest is the sender's secret).
        #[schemars(length(max = 300))]
        target: String,
        /// The receiver's status, when it answered.
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        /// Posts tried (0 when refused).
        attempts: u32,
        /// `delivered`, `failed` (no 2xx after the attempts) or `refused` (the URL was not
        /// allowed, so never fetched).
        #[schemars(extend("enum" = ["delivered", "failed", "refused"]))]
        outcome: String,
    },
    /// Retention deleted rotated files.
    Retention {
        /// The deleted files' names.
        removed: Vec<String>,
        /// The `seq` of the first record still kept.
        #[schemars(range(min = 1))]
        trail_starts_at_seq: u64,
    },
}

/// What Graph answered.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct UpstreamSummary {
    /// Graph's HTTP status; absent when no answer came (timeout, connection failure).
    pub status: Option<u16>,
    /// Graph's `request-id`.
    pub request_id: Option<String>,
    /// The `client-request-id` the gateway sent.
    pub client_request_id: String,
    /// How long the call took.
    pub duration_ms: u64,
}

/// The record of one caller request.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RequestRecord {
    /// Record format version.
    #[schemars(schema_with = "format_version")]
    pub v: u32,
    /// This record's id; also the `instance` of an error answer.
    pub id: Uuid,
    /// When the request arrived (UTC).
    pub time: DateTime<Utc>,
    /// The action requested.
    pub action: &'static str,
    /// The HTTP method (`GET`, `POST`, ...; `other` for an extension method).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "other"]))]
    pub method: Option<&'static str>,
    /// The route the request matched, as a pattern (`/sync/runs/{id}`), or `unmatched`; never
    /// the raw path, which a client chooses.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub route: Option<&'static str>,
    /// The W3C trace this request belongs to (the caller's `traceparent`, or a new one).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{32}$"))]
    pub trace_id: Option<String>,
    /// Who called (the initiating principal), once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerSummary>,
    /// Whose delegated identity the request acts with (the user themself, or a service
    /// identity), once authorized. Shared with the run, which records it too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acting_as: Option<Arc<CallerSummary>>,
    /// The TCP peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "ip_address")]
    pub client_ip: Option<IpAddr>,
    /// `allowed` when the gateway's own checks passed (authentication, policy, limits), else `denied`.
    pub decision: Decision,
    /// The stable error kind when the answer was an error (the denial reason when denied).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(PROBLEM_KIND))]
    pub code: Option<&'static str>,
    /// The HTTP status answered.
    #[schemars(range(min = 100, max = 599))]
    pub status: u16,
    /// The run this request joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    /// That run's state when the caller was answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_state: Option<RunState>,
    /// Graph's answer, when Graph was called.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSummary>,
    /// Time spent in the gateway.
    pub duration_ms: u64,
    /// The caller's stated reason, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    // Over `domain::MAX_REASON_CHARS`, with room; the schema also admits its hash.
    #[schemars(length(max = 600))]
    pub reason: Option<String>,
    /// The way in, when it is not a bearer-token route: `hook` for `POST /hooks/{source}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["hook"]))]
    pub entrance: Option<&'static str>,
    /// What a webhook delivery was and what became of it (`entrance: hook` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<Box<HookDelivery>>,
}

/// A webhook delivery as the trail records it.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HookDelivery {
    /// The NAME of `[hooks.NAME]` (present once the path names a configured source).
    #[schemars(length(max = 64))]
    pub source: String,
    /// The source's kind (`github`, `slack`, ...).
    #[schemars(extend("enum" = ["standard-webhooks", "github", "gitlab", "jira", "zendesk", "pagerduty", "slack", "teams-outgoing", "discord", "mattermost"]))]
    pub kind: &'static str,
    /// The sender's delivery id (stable across its retries), when it sends one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub delivery_id: Option<String>,
    /// The sender's own notion of the person behind it: Slack or Mattermost `user_id` and
    /// `user_name`, a Jira account id, a GitHub login, a Discord user, a Teams user.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 600))]
    pub sender_user: Option<String>,
    /// `accepted` (a run was joined), `duplicate` (a delivery id seen within the replay window:
    /// nothing joined), `filtered` (the source's `when` did not match), `ignored` (nothing to act
    /// on: a Discord ping, a button), `help` (a chat user asked for, or needed, the usage),
    /// `not_allowed` (a chat user, channel or team outside `allow`), `refused` (`code` says why).
    #[schemars(extend("enum" = ["accepted", "duplicate", "filtered", "ignored", "help", "not_allowed", "refused"]))]
    pub outcome: &'static str,
}

impl RequestRecord {
    /// A record for a request that has just arrived; the pipeline fills in the rest.
    pub fn new(
        id: Uuid,
        time: DateTime<Utc>,
        action: &'static str,
        client_ip: Option<IpAddr>,
    ) -> Self {
        RequestRecord {
            v: FORMAT_VERSION,
            id,
            time,
            action,
            method: None,
            route: None,
            trace_id: None,
            caller: None,
            acting_as: None,
            client_ip,
            decision: Decision::Denied,
            code: None,
            status: 0,
            run_id: None,
            run_state: None,
            upstream: None,
            duration_ms: 0,
            reason: None,
            entrance: None,
            hook: None,
        }
    }
}

/// A change in a run's life. The `started` and `attempt` records are made durable immediately
/// before each Graph call, so no upstream call goes unrecorded even if the process dies.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(transform = super::formats::run_requirements)]
pub struct RunRecord {
    /// Record format version.
    #[schemars(schema_with = "format_version")]
    pub v: u32,
    /// This record's id.
    pub id: Uuid,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The run.
    pub run_id: Uuid,
    /// The action.
    pub action: &'static str,
    /// The tenant whose Graph is called.
    pub tenant_id: String,
    /// `scheduled`, `started` (first attempt about to be sent), `attempt` (a retry about to be
    /// sent), `rescheduled` (Graph said "not now"), `merged` (its requests joined another run),
    /// `finished`, `abandoned`.
    pub event: RunEvent,
    /// The run's state after the event.
    pub state: RunState,
    /// The earliest start, for scheduled runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Whose delegated identity the run uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acting_as: Option<Arc<CallerSummary>>,
    /// The request records the run covers (on `scheduled`, `started`, `finished`, `abandoned`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub covers: Vec<Uuid>,
    /// The attempt about to be sent (`started`, `attempt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<AttemptSummary>,
    /// Every attempt so far with Graph's answers (`rescheduled`, `finished`, `abandoned`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptSummary>,
    /// Why the run failed or was abandoned (a problem kind).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(PROBLEM_KIND))]
    pub error: Option<&'static str>,
    /// The run this one's requests were moved into (`merged`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<Uuid>,
}

/// One upstream attempt of a run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AttemptSummary {
    /// 1 for the first attempt of the run.
    #[schemars(range(min = 1))]
    pub number: u32,
    /// The `client-request-id` sent.
    pub client_request_id: String,
    /// Graph's status; absent before the answer or when none came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Graph's `request-id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
}
