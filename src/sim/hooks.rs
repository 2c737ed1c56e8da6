//! The senders' side of `[hooks.NAME]`: the headers each kind's sender sends with a delivery,
//! signed as that sender signs (its documentation, see `webhook-senders.md`), so black-box
//! tests and `dev` can post deliveries a real sender could have posted.
//!
//! Written independently of `hooks::verify` on purpose: a signer that shared the verifier's
//! code would agree with it even where both are wrong. The round-trip tests below are what tie
//! the two together.

use crate::config::HookKind;
use crate::domain::hex;
use aws_lc_rs::hmac;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use chrono::{DateTime, Utc};

/// What a delivery is signed with: a configured secret as the operator writes it (the whole
/// `whsec_...` text for Standard Webhooks, the base64 security token for Teams), or Discord's
/// application key pair.
#[derive(Clone, Copy)]
pub enum SigningKey<'a> {
    /// A shared secret, as configured.
    Secret(&'a str),
    /// Discord's Ed25519 key pair (see [`discord_key_pair`]).
    Ed25519(&'a Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A test's secret is still a secret to the leak scan: never printed.
        match self {
            SigningKey::Secret(_) => f.write_str("SigningKey::Secret(********)"),
            SigningKey::Ed25519(_) => f.write_str("SigningKey::Ed25519(********)"),
        }
    }
}

/// A new Ed25519 key pair for a Discord source, and its public key in hex (what
/// `hooks.NAME.public_key` takes).
pub fn discord_key_pair() -> (Ed25519KeyPair, String) {
    let pair = Ed25519KeyPair::generate().expect("aws-lc generates Ed25519 keys");
    let public = hex(pair.public_key().as_ref());
    (pair, public)
}

/// A new random secret in the form `kind` takes: `whsec_<base64 of 32 bytes>` for Standard
/// Webhooks, base64 for Teams outgoing webhooks, 64 hex digits for the rest (Discord has
/// none: use [`discord_key_pair`]).
pub fn new_secret(kind: HookKind) -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("aws-lc's random generator");
    let b64 = base64::engine::general_purpose::STANDARD;
    match kind {
        HookKind::StandardWebhooks => format!("whsec_{}", b64.encode(bytes)),
        HookKind::TeamsOutgoing => b64.encode(bytes),
        _ => hex(&bytes),
    }
}

/// The headers `kind`'s sender sends with `body` at `at`, signed with `key`.
///
/// `delivery_id` goes where the sender puts its id in a header (Standard Webhooks, GitHub,
/// GitLab, Jira, Zendesk, PagerDuty); chat senders carry theirs in the body, which
/// [`sample_body`] builds. Panics when `key` does not fit the kind (a test's mistake).
pub fn sign(
    kind: HookKind,
    key: SigningKey<'_>,
    body: &[u8],
    at: DateTime<Utc>,
    delivery_id: &str,
) -> Vec<(String, String)> {
    match key {
        SigningKey::Secret(secret) => sign_rotating(kind, &[secret], body, at, delivery_id),
        SigningKey::Ed25519(pair) => {
            assert_eq!(
                kind,
                HookKind::Discord,
                "only Discord signs with a key pair"
            );
            let ts = at.timestamp().to_string();
            let signature = pair.sign(&[ts.as_bytes(), body].concat());
            headers(
                body,
                [
                    ("X-Signature-Ed25519", hex(signature.as_ref())),
                    ("X-Signature-Timestamp", ts),
                ],
            )
        }
    }
}

/// Like [`sign`] with every secret of a rotation: Standard Webhooks and PagerDuty send one
/// signature per secret in one header; the other senders sign with one secret only, the first.
pub fn sign_rotating(
    kind: HookKind,
    secrets: &[&str],
    body: &[u8],
    at: DateTime<Utc>,
    delivery_id: &str,
) -> Vec<(String, String)> {
    let first = *secrets.first().expect("at least one secret");
    let b64 = base64::engine::general_purpose::STANDARD;
    let ts = at.timestamp().to_string();
    let id = delivery_id.to_string();
    match kind {
        HookKind::StandardWebhooks => {
            // `{id}.{timestamp}.{body}`, keyed by the base64 after `whsec_`; `v1,<base64>`
            // entries separated by spaces.
            let signatures: Vec<String> = secrets
                .iter()
                .map(|s| {
                    let key = b64
                        .decode(s.strip_prefix("whsec_").expect("a whsec_ secret"))
                        .expect("a whsec_ secret is base64");
                    let mac = hmac_sha256(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
                    format!("v1,{}", b64.encode(mac))
                })
                .collect();
            headers(
                body,
                [
                    ("webhook-id", id),
                    ("webhook-timestamp", ts),
                    ("webhook-signature", signatures.join(" ")),
                ],
            )
        }
        HookKind::Github => headers(
            body,
            [
                (
                    "X-Hub-Signature-256",
                    format!("sha256={}", hex(&hmac_sha256(first.as_bytes(), &[body]))),
                ),
                ("X-GitHub-Delivery", id),
                ("X-GitHub-Event", "workflow_dispatch".into()),
            ],
        ),
        HookKind::Gitlab => headers(
            body,
            [
                ("X-Gitlab-Token", first.to_string()),
                ("Idempotency-Key", id),
                ("X-Gitlab-Event", "Issue Hook".into()),
            ],
        ),
        HookKind::Jira => headers(
            body,
            [
                (
                    "X-Hub-Signature",
                    format!("sha256={}", hex(&hmac_sha256(first.as_bytes(), &[body]))),
                ),
                ("X-Atlassian-Webhook-Identifier", id),
            ],
        ),
        HookKind::Zendesk => {
            // ISO 8601, signed as sent, directly followed by the body.
            let iso = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let mac = hmac_sha256(first.as_bytes(), &[iso.as_bytes(), body]);
            headers(
                body,
                [
                    ("X-Zendesk-Webhook-Signature", b64.encode(mac)),
                    ("X-Zendesk-Webhook-Signature-Timestamp", iso),
                    ("X-Zendesk-Webhook-Invocation-Id", id),
                ],
            )
        }
        HookKind::Pagerduty => {
            let signatures: Vec<String> = secrets
                .iter()
                .map(|s| format!("v1={}", hex(&hmac_sha256(s.as_bytes(), &[body]))))
                .collect();
            headers(
                body,
                [
                    ("X-PagerDuty-Signature", signatures.join(",")),
                    ("X-Webhook-Id", id),
                ],
            )
        }
        HookKind::Slack => {
            let mac = hmac_sha256(first.as_bytes(), &[b"v0:", ts.as_bytes(), b":", body]);
            headers(
                body,
                [
                    ("X-Slack-Signature", format!("v0={}", hex(&mac))),
                    ("X-Slack-Request-Timestamp", ts),
                ],
            )
        }
        HookKind::TeamsOutgoing => {
            let key = b64.decode(first).expect("a Teams security token is base64");
            let mac = hmac_sha256(&key, &[body]);
            headers(
                body,
                [("Authorization", format!("HMAC {}", b64.encode(mac)))],
            )
        }
        HookKind::Mattermost => headers(body, [("Authorization", format!("Token {first}"))]),
        HookKind::Discord => panic!("Discord signs with a key pair: use SigningKey::Ed25519"),
    }
}

/// A plausible body from `kind`'s sender that triggers on nothing in particular; chat bodies
/// carry `delivery_id` where their sender puts its id (Slack slash commands' `trigger_id`,
/// Discord's and Teams' `id`, Mattermost's `trigger_id`).
pub fn sample_body(kind: HookKind, delivery_id: &str) -> Vec<u8> {
    let form = |pairs: &[(&str, &str)]| {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
            .into_bytes()
    };
    match kind {
        HookKind::Slack => form(&[
            ("team_id", "T0123"),
            ("channel_id", "C0456"),
            ("user_id", "U0789"),
            ("user_name", "operator"),
            ("command", "/autopilot-sync"),
            ("text", ""),
            (
                "response_url",
                "https://hooks.slack.com/commands/T0123/1/abc",
            ),
            ("trigger_id", delivery_id),
        ]),
        HookKind::Mattermost => form(&[
            ("team_id", "t0123"),
            ("channel_id", "c0456"),
            ("user_id", "u0789"),
            ("command", "/autopilot-sync"),
            ("text", ""),
            (
                "response_url",
                "https://chat.example.com/hooks/commands/abc",
            ),
            ("trigger_id", delivery_id),
        ]),
        HookKind::Discord => serde_json::json!({
            "type": 2,
            "id": delivery_id,
            "application_id": "1",
            "guild_id": "G0123",
            "channel_id": "C0456",
            "member": {"user": {"id": "U0789"}},
            "data": {"name": "autopilot-sync"},
            "token": "interaction-token",
        })
        .to_string()
        .into_bytes(),
        HookKind::TeamsOutgoing => serde_json::json!({
            "type": "message",
            "id": delivery_id,
            "text": "<at>Autopilot</at> sync",
            "from": {"id": "29:1", "aadObjectId": "00000000-0000-0000-0000-000000000001"},
            "channelData": {"tenant": {"id": "11111111-1111-1111-1111-111111111111"}},
        })
        .to_string()
        .into_bytes(),
        _ => serde_json::json!({"transition": {"to_status": "Ready for Autopilot"}})
            .to_string()
            .into_bytes(),
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().to_vec()
}

/// The signature headers and the content type the body's form implies.
fn headers<const N: usize>(body: &[u8], signed: [(&str, String); N]) -> Vec<(String, String)> {
    let json = body.first() == Some(&b'{');
    let content_type = if json {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    std::iter::once(("Content-Type".to_string(), content_type.to_string()))
        .chain(signed.into_iter().map(|(k, v)| (k.to_string(), v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HookSourceConfig;
    use crate::hooks::verify::{delivery_id, verify, SignatureError};

    fn source(
        kind: HookKind,
        secrets: &[String],
        public_key: Option<[u8; 32]>,
    ) -> HookSourceConfig {
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        HookSourceConfig::for_tests(kind, &secrets, public_key)
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn every_signer_round_trips_through_verify_with_its_delivery_id() {
        for kind in HookKind::ALL {
            let body = sample_body(kind, "d-1");
            let (src, headers) = if kind == HookKind::Discord {
                let (pair, public) = discord_key_pair();
                let key: [u8; 32] = (0..32)
                    .map(|i| u8::from_str_radix(&public[2 * i..2 * i + 2], 16).unwrap())
                    .collect::<Vec<_>>()
                    .try_into()
                    .unwrap();
                let h = sign(kind, SigningKey::Ed25519(&pair), &body, now(), "d-1");
                (source(kind, &[], Some(key)), h)
            } else {
                let secret = new_secret(kind);
                let h = sign(kind, SigningKey::Secret(&secret), &body, now(), "d-1");
                (source(kind, &[secret], None), h)
            };
            let v =
                verify(&src, &headers, &body, now()).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(v.delivery_id.as_deref(), Some("d-1"), "{kind:?}");
            assert_eq!(delivery_id(kind, &headers, &body).as_deref(), Some("d-1"));
            // And a signer's delivery changed in transit is refused (but for the plain tokens).
            let mut tampered = body.clone();
            tampered.push(b' ');
            let got = verify(&src, &headers, &tampered, now());
            if matches!(kind, HookKind::Gitlab | HookKind::Mattermost) {
                assert!(got.is_ok(), "{kind:?}");
            } else {
                assert_eq!(got.unwrap_err(), SignatureError::Mismatch, "{kind:?}");
            }
        }
    }

    #[test]
    fn rotating_signers_send_one_signature_per_secret_and_verify_with_either() {
        for kind in [HookKind::StandardWebhooks, HookKind::Pagerduty] {
            let (old, new) = (new_secret(kind), new_secret(kind));
            let body = sample_body(kind, "d-2");
            let headers = sign_rotating(kind, &[&old, &new], &body, now(), "d-2");
            for secret in [&old, &new] {
                let src = source(kind, std::slice::from_ref(secret), None);
                assert!(verify(&src, &headers, &body, now()).is_ok(), "{kind:?}");
            }
        }
    }

    #[test]
    fn new_secrets_have_the_form_their_kind_takes() {
        let whsec = new_secret(HookKind::StandardWebhooks);
        let key = base64::engine::general_purpose::STANDARD
            .decode(whsec.strip_prefix("whsec_").unwrap())
            .unwrap();
        assert_eq!(key.len(), 32);
        assert_ne!(new_secret(HookKind::Github), new_secret(HookKind::Github));
        let (_, public) = discord_key_pair();
        assert_eq!(public.len(), 64);
        assert!(!format!("{:?}", SigningKey::Secret(&whsec)).contains("whsec_"));
    }
}
