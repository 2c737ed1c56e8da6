//! `[actions.sync]`: the upstream paths, the cooldown, retries and the finished-run archive.

use super::check::Check;
use crate::config::model::SyncActionConfig;
use crate::config::raw::RawSyncAction;

impl Check {
    pub(super) fn sync_action(&mut self, raw: RawSyncAction) -> Option<SyncActionConfig> {
        for (key, path) in [
            ("actions.sync.upstream_path", &raw.upstream_path),
            ("actions.sync.status_path", &raw.status_path),
        ] {
            if !path.starts_with('/') || path.contains("..") {
                self.err(key, "must be an absolute path starting with '/'");
            }
        }
        if raw.max_attempts == 0 {
            self.err("actions.sync.max_attempts", "must be at least 1");
        }
        Some(SyncActionConfig {
            cooldown_seconds: raw.cooldown_seconds.0,
            retry_budget_seconds: raw.retry_budget_seconds.0,
            max_attempts: raw.max_attempts,
            retry_base_ms: self.positive("actions.sync.retry_base_ms", raw.retry_base_ms.0),
            status_poll_ms: self.positive("actions.sync.status_poll_ms", raw.status_poll_ms.0),
            status_poll_limit: raw.status_poll_limit,
            run_retention_seconds: self.positive(
                "actions.sync.run_retention_seconds",
                raw.run_retention_seconds.0,
            ),
            max_finished_runs: self
                .positive("actions.sync.max_finished_runs", raw.max_finished_runs),
            upstream_path: raw.upstream_path,
            status_path: raw.status_path,
        })
    }
}
