//! Whether a delivery to `POST /hooks/{source}` came from the configured sender, and whether
//! it is fresh: each kind verified exactly as its sender signs (the raw body bytes, before any
//! parsing), with every configured secret (two while rotating) and every signature a
//! multi-signature header carries. Secrets and signatures are compared in constant time
//! (`subtle`). No actix here: headers come through [`Headers`].

use crate::config::{HookKind, HookSourceConfig};
use aws_lc_rs::{hmac, signature};
use base64::Engine;
use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

/// Header access without actix: every value of a header, in order (names case-insensitive).
pub trait Headers {
    /// Every value of the header `name` (any case), in the order received; empty when absent.
    fn all(&self, name: &str) -> Vec<&[u8]>;
}

/// Name–value pairs, as tests and the simulated senders (`sim::hooks`) produce them.
impl<K: AsRef<str>, V: AsRef<[u8]>> Headers for Vec<(K, V)> {
    fn all(&self, name: &str) -> Vec<&[u8]> {
        self.iter()
            .filter(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
            .collect()
    }
}

/// A delivery that passed [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The sender's delivery id (see [`delivery_id`]), for the replay store.
    pub delivery_id: Option<String>,
    /// The signed timestamp, for the kinds that sign one.
    pub signed_at: Option<DateTime<Utc>>,
}

/// Why a delivery was refused. Every variant is the sender's (or a forger's) fault: the entrance
/// answers each with 401, so a sender does not disable the hook over a 4xx it cannot fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required header is absent.
    #[error("the {header} header is missing")]
    Missing {
        /// The header, lower case.
        header: &'static str,
    },
    /// A header is unparsable, too long, or sent twice where one is expected.
    #[error("the {header} header is malformed: {why}")]
    Malformed {
        /// The header, lower case.
        header: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No configured secret matches any signature.
    #[error("no configured secret matches the signature")]
    Mismatch,
    /// The signed timestamp is older than the tolerance.
    #[error("the signed timestamp {signed_at} is older than the tolerance")]
    Stale {
        /// The signed timestamp.
        signed_at: DateTime<Utc>,
    },
    /// The signed timestamp is further ahead than the tolerance.
    #[error("the signed timestamp {signed_at} is further ahead than the tolerance")]
    Future {
        /// The signed timestamp.
        signed_at: DateTime<Utc>,
    },
}

/// The longest signature or token header read: a handful of signatures during a rotation fit
/// many times over; anything longer is not a sender's.
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 4096;
/// The longest timestamp header read (an ISO 8601 time with fractions and offset fits).
const MAX_TIMESTAMP_BYTES: usize = 64;
/// The longest delivery id kept: ids are UUIDs or short tokens; a longer one is not remembered.
pub const MAX_DELIVERY_ID_BYTES: usize = 256;

// Header names, lower case (`Headers::all` ignores case).
const WEBHOOK_ID: &str = "webhook-id";
const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
const WEBHOOK_SIGNATURE: &str = "webhook-signature";
const SVIX_ID: &str = "svix-id";
const SVIX_TIMESTAMP: &str = "svix-timestamp";
const SVIX_SIGNATURE: &str = "svix-signature";
const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
const GITHUB_DELIVERY: &str = "x-github-delivery";
const GITLAB_TOKEN: &str = "x-gitlab-token";
const GITLAB_IDEMPOTENCY_KEY: &str = "idempotency-key";
const JIRA_SIGNATURE: &str = "x-hub-signature";
const JIRA_IDENTIFIER: &str = "x-atlassian-webhook-identifier";
const ZENDESK_SIGNATURE: &str = "x-zendesk-webhook-signature";
const ZENDESK_TIMESTAMP: &str = "x-zendesk-webhook-signature-timestamp";
const ZENDESK_INVOCATION: &str = "x-zendesk-webhook-invocation-id";
const PAGERDUTY_SIGNATURE: &str = "x-pagerduty-signature";
const PAGERDUTY_WEBHOOK_ID: &str = "x-webhook-id";
const SLACK_SIGNATURE: &str = "x-slack-signature";
const SLACK_TIMESTAMP: &str = "x-slack-request-timestamp";
const AUTHORIZATION: &str = "authorization";
const DISCORD_SIGNATURE: &str = "x-signature-ed25519";
const DISCORD_TIMESTAMP: &str = "x-signature-timestamp";

/// Checks a delivery of `source` as its sender signs it, at `now`.
///
/// The signature is checked before the timestamp's freshness, so `Stale` and `Future` are only
/// ever said of authentic deliveries (a sender's clock or a replay, not a forger's guess).
pub fn verify(
    source: &HookSourceConfig,
    headers: &dyn Headers,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Verified, SignatureError> {
    let signed_at = match source.kind {
        HookKind::StandardWebhooks => Some(standard_webhooks(source, headers, body)?),
        HookKind::Github => {
            sha256_hex(source, headers, GITHUB_SIGNATURE, body)?;
            None
        }
        HookKind::Jira => {
            sha256_hex(source, headers, JIRA_SIGNATURE, body)?;
            None
        }
        HookKind::Gitlab => {
            let token = one(headers, GITLAB_TOKEN, MAX_SIGNATURE_HEADER_BYTES)?;
            plain_token(source, token)?;
            None
        }
        HookKind::Mattermost => {
            let value = one(headers, AUTHORIZATION, MAX_SIGNATURE_HEADER_BYTES)?;
            let token = strip_scheme(value, "token").ok_or(SignatureError::Malformed {
                header: AUTHORIZATION,
                why: "not `Token <token>`",
            })?;
            plain_token(source, token)?;
            None
        }
        HookKind::Zendesk => Some(zendesk(source, headers, body)?),
        HookKind::Pagerduty => {
            pagerduty(source, headers, body)?;
            None
        }
        HookKind::Slack => Some(slack(source, headers, body)?),
        HookKind::TeamsOutgoing => {
            teams_outgoing(source, headers, body)?;
            None
        }
        HookKind::Discord => Some(discord(source, headers, body)?),
    };
    if let Some(at) = signed_at {
        fresh(at, now, source.tolerance_seconds)?;
    }
    Ok(Verified {
        delivery_id: delivery_id(source.kind, headers, body),
        signed_at,
    })
}

/// Whether the headers carry `kind`'s signature (or token) at all: checked before the body is
/// read, so a request that cannot be authentic does not hold a connection while its body
/// trickles in. The signature itself is checked by [`verify`], over the body.
pub fn signature_present(kind: HookKind, headers: &dyn Headers) -> Result<(), SignatureError> {
    let required: &[&'static str] = match kind {
        HookKind::StandardWebhooks => {
            if headers.all(SVIX_SIGNATURE).is_empty() {
                &[WEBHOOK_SIGNATURE]
            } else {
                &[SVIX_SIGNATURE]
            }
        }
        HookKind::Github => &[GITHUB_SIGNATURE],
        HookKind::Gitlab => &[GITLAB_TOKEN],
        HookKind::Jira => &[JIRA_SIGNATURE],
        HookKind::Zendesk => &[ZENDESK_SIGNATURE, ZENDESK_TIMESTAMP],
        HookKind::Pagerduty => &[PAGERDUTY_SIGNATURE],
        HookKind::Slack => &[SLACK_SIGNATURE, SLACK_TIMESTAMP],
        HookKind::TeamsOutgoing | HookKind::Mattermost => &[AUTHORIZATION],
        HookKind::Discord => &[DISCORD_SIGNATURE, DISCORD_TIMESTAMP],
    };
    for header in required {
        one(headers, header, MAX_SIGNATURE_HEADER_BYTES)?;
    }
    Ok(())
}

/// The sender's delivery id (stable across its retries), from headers or, for chat kinds, the
/// body (Slack events `event_id`, slash commands/interactivity `trigger_id`; Discord
/// interaction `id`; Teams activity `id`; Mattermost `trigger_id`). None when the sender gave
/// none, gave it twice, or gave one longer than [`MAX_DELIVERY_ID_BYTES`] or not printable.
pub fn delivery_id(kind: HookKind, headers: &dyn Headers, body: &[u8]) -> Option<String> {
    let header = |name: &str| match headers.all(name).as_slice() {
        [v] => id_text(std::str::from_utf8(v).ok()?),
        _ => None,
    };
    match kind {
        HookKind::StandardWebhooks => header(WEBHOOK_ID).or_else(|| header(SVIX_ID)),
        HookKind::Github => header(GITHUB_DELIVERY),
        HookKind::Gitlab => header(GITLAB_IDEMPOTENCY_KEY),
        HookKind::Jira => header(JIRA_IDENTIFIER),
        HookKind::Zendesk => header(ZENDESK_INVOCATION),
        HookKind::Pagerduty => header(PAGERDUTY_WEBHOOK_ID),
        // Events carry `event_id` (JSON); slash commands `trigger_id` (a form); interactivity
        // a form whose one field `payload` is JSON with `trigger_id`.
        HookKind::Slack => match json_body(body) {
            Some(v) => json_id(&v, "event_id"),
            None => {
                let form = form_field(body, "trigger_id");
                form.or_else(|| {
                    let payload = form_value(body, "payload")?;
                    json_id(&serde_json::from_str(&payload).ok()?, "trigger_id")
                })
            }
        },
        HookKind::TeamsOutgoing | HookKind::Discord => json_id(&json_body(body)?, "id"),
        HookKind::Mattermost => match json_body(body) {
            Some(v) => json_id(&v, "trigger_id"),
            None => form_field(body, "trigger_id"),
        },
    }
}

/// An id worth remembering: not empty, bounded, printable ASCII.
fn id_text(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_DELIVERY_ID_BYTES
        && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_string())
}

/// The body as JSON, when it is a JSON object (chat senders post JSON or forms).
fn json_body(body: &[u8]) -> Option<serde_json::Value> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(body)
        .ok()
        .filter(serde_json::Value::is_object)
}

fn json_id(v: &serde_json::Value, field: &str) -> Option<String> {
    match v.get(field)? {
        serde_json::Value::String(s) => id_text(s),
        // Teams and Discord ids are strings; a number is taken as its text all the same.
        serde_json::Value::Number(n) => id_text(&n.to_string()),
        _ => None,
    }
}

/// The one value of a form field (`None` when absent or given twice).
fn form_value(body: &[u8], field: &str) -> Option<String> {
    let mut values = url::form_urlencoded::parse(body).filter(|(k, _)| k == field);
    let first = values.next()?;
    values.next().is_none().then(|| first.1.into_owned())
}

fn form_field(body: &[u8], field: &str) -> Option<String> {
    id_text(&form_value(body, field)?)
}

/// The one value of a header that must be single, bounded, and text.
fn one<'h>(
    headers: &'h dyn Headers,
    name: &'static str,
    max: usize,
) -> Result<&'h str, SignatureError> {
    let malformed = |why| SignatureError::Malformed { header: name, why };
    match headers.all(name).as_slice() {
        [] => Err(SignatureError::Missing { header: name }),
        [v] if v.len() > max => Err(malformed("too long")),
        [v] => std::str::from_utf8(v)
            .map(str::trim)
            .map_err(|_| malformed("not text")),
        _ => Err(malformed("sent more than once")),
    }
}

/// `value` without its authorization scheme (compared without case, as HTTP schemes are).
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Unix seconds, as Standard Webhooks, Slack and Discord send them.
fn unix_seconds(text: &str, header: &'static str) -> Result<DateTime<Utc>, SignatureError> {
    let malformed = SignatureError::Malformed {
        header,
        why: "not whole seconds since 1970",
    };
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    let secs: i64 = text.parse().map_err(|_| malformed.clone())?;
    DateTime::from_timestamp(secs, 0).ok_or(malformed)
}

/// `signed_at` within ± `tolerance` seconds of `now`.
fn fresh(
    signed_at: DateTime<Utc>,
    now: DateTime<Utc>,
    tolerance: u64,
) -> Result<(), SignatureError> {
    // A tolerance too large for chrono's range is no bound at all on that side.
    let tolerance = i64::try_from(tolerance)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .unwrap_or(chrono::Duration::MAX);
    if now
        .checked_sub_signed(tolerance)
        .is_some_and(|earliest| signed_at < earliest)
    {
        return Err(SignatureError::Stale { signed_at });
    }
    if now
        .checked_add_signed(tolerance)
        .is_some_and(|latest| signed_at > latest)
    {
        return Err(SignatureError::Future { signed_at });
    }
    Ok(())
}

/// True when any configured secret (as `key_of` turns it into an HMAC key) signs `message` as
/// any of `signatures`. Every pair is tried, without stopping at the first match, so the time
/// taken says nothing about which secret matched.
fn any_hmac(
    source: &HookSourceConfig,
    key_of: impl Fn(&str) -> Option<Vec<u8>>,
    message: &[&[u8]],
    signatures: &[Vec<u8>],
) -> bool {
    let mut matched = false;
    for secret in &source.secrets {
        let Some(key) = key_of(secret.expose()) else {
            continue;
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        let mut ctx = hmac::Context::with_key(&key);
        for part in message {
            ctx.update(part);
        }
        let tag = ctx.sign();
        for sig in signatures {
            // Constant time, like `hmac::verify`, which would compute the tag again for every
            // signature of a multi-signature header.
            matched |= bool::from(tag.as_ref().ct_eq(sig.as_slice()));
        }
    }
    matched
}

/// The secret's bytes as the HMAC key (GitHub, Jira, Zendesk, PagerDuty, Slack).
fn raw_key(secret: &str) -> Option<Vec<u8>> {
    Some(secret.as_bytes().to_vec())
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Standard Webhooks: `{id}.{timestamp}.{body}`, `v1,<base64>` entries separated by spaces,
/// keyed by the base64 after `whsec_`. Also the `svix-` triple Svix sends.
fn standard_webhooks(
    source: &HookSourceConfig,
    headers: &dyn Headers,
    body: &[u8],
) -> Result<DateTime<Utc>, SignatureError> {
    let svix = headers.all(WEBHOOK_SIGNATURE).is_empty() && !headers.all(SVIX_SIGNATURE).is_empty();
    let (id_h, ts_h, sig_h) = if svix {
        (SVIX_ID, SVIX_TIMESTAMP, SVIX_SIGNATURE)
    } else {
        (WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE)
    };
    let id = one(headers, id_h, MAX_DELIVERY_ID_BYTES)?;
    let ts = one(headers, ts_h, MAX_TIMESTAMP_BYTES)?;
    let sig = one(headers, sig_h, MAX_SIGNATURE_HEADER_BYTES)?;
    // A '.' in either would make `{id}.{timestamp}` ambiguous.
    if id.is_empty() || id.contains('.') {
        return Err(SignatureError::Malformed {
            header: id_h,
            why: "empty or contains '.'",
        });
    }
    let signed_at = unix_seconds(ts, ts_h)?;
    let signatures: Vec<Vec<u8>> = sig
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        // Other versions (`v1a`, Ed25519) are not ours to check.
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, s)| b64().decode(s).ok())
        .collect();
    if signatures.is_empty() {
        return Err(SignatureError::Malformed {
            header: sig_h,
            why: "no v1,<base64> signature",
        });
    }
    let key_of = |secret: &str| b64().decode(secret.strip_prefix("whsec_")?).ok();
    let message: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
    if any_hmac(source, key_of, &message, &signatures) {
        Ok(signed_at)
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// GitHub (`X-Hub-Signature-256`) and Jira (`X-Hub-Signature`): `sha256=<hex>` over the body.
fn sha256_hex(
    source: &HookSourceConfig,
    headers: &dyn Headers,
    header: &'static str,
    body: &[u8],
) -> Result<(), SignatureError> {
    let value = one(headers, header, MAX_SIGNATURE_HEADER_BYTES)?;
    let sig = value
        .strip_prefix("sha256=")
        .and_then(decode_hex)
        .filter(|s| s.len() == 32)
        .ok_or(SignatureError::Malformed {
            header,
            why: "not sha256=<64 hex digits>",
        })?;
    if any_hmac(source, raw_key, &[body], &[sig]) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// A plain shared token (GitLab, Mattermost), compared in constant time with every secret.
fn plain_token(source: &HookSourceConfig, token: &str) -> Result<(), SignatureError> {
    let mut matched = subtle::Choice::from(0);
    for secret in &source.secrets {
        // `ct_eq` on slices of unequal length is false at once: lengths are not the secret.
        matched |= secret.expose().as_bytes().ct_eq(token.as_bytes());
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Zendesk: base64 HMAC over `{timestamp}{body}`, the timestamp ISO 8601.
fn zendesk(
    source: &HookSourceConfig,
    headers: &dyn Headers,
    body: &[u8],
) -> Result<DateTime<Utc>, SignatureError> {
    let sig = one(headers, ZENDESK_SIGNATURE, MAX_SIGNATURE_HEADER_BYTES)?;
    let ts = one(headers, ZENDESK_TIMESTAMP, MAX_TIMESTAMP_BYTES)?;
    let signed_at = DateTime::parse_from_rfc3339(ts)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| SignatureError::Malformed {
            header: ZENDESK_TIMESTAMP,
            why: "not an ISO 8601 time",
        })?;
    let sig = b64().decode(sig).map_err(|_| SignatureError::Malformed {
        header: ZENDESK_SIGNATURE,
        why: "not base64",
    })?;
    if any_hmac(source, raw_key, &[ts.as_bytes(), body], &[sig]) {
        Ok(signed_at)
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// PagerDuty v3: `v1=<hex>` entries separated by commas (several while a secret rotates).
fn pagerduty(
    source: &HookSourceConfig,
    headers: &dyn Headers,
    body: &[u8],
) -> Result<(), SignatureError> {
    let value = one(headers, PAGERDUTY_SIGNATURE, MAX_SIGNATURE_HEADER_BYTES)?;
    let signatures: Vec<Vec<u8>> = value
        .split(',')
        .filter_map(|entry| entry.trim().strip_prefix("v1="))
        .filter_map(decode_hex)
        .collect();
    if signatures.is_empty() {
        return Err(SignatureError::Malformed {
            header: PAGERDUTY_SIGNATURE,
            why: "no v1=<hex> signature",
        });
    }
    if any_hmac(source, raw_key, &[body], &signatures) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Slack: `v0=<hex>` over `v0:{timestamp}:{body}`.
fn slack(
    source: &HookSourceConfig,
    headers: &dyn Headers,
    body: &[u8],
) -> Result<DateTime<Utc>, SignatureError> {
    let value = one(headers, SLACK_SIGNATURE, MAX_SIGNATURE_HEADER_BYTES)?;
    let ts = one(headers, SLACK_TIMESTAMP, MAX_TIMESTAMP_BYTES)?;
    let signed_at = unix_seconds(ts, SLACK_TIMESTAMP)?;
    let sig = value
        .strip_prefix("v0=")
        .and_then(decode_hex)
        .ok_or(SignatureError::Malformed {
            header: SLACK_SIGNATURE,
            why: "not v0=<hex>",
        })?;
    let message: [&[u8]; 4] = [b"v0:", ts.as_bytes(), b":", body];
    if any_hmac(source, raw_key, &message, &[sig]) {
        Ok(signed_at)
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Teams outgoing webhooks: `Authorization: HMAC <base64>` over the body, keyed by the
/// base64-decoded security token.
fn teams_outgoing(
    source: &HookSourceConfig,
    headers: &dyn Headers,
    body: &[u8],
) -> Result<(), SignatureError> {
    let value = one(headers, AUTHORIZATION, MAX_SIGNATURE_HEADER_BYTES)?;
    let sig = strip_scheme(value, "hmac")
        .and_then(|s| b64().decode(s).ok())
        .ok_or(SignatureError::Malformed {
            header: AUTHORIZATION,
            why: "not `HMAC <base64>`",
        })?;
    let key_of = |secret: &str| b64().decode(secret).ok();
    if any_hmac(source, key_of, &[body], &[sig]) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Discord: Ed25519 over `{timestamp}{body}`, the signature hex.
fn discord(
    source: &HookSourceConfig,
    headers: &dyn Headers,
    body: &[u8],
) -> Result<DateTime<Utc>, SignatureError> {
    let sig = one(headers, DISCORD_SIGNATURE, MAX_SIGNATURE_HEADER_BYTES)?;
    let ts = one(headers, DISCORD_TIMESTAMP, MAX_TIMESTAMP_BYTES)?;
    let signed_at = unix_seconds(ts, DISCORD_TIMESTAMP)?;
    let sig = decode_hex(sig)
        .filter(|s| s.len() == 64)
        .ok_or(SignatureError::Malformed {
            header: DISCORD_SIGNATURE,
            why: "not 128 hex digits",
        })?;
    // Validation requires the key for discord; without one nothing can match.
    let key = source.public_key.ok_or(SignatureError::Mismatch)?;
    let mut message = Vec::with_capacity(ts.len() + body.len());
    message.extend_from_slice(ts.as_bytes());
    message.extend_from_slice(body);
    signature::UnparsedPublicKey::new(&signature::ED25519, key)
        .verify(&message, &sig)
        .map(|()| signed_at)
        .map_err(|_| SignatureError::Mismatch)
}

/// Lower- or upper-case hex to bytes.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hex;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

    /// 2023-11-14T22:13:20Z.
    const NOW: i64 = 1_700_000_000;
    const ID: &str = "delivery-1";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn source(kind: HookKind, secrets: &[&str], public_key: Option<[u8; 32]>) -> HookSourceConfig {
        HookSourceConfig::for_tests(kind, secrets, public_key)
    }

    /// A secret of the form each kind takes, and a second one (the other side of a rotation).
    fn secrets_of(kind: HookKind) -> [&'static str; 2] {
        match kind {
            HookKind::StandardWebhooks => [
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKio=",
            ],
            HookKind::TeamsOutgoing => ["c2VjcmV0LW9uZQ==", "c2VjcmV0LXR3bw=="],
            _ => ["secret-one", "secret-two"],
        }
    }

    fn pair(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn public(pair: &Ed25519KeyPair) -> [u8; 32] {
        pair.public_key().as_ref().try_into().unwrap()
    }

    /// A source of `kind` holding `secrets` (Discord: the public key of `pair`).
    fn source_with(kind: HookKind, secrets: &[&str], pair: &Ed25519KeyPair) -> HookSourceConfig {
        if kind == HookKind::Discord {
            source(kind, &[], Some(public(pair)))
        } else {
            source(kind, secrets, None)
        }
    }

    fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        hmac::sign(&key, &parts.concat()).as_ref().to_vec()
    }

    fn b64e(bytes: &[u8]) -> String {
        b64().encode(bytes)
    }

    /// What each sender sends for `body` signed at `ts`, written from the senders' documentation
    /// (the table in `webhook-senders.md`), not from the code above.
    fn signed(
        kind: HookKind,
        secret: &str,
        pair: &Ed25519KeyPair,
        body: &[u8],
        ts: i64,
    ) -> Vec<(String, String)> {
        let t = ts.to_string();
        let s = secret.as_bytes();
        let h: Vec<(&str, String)> = match kind {
            HookKind::StandardWebhooks => {
                let key = b64().decode(&secret["whsec_".len()..]).unwrap();
                let sig = mac(&key, &[ID.as_bytes(), b".", t.as_bytes(), b".", body]);
                vec![
                    ("webhook-id", ID.into()),
                    ("webhook-timestamp", t),
                    ("webhook-signature", format!("v1,{}", b64e(&sig))),
                ]
            }
            HookKind::Github => vec![
                (
                    "X-Hub-Signature-256",
                    format!("sha256={}", hex(&mac(s, &[body]))),
                ),
                ("X-GitHub-Delivery", ID.into()),
            ],
            HookKind::Gitlab => vec![
                ("X-Gitlab-Token", secret.into()),
                ("Idempotency-Key", ID.into()),
            ],
            HookKind::Jira => vec![
                (
                    "X-Hub-Signature",
                    format!("sha256={}", hex(&mac(s, &[body]))),
                ),
                ("X-Atlassian-Webhook-Identifier", ID.into()),
            ],
            HookKind::Zendesk => {
                let iso = at(ts).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                vec![
                    (
                        "X-Zendesk-Webhook-Signature",
                        b64e(&mac(s, &[iso.as_bytes(), body])),
                    ),
                    ("X-Zendesk-Webhook-Signature-Timestamp", iso),
                    ("X-Zendesk-Webhook-Invocation-Id", ID.into()),
                ]
            }
            HookKind::Pagerduty => vec![
                (
                    "X-PagerDuty-Signature",
                    format!("v1={}", hex(&mac(s, &[body]))),
                ),
                ("X-Webhook-Id", ID.into()),
            ],
            HookKind::Slack => vec![
                (
                    "X-Slack-Signature",
                    format!("v0={}", hex(&mac(s, &[b"v0:", t.as_bytes(), b":", body]))),
                ),
                ("X-Slack-Request-Timestamp", t),
            ],
            HookKind::TeamsOutgoing => {
                let key = b64().decode(secret).unwrap();
                vec![(
                    "Authorization",
                    format!("HMAC {}", b64e(&mac(&key, &[body]))),
                )]
            }
            HookKind::Discord => {
                let sig = pair.sign(&[t.as_bytes(), body].concat());
                vec![
                    ("X-Signature-Ed25519", hex(sig.as_ref())),
                    ("X-Signature-Timestamp", t),
                ]
            }
            HookKind::Mattermost => vec![("Authorization", format!("Token {secret}"))],
        };
        h.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// A body each sender could send, with the id chat senders put in the body.
    fn body_of(kind: HookKind) -> &'static [u8] {
        match kind {
            HookKind::Slack => {
                br#"{"type":"event_callback","event_id":"Ev0001","event":{"type":"app_mention"}}"#
            }
            HookKind::TeamsOutgoing => {
                br#"{"type":"message","id":"1485983408511","text":"<at>Sync</at> now"}"#
            }
            HookKind::Discord => br#"{"type":2,"id":"1234567890","data":{"name":"sync"}}"#,
            HookKind::Mattermost => {
                b"channel_id=c1&command=%2Fsync&team_id=t1&text=&trigger_id=trig-1&user_id=u1"
            }
            _ => br#"{"transition":{"to_status":"Ready for Autopilot"}}"#,
        }
    }

    fn expected_id(kind: HookKind) -> Option<&'static str> {
        Some(match kind {
            HookKind::Slack => "Ev0001",
            HookKind::TeamsOutgoing => "1485983408511",
            HookKind::Discord => "1234567890",
            HookKind::Mattermost => "trig-1",
            _ => ID,
        })
    }

    /// The headers `verify` needs for `kind` (the id headers only where they are signed).
    fn required(kind: HookKind) -> &'static [&'static str] {
        match kind {
            HookKind::StandardWebhooks => &[WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE],
            HookKind::Github => &[GITHUB_SIGNATURE],
            HookKind::Gitlab => &[GITLAB_TOKEN],
            HookKind::Jira => &[JIRA_SIGNATURE],
            HookKind::Zendesk => &[ZENDESK_SIGNATURE, ZENDESK_TIMESTAMP],
            HookKind::Pagerduty => &[PAGERDUTY_SIGNATURE],
            HookKind::Slack => &[SLACK_SIGNATURE, SLACK_TIMESTAMP],
            HookKind::TeamsOutgoing | HookKind::Mattermost => &[AUTHORIZATION],
            HookKind::Discord => &[DISCORD_SIGNATURE, DISCORD_TIMESTAMP],
        }
    }

    /// `kind`'s delivery signed with its first secret (Discord: key pair 1) at `ts`, checked at
    /// `NOW` against a source holding `secrets`.
    fn check(
        kind: HookKind,
        secrets: &[&str],
        body: &[u8],
        ts: i64,
    ) -> Result<Verified, SignatureError> {
        let [secret, _] = secrets_of(kind);
        let headers = signed(kind, secret, &pair(1), body_of(kind), ts);
        verify(
            &source_with(kind, secrets, &pair(1)),
            &headers,
            body,
            at(NOW),
        )
    }

    #[test]
    fn every_kind_verifies_a_delivery_signed_as_its_sender_signs() {
        for kind in HookKind::ALL {
            let v = check(kind, &secrets_of(kind)[..1], body_of(kind), NOW)
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(v.delivery_id.as_deref(), expected_id(kind), "{kind:?}");
            let signed_at = kind.signs_timestamp().then(|| at(NOW));
            assert_eq!(v.signed_at, signed_at, "{kind:?}");
        }
    }

    #[test]
    fn every_kind_that_signs_the_body_refuses_a_tampered_one() {
        for kind in HookKind::ALL {
            let mut body = body_of(kind).to_vec();
            body[1] ^= 1;
            let got = check(kind, &secrets_of(kind)[..1], &body, NOW);
            // GitLab and Mattermost send a plain token: nothing of the body is signed.
            if matches!(kind, HookKind::Gitlab | HookKind::Mattermost) {
                assert!(got.is_ok(), "{kind:?}");
            } else {
                assert_eq!(got, Err(SignatureError::Mismatch), "{kind:?}");
            }
        }
    }

    #[test]
    fn every_kind_refuses_a_delivery_signed_with_another_secret() {
        for kind in HookKind::ALL {
            let [secret, other] = secrets_of(kind);
            let headers = signed(kind, secret, &pair(1), body_of(kind), NOW);
            let wrong = source_with(kind, &[other], &pair(2));
            assert_eq!(
                verify(&wrong, &headers, body_of(kind), at(NOW)),
                Err(SignatureError::Mismatch),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn every_kind_with_secrets_accepts_either_secret_while_rotating() {
        // Discord has one key pair per application: nothing to rotate on the receiving side.
        for kind in HookKind::ALL
            .into_iter()
            .filter(|k| *k != HookKind::Discord)
        {
            let [old, new] = secrets_of(kind);
            let rotating = source(kind, &[new, old], None);
            for secret in [old, new] {
                let headers = signed(kind, secret, &pair(1), body_of(kind), NOW);
                assert!(
                    verify(&rotating, &headers, body_of(kind), at(NOW)).is_ok(),
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn signed_timestamps_outside_the_tolerance_are_stale_or_future() {
        for kind in HookKind::ALL.into_iter().filter(|k| k.signs_timestamp()) {
            let secrets = &secrets_of(kind)[..1];
            let body = body_of(kind);
            assert!(check(kind, secrets, body, NOW - 300).is_ok(), "{kind:?}");
            assert!(check(kind, secrets, body, NOW + 300).is_ok(), "{kind:?}");
            assert_eq!(
                check(kind, secrets, body, NOW - 301),
                Err(SignatureError::Stale {
                    signed_at: at(NOW - 301)
                }),
                "{kind:?}"
            );
            assert_eq!(
                check(kind, secrets, body, NOW + 301),
                Err(SignatureError::Future {
                    signed_at: at(NOW + 301)
                }),
                "{kind:?}"
            );
        }
        // Where nothing is signed, an old delivery is the replay store's to catch.
        assert!(check(
            HookKind::Github,
            &["secret-one"],
            body_of(HookKind::Github),
            0
        )
        .is_ok());
    }

    #[test]
    fn every_required_header_missing_is_named() {
        for kind in HookKind::ALL {
            let [secret, _] = secrets_of(kind);
            for name in required(kind) {
                let headers: Vec<_> = signed(kind, secret, &pair(1), body_of(kind), NOW)
                    .into_iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
                    .collect();
                let got = verify(
                    &source_with(kind, &[secret], &pair(1)),
                    &headers,
                    body_of(kind),
                    at(NOW),
                );
                assert_eq!(
                    got,
                    Err(SignatureError::Missing { header: name }),
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn every_required_header_sent_twice_is_malformed() {
        for kind in HookKind::ALL {
            let [secret, _] = secrets_of(kind);
            for name in required(kind) {
                let mut headers = signed(kind, secret, &pair(1), body_of(kind), NOW);
                let copy = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .cloned()
                    .unwrap();
                // Even the same value twice: a proxy may read the other one.
                headers.push((copy.0.to_ascii_uppercase(), copy.1));
                let got = verify(
                    &source_with(kind, &[secret], &pair(1)),
                    &headers,
                    body_of(kind),
                    at(NOW),
                );
                assert_eq!(
                    got,
                    Err(SignatureError::Malformed {
                        header: name,
                        why: "sent more than once"
                    }),
                    "{kind:?}"
                );
            }
        }
    }

    /// A delivery of `kind` signed with `secret`, its header `name` then replaced by `value`,
    /// as `verify` judges it.
    fn verify_with_header(
        kind: HookKind,
        secret: &str,
        name: &str,
        value: &str,
    ) -> Result<Verified, SignatureError> {
        let mut headers = signed(kind, secret, &pair(1), body_of(kind), NOW);
        for (k, v) in &mut headers {
            if k.eq_ignore_ascii_case(name) {
                *v = value.into();
            }
        }
        verify(
            &source_with(kind, &[secret], &pair(1)),
            &headers,
            body_of(kind),
            at(NOW),
        )
    }

    #[test]
    fn an_absurdly_long_signature_header_is_malformed_unread() {
        for kind in HookKind::ALL {
            let [secret, _] = secrets_of(kind);
            let name = required(kind).last().unwrap();
            let got = verify_with_header(
                kind,
                secret,
                name,
                &"a".repeat(MAX_SIGNATURE_HEADER_BYTES + 1),
            );
            assert_eq!(
                got,
                Err(SignatureError::Malformed {
                    header: name,
                    why: "too long"
                }),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn unparsable_signatures_are_malformed() {
        let cases: [(HookKind, &str, &str); 12] = [
            (HookKind::Github, GITHUB_SIGNATURE, "sha1=abcd"),
            (HookKind::Github, GITHUB_SIGNATURE, "sha256=zz"),
            (HookKind::Jira, JIRA_SIGNATURE, "757107ea"),
            (HookKind::Slack, SLACK_SIGNATURE, "v1=abcd"),
            (HookKind::Pagerduty, PAGERDUTY_SIGNATURE, "v2=abcd"),
            (HookKind::Zendesk, ZENDESK_SIGNATURE, "not base64!"),
            (HookKind::TeamsOutgoing, AUTHORIZATION, "Bearer abc"),
            (HookKind::Mattermost, AUTHORIZATION, "Bearer abc"),
            (HookKind::Discord, DISCORD_SIGNATURE, "abcd"),
            // Timestamps that are not what the sender writes.
            (HookKind::Slack, SLACK_TIMESTAMP, "1700000000.5"),
            (HookKind::Discord, DISCORD_TIMESTAMP, "-1"),
            (HookKind::Zendesk, ZENDESK_TIMESTAMP, "yesterday"),
        ];
        for (kind, name, value) in cases {
            let [secret, _] = secrets_of(kind);
            let got = verify_with_header(kind, secret, name, value);
            assert!(
                matches!(got, Err(SignatureError::Malformed { header, .. }) if header == name),
                "{kind:?} {value}: {got:?}"
            );
        }
    }

    #[test]
    fn githubs_published_vector_verifies() {
        // github/docs: content/webhooks/using-webhooks/validating-webhook-deliveries.md
        let github = source(HookKind::Github, &["It's a Secret to Everybody"], None);
        let headers = vec![(
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )];
        assert!(verify(&github, &headers, b"Hello, World!", at(NOW)).is_ok());
        assert_eq!(
            verify(&github, &headers, b"Hello, World?", at(NOW)),
            Err(SignatureError::Mismatch)
        );
    }

    /// The Standard Webhooks specification's vector (`spec/standard-webhooks.md` and every
    /// reference library's tests).
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1_614_265_330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sw_headers(prefix: &str, sig: &str) -> Vec<(String, String)> {
        vec![
            (format!("{prefix}-id"), SW_ID.into()),
            (format!("{prefix}-timestamp"), SW_TS.to_string()),
            (format!("{prefix}-signature"), sig.into()),
        ]
    }

    #[test]
    fn the_standard_webhooks_spec_vector_verifies_under_both_header_families() {
        let sw = source(HookKind::StandardWebhooks, &[SW_SECRET], None);
        for prefix in ["webhook", "svix"] {
            let v = verify(&sw, &sw_headers(prefix, SW_SIG), SW_BODY, at(SW_TS + 10)).unwrap();
            assert_eq!(v.delivery_id.as_deref(), Some(SW_ID));
            assert_eq!(v.signed_at, Some(at(SW_TS)));
        }
        assert_eq!(
            verify(
                &sw,
                &sw_headers("webhook", SW_SIG),
                SW_BODY,
                at(SW_TS + 301)
            ),
            Err(SignatureError::Stale {
                signed_at: at(SW_TS)
            })
        );
    }

    #[test]
    fn standard_webhooks_accepts_any_one_v1_signature_and_ignores_other_versions() {
        let sw = source(HookKind::StandardWebhooks, &[SW_SECRET], None);
        let list = format!("v1a,c2lnbmF0dXJl v1,Ym9ndXM= {SW_SIG} v2,abc");
        assert!(verify(&sw, &sw_headers("webhook", &list), SW_BODY, at(SW_TS)).is_ok());
        // Only other versions: nothing this gateway can check.
        assert_eq!(
            verify(
                &sw,
                &sw_headers("webhook", "v1a,c2lnbmF0dXJl"),
                SW_BODY,
                at(SW_TS)
            ),
            Err(SignatureError::Malformed {
                header: WEBHOOK_SIGNATURE,
                why: "no v1,<base64> signature"
            })
        );
        assert_eq!(
            verify(
                &sw,
                &sw_headers("webhook", "v1,Ym9ndXM="),
                SW_BODY,
                at(SW_TS)
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn standard_webhooks_refuses_a_dot_in_the_id_or_timestamp() {
        let sw = source(HookKind::StandardWebhooks, &[SW_SECRET], None);
        let mut h = sw_headers("webhook", SW_SIG);
        h[0].1 = "msg.1".into();
        assert!(matches!(
            verify(&sw, &h, SW_BODY, at(SW_TS)),
            Err(SignatureError::Malformed {
                header: WEBHOOK_ID,
                ..
            })
        ));
        let mut h = sw_headers("webhook", SW_SIG);
        h[1].1 = format!("{SW_TS}.0");
        assert!(matches!(
            verify(&sw, &h, SW_BODY, at(SW_TS)),
            Err(SignatureError::Malformed {
                header: WEBHOOK_TIMESTAMP,
                ..
            })
        ));
    }

    #[test]
    fn slacks_documented_example_verifies() {
        // api.slack.com/authentication/verifying-requests-from-slack, and slack_sdk's tests.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let slack = source(HookKind::Slack, &["8f742231b10e8888abcd99yyyzzz85a5"], None);
        let headers = vec![
            ("X-Slack-Request-Timestamp", "1531420618"),
            (
                "X-Slack-Signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ];
        let v = verify(&slack, &headers, body, at(1_531_420_618 + 60)).unwrap();
        assert_eq!(
            v.delivery_id.as_deref(),
            Some("398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
        );
        assert_eq!(
            verify(&slack, &headers, body, at(1_531_420_618 + 301)),
            Err(SignatureError::Stale {
                signed_at: at(1_531_420_618)
            })
        );
    }

    #[test]
    fn pagerduty_accepts_any_signature_of_its_list() {
        let pd = source(HookKind::Pagerduty, &["secret-one"], None);
        let body = body_of(HookKind::Pagerduty);
        let good = hex(&mac(b"secret-one", &[body]));
        let bogus = hex(&mac(b"other", &[body]));
        let headers = vec![("X-PagerDuty-Signature", format!("v1={bogus},v1={good}"))];
        assert!(verify(&pd, &headers, body, at(NOW)).is_ok());
    }

    #[test]
    fn delivery_ids_come_from_each_senders_header() {
        let cases = [
            (HookKind::StandardWebhooks, "webhook-id"),
            (HookKind::StandardWebhooks, "svix-id"),
            (HookKind::Github, "X-GitHub-Delivery"),
            (HookKind::Gitlab, "Idempotency-Key"),
            (HookKind::Jira, "X-Atlassian-Webhook-Identifier"),
            (HookKind::Zendesk, "X-Zendesk-Webhook-Invocation-Id"),
            (HookKind::Pagerduty, "X-Webhook-Id"),
        ];
        for (kind, header) in cases {
            let one = vec![(header, "abc-123")];
            assert_eq!(
                delivery_id(kind, &one, b"{}").as_deref(),
                Some("abc-123"),
                "{kind:?}"
            );
            let none: Vec<(&str, &str)> = Vec::new();
            assert_eq!(delivery_id(kind, &none, b"{}"), None, "{kind:?}");
            // Twice is ambiguous; too long or unprintable is not a sender's id.
            let twice = vec![(header, "a"), (header, "b")];
            assert_eq!(delivery_id(kind, &twice, b"{}"), None, "{kind:?}");
            let long = "x".repeat(MAX_DELIVERY_ID_BYTES + 1);
            assert_eq!(
                delivery_id(kind, &vec![(header, long.as_str())], b"{}"),
                None
            );
            assert_eq!(delivery_id(kind, &vec![(header, "a b")], b"{}"), None);
        }
    }

    #[test]
    fn chat_delivery_ids_come_from_the_body() {
        let none: Vec<(&str, &str)> = Vec::new();
        let id = |kind, body: &[u8]| delivery_id(kind, &none, body);
        // Slack: events, slash commands, interactivity.
        assert_eq!(
            id(
                HookKind::Slack,
                br#"{"type":"event_callback","event_id":"Ev1"}"#
            )
            .as_deref(),
            Some("Ev1")
        );
        assert_eq!(
            id(
                HookKind::Slack,
                b"command=%2Fsync&trigger_id=13345224609.738474920.8088930838d88f008e0"
            )
            .as_deref(),
            Some("13345224609.738474920.8088930838d88f008e0")
        );
        assert_eq!(
            id(
                HookKind::Slack,
                b"payload=%7B%22type%22%3A%22block_actions%22%2C%22trigger_id%22%3A%22T9%22%7D"
            )
            .as_deref(),
            Some("T9")
        );
        assert_eq!(
            id(
                HookKind::Slack,
                br#"{"type":"url_verification","challenge":"c"}"#
            ),
            None
        );
        // Discord interactions and Teams activities: `id`.
        assert_eq!(
            id(HookKind::Discord, br#"{"type":1,"id":"99"}"#).as_deref(),
            Some("99")
        );
        assert_eq!(
            id(HookKind::TeamsOutgoing, br#"{"id":"f:1"}"#).as_deref(),
            Some("f:1")
        );
        assert_eq!(id(HookKind::TeamsOutgoing, b"not json"), None);
        // Mattermost: a form by default, JSON when the command is set to send it.
        assert_eq!(
            id(HookKind::Mattermost, b"trigger_id=m1&text=").as_deref(),
            Some("m1")
        );
        assert_eq!(
            id(HookKind::Mattermost, br#"{"trigger_id":"m2"}"#).as_deref(),
            Some("m2")
        );
        assert_eq!(id(HookKind::Mattermost, b"trigger_id=a&trigger_id=b"), None);
        // Header ids are not read for chat kinds, and body ids not for the others.
        let github = vec![("X-GitHub-Delivery", "g1")];
        assert_eq!(delivery_id(HookKind::Slack, &github, b"{}"), None);
        assert_eq!(delivery_id(HookKind::Github, &none, br#"{"id":"x"}"#), None);
    }

    #[test]
    fn header_names_are_matched_without_case() {
        let headers = vec![
            ("x-github-delivery", "d1"),
            ("X-HUB-SIGNATURE-256", "sha256=00"),
        ];
        assert_eq!(headers.all("X-GitHub-Delivery"), vec![b"d1".as_slice()]);
        assert_eq!(headers.all(GITHUB_SIGNATURE).len(), 1);
    }

    #[test]
    fn every_kind_names_the_headers_its_signature_needs_before_the_body_is_read() {
        for kind in HookKind::ALL {
            let none: Vec<(&str, &str)> = vec![("content-type", "application/json")];
            assert!(
                matches!(
                    super::signature_present(kind, &none),
                    Err(super::SignatureError::Missing { .. })
                ),
                "{kind:?}"
            );
        }
        let github = vec![("X-Hub-Signature-256", "sha256=00")];
        assert!(super::signature_present(HookKind::Github, &github).is_ok());
    }
}
