//! `[callers]` and `[callers.apps]`: which tokens are accepted, and which applications act as
//! which service identity.

use super::check::Check;
use crate::config::model::CallersConfig;
use crate::config::raw::RawCallers;
use crate::domain::TenantId;
use std::collections::BTreeMap;

impl Check {
    /// `[callers]`; `identity_names` are the `[identities.NAME]` tables an app may act as.
    pub(super) fn callers(
        &mut self,
        raw: RawCallers,
        identity_names: &[String],
    ) -> Option<CallersConfig> {
        let audiences = self
            .required("callers.audiences", raw.audiences)
            .filter(|a| {
                let ok = !a.is_empty() && a.iter().all(|s| !s.trim().is_empty());
                if !ok {
                    self.err(
                        "callers.audiences",
                        "must list at least one non-empty audience",
                    );
                }
                ok
            });
        let allowed_tenants = self
            .required("callers.allowed_tenants", raw.allowed_tenants)
            .and_then(|ts| self.tenants(ts));
        let required_scope = self
            .required("callers.required_scope", raw.required_scope)
            .filter(|s| {
                let ok = !s.is_empty() && !s.contains(' ');
                if !ok {
                    self.err(
                        "callers.required_scope",
                        "must be one scope name without spaces",
                    );
                }
                ok
            });
        let kid_cooldown = raw.unknown_kid_cooldown_seconds.0;
        let new_kid_refresh = self.positive(
            "callers.new_kid_refresh_seconds",
            // The default never exceeds a shorter configured cooldown.
            raw.new_kid_refresh_seconds
                .map_or_else(|| 30.min(kid_cooldown.max(1)), |s| s.0),
        );
        if new_kid_refresh > kid_cooldown {
            self.err(
                "callers.new_kid_refresh_seconds",
                format!("must not exceed callers.unknown_kid_cooldown_seconds ({kid_cooldown})"),
            );
        }
        let keys_refresh =
            self.positive("callers.keys_refresh_seconds", raw.keys_refresh_seconds.0);
        let required_app_role = raw.required_app_role;
        if let Some(r) = &required_app_role {
            if r.is_empty() || r.contains(' ') {
                self.err(
                    "callers.required_app_role",
                    "must be one app role name without spaces",
                );
            }
        }
        let mut apps = BTreeMap::new();
        for (app_id, app) in raw.apps {
            let Ok(id) = uuid::Uuid::parse_str(&app_id) else {
                self.err(
                    &format!("callers.apps.\"{app_id}\""),
                    "must be an application (client) id (GUID)",
                );
                continue;
            };
            if !identity_names.contains(&app.run_as) {
                self.err(
                    &format!("callers.apps.\"{app_id}\".run_as"),
                    format!(
                        "names no configured identity: add [identities.{}]",
                        app.run_as
                    ),
                );
            }
            apps.insert(id.hyphenated().to_string(), app);
        }
        if required_app_role.is_none() && !apps.is_empty() {
            self.err_plain(
                "callers.required_app_role",
                "is required when callers.apps maps applications: the app role their tokens must carry in `roles` (e.g. Sync.Trigger.All)",
            );
        }
        Some(CallersConfig {
            required_app_role,
            apps,
            audiences: audiences?,
            allowed_tenants: allowed_tenants?,
            required_scope: required_scope?,
            leeway_seconds: raw.leeway_seconds.0,
            verified_cache_capacity: raw.verified_cache_capacity,
            keys_refresh_seconds: keys_refresh,
            unknown_kid_cooldown_seconds: kid_cooldown,
            new_kid_refresh_seconds: new_kid_refresh,
        })
    }

    /// `callers.allowed_tenants`: GUIDs, lower case, sorted, each once.
    fn tenants(&mut self, ts: Vec<String>) -> Option<Vec<TenantId>> {
        if ts.is_empty() {
            self.err(
                "callers.allowed_tenants",
                "must list at least one tenant id",
            );
            return None;
        }
        let mut out = Vec::new();
        for t in ts {
            match TenantId::parse(&t) {
                Some(id) => out.push(id),
                None => {
                    self.err(
                        "callers.allowed_tenants",
                        format!("{t:?} is not a tenant id (GUID)"),
                    );
                    return None;
                }
            }
        }
        out.sort();
        out.dedup();
        Some(out)
    }
}
