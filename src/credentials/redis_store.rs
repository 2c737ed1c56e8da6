//! A service identity's session in Redis (`[state] backend = "redis"`), shared by every
//! replica: the same AES-256-GCM envelope as the session file ([`Sealer`]), never a token in the
//! clear, and a lease so that one replica at a time redeems the rotating refresh token.
//!
//! Keys (the identity's name is a hash tag, so a script's keys share one cluster slot):
//!
//! - `{prefix}session:{NAME}`: a hash; `env` the sealed session, `gen` bumped on every write
//!   (the replicas' "has it changed?", as the file's stamp is), `login` bumped only by
//!   `sync-gateway login` (the gateway records the login it takes up).
//! - `{prefix}session-lock:{NAME}`: the refresh lease, `SET NX PX` with a random owner token,
//!   released by compare-and-delete.
//! - `{prefix}session-access:{NAME}`: the Graph token of the last refresh, sealed under its own
//!   AAD, with a TTL no longer than the time the gateway may use it, so the other replicas use
//!   it instead of refreshing again.
//!
//! A rotated session is written by a script that checks the lease (fencing): it writes only
//! while the lease is the writer's own (or has expired with nobody else holding it) and the
//! session is still the generation the writer redeemed, so a replica whose lease expired never
//! overwrites a newer session, a login's included. Every call goes through
//! [`Redis::call`] (bounded by `state.timeout_ms`).

use super::store::{Sealer, StoreKey, StoredSession, Unsealed};
use crate::secret::Secret;
use crate::state::{Redis, Unavailable};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The fenced write: `KEYS` session, lock, access; `ARGV` owner, expected generation, sealed
/// session, sealed access token (`""`: none), its TTL in ms. The new generation, or -1 when
/// another replica holds the lease or the session is no longer the one redeemed.
const WRITE_FENCED: &str = r#"
local lock = redis.call('GET', KEYS[2])
if lock and lock ~= ARGV[1] then
  return -1
end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen ~= tonumber(ARGV[2]) then
  return -1
end
gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('HSET', KEYS[1], 'env', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
else
  redis.call('DEL', KEYS[3])
end
return gen
"#;

/// A login's write: `KEYS` session, access; `ARGV` sealed session. Wins over any session and
/// drops the previous session's access token (the new login may be another account).
const WRITE_LOGIN: &str = r#"
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('HINCRBY', KEYS[1], 'login', 1)
redis.call('HSET', KEYS[1], 'env', ARGV[1])
redis.call('DEL', KEYS[2])
return gen
"#;

/// Release: `DEL` the lease only while it is still the caller's.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The plaintext of the shared access token's envelope.
#[derive(Serialize, Deserialize)]
struct AccessPlain {
    access_token: String,
}

/// A lease on an identity's refresh, held by this replica until released or expired.
pub struct Lease {
    owner: String,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lease(********)")
    }
}

/// What Redis holds for one identity, read in one atomic round trip.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped on every write; 0 when no session was ever stored.
    pub generation: u64,
    /// Bumped by each `login`.
    pub logins: u64,
    /// The session: `None` when none is stored; an error (for the operator) when it does not
    /// open with this identity's key.
    pub session: Result<Option<StoredSession>, String>,
    /// The Graph token of the last refresh and how long it may still be used (Redis's clock).
    pub access: Option<(Secret, Duration)>,
}

/// One identity's session in Redis.
pub struct RedisSessionStore {
    redis: Redis,
    session_key: String,
    lock_key: String,
    access_key: String,
    session: Sealer,
    access: Sealer,
    lease: Duration,
    write_fenced: redis::Script,
    write_login: redis::Script,
    release: redis::Script,
}

impl fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("key", &self.session_key)
            .finish_non_exhaustive()
    }
}

/// `SET NX PX` answers `OK` or nothing.
type SetAnswer = Option<String>;

impl RedisSessionStore {
    /// The session of `identity` in `tenant_id`, sealed under `key`; a refresh's lease lasts
    /// `lease` (longer than a refresh can take).
    pub fn new(
        redis: Redis,
        identity: &str,
        tenant_id: &str,
        key: &StoreKey,
        lease: Duration,
    ) -> RedisSessionStore {
        RedisSessionStore {
            session_key: redis.key(&format!("session:{{{identity}}}")),
            lock_key: redis.key(&format!("session-lock:{{{identity}}}")),
            access_key: redis.key(&format!("session-access:{{{identity}}}")),
            redis,
            session: Sealer::session(key, identity, tenant_id),
            access: Sealer::access_token(key, identity, tenant_id),
            lease,
            write_fenced: redis::Script::new(WRITE_FENCED),
            write_login: redis::Script::new(WRITE_LOGIN),
            release: redis::Script::new(RELEASE),
        }
    }

    /// The session's key, for the operator.
    pub fn key(&self) -> &str {
        &self.session_key
    }

    /// How long a refresh's lease lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The session, its generation and the shared access token, in one atomic round trip.
    pub async fn read(&self) -> Result<Snapshot, Unavailable> {
        let mut conn = self.redis.connection();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HMGET")
            .arg(&self.session_key)
            .arg("gen")
            .arg("login")
            .arg("env")
            .cmd("GET")
            .arg(&self.access_key)
            .cmd("PTTL")
            .arg(&self.access_key);
        type Read = (
            (Option<u64>, Option<u64>, Option<Vec<u8>>),
            Option<Vec<u8>>,
            i64,
        );
        let ((generation, logins, env), access, pttl): Read = self
            .redis
            .call("session_read", pipe.query_async(&mut conn))
            .await?;
        let session = match env {
            None => Ok(None),
            Some(bytes) => self.session.open_session(&bytes).map(Some).map_err(|e| {
                match e {
                    Unsealed::Decrypt => format!(
                        "the session in Redis ({}) cannot be decrypted with the configured key (a different key, or a session of another identity or tenant)",
                        self.session_key
                    ),
                    Unsealed::Format(why) => format!(
                        "the session in Redis ({}) is not a session: {why}",
                        self.session_key
                    ),
                }
            }),
        };
        // A token that does not open is ignored: the session refreshes instead.
        let access = access
            .filter(|_| pttl > 0)
            .and_then(|bytes| self.access.open(&bytes).ok())
            .and_then(|plain| serde_json::from_slice::<AccessPlain>(&plain).ok())
            .map(|p| {
                (
                    Secret::new(p.access_token),
                    Duration::from_millis(pttl.unsigned_abs()),
                )
            });
        Ok(Snapshot {
            generation: generation.unwrap_or(0),
            logins: logins.unwrap_or(0),
            session,
            access,
        })
    }

    /// Takes the refresh lease (`SET NX PX`, a random owner token): `None` while another
    /// replica holds it.
    pub async fn lock(&self) -> Result<Option<Lease>, Unavailable> {
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let mut conn = self.redis.connection();
        let (key, value, lease_ms) = (self.lock_key.clone(), owner.clone(), millis(self.lease));
        let set: SetAnswer = self
            .redis
            .call("session_lock", async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(set.map(|_| Lease { owner }))
    }

    /// Releases `lease` if it is still this replica's (compare-and-delete).
    pub async fn release(&self, lease: &Lease) -> Result<(), Unavailable> {
        let mut invocation = self.release.prepare_invoke();
        invocation.key(&self.lock_key).arg(&lease.owner);
        let mut conn = self.redis.connection();
        let _: i64 = self
            .redis
            .call("session_release", invocation.invoke_async(&mut conn))
            .await?;
        Ok(())
    }

    /// Writes the rotated `session` and the access token of its refresh (usable for
    /// `access.1`), fenced: only under `lease` (or an expired lease nobody took over) and only
    /// over generation `expected`. The new generation, or `None` when fenced out.
    pub async fn write_fenced(
        &self,
        lease: &Lease,
        expected: u64,
        session: &StoredSession,
        access: Option<(&Secret, Duration)>,
    ) -> Result<Option<u64>, Unavailable> {
        let (access_env, ttl_ms) = match access {
            Some((token, ttl)) if !ttl.is_zero() => {
                let plain = serde_json::to_vec(&AccessPlain {
                    access_token: token.expose().to_string(),
                })
                .expect("a token serializes");
                (self.access.seal(&plain), millis(ttl))
            }
            _ => (Vec::new(), 0),
        };
        let mut invocation = self.write_fenced.prepare_invoke();
        invocation
            .key(&self.session_key)
            .key(&self.lock_key)
            .key(&self.access_key)
            .arg(&lease.owner)
            .arg(expected)
            .arg(self.session.seal_session(session))
            .arg(access_env)
            .arg(ttl_ms);
        let mut conn = self.redis.connection();
        let generation: i64 = self
            .redis
            .call("session_write", invocation.invoke_async(&mut conn))
            .await?;
        Ok(u64::try_from(generation).ok())
    }

    /// Stores the session a `login` made, over whatever was there, without a lease: a login
    /// wins (a refresh in flight is then fenced out). Its new generation.
    pub async fn write_login(&self, session: &StoredSession) -> Result<u64, Unavailable> {
        let mut invocation = self.write_login.prepare_invoke();
        invocation
            .key(&self.session_key)
            .key(&self.access_key)
            .arg(self.session.seal_session(session));
        let mut conn = self.redis.connection();
        self.redis
            .call("session_login", invocation.invoke_async(&mut conn))
            .await
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::store::{Account, RefreshToken};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    /// A store of identity `bot` under a fresh prefix, or `None` (said why) without Redis.
    fn store(test: &str) -> Option<(RedisSessionStore, Redis, String)> {
        let prefix = format!("sg-unit:{}:", uuid::Uuid::new_v4().simple());
        let redis = crate::state::testing::redis(test, &prefix)?;
        let store =
            RedisSessionStore::new(redis.clone(), "bot", "t", &key(7), Duration::from_secs(5));
        Some((store, redis, prefix))
    }

    fn key(byte: u8) -> StoreKey {
        StoreKey::from_base64(&STANDARD.encode([byte; 32])).unwrap()
    }

    fn session(token: &str) -> StoredSession {
        StoredSession {
            refresh_token: RefreshToken::new(token),
            account: Account {
                tenant_id: "t".into(),
                object_id: Some("o".into()),
                upn: Some("svc@example.test".into()),
            },
            signed_in_at: chrono::Utc::now(),
            refreshed_at: None,
        }
    }

    /// Every key under `prefix` and its value (strings and hashes), as text; the keys deleted.
    async fn dump_and_delete(redis: &Redis, prefix: &str) -> String {
        let mut conn = redis.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut text = String::new();
        for k in &keys {
            let kind: String = redis::cmd("TYPE")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap();
            let values: Vec<Vec<u8>> = match kind.as_str() {
                "hash" => redis::cmd("HGETALL")
                    .arg(k)
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
                _ => vec![redis::cmd("GET")
                    .arg(k)
                    .query_async(&mut conn)
                    .await
                    .unwrap()],
            };
            text.push_str(k);
            for v in values {
                text.push_str(&String::from_utf8_lossy(&v));
            }
        }
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        text
    }

    #[tokio::test]
    async fn a_login_and_a_fenced_refresh_read_back_and_redis_never_holds_a_token_in_the_clear() {
        let Some((store, redis, prefix)) = store("redis session round trip") else {
            return;
        };
        let empty = store.read().await.unwrap();
        assert_eq!((empty.generation, empty.logins), (0, 0));
        assert!(matches!(empty.session, Ok(None)));
        assert_eq!(
            store
                .write_login(&session("refresh-one-0123456789"))
                .await
                .unwrap(),
            1
        );
        let lease = store.lock().await.unwrap().expect("a free lease");
        let access = Secret::new("access-token-0123456789");
        let generation = store
            .write_fenced(
                &lease,
                1,
                &session("refresh-two-0123456789"),
                Some((&access, Duration::from_secs(60))),
            )
            .await
            .unwrap();
        assert_eq!(generation, Some(2));
        store.release(&lease).await.unwrap();
        let read = store.read().await.unwrap();
        assert_eq!((read.generation, read.logins), (2, 1));
        let stored = read.session.unwrap().unwrap();
        assert_eq!(stored.refresh_token.expose(), "refresh-two-0123456789");
        let (token, usable) = read.access.expect("the shared access token");
        assert_eq!(token.expose(), "access-token-0123456789");
        assert!(usable <= Duration::from_secs(60) && !usable.is_zero());
        let text = dump_and_delete(&redis, &prefix).await;
        for clear in [
            "refresh-one-0123456789",
            "refresh-two-0123456789",
            "access-token-0123456789",
            "svc@example.test",
        ] {
            assert!(!text.contains(clear), "{clear} is in Redis in the clear");
            assert!(
                !text.contains(&STANDARD.encode(clear)),
                "{clear} is in Redis, base64"
            );
        }
    }

    #[tokio::test]
    async fn the_lease_is_one_holders_and_only_its_owner_releases_it() {
        let Some((store, redis, prefix)) = store("redis session lease") else {
            return;
        };
        let first = store.lock().await.unwrap().expect("a free lease");
        assert!(store.lock().await.unwrap().is_none());
        // A holder whose lease expired and was taken over cannot release the new holder's.
        let stranger = Lease {
            owner: "someone-else".into(),
        };
        store.release(&stranger).await.unwrap();
        assert!(store.lock().await.unwrap().is_none());
        store.release(&first).await.unwrap();
        assert!(store.lock().await.unwrap().is_some());
        dump_and_delete(&redis, &prefix).await;
    }

    #[tokio::test]
    async fn a_write_under_another_replicas_lease_or_over_a_newer_session_is_fenced_out() {
        let Some((store, redis, prefix)) = store("redis session fencing") else {
            return;
        };
        store.write_login(&session("from-login-1")).await.unwrap();
        // Another replica holds the lease: our write (its lease expired) is refused.
        let other = store.lock().await.unwrap().expect("a free lease");
        let ours = Lease {
            owner: "expired-owner".into(),
        };
        let refused = store
            .write_fenced(&ours, 1, &session("stale"), None)
            .await
            .unwrap();
        assert_eq!(refused, None);
        // A login during the holder's refresh wins over the holder's write.
        store.write_login(&session("from-login-2")).await.unwrap();
        let refused = store
            .write_fenced(&other, 1, &session("rotated-too-late"), None)
            .await
            .unwrap();
        assert_eq!(refused, None);
        let read = store.read().await.unwrap();
        assert_eq!(read.generation, 2);
        assert_eq!(
            read.session.unwrap().unwrap().refresh_token.expose(),
            "from-login-2"
        );
        // An expired lease nobody took over still writes over the generation it redeemed.
        store.release(&other).await.unwrap();
        let written = store
            .write_fenced(&ours, 2, &session("rotated"), None)
            .await
            .unwrap();
        assert_eq!(written, Some(3));
        dump_and_delete(&redis, &prefix).await;
    }

    #[tokio::test]
    async fn a_session_sealed_for_another_key_identity_or_tenant_does_not_open() {
        let Some((store, redis, prefix)) = store("redis session binding") else {
            return;
        };
        store.write_login(&session("x-0123456789")).await.unwrap();
        for (identity, tenant, k) in [("bot", "t", 8), ("other", "t", 7), ("bot", "u", 7)] {
            let other = RedisSessionStore {
                session: Sealer::session(&key(k), identity, tenant),
                ..RedisSessionStore::new(redis.clone(), "bot", "t", &key(7), Duration::from_secs(5))
            };
            let read = other.read().await.unwrap();
            assert!(read.session.unwrap_err().contains("cannot be decrypted"));
        }
        dump_and_delete(&redis, &prefix).await;
    }
}
