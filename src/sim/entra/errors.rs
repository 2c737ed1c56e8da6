//! Entra's error answers: the per-request ids every answer carries ([`Ctx`]) and the error
//! body with its OAuth `error`, AADSTS code and description ([`AadError`]).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

/// Per-request ids as Entra reports them: `trace_id` is Entra's own request id,
/// `correlation_id` echoes the client's `client-request-id` when it is a GUID.
pub(super) struct Ctx {
    trace_id: String,
    correlation_id: String,
    client_request_id: Option<String>,
}

impl Ctx {
    /// The ids of `req`: a fresh trace id, and the client's request id when it sent one.
    pub(super) fn new(req: &HttpRequest) -> Ctx {
        let client_request_id = req
            .headers()
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let correlation_id = client_request_id
            .as_deref()
            .and_then(|c| uuid::Uuid::parse_str(c).ok())
            .unwrap_or_else(uuid::Uuid::new_v4)
            .to_string();
        Ctx {
            trace_id: uuid::Uuid::new_v4().to_string(),
            correlation_id,
            client_request_id,
        }
    }

    /// A response with `status` and the request-id headers Entra sets on every answer.
    pub(super) fn response(&self, status: StatusCode) -> actix_web::HttpResponseBuilder {
        let mut b = HttpResponse::build(status);
        b.insert_header(("x-ms-request-id", self.trace_id.clone()));
        if let Some(c) = &self.client_request_id {
            b.insert_header(("client-request-id", c.clone()));
        }
        b
    }
}

/// An Entra error answer: status, OAuth `error`, AADSTS code, message and extra members.
pub(super) struct AadError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: String,
    extra: Vec<(&'static str, Value)>,
    retry_after: Option<u64>,
}

impl AadError {
    /// An error answered with `status`, OAuth `error` and `AADSTS{code}: {message}`.
    pub(super) fn new(
        status: u16,
        error: &'static str,
        code: u32,
        message: impl Into<String>,
    ) -> AadError {
        AadError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            error,
            code,
            message: message.into(),
            extra: Vec::new(),
            retry_after: None,
        }
    }

    /// Adds a member to the error body (`suberror`, `claims`).
    pub(super) fn with(mut self, key: &'static str, value: Value) -> AadError {
        self.extra.push((key, value));
        self
    }

    /// Announces `Retry-After: secs`.
    pub(super) fn retry_after(mut self, secs: u64) -> AadError {
        self.retry_after = Some(secs);
        self
    }

    /// AADSTS900144: a required form parameter is missing.
    pub(super) fn missing(param: &str) -> AadError {
        AadError::new(
            400,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{param}'."),
        )
    }

    /// AADSTS90002: the tenant in the path is unknown.
    pub(super) fn tenant_not_found(error: &'static str, tenant: &str) -> AadError {
        AadError::new(
            400,
            error,
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud. Check with your subscription \
                 administrator, this may happen if there are no active subscriptions for the \
                 tenant."
            ),
        )
    }

    /// The answer, with Entra's error body and no-cache headers; `base` prefixes `error_uri`.
    pub(super) fn into_response(self, ctx: &Ctx, base: &str) -> HttpResponse {
        let ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
        let description = format!(
            "AADSTS{}: {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {ts}",
            self.code, self.message, ctx.trace_id, ctx.correlation_id
        );
        let mut body = Map::new();
        body.insert("error".into(), json!(self.error));
        body.insert("error_description".into(), json!(description));
        body.insert("error_codes".into(), json!([self.code]));
        body.insert("timestamp".into(), json!(ts));
        body.insert("trace_id".into(), json!(ctx.trace_id));
        body.insert("correlation_id".into(), json!(ctx.correlation_id));
        body.insert(
            "error_uri".into(),
            json!(format!("{base}/error?code={}", self.code)),
        );
        for (k, v) in self.extra {
            body.insert(k.into(), v);
        }
        let mut b = ctx.response(self.status);
        b.insert_header(("cache-control", "no-store, no-cache"));
        b.insert_header(("pragma", "no-cache"));
        if let Some(s) = self.retry_after {
            b.insert_header(("retry-after", s.to_string()));
        }
        b.json(Value::Object(body))
    }
}
