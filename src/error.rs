//! Errors as values with a stable kind: every way a request can end early. The HTTP answer for
//! each (status, problem body, challenge) is the HTTP layer's, in [`crate::problem`]; this module
//! sits at the bottom so every step can return these without knowing HTTP.

use crate::domain::RateLimitStatus;

/// Why a caller's bearer token was refused. The text is safe to return: it never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRejection {
    /// A short stable cause (`expired`, `unknown_key`, `version_mismatch`, ...): the label of
    /// the token-refusal metric, so its values are bounded.
    pub cause: &'static str,
    /// What the caller is told.
    pub reason: String,
}

impl TokenRejection {
    /// A refusal for `cause`, explained as `reason`.
    pub fn new(cause: &'static str, reason: impl Into<String>) -> Self {
        TokenRejection {
            cause,
            reason: reason.into(),
        }
    }
}

/// Everything that can end a request early. Each variant has a stable [`GatewayError::kind`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// No `Authorization: Bearer` credentials at all.
    #[error("no bearer token")]
    MissingCredentials,
    /// The token is malformed, expired, badly signed, for another audience, ...
    #[error("invalid token: {}", .0.reason)]
    InvalidToken(TokenRejection),
    /// The token is valid but lacks the required delegated scope.
    #[error("missing scope {required}")]
    InsufficientScope {
        /// The scope the action needs.
        required: String,
    },
    /// An application (not a user) called and is not mapped to a service identity (or not for
    /// its tenant); the action needs a delegated identity.
    #[error("app-only callers are not accepted")]
    AppOnlyCaller,
    /// An application mapped to a service identity called without the required app role.
    #[error("missing app role {required}")]
    InsufficientRole {
        /// The app role (`callers.required_app_role`).
        required: String,
    },
    /// The caller's request is malformed (e.g. the body).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request body is larger than the gateway reads.
    #[error("payload too large")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body did not arrive within `server.request_timeout_seconds` of its headers.
    #[error("request body not received within {seconds} s")]
    RequestTimeout {
        /// The configured deadline.
        seconds: u64,
    },
    /// The caller already has `limits.max_in_flight_per_caller` requests in progress.
    #[error("{limit} requests of this caller already in flight")]
    TooManyInFlight {
        /// The cap.
        limit: usize,
    },
    /// A rate limit refused the request.
    #[error("rate limited by {}", .0.policy)]
    RateLimited(RateLimitStatus),
    /// The limiter is tracking as many callers as it may.
    #[error("limiter capacity exhausted")]
    LimiterFull {
        /// Seconds until eviction runs again.
        retry_after_secs: u64,
    },
    /// Signing keys for the caller's tenant have not been loaded yet.
    #[error("signing keys not loaded")]
    KeysUnavailable,
    /// The audit trail could not make a record durable in time: fail closed. The text says
    /// whether Graph was called (safe to show: no I/O details).
    #[error("audit trail unavailable: {0}")]
    AuditUnavailable(String),
    /// No such route.
    #[error("not found")]
    NotFound,
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the route accepts.
        allow: &'static str,
    },
    /// Entra ID asks for a step-up (MFA, Conditional Access) expressed as a claims challenge.
    #[error("step-up required")]
    StepUpRequired {
        /// The `claims` JSON from Entra, minified.
        claims: String,
        /// Where the client should send the user to satisfy it.
        authorization_uri: String,
    },
    /// Consent for the Graph permission is missing in the caller's tenant.
    #[error("consent required")]
    ConsentRequired {
        /// The scope that lacks consent.
        scope: String,
    },
    /// Entra ID is throttling, failing or unreachable.
    #[error("identity provider unavailable: {detail}")]
    IdentityProviderUnavailable {
        /// Seconds the caller should wait.
        retry_after_secs: u64,
        /// What happened, without secrets.
        detail: String,
    },
    /// Entra ID refused the exchange for a reason not listed above.
    #[error("token exchange failed: {0}")]
    ExchangeFailed(String),
    /// The gateway's own credentials or registration are wrong: an operator must act.
    #[error("gateway misconfigured: {0}")]
    GatewayMisconfigured(String),
    /// Entra ID refused the gateway's certificate or federated token (or it cannot be read):
    /// an operator must act, or a rotation in progress will fix it.
    #[error("client credential rejected: {credential}")]
    ClientCredentialRejected {
        /// `certificate` or `federated token`.
        credential: &'static str,
        /// Seconds callers should wait.
        retry_after_secs: u64,
    },
    /// The service identity has no session that can refresh: an operator must run `login`.
    #[error("service identity {identity} needs a login")]
    ServiceIdentityLoginRequired {
        /// The identity's name.
        identity: String,
    },
    /// The service identity's rotated refresh token could not be stored durably.
    #[error("session store of {identity} unavailable")]
    SessionStoreUnavailable {
        /// The identity's name.
        identity: String,
    },
    /// Graph answered 409 or 429 ("not now").
    #[error("upstream busy ({status})")]
    UpstreamBusy {
        /// 409 or 429, passed through.
        status: u16,
        /// Graph's `Retry-After`, if any.
        retry_after_secs: Option<u64>,
        /// Graph's `request-id`.
        request_id: Option<String>,
    },
    /// Graph refused the call (401/403): the delegated identity may not do this, or, for an
    /// app-only token, the application lacks the application permission.
    #[error("upstream refused ({status}){}", application_permission_missing(.application_permission.as_deref()))]
    UpstreamForbidden {
        /// Graph's status.
        status: u16,
        /// Graph's error code.
        code: Option<String>,
        /// Graph's `request-id`.
        request_id: Option<String>,
        /// When the token was the gateway application's own (an application identity): the
        /// application permission the call needs, which the refusal then names.
        application_permission: Option<String>,
    },
    /// Graph failed (5xx, unexpected status, connection failure).
    #[error("upstream failed: {detail}")]
    UpstreamFailed {
        /// What happened.
        detail: String,
        /// Graph's `request-id`.
        request_id: Option<String>,
    },
    /// Graph did not answer within `graph.timeout_seconds`.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// A bug or an unexpected condition.
    /// A webhook delivery's signature (or shared token) is missing, malformed, does not match
    /// any configured secret, or signs a time outside the source's tolerance.
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    /// Another request is handling the same webhook delivery right now; its retry will learn
    /// whether it was accepted.
    #[error("delivery in progress")]
    DeliveryInProgress,
    /// The shared-state backend (Redis) could not be reached within `state.timeout_ms`: a
    /// limit that fails closed, or a webhook delivery id, which always does (a doubled webhook
    /// action is what the gateway exists to prevent).
    #[error("state backend unavailable")]
    StateUnavailable {
        /// Seconds the caller should wait.
        retry_after_secs: u64,
    },
    /// A fault of the gateway itself, a state that should not occur: a 500 that tells the
    /// caller nothing more.
    #[error("internal error")]
    Internal,
}

/// What a refused app-only call needs, said the same way in the run's failure and the problem.
pub fn application_permission_missing(permission: Option<&str>) -> String {
    permission
        .map(|p| {
            format!(
                ": the gateway's application needs the Microsoft Graph application permission {p}, \
                 granted with admin consent in the tenant (app registration > API permissions)"
            )
        })
        .unwrap_or_default()
}

/// Every stable kind [`GatewayError::kind`] returns (a unit test keeps the two in step).
pub const KINDS: &[&str] = &[
    "app-only-caller",
    "audit-unavailable",
    "bad-request",
    "client-credential-rejected",
    "consent-required",
    "delivery-in-progress",
    "exchange-failed",
    "gateway-misconfigured",
    "identity-provider-unavailable",
    "insufficient-role",
    "insufficient-scope",
    "internal",
    "invalid-signature",
    "invalid-token",
    "keys-unavailable",
    "limiter-full",
    "method-not-allowed",
    "missing-credentials",
    "not-found",
    "payload-too-large",
    "rate-limited",
    "request-timeout",
    "service-identity-login-required",
    "session-store-unavailable",
    "state-unavailable",
    "step-up-required",
    "too-many-in-flight",
    "upstream-busy",
    "upstream-failed",
    "upstream-forbidden",
    "upstream-timeout",
];

/// The stable kind spelled `name`, as the `&'static str` the kinds are (a run's error read
/// back from the shared state); `internal` for a word this version does not know.
pub fn kind_named(name: &str) -> &'static str {
    KINDS
        .iter()
        .find(|k| **k == name)
        .copied()
        .unwrap_or("internal")
}

impl GatewayError {
    /// The stable kind: the last segment of the problem `type`, and the audit reason code.
    pub fn kind(&self) -> &'static str {
        use GatewayError::*;
        match self {
            MissingCredentials => "missing-credentials",
            InvalidToken(_) => "invalid-token",
            InsufficientScope { .. } => "insufficient-scope",
            AppOnlyCaller => "app-only-caller",
            InsufficientRole { .. } => "insufficient-role",
            BadRequest(_) => "bad-request",
            PayloadTooLarge { .. } => "payload-too-large",
            RequestTimeout { .. } => "request-timeout",
            TooManyInFlight { .. } => "too-many-in-flight",
            RateLimited(_) => "rate-limited",
            LimiterFull { .. } => "limiter-full",
            KeysUnavailable => "keys-unavailable",
            AuditUnavailable(_) => "audit-unavailable",
            StepUpRequired { .. } => "step-up-required",
            ConsentRequired { .. } => "consent-required",
            IdentityProviderUnavailable { .. } => "identity-provider-unavailable",
            ExchangeFailed(_) => "exchange-failed",
            GatewayMisconfigured(_) => "gateway-misconfigured",
            ClientCredentialRejected { .. } => "client-credential-rejected",
            ServiceIdentityLoginRequired { .. } => "service-identity-login-required",
            SessionStoreUnavailable { .. } => "session-store-unavailable",
            UpstreamBusy { .. } => "upstream-busy",
            UpstreamForbidden { .. } => "upstream-forbidden",
            UpstreamFailed { .. } => "upstream-failed",
            UpstreamTimeout => "upstream-timeout",
            InvalidSignature(_) => "invalid-signature",
            DeliveryInProgress => "delivery-in-progress",
            StateUnavailable { .. } => "state-unavailable",
            Internal => "internal",
            NotFound => "not-found",
            MethodNotAllowed { .. } => "method-not-allowed",
        }
    }
}
