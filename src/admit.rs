//! The admission phases every entrance runs before its own work, in one order, as pingora's
//! `ProxyHttp` phases are: each phase named, documented and skipped only where an entrance says
//! so ([`Entrance`]). An entrance (a handler in `pipeline`) calls [`Admission::admit`] once and
//! then does only what is its own (schedule a run, read one, read Graph's status).
//!
//! 1. **size**         a declared body over the entrance's limit is refused (413) before
//!    anything is read or verified: it costs nothing, and the body is never waited for.
//! 2. **authenticate** exactly one `Authorization: Bearer` token → [`Caller`] (recorded).
//! 3. **in-flight**    one of the caller's slots, held until the answer: a caller holding slow
//!    bodies or slow Graph reads open stops at its cap (429).
//! 4. **authorize**    who acts: the user, or the service identity an app is mapped to →
//!    [`ActingIdentity`].
//! 5. **body**         read to its end by the request deadline (408), at most the limit (413).
//! 6. **limit**        per caller and per tenant (429 with the `RateLimit*` headers); after it
//!    the request's decision is `allowed`. On the shared backend an entrance that joins a run
//!    may leave the check prepared ([`Admitted::pending_limit`]) for the join to take in its
//!    own Redis script (one round trip for both); the entrance then takes it itself, with
//!    [`Admission::take_limit`], wherever it does not get that far.

use crate::audit::RequestRecord;
use crate::caller::{Authenticator, Caller, HookCaller};
use crate::credentials::ActingIdentity;
use crate::domain::{Decision, RateLimitStatus};
use crate::error::GatewayError;
use crate::hooks::verify;
use crate::hooks::Source;
use crate::limits::{InFlight, InFlightSlot, Limits, PendingCheck};
use crate::policy::CallerPolicy;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use chrono::Utc;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How an entrance's caller proves who it is (phase 2).
#[derive(Clone, Copy)]
pub enum Proof<'a> {
    /// Exactly one `Authorization: Bearer` Entra ID token.
    Bearer,
    /// The webhook source's own signature scheme over the raw body, which is therefore read
    /// first (phase 5 moves up, with the same limit and deadline).
    Signature(&'a Source),
}

/// Which phases an entrance runs (authenticate and authorize always run).
#[derive(Clone, Copy)]
pub struct Entrance<'a> {
    /// Phases 1 and 5: the entrance reads a body of at most this many bytes (`None`: no body).
    pub body_limit: Option<usize>,
    /// Phase 3: the request holds one of the caller's in-flight slots until it is answered.
    pub in_flight: bool,
    /// Phase 6: the request counts against the caller's and the tenant's rate limits (a
    /// webhook source: against its own `limits`).
    pub limited: bool,
    /// Phase 2: how the caller proves who it is.
    pub proof: Proof<'a>,
    /// Phase 6: a bearer caller's check may be left for the run schedule's join to take
    /// (on the shared backend; see the module's note).
    pub limit_with_join: bool,
}

/// What the phases established about an admitted request.
pub struct Admitted {
    /// Who called.
    pub caller: Arc<Caller>,
    /// Whose identity acts.
    pub acting: ActingIdentity,
    /// The body, when the entrance reads one.
    pub body: Option<Bytes>,
    /// Where the caller stands against its limits, when the entrance is limited and the
    /// check was taken.
    pub limit: Option<RateLimitStatus>,
    /// The check, when it was left for the join to take (`limit` is then `None`, and the
    /// request's decision is not `allowed` yet).
    pub pending_limit: Option<PendingCheck>,
    /// Held until the answer; its drop frees the caller's slot.
    _slot: Option<InFlightSlot>,
}

/// The parts the phases need, shared by every entrance.
pub struct Admission {
    /// Phase 2.
    pub authenticator: Authenticator,
    /// Phase 4.
    pub policy: CallerPolicy,
    /// Phase 3.
    pub in_flight: InFlight,
    /// Phase 6.
    pub limits: Arc<Limits>,
    /// Phase 5: how long after its headers a request's body may take to arrive.
    pub request_timeout: Duration,
}

impl Admission {
    /// Runs the phases `entrance` asks for, in order, filling in `record` as it learns who
    /// called and whether the gateway's checks passed. The first refusal ends admission.
    pub async fn admit(
        &self,
        entrance: Entrance<'_>,
        req: &HttpRequest,
        body: Option<&mut RequestBody>,
        started: Instant,
        record: &mut RequestRecord,
    ) -> Result<Admitted, GatewayError> {
        // 1. size
        if let Some(limit) = entrance.body_limit {
            if declared_length(req).is_some_and(|n| n > limit as u64) {
                return Err(GatewayError::PayloadTooLarge { limit });
            }
        }
        // 2. authenticate (a signature covers the body, so the body is read first)
        let mut body = body;
        let (caller, early_body) = match entrance.proof {
            Proof::Bearer => (self.authenticate(req).await?, None),
            Proof::Signature(source) => {
                let (Some(limit), Some(b)) = (entrance.body_limit, body.take()) else {
                    return Err(GatewayError::Internal);
                };
                // A request without the sender's signature headers is refused before its
                // body is waited for.
                verify::signature_present(source.config.kind, &ActixHeaders(req))
                    .map_err(|e| GatewayError::InvalidSignature(e.to_string()))?;
                let deadline = started + self.request_timeout;
                let bytes = read_body(b, limit, deadline, self.request_timeout).await?;
                let signed = verify::verify(&source.config, &ActixHeaders(req), &bytes, Utc::now())
                    .map_err(|e| GatewayError::InvalidSignature(e.to_string()))?;
                if let Some(hook) = record.hook.as_mut() {
                    hook.delivery_id.clone_from(&signed.delivery_id);
                }
                let caller = Arc::new(Caller::Hook(HookCaller {
                    source: source.config.name.as_str().into(),
                    tenant_id: source.config.tenant_id.to_string(),
                    run_as: source.config.run_as.as_str().into(),
                }));
                (caller, Some(bytes))
            }
        };
        record.caller = Some(caller.summary());
        // 3. in-flight
        let (tenant_id, caller_key) = caller.limit_key();
        let slot = if entrance.in_flight {
            Some(self.in_flight.acquire(tenant_id, &caller_key)?)
        } else {
            None
        };
        // 4. authorize
        let acting = self.policy.authorize(&caller)?;
        // 5. body
        let bytes = match (early_body, entrance.body_limit, body) {
            (Some(read), _, _) => Some(read),
            (None, Some(limit), Some(body)) => {
                let deadline = started + self.request_timeout;
                Some(read_body(body, limit, deadline, self.request_timeout).await?)
            }
            _ => None,
        };
        // 6. limit (`None` too when the shared store is down and limits fail open)
        let mut pending_limit = None;
        let limit = match (entrance.limited, entrance.proof) {
            (false, _) => None,
            (true, Proof::Signature(source)) => source.limit.check().await?,
            (true, Proof::Bearer) => {
                let pending = self.limits.prepare(tenant_id, &caller_key)?;
                if entrance.limit_with_join && self.limits.takes_in_scripts() {
                    pending_limit = Some(pending);
                    None
                } else {
                    self.limits.take(&pending).await?
                }
            }
        };
        if pending_limit.is_none() {
            record.decision = Decision::Allowed;
        }
        Ok(Admitted {
            caller,
            acting,
            body: bytes,
            limit,
            pending_limit,
            _slot: slot,
        })
    }

    /// Phase 6 for a check admission left pending, taken now: the request's decision is
    /// `allowed` once it passes.
    pub async fn take_limit(
        &self,
        pending: &PendingCheck,
        record: &mut RequestRecord,
    ) -> Result<Option<RateLimitStatus>, GatewayError> {
        let limit = self.limits.take(pending).await?;
        record.decision = Decision::Allowed;
        Ok(limit)
    }

    /// Phase 2: exactly one `Authorization` header, a bearer token, a valid caller.
    async fn authenticate(&self, req: &HttpRequest) -> Result<Arc<Caller>, GatewayError> {
        let mut values = req.headers().get_all(header::AUTHORIZATION);
        let first = values.next();
        // Two credentials are ambiguous: a proxy and the gateway may each read a different one
        // (request smuggling of identity), so neither is used.
        if values.next().is_some() {
            return Err(GatewayError::BadRequest(
                "the request carries more than one Authorization header; send exactly one".into(),
            ));
        }
        let authorization = first
            .map(|v| v.to_str().map_err(|_| GatewayError::MissingCredentials))
            .transpose()?;
        let token = Authenticator::bearer(authorization)?;
        self.authenticator.authenticate(token).await
    }
}

/// A request's headers as [`verify`] reads them, without actix types in the step.
struct ActixHeaders<'a>(&'a HttpRequest);

impl verify::Headers for ActixHeaders<'_> {
    fn all(&self, name: &str) -> Vec<&[u8]> {
        self.0
            .headers()
            .get_all(name)
            .map(|v| v.as_bytes())
            .collect()
    }
}

/// The request body and whether it has been read to its end.
pub struct RequestBody {
    payload: web::Payload,
    finished: bool,
}

impl RequestBody {
    /// The body of a request, not read yet.
    pub fn new(payload: web::Payload) -> Self {
        RequestBody {
            payload,
            finished: false,
        }
    }

    /// `response`, carrying the payload along when it was not read to its end.
    ///
    /// actix closes a connection whose payload is still held when the answer is sent; a dropped
    /// one it drains first, which for a chunked body that never ends would hold the connection
    /// (and its file descriptor) forever after the answer.
    pub fn attach_unread(self, response: HttpResponse) -> HttpResponse {
        if self.finished {
            return response;
        }
        let payload = self.payload.into_inner();
        response.map_body(|_, body| holding_unread(body, payload))
    }
}

/// `body`, holding the request's unread `payload` until it has been sent, so that actix closes
/// the connection after the answer instead of draining the payload first (which, for a chunked
/// body that never ends, would hold the connection forever).
pub(crate) fn holding_unread(body: BoxBody, payload: actix_web::dev::Payload) -> BoxBody {
    BoxBody::new(UnreadBody {
        body,
        _payload: payload,
    })
}

/// An answer's body that holds the request's unread payload until it has been sent.
struct UnreadBody {
    body: BoxBody,
    _payload: actix_web::dev::Payload,
}

impl MessageBody for UnreadBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// The `Content-Length` the client declared, if any.
fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The body up to `limit` bytes, complete by `deadline` or [`GatewayError::RequestTimeout`].
async fn read_body(
    body: &mut RequestBody,
    limit: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<Bytes, GatewayError> {
    use futures_core::Stream;
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut bytes = BytesMut::new();
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut body.payload).poll_next(cx));
        match tokio::time::timeout_at(deadline, next).await {
            Err(_) => {
                return Err(GatewayError::RequestTimeout {
                    seconds: timeout.as_secs(),
                })
            }
            Ok(None) => {
                body.finished = true;
                return Ok(bytes.freeze());
            }
            Ok(Some(Err(_))) => {
                return Err(GatewayError::BadRequest(
                    "the request body could not be read".into(),
                ))
            }
            Ok(Some(Ok(chunk))) => {
                if bytes.len() + chunk.len() > limit {
                    return Err(GatewayError::PayloadTooLarge { limit });
                }
                bytes.extend_from_slice(&chunk);
            }
        }
    }
}
