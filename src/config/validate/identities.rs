//! `[identities.NAME]`: the identities callers that are not users act as: a delegated service
//! account whose session the gateway holds (`kind = "delegated"`, the default), or the
//! gateway's own application (`kind = "application"`), which has a tenant and nothing else.

use super::check::Check;
use super::secret::SecretKey;
use crate::config::model::{DelegatedIdentity, IdentityConfig, IdentityKind, StateBackendKind};
use crate::config::raw::RawIdentity;
use crate::domain::TenantId;
use crate::secret::StoreKey;
use std::collections::BTreeMap;
use std::path::Path;

impl Check {
    /// Every table; `allowed_tenants` and `sync_scope` are `None` when their own keys are wrong.
    pub(super) fn identities(
        &mut self,
        raw: BTreeMap<String, RawIdentity>,
        allowed_tenants: Option<&[TenantId]>,
        sync_scope: Option<&str>,
        backend: Option<StateBackendKind>,
    ) -> BTreeMap<String, IdentityConfig> {
        let mut out = BTreeMap::new();
        for (name, raw) in raw {
            if let Some(id) = self.identity(&name, raw, allowed_tenants, sync_scope, backend) {
                out.insert(name, id);
            }
        }
        out
    }

    fn identity(
        &mut self,
        name: &str,
        mut raw: RawIdentity,
        allowed_tenants: Option<&[TenantId]>,
        sync_scope: Option<&str>,
        backend: Option<StateBackendKind>,
    ) -> Option<IdentityConfig> {
        let key = |k: &str| format!("identities.{name}.{k}");
        if !valid_identity_name(name) {
            self.err(
                &format!("identities.{name}"),
                "a name is 1 to 64 characters: lower-case letters, digits, '-' and '_', starting with a letter or digit",
            );
            return None;
        }
        let kind = match raw.kind.as_deref().map(str::trim) {
            None | Some("delegated") => Some(Kind::Delegated),
            Some("application") => Some(Kind::Application),
            Some(other) => {
                self.err(
                    &key("kind"),
                    format!("must be one of delegated, application; got {other:?}"),
                );
                None
            }
        };
        let tenant_id = self.tenant(&key("tenant_id"), raw.tenant_id.take());
        if let (Some(t), Some(allowed)) = (&tenant_id, allowed_tenants) {
            if !allowed.contains(t) {
                self.err(
                    &key("tenant_id"),
                    "must be one of callers.allowed_tenants (only callers of the identity's own tenant act as it)",
                );
            }
        }
        let kind = match kind? {
            Kind::Application => self.application_identity(name, raw),
            Kind::Delegated => self
                .delegated_identity(name, raw, sync_scope, backend)
                .map(IdentityKind::Delegated),
        };
        Some(IdentityConfig {
            name: name.to_string(),
            tenant_id: tenant_id?,
            kind: kind?,
        })
    }

    /// `kind = "application"`: the gateway's own client credential acts, so the keys of a
    /// delegated session have no meaning here; each one set is an error naming it (a leftover
    /// `store_path` suggests the operator meant a delegated identity).
    fn application_identity(&mut self, name: &str, raw: RawIdentity) -> Option<IdentityKind> {
        let set = [
            ("scopes", raw.scopes.is_some()),
            ("store_path", raw.store_path.is_some()),
            ("store_key", raw.store_key.is_some()),
            ("store_key_file", raw.store_key_file.is_some()),
        ];
        let mut ok = true;
        for (k, present) in set {
            if present {
                ok = false;
                self.err(
                    &format!("identities.{name}.{k}"),
                    "applies to kind = \"delegated\" only: an application identity acts with the \
                     gateway's own client credential and its application permission, and holds no \
                     session (remove the key, or set kind = \"delegated\")",
                );
            }
        }
        ok.then_some(IdentityKind::Application)
    }

    fn delegated_identity(
        &mut self,
        name: &str,
        raw: RawIdentity,
        sync_scope: Option<&str>,
        backend: Option<StateBackendKind>,
    ) -> Option<DelegatedIdentity> {
        let key = |k: &str| format!("identities.{name}.{k}");
        let scopes = match raw.scopes {
            None => sync_scope.map(|s| vec![s.to_string()]),
            Some(v) if v.is_empty() || v.iter().any(|s| s.is_empty() || s.contains(' ')) => {
                self.err(&key("scopes"), "must list scopes, each without spaces");
                None
            }
            Some(v) => Some(v),
        };
        if let (Some(scopes), Some(sync)) = (&scopes, sync_scope) {
            if !scopes.iter().any(|s| s == sync) {
                self.err(
                    &key("scopes"),
                    format!("must include {sync}: the sync action needs it"),
                );
            }
        }
        // The session's file, on the memory backend; on the redis backend the session lives in
        // Redis and a `store_path` (the chart writes one) is not used.
        let store_path = match backend {
            Some(StateBackendKind::Redis) => Some(None),
            _ => self.required(&key("store_path"), raw.store_path).map(Some),
        };
        if let Some(Some(p)) = &store_path {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                self.err(
                    &key("store_path"),
                    format!(
                        "the directory {} does not exist: create it (mkdir -p {})",
                        dir.display(),
                        dir.display()
                    ),
                );
            }
        }
        let (store_key, store_key_source) =
            self.store_key(name, raw.store_key, raw.store_key_file)?;
        Some(DelegatedIdentity {
            scopes: scopes?,
            store_path: store_path?,
            store_key,
            store_key_source,
        })
    }

    /// The session store's key, parsed into a [`StoreKey`] here so a bad one is named at start.
    fn store_key(
        &mut self,
        name: &str,
        value: Option<crate::secret::Secret>,
        file: Option<std::path::PathBuf>,
    ) -> Option<(StoreKey, String)> {
        let key = format!("identities.{name}.store_key");
        let file_key = format!("identities.{name}.store_key_file");
        let rule = SecretKey {
            key: &key,
            file_key: Some(&file_key),
            harmless: |_| false,
        };
        let (encoded, source) = match self.secret(&rule, value, file) {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.err_plain(
                    &key,
                    format!(
                        "is required: set {} or {file_key} (32 random bytes, base64, e.g. `openssl rand -base64 32`)",
                        rule.env_var()
                    ),
                );
                return None;
            }
            Err(()) => return None,
        };
        match StoreKey::from_base64(encoded.expose()) {
            Ok(k) => Some((k, source)),
            Err(e) => {
                self.err(&key, format!("{e} (from {source})"));
                None
            }
        }
    }
}

/// `identities.NAME.kind`, before the rest of the table is read by its rules.
enum Kind {
    Delegated,
    Application,
}

/// Identity names appear in commands, file names and environment variable names.
pub(super) fn valid_identity_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}
