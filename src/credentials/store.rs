//! The session store of a service identity: one file holding its refresh token, encrypted at
//! rest with AES-256-GCM, replaced atomically.
//!
//! - The file is a small JSON envelope (`format`, `v`, `alg`, `nonce`, `ciphertext`); the
//!   plaintext is never written. The additional authenticated data binds the file to its
//!   identity and tenant, so a session file copied over another identity's does not decrypt.
//! - Writes go to a temporary file in the same directory, which is fsynced, renamed over the
//!   store and followed by an fsync of the directory: after a crash at any point the store
//!   holds the old session or the new one, never a torn file. A temporary file left by a crash
//!   is removed when the store is next opened.

use super::file_stamp::FileStamp;
use crate::secret::Secret;
use aws_lc_rs::aead::NONCE_LEN;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `format` member of a session file.
const FORMAT: &str = "sync-gateway-session";

/// Session files larger than this are refused unread.
const MAX_STORE_BYTES: u64 = 64 * 1024;

/// A temporary file older than this is debris of a crash, not a write in progress.
const DEBRIS_AGE: Duration = Duration::from_secs(60);

// Defined beside `Secret` so `config` can parse it without importing `credentials`.
pub use crate::secret::StoreKey;

/// A refresh token: opaque, and a credential for the account until it is used. Redacted in
/// `Debug`; it has no `Serialize`, so it can only reach disk through the encrypted store.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(Secret);

impl RefreshToken {
    /// Wraps the token Entra issued.
    pub fn new(value: impl Into<String>) -> Self {
        RefreshToken(Secret::new(value))
    }

    /// The token, for the one form field that sends it back to Entra.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(********)")
    }
}

/// The account a session belongs to, as its ID token named it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// `tid`
    pub tenant_id: String,
    /// `oid`
    pub object_id: Option<String>,
    /// `preferred_username` (or `upn`)
    pub upn: Option<String>,
}

/// What the store holds for one identity.
#[derive(Debug, Clone)]
pub struct StoredSession {
    /// The newest refresh token.
    pub refresh_token: RefreshToken,
    /// Who signed in.
    pub account: Account,
    /// When `login` ran.
    pub signed_in_at: DateTime<Utc>,
    /// When the token was last rotated by a refresh.
    pub refreshed_at: Option<DateTime<Utc>>,
}

/// The plaintext inside the envelope.
#[derive(Serialize, Deserialize)]
struct Plain {
    refresh_token: String,
    account: Account,
    signed_in_at: DateTime<Utc>,
    refreshed_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    v: u32,
    alg: String,
    nonce: String,
    ciphertext: String,
}

/// Why the store could not be read or written. The text names the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing, syncing or renaming failed.
    #[error("session store {path}: {source}")]
    Io {
        /// The store.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Authenticated decryption failed.
    #[error("session store {path} cannot be decrypted with the configured key (a different key, or a file of another identity or tenant)")]
    Decrypt {
        /// The store.
        path: PathBuf,
    },
    /// Not a session file of this format.
    #[error("session store {path} is not a session file: {why}")]
    Format {
        /// The store.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

/// The AEAD of every session envelope, in a file or in Redis: AES-256-GCM under the
/// identity's store key, a fresh random nonce per seal, and additional authenticated data that
/// binds the envelope to its identity, tenant and purpose (a session, or a shared access
/// token), so an envelope copied to another identity, tenant or purpose does not open.
pub(crate) struct Sealer {
    /// The gateway's one AES-256-GCM (`state::Sealer`), under the identity's store key.
    aead: crate::state::Sealer,
    aad: String,
}

/// Why an envelope did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsealed {
    /// Not an envelope of this format, version and algorithm (the words say what).
    Format(&'static str),
    /// Authenticated decryption failed: another key, identity, tenant or purpose, or an edit.
    Decrypt,
}

impl Sealer {
    /// Seals sessions of `identity` in `tenant_id` under `key` (the AAD the session file has
    /// always had, so files written before stay readable).
    pub(crate) fn session(key: &StoreKey, identity: &str, tenant_id: &str) -> Sealer {
        Sealer::with_aad(key, format!("{FORMAT}:v1:{identity}:{tenant_id}"))
    }

    /// Seals the shared access token of `identity` in `tenant_id` under `key`: another AAD
    /// than the session's, so neither envelope can stand in for the other.
    pub(crate) fn access_token(key: &StoreKey, identity: &str, tenant_id: &str) -> Sealer {
        Sealer::with_aad(
            key,
            format!("{FORMAT}:v1:access-token:{identity}:{tenant_id}"),
        )
    }

    fn with_aad(key: &StoreKey, aad: String) -> Sealer {
        Sealer {
            aead: crate::state::Sealer::new(key),
            aad,
        }
    }

    /// `plain` encrypted under a fresh nonce, as the JSON envelope.
    pub(crate) fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let (nonce, ciphertext) = self.aead.seal_detached(self.aad.as_bytes(), plain);
        serde_json::to_vec(&Envelope {
            format: FORMAT.into(),
            v: 1,
            alg: "A256GCM".into(),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(&ciphertext),
        })
        .expect("an envelope serializes")
    }

    /// The plaintext of an envelope [`Sealer::seal`] made with the same key and AAD.
    pub(crate) fn open(&self, bytes: &[u8]) -> Result<Vec<u8>, Unsealed> {
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|_| Unsealed::Format("not JSON"))?;
        if env.format != FORMAT || env.v != 1 || env.alg != "A256GCM" {
            return Err(Unsealed::Format("unknown format, version or algorithm"));
        }
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(&env.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(Unsealed::Format("bad nonce"))?;
        let sealed = STANDARD
            .decode(&env.ciphertext)
            .map_err(|_| Unsealed::Format("bad ciphertext encoding"))?;
        self.aead
            .open_detached(self.aad.as_bytes(), nonce, sealed)
            .ok_or(Unsealed::Decrypt)
    }

    /// `session` sealed: the refresh token and the account never leave in the clear.
    pub(crate) fn seal_session(&self, session: &StoredSession) -> Vec<u8> {
        let plain = Plain {
            refresh_token: session.refresh_token.expose().to_string(),
            account: session.account.clone(),
            signed_in_at: session.signed_in_at,
            refreshed_at: session.refreshed_at,
        };
        self.seal(&serde_json::to_vec(&plain).expect("a session serializes"))
    }

    /// The session in an envelope [`Sealer::seal_session`] made.
    pub(crate) fn open_session(&self, bytes: &[u8]) -> Result<StoredSession, Unsealed> {
        let plain = self.open(bytes)?;
        let p: Plain =
            serde_json::from_slice(&plain).map_err(|_| Unsealed::Format("bad plaintext"))?;
        Ok(StoredSession {
            refresh_token: RefreshToken::new(p.refresh_token),
            account: p.account,
            signed_in_at: p.signed_in_at,
            refreshed_at: p.refreshed_at,
        })
    }
}

/// One identity's encrypted session file.
pub struct SessionStore {
    path: PathBuf,
    sealer: Sealer,
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SessionStore {
    /// The store at `path` for `identity` of `tenant_id`, encrypted with `key`. Removes
    /// temporary files that a crash left behind.
    pub fn new(path: PathBuf, key: &StoreKey, identity: &str, tenant_id: &str) -> SessionStore {
        let store = SessionStore {
            path,
            sealer: Sealer::session(key, identity, tenant_id),
        };
        store.remove_debris();
        store
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's identity on disk now, to notice a replacement (e.g. by `login`).
    pub fn stamp(&self) -> Option<FileStamp> {
        FileStamp::of(&self.path)
    }

    /// The stored session; `None` when there is no file yet.
    pub fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        let io_err = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let format = |why| StoreError::Format {
            path: self.path.clone(),
            why,
        };
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        if meta.len() > MAX_STORE_BYTES {
            return Err(format("it is too large"));
        }
        let bytes = std::fs::read(&self.path).map_err(io_err)?;
        match self.sealer.open_session(&bytes) {
            Ok(session) => Ok(Some(session)),
            Err(Unsealed::Format(why)) => Err(format(why)),
            Err(Unsealed::Decrypt) => Err(StoreError::Decrypt {
                path: self.path.clone(),
            }),
        }
    }

    /// Encrypts `session` under a fresh nonce and replaces the file atomically and durably.
    pub fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        write_atomically(&self.path, &self.seal(session)).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn seal(&self, session: &StoredSession) -> Vec<u8> {
        self.sealer.seal_session(session)
    }

    fn temp_prefix(&self) -> String {
        temp_prefix(&self.path)
    }

    /// Removes temporary files of this store older than [`DEBRIS_AGE`]: younger ones may be a
    /// `login` writing right now.
    fn remove_debris(&self) {
        let Some(dir) = parent_dir(&self.path) else {
            return;
        };
        let prefix = self.temp_prefix();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= DEBRIS_AGE);
            if name.to_string_lossy().starts_with(&prefix) && old {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a temporary session file left by a crash");
                }
            }
        }
    }
}

fn parent_dir(path: &Path) -> Option<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(Path::new(".")),
        other => other,
    }
}

fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.tmp-")
}

/// The points of [`write_atomically`] at which a test may stop it, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Half of the bytes are in the temporary file.
    PartlyWritten,
    /// All bytes are in the temporary file, not yet fsynced.
    Written,
    /// The temporary file is fsynced.
    Synced,
    /// The temporary file has replaced the store; the directory is not yet fsynced.
    Renamed,
}

/// Replaces `path` with `bytes`: temporary file (0600) in the same directory, fsync, rename,
/// fsync of the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically_until(path, bytes, None)
}

/// [`write_atomically`], abandoned after `crash_after` as if the process had died there.
fn write_atomically_until(path: &Path, bytes: &[u8], crash_after: Option<Step>) -> io::Result<()> {
    let dir =
        parent_dir(path).ok_or_else(|| io::Error::other("the store path has no directory"))?;
    let tmp = dir.join(format!(
        "{}{}",
        temp_prefix(path),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if crash_after == Some(Step::PartlyWritten) {
            f.write_all(&bytes[..bytes.len() / 2])?;
            return Ok(false);
        }
        f.write_all(bytes)?;
        if crash_after == Some(Step::Written) {
            return Ok(false);
        }
        f.sync_all()?;
        drop(f);
        if crash_after == Some(Step::Synced) {
            return Ok(false);
        }
        std::fs::rename(&tmp, path)?;
        if crash_after == Some(Step::Renamed) {
            return Ok(false);
        }
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)?.sync_all()?;
        Ok(true)
    })();
    if result.is_err() {
        // A failed write (not a crash) cleans up after itself.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StoreKey {
        StoreKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap()
    }

    fn session(token: &str) -> StoredSession {
        StoredSession {
            refresh_token: RefreshToken::new(token),
            account: Account {
                tenant_id: "t".into(),
                object_id: Some("o".into()),
                upn: Some("svc@example.test".into()),
            },
            signed_in_at: Utc::now(),
            refreshed_at: None,
        }
    }

    #[test]
    fn a_saved_session_loads_back_and_the_file_never_holds_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path().join("s.session"), &key(), "bot", "t");
        assert!(store.load().unwrap().is_none());
        let token = "1.SIMrefresh-token-value-0123456789";
        store.save(&session(token)).unwrap();
        let bytes = std::fs::read(store.path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(token));
        assert!(!text.contains(&STANDARD.encode(token)));
        assert!(!text.contains("svc@example.test"));
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.refresh_token.expose(), token);
        assert_eq!(loaded.account.upn.as_deref(), Some("svc@example.test"));
    }

    #[test]
    fn the_store_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path().join("s.session"), &key(), "bot", "t");
        store.save(&session("x")).unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn another_key_or_another_identity_cannot_decrypt_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.session");
        SessionStore::new(path.clone(), &key(), "bot", "t")
            .save(&session("x"))
            .unwrap();
        let other_key = StoreKey::from_base64(&STANDARD.encode([8u8; 32])).unwrap();
        for store in [
            SessionStore::new(path.clone(), &other_key, "bot", "t"),
            SessionStore::new(path.clone(), &key(), "other-bot", "t"),
            SessionStore::new(path.clone(), &key(), "bot", "other-tenant"),
        ] {
            assert!(matches!(store.load(), Err(StoreError::Decrypt { .. })));
        }
    }

    #[test]
    fn a_store_key_must_be_32_bytes_of_base64() {
        assert!(StoreKey::from_base64("not base64!").is_err());
        assert!(StoreKey::from_base64(&STANDARD.encode([1u8; 16]))
            .unwrap_err()
            .contains("32 bytes"));
        assert!(format!("{:?}", key()).contains("********"));
    }

    #[test]
    fn a_crash_at_any_point_of_a_write_leaves_the_old_or_the_new_session_whole() {
        for step in [
            Step::PartlyWritten,
            Step::Written,
            Step::Synced,
            Step::Renamed,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = SessionStore::new(dir.path().join("s.session"), &key(), "bot", "t");
            store.save(&session("old-token")).unwrap();
            let new = store.seal(&session("new-token"));
            write_atomically_until(store.path(), &new, Some(step)).unwrap();
            // "Restart": a fresh store over the same directory.
            let reopened = SessionStore::new(store.path().to_path_buf(), &key(), "bot", "t");
            let token = reopened.load().unwrap().unwrap().refresh_token;
            let expected = if step == Step::Renamed {
                "new-token"
            } else {
                "old-token"
            };
            assert_eq!(token.expose(), expected, "crash after {step:?}");
        }
    }

    #[test]
    fn temporary_files_left_by_a_crash_are_removed_once_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.session");
        let store = SessionStore::new(path.clone(), &key(), "bot", "t");
        write_atomically_until(&path, b"half", Some(Step::PartlyWritten)).unwrap();
        let debris = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with(&store.temp_prefix())
                })
                .count()
        };
        assert_eq!(debris(), 1);
        // Young debris may be a write in progress: kept.
        SessionStore::new(path.clone(), &key(), "bot", "t");
        assert_eq!(debris(), 1);
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let f = std::fs::File::options()
                .write(true)
                .open(e.unwrap().path())
                .unwrap();
            f.set_modified(std::time::SystemTime::now() - DEBRIS_AGE * 2)
                .unwrap();
        }
        SessionStore::new(path, &key(), "bot", "t");
        assert_eq!(debris(), 0);
    }
}
