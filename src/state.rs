//! The Redis side of `[state] backend = "redis"`: one connection (the `redis` crate's tokio
//! `ConnectionManager`, which multiplexes and pipelines every caller's commands on it and
//! reconnects by itself), the key prefix, and the bound on every call.
//!
//! This module stores and answers; it decides nothing. The steps that own the state
//! (`limits` for rates, `hooks` for delivery ids) implement their narrow store traits on top
//! of it and decide what a failure means (fail open or closed).

use crate::config::StateConfig;
use crate::metrics::StateMetrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::time::Duration;

/// Redis could not be reached or did not answer within `state.timeout_ms`; the step that made
/// the call turns this into its own refusal (or an admission, for limits failing open).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the state backend did not answer {operation}: {reason}")]
pub struct Unavailable {
    /// The operation (a fixed word, also the metric's label).
    pub operation: &'static str,
    /// What went wrong, without the URL (it may carry a password).
    pub reason: String,
}

/// A Redis connection shared by every step of one gateway process (cheap to clone).
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    metrics: StateMetrics,
}

impl Redis {
    /// A lazily connecting handle: the gateway starts (and answers 503 `state-unavailable`, or
    /// admits when limits fail open) while Redis is down, and the first call connects. Each
    /// connection attempt and each command is bounded by `state.timeout_ms`; the manager
    /// retries a broken connection in the background.
    pub fn new(cfg: &StateConfig, metrics: StateMetrics) -> Result<Self, Unavailable> {
        let url = cfg.redis_url.as_ref().ok_or_else(|| Unavailable {
            operation: "connect",
            reason: "no state.redis_url".into(),
        })?;
        let client = redis::Client::open(url.expose()).map_err(|e| Unavailable {
            operation: "connect",
            reason: redacted_error(&e),
        })?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // A reconnection is retried a few times, quickly: a call waits at most `timeout`
            // anyway (the bound below), and the next call tries again.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| Unavailable {
                operation: "connect",
                reason: redacted_error(&e),
            })?;
        Ok(Redis {
            conn,
            prefix: cfg.key_prefix.clone(),
            timeout,
            metrics,
        })
    }

    /// `state.key_prefix` followed by `rest`: every key the gateway writes.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// A connection handle for one call (a clone of the multiplexed connection).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs one call under `state.timeout_ms`, counting a failure by `operation` and keeping
    /// `state_backend_up` current.
    pub async fn call<T, F>(&self, operation: &'static str, call: F) -> Result<T, Unavailable>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Unavailable {
                operation,
                reason: redacted_error(&e),
            }),
            Err(_) => Err(Unavailable {
                operation,
                reason: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        };
        match &outcome {
            Ok(_) => {
                self.metrics.up.set(1);
            }
            Err(_) => self.metrics.failed(operation),
        }
        outcome
    }

    /// `PING`, for `/readyz`.
    pub async fn ping(&self) -> Result<(), Unavailable> {
        let mut conn = self.connection();
        self.call("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(|_| ())
    }
}

/// A Redis error in words: its kind and detail, never the URL it was opened with.
fn redacted_error(e: &redis::RedisError) -> String {
    // The crate's messages name the kind and the server's words; a URL parse error could echo
    // the URL, so that kind is described without its detail.
    if e.kind() == redis::ErrorKind::InvalidClientConfig {
        return "invalid client configuration".into();
    }
    let text = e.to_string();
    if text.contains("://") {
        format!("{:?} error", e.kind())
    } else {
        text
    }
}

/// AES-256-GCM under `state.encryption_key`, for what a replica keeps in Redis that another
/// replica must read back and nobody else may (a run's joiners' credentials). Each value gets a
/// fresh random nonce; the additional data binds it to the key it is stored under, so a value
/// copied to another key does not open.
#[derive(Clone)]
pub struct Sealer {
    key: std::sync::Arc<aws_lc_rs::aead::LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(********)")
    }
}

impl Sealer {
    /// A sealer under `key`.
    pub fn new(key: &crate::secret::StoreKey) -> Self {
        use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
        let unbound = UnboundKey::new(&AES_256_GCM, key.bytes()).expect("32 bytes");
        Sealer {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        }
    }

    /// `plaintext` sealed for the Redis key `bound_to`: base64 of nonce and ciphertext.
    pub fn seal(&self, bound_to: &str, plaintext: &[u8]) -> String {
        use base64::Engine;
        let (nonce, data) = self.seal_detached(bound_to.as_bytes(), plaintext);
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// The plaintext of a value [`Sealer::seal`] made for `bound_to`, or `None` if it was
    /// made under another key, for another Redis key, or altered.
    pub fn open(&self, bound_to: &str, sealed: &str) -> Option<Vec<u8>> {
        use aws_lc_rs::aead::NONCE_LEN;
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, data) = raw.split_at(NONCE_LEN);
        self.open_detached(bound_to.as_bytes(), nonce.try_into().ok()?, data.to_vec())
    }

    /// `plaintext` encrypted under a fresh random nonce with additional data `aad`: the nonce
    /// and the ciphertext (tag appended), for a caller with a format of its own (the session
    /// store's envelope).
    pub fn seal_detached(
        &self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> ([u8; aws_lc_rs::aead::NONCE_LEN], Vec<u8>) {
        use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN};
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source");
        let mut data = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut data,
            )
            .expect("AES-GCM seals any length the gateway writes");
        (nonce, data)
    }

    /// The plaintext of what [`Sealer::seal_detached`] made with the same key and `aad`.
    pub fn open_detached(
        &self,
        aad: &[u8],
        nonce: [u8; aws_lc_rs::aead::NONCE_LEN],
        mut ciphertext: Vec<u8>,
    ) -> Option<Vec<u8>> {
        use aws_lc_rs::aead::{Aad, Nonce};
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut ciphertext,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod sealer_tests {
    use super::Sealer;
    use crate::secret::StoreKey;

    fn sealer(byte: u8) -> Sealer {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        Sealer::new(&StoreKey::from_base64(&key).unwrap())
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_key_and_its_redis_key() {
        let s = sealer(7);
        let sealed = s.seal("p:run:1:actor:a", b"the token");
        assert!(!sealed.contains("the token"));
        assert_eq!(s.open("p:run:1:actor:a", &sealed).unwrap(), b"the token");
        assert!(
            s.open("p:run:2:actor:a", &sealed).is_none(),
            "moved to another key"
        );
        assert!(
            sealer(8).open("p:run:1:actor:a", &sealed).is_none(),
            "another key"
        );
        let mut tampered = sealed.into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(s.open("p:run:1:actor:a", &tampered).is_none(), "altered");
    }

    #[test]
    fn the_same_plaintext_seals_differently_each_time() {
        let s = sealer(1);
        assert_ne!(s.seal("k", b"x"), s.seal("k", b"x"));
    }
}

/// What the unit tests of the steps on Redis share: a handle on the Redis at `REDIS_URL`
/// under a prefix of their own, and the clean-up.
#[cfg(test)]
pub(crate) mod testing {
    use super::Redis;
    use crate::config::{FailMode, OnUnavailable, RedisUrl, StateBackendKind, StateConfig};
    use crate::metrics::StateMetrics;
    use crate::secret::Secret;

    /// A handle with keys under `prefix`, or `None` (and `test` said to skip) without
    /// `REDIS_URL`.
    pub(crate) fn redis(test: &str, prefix: &str) -> Option<Redis> {
        let Ok(url) = std::env::var("REDIS_URL") else {
            eprintln!("{test}: REDIS_URL is unset, skipping (it needs a Redis)");
            return None;
        };
        let cfg = StateConfig {
            backend: StateBackendKind::Redis,
            redis_url: Some(RedisUrl::new(Secret::new(url), "test".into())),
            key_prefix: prefix.into(),
            timeout_ms: 2000,
            on_unavailable: OnUnavailable {
                limits: FailMode::Closed,
            },
            encryption_key: None,
            replica_id: crate::domain::ReplicaId::parse("test").unwrap(),
            replica_id_source: "test".into(),
        };
        Some(Redis::new(&cfg, StateMetrics::default()).unwrap())
    }

    /// Deletes every key under `prefix`.
    pub(crate) async fn delete_prefix(r: &Redis, prefix: &str) {
        let mut conn = r.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}
