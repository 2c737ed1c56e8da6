//! `[graph]`: where Graph is, which resource its scopes name, and that it belongs to the same
//! cloud as the login host.

use super::check::Check;
use super::entra::Entra;
use crate::config::cloud::cloud_mismatch;
use crate::config::model::GraphConfig;
use crate::config::raw::RawGraph;

impl Check {
    pub(super) fn graph(&mut self, raw: RawGraph, entra: &Entra) -> Option<GraphConfig> {
        let cloud = entra.cloud;
        let base_url = raw
            .base_url
            .or_else(|| cloud.map(|k| k.graph_host().into()));
        if base_url.is_none() {
            self.err_plain("graph.base_url", "is required (or set entra.cloud)");
        }
        let base_url = base_url.and_then(|v| self.url("graph.base_url", Some(v)));
        if let (Some(a), Some(g)) = (&entra.authority_host, &base_url) {
            if let Some(problem) = cloud_mismatch(cloud, a, g) {
                if !entra.allow_cloud_mismatch {
                    self.err(
                        if cloud.is_some() { "entra.cloud" } else { "graph.base_url" },
                        format!(
                            "{problem}; tokens of one cloud are not accepted by another. Correct the keys, or set entra.allow_cloud_mismatch = true to force this combination"
                        ),
                    );
                }
            }
        }
        // A proxy or simulator in `base_url` does not change the resource a cloud's tokens name.
        let scope_resource = match (cloud, &base_url) {
            (Some(k), _) => Some(k.graph_host().to_string()),
            (None, Some(u)) => Some(u.origin().ascii_serialization()),
            (None, None) => None,
        };
        let timeout_seconds = self.positive("graph.timeout_seconds", raw.timeout_seconds.0);
        let status_permission = raw.status_permission.filter(|p| {
            let ok = !p.is_empty() && p.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '.');
            if !ok {
                self.err(
                    "graph.status_permission",
                    "must be one Graph permission name, e.g. DeviceManagementServiceConfig.Read.All",
                );
            }
            ok
        });
        Some(GraphConfig {
            base_url: base_url?,
            timeout_seconds,
            scope_resource: scope_resource?,
            status_permission,
        })
    }
}
