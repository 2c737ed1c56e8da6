//! `[audit]`: one durable sink, rotation, checkpoints, hashing. The signing key is only a path
//! here: the trail loads it when it opens (and `check-config` through `preflight`).

use super::check::Check;
use super::secret::SecretKey;
use crate::config::model::{AuditConfig, AuditSinkKind};
use crate::config::names::ENV_PREFIX;
use crate::config::raw::RawAudit;

/// The shortest HMAC key `audit.hmac_key` accepts, in bytes.
pub const MIN_HMAC_KEY_BYTES: usize = 16;

/// True for a schema name the PostgreSQL sink accepts: lower-case letters, digits and `_`, at
/// most 63 bytes, not starting with a digit (so it needs no quoting beyond the double quotes
/// used).
pub fn valid_schema_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

const HMAC_KEY: SecretKey<'static> = SecretKey {
    key: "audit.hmac_key",
    file_key: Some("audit.hmac_key_file"),
    harmless: |_| false,
};

/// A URL without a password may stay in the file (it names a server, not a credential).
const POSTGRES_URL: SecretKey<'static> = SecretKey {
    key: "audit.postgres_url",
    file_key: None,
    harmless: |url| {
        url.parse::<tokio_postgres::Config>()
            .is_ok_and(|c| c.get_password().is_none())
    },
};

impl Check {
    pub(super) fn audit(&mut self, raw: RawAudit) -> Option<AuditConfig> {
        let sinks = raw.sinks;
        let durable = sinks
            .iter()
            .filter(|s| **s != AuditSinkKind::Stdout)
            .count();
        let mut ok = true;
        if durable != 1 {
            self.err(
                "audit.sinks",
                "must name exactly one durable sink, \"file\" or \"postgres\" (\"stdout\" is only a copy and never the only one)",
            );
            ok = false;
        }
        let path = if sinks.contains(&AuditSinkKind::File) {
            let p = self.required("audit.path", raw.path);
            ok &= p.is_some();
            p
        } else {
            raw.path
        };
        if !valid_schema_name(&raw.postgres_schema) {
            self.err(
                "audit.postgres_schema",
                "must be lower-case letters, digits and _ (at most 63, not starting with a digit)",
            );
            ok = false;
        }
        let postgres_url = match self.secret(&POSTGRES_URL, raw.postgres_url, None) {
            Ok(found) => found.map(|(url, _)| url),
            Err(()) => {
                ok = false;
                None
            }
        };
        if sinks.contains(&AuditSinkKind::Postgres) {
            match &postgres_url {
                None if ok => {
                    self.err_plain(
                        "audit.postgres_url",
                        format!("is required with the postgres sink (or {ENV_PREFIX}AUDIT__POSTGRES_URL)"),
                    );
                    ok = false;
                }
                None => {}
                Some(u) if u.expose().parse::<tokio_postgres::Config>().is_err() => {
                    self.err("audit.postgres_url", "is not a PostgreSQL connection URL");
                    ok = false;
                }
                Some(_) => {}
            }
        }
        let write_timeout_ms = self.positive("audit.write_timeout_ms", raw.write_timeout_ms.0);
        let every_records = self.positive(
            "audit.checkpoint_every_records",
            raw.checkpoint_every_records,
        );
        let every_seconds = self.positive(
            "audit.checkpoint_every_seconds",
            raw.checkpoint_every_seconds.0,
        );
        let hmac_key = match self.secret(&HMAC_KEY, raw.hmac_key, raw.hmac_key_file) {
            Ok(Some((k, source))) if k.expose().len() < MIN_HMAC_KEY_BYTES => {
                // The error's origin names the variable or the `hmac_key_file` line; a file
                // key's message also names the file it read.
                match source.strip_prefix("file ") {
                    Some(path) => self.err(
                        "audit.hmac_key_file",
                        format!("the key in {path} must be at least {MIN_HMAC_KEY_BYTES} bytes"),
                    ),
                    None => self.err(
                        "audit.hmac_key",
                        format!("the key must be at least {MIN_HMAC_KEY_BYTES} bytes"),
                    ),
                }
                ok = false;
                None
            }
            Ok(found) => found.map(|(k, _)| k),
            Err(()) => {
                ok = false;
                None
            }
        };
        ok.then_some(AuditConfig {
            path,
            write_timeout_ms,
            sinks,
            rotate_bytes: raw.rotate_bytes,
            rotate_seconds: raw.rotate_seconds.0,
            retain_files: raw.retain_files,
            postgres_url,
            postgres_schema: raw.postgres_schema,
            signing_key_file: raw.signing_key_file,
            checkpoint_every_records: every_records,
            checkpoint_every_seconds: every_seconds,
            hmac_key,
        })
    }
}
