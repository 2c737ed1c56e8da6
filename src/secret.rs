//! Types that hold secrets. Each redacts itself in `Debug` and has no `Display`, so a secret
//! cannot reach a log line, an error body or an audit record by accident: code that needs the
//! value must call `expose()`, which is easy to find in review.

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;

/// A configured secret (client secret, keys). Serializes as a mask, never as its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that must send it (e.g. the token request form).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Environment overrides are parsed loosely (a numeric-looking secret arrives as a
        // number), so accept any scalar and keep its text.
        let value = serde_json::Value::deserialize(d)?;
        match value {
            serde_json::Value::String(s) => Ok(Secret(s)),
            serde_json::Value::Number(n) => Ok(Secret(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Secret(b.to_string())),
            _ => Err(serde::de::Error::custom("expected a string")),
        }
    }
}

/// A bearer token presented by a caller. Kept only as long as the request (and the
/// verified-token cache) needs it; it leaves the gateway only as the on-behalf-of assertion.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken {
    value: String,
    digest: [u8; 32],
}

impl BearerToken {
    /// Wraps the raw token text.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        let digest = Sha256::digest(value.as_bytes()).into();
        Self { value, digest }
    }

    /// The raw token, for verification and for the on-behalf-of assertion only.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// SHA-256 of the token, computed once: what the caches and fingerprints keyed by the
    /// token derive from, so that a token of one or two kilobytes is hashed once, not at
    /// every use of every request carrying it.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(********)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        let t = BearerToken::new("eyJhbGciOi");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{t:?}").contains("eyJ"));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"********\"");
    }

    #[test]
    fn numeric_secret_from_environment_is_kept_as_text() {
        let s: Secret = serde_json::from_str("12345").unwrap();
        assert_eq!(s.expose(), "12345");
    }
}

/// The 256-bit key of a session store. Redacted in `Debug`, masked when serialized.
#[derive(Clone)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// The key bytes, for the store's cipher.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 32 bytes written in base64 (standard or URL-safe alphabet).
    pub fn from_base64(text: &str) -> Result<StoreKey, String> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .map_err(|_| {
                "is not base64 (generate one with `openssl rand -base64 32`)".to_string()
            })?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "must be 32 bytes once decoded, got {} (generate one with `openssl rand -base64 32`)",
                b.len()
            )
        })?;
        Ok(StoreKey(key))
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(********)")
    }
}

impl Serialize for StoreKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
}
