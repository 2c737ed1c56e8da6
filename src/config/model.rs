//! The validated configuration: what the rest of the gateway reads, never re-checking it.

use super::cloud::Cloud;
use super::names::SYNC_PERMISSION;
use crate::domain::TenantId;
use crate::secret::{Secret, StoreKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use url::Url;

/// The validated configuration of one gateway process.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// HTTP listener settings.
    pub server: ServerConfig,
    /// The gateway's own application registration in Entra ID.
    pub entra: EntraConfig,
    /// Which inbound callers are accepted.
    pub callers: CallersConfig,
    /// Microsoft Graph.
    pub graph: GraphConfig,
    /// Rate limits.
    pub limits: LimitsConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// The upstream actions the gateway exposes.
    pub actions: ActionsConfig,
    /// `[identities.NAME]`: service identities whose delegated sessions the gateway holds.
    pub identities: BTreeMap<String, IdentityConfig>,
    /// `[hooks.NAME]`: webhook and chat sources that may trigger a sync as a service identity.
    pub hooks: BTreeMap<String, HookSourceConfig>,
    /// `[state]`: where the state replicas share lives (limits, webhook delivery ids).
    pub state: StateConfig,
    /// `[telemetry]`: OpenTelemetry trace export (off by default).
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`
#[derive(Debug, Clone, Default, Serialize)]
pub struct TelemetryConfig {
    /// `telemetry.otlp_endpoint`: the collector's OTLP/HTTP base URL (`/v1/traces` is appended,
    /// as `OTEL_EXPORTER_OTLP_ENDPOINT` does); `None` (the default) exports nothing and builds
    /// nothing of OpenTelemetry.
    #[serde(flatten)]
    pub otlp: Option<OtlpConfig>,
}

/// Where and how spans are exported when `telemetry.otlp_endpoint` is set.
#[derive(Debug, Clone, Serialize)]
pub struct OtlpConfig {
    /// `telemetry.otlp_endpoint`, as configured.
    #[serde(rename = "otlp_endpoint")]
    pub endpoint: Url,
    /// The URL spans are posted to: the endpoint with `v1/traces` joined to its path
    /// (`check-config` prints it as a note, not as a key).
    #[serde(skip)]
    pub traces_url: Url,
    /// `telemetry.service_name`: the `service.name` resource attribute (default `sync-gateway`).
    pub service_name: String,
    /// `telemetry.otlp_timeout_seconds`: the bound on one export, retries included (default 10).
    #[serde(rename = "otlp_timeout_seconds")]
    pub timeout_seconds: u64,
}

/// `[server]`
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// `server.listen`: address and port to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// `server.workers`: actix worker threads (default: number of cores).
    pub workers: Option<usize>,
    /// `server.shutdown_timeout_seconds`: how long in-flight requests may finish on SIGTERM.
    pub shutdown_timeout_seconds: u64,
    /// `server.shutdown_grace_seconds`: after SIGTERM, `/readyz` answers 503 at once but new
    /// connections are still accepted this long, so load balancers stop sending before the
    /// listener closes (default 5).
    pub shutdown_grace_seconds: u64,
    /// `server.request_timeout_seconds`: a request's body must have arrived this long after its
    /// headers, or the answer is 408 (the headers themselves are bounded by actix: 5 s).
    pub request_timeout_seconds: u64,
    /// `server.max_connections`: open client connections at most, all workers together; more
    /// wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// `server.expose_openapi`: serve the OpenAPI document at `GET /openapi.yaml` (default off;
    /// `dev` turns it on).
    pub expose_openapi: bool,
    /// `server.tls`: serve HTTPS with this certificate and key (PEM files, read again when
    /// they change); `None` serves plain HTTP.
    pub tls: Option<TlsConfig>,
    /// `server.plaintext_behind_proxy`: a non-loopback listener without `server.tls` is
    /// deliberate (a mesh or an ingress terminates TLS in front of the gateway).
    pub plaintext_behind_proxy: bool,
}

/// `server.tls`
#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    /// `server.tls.certificate_file`: the certificate chain, PEM, leaf first.
    pub certificate_file: PathBuf,
    /// `server.tls.private_key_file`: its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub private_key_file: PathBuf,
}

/// The default of `server.max_connections`: well below the common soft limit of 1024 open
/// files, leaving room for the audit files, the upstream connections and the runtime's own.
pub const DEFAULT_MAX_CONNECTIONS: usize = 768;

/// Open files the gateway keeps for itself beside client connections (audit files, upstream
/// connections, the runtime): the start-up warns when the open-file limit leaves less.
pub const RESERVED_FILES: u64 = 256;

/// `[entra]`
#[derive(Debug, Clone, Serialize)]
pub struct EntraConfig {
    /// `entra.cloud`, when set: the national cloud the hosts below were derived from.
    pub cloud: Option<Cloud>,
    /// `entra.authority_host`, e.g. `https://login.microsoftonline.com`.
    pub authority_host: Url,
    /// `entra.tenant_id`: the gateway application's home tenant.
    pub tenant_id: TenantId,
    /// `entra.client_id`: the gateway application's client id.
    pub client_id: String,
    /// How the gateway proves itself to Entra ID: exactly one of secret, certificate, federated token.
    pub client_auth: ClientAuthConfig,
    /// Keys filled from the platform's environment (`AZURE_*`), for `check-config`.
    #[serde(skip)]
    pub filled_from_environment: Vec<String>,
    /// `entra.timeout_seconds`: timeout of each call to Entra ID (discovery, keys, token).
    pub timeout_seconds: u64,
    /// `entra.token_cache_capacity`: cap on cached exchanged tokens.
    pub token_cache_capacity: u64,
}

/// `[callers]`
#[derive(Debug, Clone, Serialize)]
pub struct CallersConfig {
    /// `callers.required_app_role`: the app role an app-only token must carry in `roles` to act
    /// as a service identity (required when `callers.apps` maps any application).
    pub required_app_role: Option<String>,
    /// `[callers.apps."<app id>"]`: app-only callers (by client id, lower case) and the service
    /// identity each acts as.
    pub apps: BTreeMap<String, AppConfig>,
    /// `callers.audiences`: accepted `aud` values.
    pub audiences: Vec<String>,
    /// `callers.allowed_tenants`: accepted `tid` values.
    pub allowed_tenants: Vec<TenantId>,
    /// `callers.required_scope`: the delegated scope a user token must carry.
    pub required_scope: String,
    /// `callers.leeway_seconds`: clock leeway for `exp` / `nbf`.
    pub leeway_seconds: u64,
    /// `callers.verified_cache_capacity`: cap on remembered verified tokens.
    pub verified_cache_capacity: u64,
    /// `callers.keys_refresh_seconds`: background refresh period of signing keys.
    pub keys_refresh_seconds: u64,
    /// `callers.unknown_kid_cooldown_seconds`: at most one refresh per this period for a `kid`
    /// that a freshly fetched key set already lacked.
    pub unknown_kid_cooldown_seconds: u64,
    /// `callers.new_kid_refresh_seconds`: at most one refresh per this period for a `kid` not
    /// yet checked against a fresh key set (default 30), so a storm of random `kid`s cannot keep
    /// a key Entra has just published refused for the whole cooldown.
    pub new_kid_refresh_seconds: u64,
}

/// `[graph]`
#[derive(Debug, Clone, Serialize)]
pub struct GraphConfig {
    /// `graph.base_url`, e.g. `https://graph.microsoft.com`.
    pub base_url: Url,
    /// `graph.timeout_seconds`: timeout of each upstream call.
    pub timeout_seconds: u64,
    /// The Graph resource named in exchanged scopes: `entra.cloud`'s Graph host when a cloud is
    /// set (so a proxy or simulator in `base_url` does not change the resource), else the origin
    /// of `base_url`.
    pub scope_resource: String,
    /// `graph.status_permission`: the delegated permission `GET /sync/status` asks for. `None`
    /// (the default) reuses the sync's own permission, whose token the gateway already holds and
    /// which Graph accepts for the read, so a tenant that consented only to the sync can read.
    pub status_permission: Option<String>,
}

impl GraphConfig {
    /// The Graph resource identifier (no trailing slash), e.g. `https://graph.microsoft.us`.
    pub fn resource(&self) -> String {
        self.scope_resource.clone()
    }

    /// The delegated scope to request for `permission`, e.g.
    /// `https://graph.microsoft.com/DeviceManagementServiceConfig.ReadWrite.All`.
    pub fn scope(&self, permission: &str) -> String {
        format!("{}/{}", self.resource(), permission)
    }

    /// The scope `GET /sync/status` reads with: `graph.status_permission`, else the sync's.
    pub fn status_scope(&self) -> String {
        self.scope(self.status_permission.as_deref().unwrap_or(SYNC_PERMISSION))
    }
}

/// `[callers.apps."<app id>"]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// `run_as`: the name of the `[identities.NAME]` the application acts as.
    pub run_as: String,
}

/// `[identities.NAME]`: an identity the gateway acts as for callers that are not users: a
/// dedicated user account whose delegated session the gateway holds (reference §5), or the
/// gateway's own application with an application permission (`kind = "application"`).
#[derive(Debug, Clone, Serialize)]
pub struct IdentityConfig {
    /// The table's name: what `run_as` and `login --identity` refer to.
    pub name: String,
    /// `tenant_id`: the tenant whose Graph the identity calls (one of `callers.allowed_tenants`).
    pub tenant_id: TenantId,
    /// `kind`: how the identity obtains its Graph token, with what that needs.
    #[serde(flatten)]
    pub kind: IdentityKind,
}

impl IdentityConfig {
    /// The delegated session's settings; `None` for an application identity.
    pub fn delegated(&self) -> Option<&DelegatedIdentity> {
        match &self.kind {
            IdentityKind::Delegated(d) => Some(d),
            IdentityKind::Application => None,
        }
    }

    /// `delegated` or `application`, as the configuration spells it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            IdentityKind::Delegated(_) => "delegated",
            IdentityKind::Application => "application",
        }
    }
}

/// `identities.NAME.kind`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IdentityKind {
    /// `delegated` (the default): a user account signed in once with `sync-gateway login`;
    /// Graph sees that user, held to what the account may do in Intune.
    Delegated(DelegatedIdentity),
    /// `application`: the gateway's own application registration, with the client-credentials
    /// grant and the application permission an administrator consented to. Tenant-wide, outside
    /// Intune's role scopes; no session, no store, no `login`.
    Application,
}

/// The session of a delegated identity.
#[derive(Debug, Clone, Serialize)]
pub struct DelegatedIdentity {
    /// `scopes`: the delegated Graph scopes of the session (default: the sync action's scope).
    pub scopes: Vec<String>,
    /// `store_path`: the encrypted session file, required on the memory backend; `None` on
    /// the redis backend, where the session lives in Redis (a path given there is not used).
    pub store_path: Option<PathBuf>,
    /// `store_key` (environment only) or the contents of `store_key_file`: 32 bytes, base64.
    pub store_key: StoreKey,
    /// Where the key came from, for `check-config`.
    pub store_key_source: String,
}

/// How the gateway authenticates to Entra ID's token endpoint (reference §3).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClientAuthConfig {
    /// `client_secret`: the secret from the environment or `entra.client_secret_file`.
    Secret {
        /// The secret.
        secret: Secret,
        /// Where it came from.
        source: String,
    },
    /// A client assertion signed with the certificate's private key on every token request.
    Certificate {
        /// `entra.certificate_file`: the PEM certificate registered on the app.
        certificate_file: PathBuf,
        /// `entra.private_key_file`: its PEM RSA private key.
        private_key_file: PathBuf,
        /// `entra.assertion_alg`: `PS256` (with `x5t#S256`, default) or `RS256` (with `x5t`).
        assertion_alg: AssertionAlg,
    },
    /// A workload identity federation token (e.g. a projected Kubernetes service account token).
    Federated {
        /// `entra.federated_token_file`, or `AZURE_FEDERATED_TOKEN_FILE`.
        token_file: PathBuf,
        /// Which of the two it came from.
        source: String,
    },
}

impl ClientAuthConfig {
    /// One line for `check-config`: which kind is in use and where it comes from.
    pub fn describe(&self) -> String {
        match self {
            ClientAuthConfig::Secret { source, .. } => format!("client secret from {source}"),
            // The thumbprint is the credential's to tell (`preflight`): config reads no files.
            ClientAuthConfig::Certificate {
                certificate_file,
                assertion_alg,
                ..
            } => format!(
                "certificate {}, client assertions signed {}",
                certificate_file.display(),
                assertion_alg.name()
            ),
            ClientAuthConfig::Federated { token_file, source } => format!(
                "workload identity federation: token file {} (from {source})",
                token_file.display()
            ),
        }
    }
}

/// The signature algorithm of certificate client assertions (`entra.assertion_alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssertionAlg {
    /// RSASSA-PSS with SHA-256; the header names the certificate by `x5t#S256` (current docs).
    #[serde(rename = "PS256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256; the header names the certificate by `x5t` (SHA-1).
    #[serde(rename = "RS256")]
    Rs256,
}

impl AssertionAlg {
    /// `PS256` or `RS256`.
    pub fn name(self) -> &'static str {
        match self {
            AssertionAlg::Ps256 => "PS256",
            AssertionAlg::Rs256 => "RS256",
        }
    }
}

/// A rate: sustained requests per minute and the burst allowed on top.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained requests per minute.
    pub per_minute: u32,
    /// Requests allowed at once.
    pub burst: u32,
}

/// `[limits]`
#[derive(Debug, Clone, Serialize)]
pub struct LimitsConfig {
    /// `limits.per_caller`: per user (`tid` + `oid`).
    pub per_caller: Rate,
    /// `limits.per_tenant`: per tenant, all callers together.
    pub per_tenant: Rate,
    /// `limits.max_tracked_callers`: cap on remembered callers.
    pub max_tracked_callers: usize,
    /// `limits.eviction_seconds`: how often idle limiter keys are dropped.
    pub eviction_seconds: u64,
    /// `limits.max_in_flight_per_caller`: `POST /sync` requests one caller (`tid` + `oid`) may
    /// have in progress at once, body read included; below `server.max_connections`.
    pub max_in_flight_per_caller: usize,
}

/// `[audit]`
#[derive(Debug, Clone, Serialize)]
pub struct AuditConfig {
    /// `audit.path`: the active audit file (JSON lines); required with the `file` sink.
    pub path: Option<PathBuf>,
    /// `audit.write_timeout_ms`: a record not durable within this answers 503.
    pub write_timeout_ms: u64,
    /// `audit.sinks`: exactly one durable sink (`file` or `postgres`), plus `stdout` as a copy.
    pub sinks: Vec<AuditSinkKind>,
    /// `audit.rotate_bytes`: rotate the active file at this size (0: never by size).
    pub rotate_bytes: u64,
    /// `audit.rotate_seconds`: rotate the active file at this age (0: never by age).
    pub rotate_seconds: u64,
    /// `audit.retain_files`: rotated files kept, oldest deleted first (0: keep all).
    pub retain_files: usize,
    /// `audit.postgres_url` (environment `SYNC_GATEWAY__AUDIT__POSTGRES_URL`; may carry a password).
    pub postgres_url: Option<Secret>,
    /// `audit.postgres_schema`: the schema holding the `records` table.
    pub postgres_schema: String,
    /// `audit.signing_key_file`: Ed25519 PKCS#8 PEM that signs checkpoints (off when absent).
    pub signing_key_file: Option<PathBuf>,
    /// `audit.checkpoint_every_records`: a signed checkpoint after at most this many records...
    pub checkpoint_every_records: u64,
    /// `audit.checkpoint_every_seconds`: ...or this many seconds, whichever comes first.
    pub checkpoint_every_seconds: u64,
    /// The HMAC key from `audit.hmac_key_file` or `SYNC_GATEWAY__AUDIT__HMAC_KEY` (off when absent).
    pub hmac_key: Option<Secret>,
}

/// One entry of `audit.sinks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSinkKind {
    /// The rotated, fsynced files at `audit.path` (durable).
    File,
    /// A table in PostgreSQL at `audit.postgres_url` (durable).
    Postgres,
    /// A copy on standard output for log shippers (not durable: never alone).
    Stdout,
}

impl AuditConfig {
    /// The durable sink: `File` or `Postgres` (validation guarantees exactly one).
    pub fn durable_sink(&self) -> AuditSinkKind {
        if self.sinks.contains(&AuditSinkKind::Postgres) {
            AuditSinkKind::Postgres
        } else {
            AuditSinkKind::File
        }
    }

    /// True when committed records are also copied to stdout.
    pub fn stdout_copy(&self) -> bool {
        self.sinks.contains(&AuditSinkKind::Stdout)
    }
}

/// `[actions]`
#[derive(Debug, Clone, Serialize)]
pub struct ActionsConfig {
    /// `[actions.sync]`
    pub sync: SyncActionConfig,
}

/// `[actions.sync]`
#[derive(Debug, Clone, Serialize)]
pub struct SyncActionConfig {
    /// `actions.sync.upstream_path`: the Graph path of the sync action.
    pub upstream_path: String,
    /// `actions.sync.status_path`: the Graph path of the Autopilot settings (last sync, status).
    pub status_path: String,
    /// `actions.sync.cooldown_seconds`: runs of one tenant start at least this far apart
    /// (Intune's rule: one manual sync per 10 minutes).
    pub cooldown_seconds: u64,
    /// `actions.sync.retry_budget_seconds`: how long one run may keep retrying 503/504/connection failures.
    pub retry_budget_seconds: u64,
    /// `actions.sync.max_attempts`: upstream attempts per run at most.
    pub max_attempts: u32,
    /// `actions.sync.retry_base_ms`: the first backoff step (doubled per retry, full jitter).
    pub retry_base_ms: u64,
    /// `actions.sync.status_poll_ms`: after a 409, how often `syncStatus` is polled.
    pub status_poll_ms: u64,
    /// `actions.sync.status_poll_limit`: after a 409, how many polls at most before rescheduling anyway.
    pub status_poll_limit: u32,
    /// `actions.sync.run_retention_seconds`: how long finished runs stay readable.
    pub run_retention_seconds: u64,
    /// `actions.sync.max_finished_runs`: how many finished runs stay readable at most.
    pub max_finished_runs: u64,
}

/// What sends to a `[hooks.NAME]` source, and so how its deliveries are signed (`kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// Standard Webhooks (Svix and the senders built on it): `webhook-signature`, `v1,<base64>`.
    StandardWebhooks,
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the body.
    Github,
    /// GitLab's classic webhooks: a plain shared token in `X-Gitlab-Token`.
    Gitlab,
    /// Jira Cloud admin webhooks: `X-Hub-Signature: sha256=<hex>` over the body.
    Jira,
    /// Zendesk: base64 HMAC over the timestamp header and the body.
    Zendesk,
    /// PagerDuty v3: `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>]`.
    Pagerduty,
    /// Slack slash commands, interactivity and events: `v0=<hex>` over `v0:{ts}:{body}`.
    Slack,
    /// A Microsoft Teams outgoing webhook: `Authorization: HMAC <base64>`.
    TeamsOutgoing,
    /// Discord interactions: Ed25519 over the timestamp header and the body.
    Discord,
    /// Mattermost slash commands: `Authorization: Token <t>`.
    Mattermost,
}

impl HookKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [HookKind; 10] = [
        HookKind::StandardWebhooks,
        HookKind::Github,
        HookKind::Gitlab,
        HookKind::Jira,
        HookKind::Zendesk,
        HookKind::Pagerduty,
        HookKind::Slack,
        HookKind::TeamsOutgoing,
        HookKind::Discord,
        HookKind::Mattermost,
    ];

    /// The `kind` string of the configuration, e.g. `standard-webhooks`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::StandardWebhooks => "standard-webhooks",
            HookKind::Github => "github",
            HookKind::Gitlab => "gitlab",
            HookKind::Jira => "jira",
            HookKind::Zendesk => "zendesk",
            HookKind::Pagerduty => "pagerduty",
            HookKind::Slack => "slack",
            HookKind::TeamsOutgoing => "teams-outgoing",
            HookKind::Discord => "discord",
            HookKind::Mattermost => "mattermost",
        }
    }

    /// The kind a `kind` string names, if any.
    pub fn parse(text: &str) -> Option<HookKind> {
        HookKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Chat kinds: a person typed a command, so `allow` (who may trigger) applies.
    pub fn is_chat(self) -> bool {
        matches!(
            self,
            HookKind::Slack | HookKind::TeamsOutgoing | HookKind::Discord | HookKind::Mattermost
        )
    }

    /// Kinds whose senders sign a timestamp, so `tolerance_seconds` bounds a delivery's age.
    pub fn signs_timestamp(self) -> bool {
        matches!(
            self,
            HookKind::StandardWebhooks | HookKind::Slack | HookKind::Zendesk | HookKind::Discord
        )
    }
}

/// `[hooks.NAME]`: one webhook or chat source, validated.
#[derive(Debug, Clone, Serialize)]
pub struct HookSourceConfig {
    /// The table's name: the `{source}` of `POST /hooks/{source}`.
    pub name: String,
    /// `kind`: which sender, hence how deliveries are signed.
    pub kind: HookKind,
    /// The secrets from `secrets_file` (one a line) or `SYNC_GATEWAY__HOOKS__NAME__SECRETS`
    /// (comma-separated), as configured (e.g. the whole `whsec_...` text); two while rotating.
    /// Empty for discord, which signs with a key pair.
    pub secrets: Vec<Secret>,
    /// Where the secrets came from, for `check-config`.
    pub secrets_source: String,
    /// `public_key` (discord): the application's Ed25519 public key.
    #[serde(serialize_with = "hex_key")]
    pub public_key: Option<[u8; 32]>,
    /// `run_as`: the `[identities.NAME]` a triggered run acts as.
    pub run_as: String,
    /// `tenant_id`, resolved: the identity's tenant (a run acts in its identity's tenant).
    pub tenant_id: TenantId,
    /// `limits`: deliveries per minute and burst for this source.
    pub limits: HookLimits,
    /// `when`: which deliveries trigger a run; `None` triggers on every verified delivery.
    pub when: Option<HookFilter>,
    /// `allow` (chat kinds): who may trigger; an empty list does not restrict its dimension.
    pub allow: ChatAllow,
    /// `response_url_hosts` (slack, mattermost): the only hosts follow-ups are posted to.
    pub response_url_hosts: Vec<String>,
    /// `api_base_url` (discord): where follow-up messages are posted.
    pub api_base_url: Option<Url>,
    /// `tolerance_seconds`: a signed timestamp further than this from now is refused.
    pub tolerance_seconds: u64,
    /// `max_body_bytes`: the largest delivery read.
    pub max_body_bytes: usize,
    /// `replay_window_seconds`: how long delivery ids are remembered (the sender's retry window).
    pub replay_window_seconds: u64,
}

#[cfg(test)]
impl HookSourceConfig {
    /// A source of `kind` with these secrets (or Discord's key) and every other key at its
    /// default, for unit tests of the code that reads sources.
    pub fn for_tests(kind: HookKind, secrets: &[&str], public_key: Option<[u8; 32]>) -> Self {
        HookSourceConfig {
            name: "src".into(),
            kind,
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            secrets_source: "test".into(),
            public_key,
            run_as: "bot".into(),
            tenant_id: TenantId::parse("11111111-1111-1111-1111-111111111111").expect("a GUID"),
            limits: HookLimits {
                per_minute: 30,
                burst: 10,
            },
            when: None,
            allow: ChatAllow::default(),
            response_url_hosts: Vec::new(),
            api_base_url: None,
            tolerance_seconds: 300,
            max_body_bytes: 65_536,
            replay_window_seconds: 172_800,
        }
    }
}

/// An Ed25519 public key in `check-config`'s output: hex, as the configuration has it.
fn hex_key<S: serde::Serializer>(key: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(k) => s.serialize_some(&crate::domain::hex(k)),
        None => s.serialize_none(),
    }
}

/// `hooks.NAME.limits`: per source, whatever the delivery says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HookLimits {
    /// Sustained deliveries per minute (default 30).
    pub per_minute: u32,
    /// Deliveries allowed at once (default 10).
    pub burst: u32,
}

/// `hooks.NAME.when`: the delivery's JSON at `pointer` must pass `test`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookFilter {
    /// An RFC 6901 JSON pointer (`""` is the whole document).
    pub pointer: String,
    /// What the value there must be.
    pub test: HookTest,
}

/// The test of a [`HookFilter`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookTest {
    /// `equals`: the value is exactly this.
    Equals(serde_json::Value),
    /// `one_of`: the value is one of these.
    OneOf(Vec<serde_json::Value>),
    /// `exists`: the pointer resolves (`true`) or does not (`false`).
    Exists(bool),
}

/// `hooks.NAME.allow` (chat kinds): who may trigger. Each dimension restricts only when its list
/// is not empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChatAllow {
    /// Slack team ids, Discord guild ids, Teams team ids (`channelData.team.id`), Mattermost team ids.
    pub teams: Vec<String>,
    /// Channel ids.
    pub channels: Vec<String>,
    /// User ids.
    pub users: Vec<String>,
}

/// `state.backend`: where shared state lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackendKind {
    /// In this process (one replica): governor and moka, as before `[state]` existed.
    #[default]
    Memory,
    /// In Redis at `state.redis_url`, shared by every replica.
    Redis,
}

/// `state.on_unavailable.*`: what a kind of state does while its store cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse (503 `state-unavailable` with `Retry-After`).
    #[default]
    Closed,
    /// Admit without the check, log (rate-limited) and count it.
    Open,
}

/// `[state]`
#[derive(Debug, Clone, Serialize)]
pub struct StateConfig {
    /// `state.backend`.
    pub backend: StateBackendKind,
    /// `state.redis_url` / `redis_url_file` (environment `SYNC_GATEWAY__STATE__REDIS_URL`):
    /// set exactly when the backend is `redis`.
    pub redis_url: Option<RedisUrl>,
    /// `state.key_prefix`: every key the gateway writes starts with it, so several gateways
    /// (or tests) can share one Redis.
    pub key_prefix: String,
    /// `state.timeout_ms`: the bound on every Redis call, connection included.
    pub timeout_ms: u64,
    /// `state.on_unavailable`.
    pub on_unavailable: OnUnavailable,
    /// `state.encryption_key` (environment only) or the contents of `state.encryption_key_file`
    /// (32 bytes, base64), with where it came from: the AES-256-GCM key under which a run's
    /// joiners' credentials are kept in Redis. Set exactly when the backend is `redis`.
    pub encryption_key: Option<(StoreKey, String)>,
    /// `state.replica_id` (environment `SYNC_GATEWAY__STATE__REPLICA_ID`), by default
    /// `HOSTNAME` (the pod name), else the machine's hostname: which replica this process is.
    /// It names the audit chain this process writes and anything else one replica owns.
    /// Not in the effective configuration `check-config` prints and `config_loaded` hashes, so
    /// replicas running one configuration show one hash; every audit record names it.
    #[serde(skip)]
    pub replica_id: crate::domain::ReplicaId,
    /// Where `replica_id` came from (`from the file`, `the default, the HOSTNAME environment
    /// variable`, ...), for `check-config`.
    #[serde(skip)]
    pub replica_id_source: String,
}

/// `state.on_unavailable`: one choice per kind of state that may choose (delivery ids always
/// fail closed: a doubled webhook action is what the gateway exists to prevent).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OnUnavailable {
    /// `state.on_unavailable.limits` (default `closed`).
    pub limits: FailMode,
}

/// A validated `redis://` (loopback only) or `rediss://` URL. It may carry a password, so its
/// `Debug` and serialization show `***` in the password's place.
#[derive(Clone)]
pub struct RedisUrl {
    url: Secret,
    /// Where it came from (the environment variable or the file), for `check-config`.
    pub source: String,
}

impl RedisUrl {
    /// A URL validation accepted; `source` says where it came from.
    pub fn new(url: Secret, source: String) -> Self {
        RedisUrl { url, source }
    }

    /// The URL itself, password included: only for the Redis client.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }

    /// The URL with its password (and a user's name beside it) replaced by `***`.
    pub fn redacted(&self) -> String {
        match Url::parse(self.url.expose()) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            Err(_) => "***".into(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}
