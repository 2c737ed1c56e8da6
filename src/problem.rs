//! The one place that maps errors to HTTP answers (RFC 9457 `application/problem+json`,
//! RFC 6750 `WWW-Authenticate` challenges), and the headers that go with them. The errors
//! themselves, with their stable kinds, are [`crate::error`]'s.

use crate::domain::RateLimitStatus;
pub use crate::error::{GatewayError, TokenRejection};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder};
use serde::Serialize;
use uuid::Uuid;

/// The base of every problem `type` URI. Stable: clients may branch on these.
pub const PROBLEM_BASE: &str = "urn:sync-gateway:problem:";

impl GatewayError {
    /// The HTTP status answered for this error.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            MissingCredentials | InvalidToken(_) | StepUpRequired { .. } | InvalidSignature(_) => {
                StatusCode::UNAUTHORIZED
            }
            InsufficientScope { .. }
            | AppOnlyCaller
            | InsufficientRole { .. }
            | ConsentRequired { .. }
            | UpstreamForbidden { .. } => StatusCode::FORBIDDEN,
            BadRequest(_) => StatusCode::BAD_REQUEST,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            RateLimited(_) | TooManyInFlight { .. } => StatusCode::TOO_MANY_REQUESTS,
            LimiterFull { .. }
            | KeysUnavailable
            | AuditUnavailable(_)
            | IdentityProviderUnavailable { .. }
            | ClientCredentialRejected { .. }
            | ServiceIdentityLoginRequired { .. }
            | SessionStoreUnavailable { .. }
            | DeliveryInProgress
            | StateUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ExchangeFailed(_) | UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            UpstreamBusy { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::CONFLICT)
            }
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayMisconfigured(_) | Internal => StatusCode::INTERNAL_SERVER_ERROR,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn title(&self) -> &'static str {
        use GatewayError::*;
        match self {
            MissingCredentials => "Authentication required",
            InvalidToken(_) => "Invalid bearer token",
            InsufficientScope { .. } => "Insufficient scope",
            AppOnlyCaller => "Application callers are not accepted",
            InsufficientRole { .. } => "Insufficient app role",
            BadRequest(_) => "Bad request",
            PayloadTooLarge { .. } => "Payload too large",
            RequestTimeout { .. } => "Request body not received in time",
            TooManyInFlight { .. } => "Too many requests in flight",
            RateLimited(_) => "Rate limit exceeded",
            LimiterFull { .. } => "Too many distinct callers",
            KeysUnavailable => "Signing keys not yet available",
            AuditUnavailable(_) => "Audit trail unavailable",
            StepUpRequired { .. } => "Additional authentication required",
            ConsentRequired { .. } => "Consent required",
            IdentityProviderUnavailable { .. } => "Identity provider unavailable",
            ExchangeFailed(_) => "Token exchange failed",
            GatewayMisconfigured(_) => "Gateway misconfigured",
            ClientCredentialRejected { .. } => "Gateway credential rejected",
            ServiceIdentityLoginRequired { .. } => "Service identity needs a login",
            SessionStoreUnavailable { .. } => "Service identity session store unavailable",
            UpstreamBusy { .. } => "Microsoft Graph is busy",
            UpstreamForbidden { .. } => "Microsoft Graph refused the call",
            UpstreamFailed { .. } => "Microsoft Graph failed",
            UpstreamTimeout => "Microsoft Graph timed out",
            InvalidSignature(_) => "Invalid webhook signature",
            DeliveryInProgress => "Delivery in progress",
            StateUnavailable { .. } => "Shared state unavailable",
            Internal => "Internal error",
            NotFound => "Not found",
            MethodNotAllowed { .. } => "Method not allowed",
        }
    }

    /// The problem's `detail`: what happened, in words (also what a chat user is told).
    pub fn detail(&self) -> String {
        use GatewayError::*;
        match self {
            MissingCredentials => "send an Entra ID access token as 'Authorization: Bearer <token>'".into(),
            InvalidToken(r) => r.reason.clone(),
            InsufficientScope { required } => {
                format!("the token does not carry the delegated scope '{required}'")
            }
            AppOnlyCaller => "this action acts on behalf of a user; app-only tokens cannot be exchanged for delegated access, and this application is not mapped to a service identity of its tenant".into(),
            InsufficientRole { required } => format!("the app-only token does not carry the app role '{required}'"),
            BadRequest(d) => d.clone(),
            PayloadTooLarge { limit } => format!("the request body is larger than {limit} bytes"),
            RequestTimeout { seconds } => format!(
                "the request body did not arrive within {seconds} s; the connection is closed"
            ),
            TooManyInFlight { limit } => format!(
                "this caller already has {limit} requests in progress; retry when one has been answered"
            ),
            RateLimited(s) => format!(
                "the {} limit is exhausted; retry after {} s",
                s.policy, s.reset_secs
            ),
            LimiterFull { .. } => "the gateway is tracking as many callers as it may; retry shortly".into(),
            KeysUnavailable => "the gateway has not loaded the signing keys for this tenant yet".into(),
            AuditUnavailable(d) => d.clone(),
            StepUpRequired { .. } => "Entra ID requires additional authentication (e.g. MFA or a Conditional Access policy); acquire a new token with the claims in the WWW-Authenticate challenge".into(),
            ConsentRequired { scope } => format!(
                "the gateway application has no consent for '{scope}' in your tenant; an administrator must grant it"
            ),
            IdentityProviderUnavailable { detail, .. } => format!("Entra ID is not answering: {detail}"),
            ExchangeFailed(d) => d.clone(),
            GatewayMisconfigured(_) => "the gateway's own registration or credentials were rejected; the operator has been told".into(),
            ClientCredentialRejected { credential, .. } => format!("Entra ID rejected the gateway's {credential}; the operator has been told (the log names the cause)"),
            ServiceIdentityLoginRequired { identity } => format!(
                "the service identity '{identity}' has no usable session (never signed in, revoked, or expired); an operator must run: sync-gateway login --config <file> --identity {identity}"
            ),
            SessionStoreUnavailable { identity } => format!(
                "the session of service identity '{identity}' could not be stored durably, so it was not used; the operator has been told"
            ),
            UpstreamBusy { status, request_id, .. } => format!(
                "Microsoft Graph answered {status}{}",
                rid(request_id)
            ),
            UpstreamForbidden { status, code, request_id, application_permission } => format!(
                "Microsoft Graph answered {status}{}{}{}",
                code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(),
                crate::error::application_permission_missing(application_permission.as_deref()),
                rid(request_id)
            ),
            UpstreamFailed { detail, request_id } => format!("{detail}{}", rid(request_id)),
            UpstreamTimeout => "Microsoft Graph did not answer in time; the sync may or may not have been triggered".into(),
            InvalidSignature(why) => why.clone(),
            DeliveryInProgress => "another request is handling this delivery now; retry to learn its outcome".into(),
            StateUnavailable { .. } => "the gateway cannot reach its shared state (Redis) to check this request's limits or delivery id, so it did nothing; retry after Retry-After".into(),
            Internal => "an unexpected error occurred".into(),
            NotFound => "no such resource (the gateway serves POST /sync, GET /sync/runs/{id}, GET /sync/status, POST /hooks/{source} for configured sources)".into(),
            MethodNotAllowed { allow } => format!("this resource accepts {allow}"),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        use GatewayError::*;
        match self {
            RateLimited(s) => Some(s.reset_secs.max(1)),
            // A slot frees as soon as one of the caller's own requests is answered.
            TooManyInFlight { .. } | DeliveryInProgress => Some(1),
            LimiterFull { retry_after_secs } | StateUnavailable { retry_after_secs } => {
                Some(*retry_after_secs)
            }
            IdentityProviderUnavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            AuditUnavailable(_) | KeysUnavailable | SessionStoreUnavailable { .. } => Some(5),
            ClientCredentialRejected {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ServiceIdentityLoginRequired { .. } => Some(60),
            UpstreamBusy {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => None,
        }
    }

    /// The `WWW-Authenticate` challenge, for 401 and scope 403 answers (RFC 6750 §3).
    fn challenge(&self) -> Option<String> {
        use GatewayError::*;
        match self {
            MissingCredentials => Some("Bearer realm=\"sync-gateway\"".into()),
            // RFC 9110 requires a challenge with every 401; a webhook proves itself by its
            // sender's signature scheme, which has no registered name.
            InvalidSignature(_) => Some("Signature realm=\"sync-gateway\"".into()),
            InvalidToken(r) => Some(format!(
                "Bearer realm=\"sync-gateway\", error=\"invalid_token\", error_description=\"{}\"",
                quote_safe(&r.reason)
            )),
            InsufficientScope { required } => Some(format!(
                "Bearer realm=\"sync-gateway\", error=\"insufficient_scope\", scope=\"{}\", error_description=\"the token lacks the required scope\"",
                quote_safe(required)
            )),
            StepUpRequired {
                claims,
                authorization_uri,
            } => {
                use base64::Engine;
                Some(format!(
                    "Bearer realm=\"\", authorization_uri=\"{}\", error=\"insufficient_claims\", claims=\"{}\"",
                    quote_safe(authorization_uri),
                    base64::engine::general_purpose::STANDARD.encode(claims.as_bytes())
                ))
            }
            _ => None,
        }
    }
}

fn rid(request_id: &Option<String>) -> String {
    request_id
        .as_deref()
        .map(|r| format!("; Graph request-id {r}"))
        .unwrap_or_default()
}

/// Keeps a value safe inside a quoted-string header parameter.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// Where a run can be read.
pub fn run_location(id: Uuid) -> String {
    format!("/sync/runs/{id}")
}

/// Adds `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11) to an
/// answer.
pub fn insert_rate_limit_headers(resp: &mut HttpResponseBuilder, s: &RateLimitStatus) {
    resp.insert_header(("RateLimit-Policy", &*s.policies));
    resp.insert_header((
        "RateLimit",
        format!("\"{}\";r={};t={}", s.policy, s.remaining, s.reset_secs),
    ));
}

/// The RFC 9457 body.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// Stable URI per error kind.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the kind.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong in this case.
    pub detail: String,
    /// The audit record of this request (`urn:uuid:<id>`), so an operator can find it. Every
    /// problem answer has one: the type of [`respond`] requires it.
    pub instance: String,
    /// Graph's status for upstream errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// The run that failed, when the error is a run's outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<crate::runs::Run>,
}

/// The one mapping from an error to an HTTP answer. `audit_id` is the request's audit record.
pub fn respond(err: &GatewayError, audit_id: Uuid) -> HttpResponse {
    build(err, audit_id, None)
}

/// [`respond`] for a run that failed: the problem names the run and points at it.
pub fn respond_for_run(err: &GatewayError, audit_id: Uuid, run: &crate::runs::Run) -> HttpResponse {
    build(err, audit_id, Some(run))
}

fn build(err: &GatewayError, audit_id: Uuid, run: Option<&crate::runs::Run>) -> HttpResponse {
    let status = err.status();
    let upstream_status = match err {
        GatewayError::UpstreamBusy { status, .. }
        | GatewayError::UpstreamForbidden { status, .. } => Some(*status),
        _ => None,
    };
    let body = Problem {
        type_uri: format!("{PROBLEM_BASE}{}", err.kind()),
        title: err.title().into(),
        status: status.as_u16(),
        detail: err.detail(),
        instance: format!("urn:uuid:{audit_id}"),
        upstream_status,
        run: run.cloned(),
    };
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::CONTENT_TYPE, "application/problem+json"));
    resp.insert_header((header::CACHE_CONTROL, "no-store"));
    if let Some(secs) = err.retry_after() {
        resp.insert_header((header::RETRY_AFTER, secs.to_string()));
    }
    if let Some(c) = err.challenge() {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.insert_header((header::WWW_AUTHENTICATE, v));
        }
    }
    if let Some(run) = run {
        resp.insert_header((header::LOCATION, run_location(run.id)));
    }
    if let GatewayError::MethodNotAllowed { allow } = err {
        resp.insert_header((header::ALLOW, *allow));
    }
    if let GatewayError::RateLimited(s) = err {
        insert_rate_limit_headers(&mut resp, s);
    }
    resp.json(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind `GatewayError::kind` can return, read from its own source text, so a new
    /// variant cannot be forgotten here.
    fn kinds_in_source() -> Vec<String> {
        let src = include_str!("error.rs");
        let start = src.find("pub fn kind(&self)").unwrap();
        let end = src.len();
        src[start..end]
            .split("=> \"")
            .skip(1)
            .map(|rest| rest[..rest.find('"').unwrap()].to_string())
            .collect()
    }

    #[test]
    fn every_problem_type_is_in_the_readmes_error_table() {
        let readme = include_str!("../README.md");
        let kinds = kinds_in_source();
        assert!(kinds.len() >= 26, "{kinds:?}");
        for kind in kinds {
            let row = format!("| `{kind}`");
            let in_shared_row = format!(" / `{kind}` |");
            assert!(
                readme.contains(&row) || readme.contains(&in_shared_row),
                "README.md's error table has no row for `{kind}`"
            );
        }
    }

    #[test]
    fn the_list_of_kinds_is_every_kind_the_errors_have() {
        let mut from_source = kinds_in_source();
        from_source.sort();
        from_source.dedup();
        let mut listed: Vec<String> = crate::error::KINDS.iter().map(|k| k.to_string()).collect();
        listed.sort();
        assert_eq!(listed, from_source);
        assert_eq!(crate::error::kind_named("upstream-busy"), "upstream-busy");
        assert_eq!(crate::error::kind_named("no-such-kind"), "internal");
    }

    #[test]
    fn a_challenge_description_cannot_break_out_of_its_quotes() {
        let e = GatewayError::InvalidToken(TokenRejection::new("malformed", "bad \"x\"\r\n"));
        let c = e.challenge().unwrap();
        assert!(c.ends_with("error_description=\"bad x\""), "{c}");
    }

    #[test]
    fn step_up_claims_are_base64_of_the_claims_json() {
        let e = GatewayError::StepUpRequired {
            claims: "{\"access_token\":{}}".into(),
            authorization_uri: "https://login/t/oauth2/v2.0/authorize".into(),
        };
        let c = e.challenge().unwrap();
        assert!(c.contains("error=\"insufficient_claims\""));
        assert!(c.contains("claims=\"eyJhY2Nlc3NfdG9rZW4iOnt9fQ==\""), "{c}");
    }
}
