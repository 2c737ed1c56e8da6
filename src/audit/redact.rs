//! Keyed hashing of the sensitive values operators still need to search for (as Vault does):
//! with `audit.hmac_key_file` set, every `client_ip`, `upn`, `reason` and `sender_user` in a record, at any
//! depth and in any kind of record, is written as `hmac-sha256:<hex>` instead of in clear.
//! `sync-gateway audit hash VALUE` computes the same value to search for.

use super::chain::{hash, hex};
use aws_lc_rs::hmac;
use serde_json::Value;

/// The fields whose string values are hashed, wherever they appear in a record.
pub const SENSITIVE_FIELDS: &[&str] = &["client_ip", "upn", "reason", "sender_user"];

/// The prefix of a hashed value.
pub const PREFIX: &str = "hmac-sha256:";

/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = crate::config::MIN_HMAC_KEY_BYTES;

/// An HMAC-SHA256 key. Its `Debug` never shows the key.
pub struct ValueHasher {
    key: hmac::Key,
    key_id: String,
}

impl std::fmt::Debug for ValueHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ValueHasher({})", self.key_id)
    }
}

impl ValueHasher {
    /// A hasher with `key` (at least [`MIN_KEY_BYTES`] bytes; checked by the configuration).
    pub fn new(key: &[u8]) -> ValueHasher {
        // The id names the key in `start` records without revealing it.
        let mut id_input = b"sync-gateway audit hmac key id\n".to_vec();
        id_input.extend_from_slice(key);
        ValueHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            key_id: hex(&hash(&id_input)[..8]),
        }
    }

    /// A short public name for the key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// `hmac-sha256:<hex>` of `value`.
    pub fn hash(&self, value: &str) -> String {
        let tag = hmac::sign(&self.key, value.as_bytes());
        format!("{PREFIX}{}", hex(tag.as_ref()))
    }

    /// Replaces every sensitive string in `record` by its hash.
    pub fn apply(&self, record: &mut Value) {
        match record {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    match v {
                        Value::String(s) if SENSITIVE_FIELDS.contains(&k.as_str()) => {
                            *s = self.hash(s);
                        }
                        other => self.apply(other),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.apply(v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sensitive_strings_are_hashed_at_any_depth_and_nothing_else_is() {
        let h = ValueHasher::new(b"0123456789abcdef0123456789abcdef");
        let mut r = json!({
            "client_ip": "10.0.0.1",
            "caller": {"upn": "a@b.example", "object_id": "o"},
            "reason": "laptop reimaged",
            "items": [{"upn": "c@d.example"}],
            "action": "sync"
        });
        h.apply(&mut r);
        assert_eq!(r["client_ip"], h.hash("10.0.0.1"));
        assert_eq!(r["caller"]["upn"], h.hash("a@b.example"));
        assert_eq!(r["items"][0]["upn"], h.hash("c@d.example"));
        assert_eq!(r["reason"], h.hash("laptop reimaged"));
        assert_eq!(r["caller"]["object_id"], "o");
        assert_eq!(r["action"], "sync");
        assert!(r["client_ip"].as_str().unwrap().starts_with(PREFIX));
    }

    #[test]
    fn the_hash_is_the_hmac_sha256_of_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let h = ValueHasher::new(b"Jefe");
        assert_eq!(
            h.hash("what do ya want for nothing?"),
            "hmac-sha256:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
