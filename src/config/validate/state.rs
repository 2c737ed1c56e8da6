//! `[state]`: where the state replicas share lives. The Redis URL may carry a password, so it
//! follows the secret rule (environment or `redis_url_file`; a URL without a password may stay
//! in the file), and plaintext `redis://` is allowed only to a loopback host, as `http://` is.

use super::check::Check;
use super::secret::SecretKey;
use crate::config::model::{OnUnavailable, RedisUrl, StateBackendKind, StateConfig};
use crate::config::names::{ENV_PREFIX, HOSTNAME_ENV};
use crate::config::raw::RawState;
use crate::domain::{ReplicaId, MAX_REPLICA_ID_CHARS};
use crate::secret::StoreKey;
use std::net::IpAddr;
use url::Url;

/// The longest `state.key_prefix`: every key carries it, and Redis keys are best kept short.
pub const MAX_KEY_PREFIX_BYTES: usize = 64;

/// The longest `state.timeout_ms`: a Redis call sits on a request's path (the limit check, the
/// delivery claim), so a bound longer than this would hold callers on a store that is down.
pub const MAX_STATE_TIMEOUT_MS: u64 = 10_000;

const REDIS_URL: SecretKey<'static> = SecretKey {
    key: "state.redis_url",
    file_key: Some("state.redis_url_file"),
    harmless: |url| Url::parse(url).is_ok_and(|u| u.password().is_none()),
};

const ENCRYPTION_KEY: SecretKey<'static> = SecretKey {
    key: "state.encryption_key",
    file_key: Some("state.encryption_key_file"),
    harmless: |_| false,
};

/// Checks a Redis URL: `rediss://`, or `redis://` only for loopback hosts; no other scheme.
pub fn parse_redis_url(v: &str) -> Result<Url, String> {
    // Never echo the value: it may carry a password.
    let u = Url::parse(v).map_err(|e| format!("is not a URL ({e})"))?;
    let loopback = match u.host() {
        // `redis://` is not a scheme the URL standard knows, so its host stays text: an IP
        // address is parsed here.
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost")
                || d.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => return Err("has no host".into()),
    };
    match u.scheme() {
        "rediss" => Ok(u),
        "redis" if loopback => Ok(u),
        "redis" => {
            Err("must use rediss:// (TLS; redis:// is allowed only for loopback hosts)".into())
        }
        s => Err(format!(
            "has the unsupported scheme {s:?} (rediss://, or redis:// for a loopback host)"
        )),
    }
}

/// What a replica id may be, in an operator's words.
fn replica_id_rule() -> String {
    format!("1 to {MAX_REPLICA_ID_CHARS} characters of A-Z a-z 0-9 . _ - (not only dots)")
}

/// The machine's hostname, the last default of `state.replica_id`.
pub(crate) fn machine_hostname() -> Option<String> {
    whoami::hostname()
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

impl Check {
    /// `state.replica_id`: the configured value, else `HOSTNAME` (`hostname`), else the
    /// machine's hostname (`machine`); with where it came from. An invalid value is an error
    /// naming its source, never silently replaced by the next default: two replicas that fell
    /// back to the same machine name would write one chain from two processes.
    pub(super) fn replica_id(
        &mut self,
        configured: Option<String>,
        hostname: Option<String>,
        machine: fn() -> Option<String>,
    ) -> Option<(ReplicaId, String)> {
        const KEY: &str = "state.replica_id";
        if let Some(v) = configured {
            let source = self.origin(KEY);
            return match ReplicaId::parse(&v) {
                Some(id) => Some((id, source)),
                None => {
                    self.err(KEY, format!("{v:?} is not {}", replica_id_rule()));
                    None
                }
            };
        }
        let (value, source) = match hostname.filter(|h| !h.is_empty()) {
            Some(h) => (h, format!("the {HOSTNAME_ENV} environment variable")),
            None => match machine() {
                Some(h) => (h, "the machine's hostname".to_string()),
                None => {
                    self.err_plain(
                        KEY,
                        format!("is unset, {HOSTNAME_ENV} is unset and the machine's hostname cannot be read: set state.replica_id (or {ENV_PREFIX}STATE__REPLICA_ID)"),
                    );
                    return None;
                }
            },
        };
        match ReplicaId::parse(&value) {
            Some(id) => Some((id, format!("the default, {source}"))),
            None => {
                self.err_plain(
                    KEY,
                    format!(
                        "is unset and its default, {source} ({value:?}), is not {}: set state.replica_id (or {ENV_PREFIX}STATE__REPLICA_ID)",
                        replica_id_rule()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn state(
        &mut self,
        raw: RawState,
        hostname: Option<String>,
        machine: fn() -> Option<String>,
    ) -> Option<StateConfig> {
        let mut ok = true;
        let replica = self.replica_id(raw.replica_id, hostname, machine);
        let url = match self.secret(&REDIS_URL, raw.redis_url, raw.redis_url_file) {
            Ok(found) => found,
            Err(()) => {
                ok = false;
                None
            }
        };
        let redis_url = match (raw.backend, url) {
            (StateBackendKind::Redis, None) => {
                if ok {
                    self.err_plain(
                        "state.redis_url",
                        format!(
                            "is required with backend = \"redis\" (set {ENV_PREFIX}STATE__REDIS_URL or state.redis_url_file)"
                        ),
                    );
                }
                ok = false;
                None
            }
            (StateBackendKind::Redis, Some((url, source))) => {
                match parse_redis_url(url.expose()) {
                    Ok(_) => Some(RedisUrl::new(url, source)),
                    Err(m) => {
                        // The key that was set: the file key when the value came from a file.
                        let key = if source.starts_with("file ") {
                            "state.redis_url_file"
                        } else {
                            "state.redis_url"
                        };
                        self.err(key, m);
                        ok = false;
                        None
                    }
                }
            }
            // The memory backend reads no URL; one left over is harmless.
            (StateBackendKind::Memory, _) => None,
        };
        let prefix = &raw.key_prefix;
        if prefix.is_empty()
            || prefix.len() > MAX_KEY_PREFIX_BYTES
            || !prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            self.err(
                "state.key_prefix",
                format!(
                    "must be 1 to {MAX_KEY_PREFIX_BYTES} printable ASCII characters without spaces"
                ),
            );
            ok = false;
        }
        let timeout_ms = raw.timeout_ms.0;
        if timeout_ms == 0 || timeout_ms > MAX_STATE_TIMEOUT_MS {
            self.err(
                "state.timeout_ms",
                format!("must be between 1 and {MAX_STATE_TIMEOUT_MS}"),
            );
            ok = false;
        }
        let encryption_key = match raw.backend {
            StateBackendKind::Redis => {
                let key = self.encryption_key(raw.encryption_key, raw.encryption_key_file);
                ok &= key.is_some();
                key
            }
            // Nothing is encrypted for Redis in memory mode; a key left over is harmless.
            StateBackendKind::Memory => None,
        };
        let (replica_id, replica_id_source) = replica?;
        ok.then_some(StateConfig {
            replica_id,
            replica_id_source,
            backend: raw.backend,
            redis_url,
            key_prefix: raw.key_prefix,
            timeout_ms,
            on_unavailable: OnUnavailable {
                limits: raw.on_unavailable.limits,
            },
            encryption_key,
        })
    }

    /// `state.encryption_key[_file]`: required with the Redis backend, where a run another
    /// replica may take over keeps its joiners' credentials, which must never be in the clear.
    fn encryption_key(
        &mut self,
        value: Option<crate::secret::Secret>,
        file: Option<std::path::PathBuf>,
    ) -> Option<(StoreKey, String)> {
        let (encoded, source) = match self.secret(&ENCRYPTION_KEY, value, file) {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.err_plain(
                    ENCRYPTION_KEY.key,
                    format!(
                        "is required with backend = \"redis\": set {} or state.encryption_key_file (32 random bytes, base64, e.g. `openssl rand -base64 32`; the same on every replica)",
                        ENCRYPTION_KEY.env_var()
                    ),
                );
                return None;
            }
            Err(()) => return None,
        };
        match StoreKey::from_base64(encoded.expose()) {
            Ok(k) => Some((k, source)),
            Err(e) => {
                self.err(ENCRYPTION_KEY.key, format!("{e} (from {source})"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_redis_url;

    #[test]
    fn plaintext_redis_is_for_loopback_only_and_tls_for_any_host() {
        assert!(parse_redis_url("redis://127.0.0.1:6379").is_ok());
        assert!(parse_redis_url("redis://localhost:6379/2").is_ok());
        assert!(parse_redis_url("redis://:pw@[::1]:6379").is_ok());
        assert!(parse_redis_url("rediss://:pw@redis.example.com:6380").is_ok());
        let e = parse_redis_url("redis://:hunter2@redis.example.com:6379").unwrap_err();
        assert!(e.contains("rediss://") && !e.contains("hunter2"), "{e}");
        assert!(parse_redis_url("http://127.0.0.1:6379").is_err());
        assert!(parse_redis_url("not a url").is_err());
    }
}

#[cfg(test)]
mod redaction_tests {
    use crate::config::RedisUrl;
    use crate::secret::Secret;

    #[test]
    fn a_redis_urls_password_never_shows_in_debug_or_serialization() {
        let url = RedisUrl::new(
            Secret::new("rediss://default:hunter2@redis.example.com:6380/0"),
            "environment".into(),
        );
        let debug = format!("{url:?}");
        let json = serde_json::to_string(&url).unwrap();
        for shown in [&debug, &json, &url.redacted()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("redis.example.com:6380"), "{shown}");
        }
        assert!(url.expose().contains("hunter2"));
    }
}
