//! National clouds (reference §6): which login host and Graph host belong together.

use serde::{Deserialize, Serialize};
use url::Url;

/// A national cloud (reference §6): one login host and one Graph host that belong together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// Microsoft's global cloud (also GCC moderate).
    Global,
    /// US Government L4 (GCC High).
    Usgov,
    /// US Government L5 (DoD).
    UsgovDod,
    /// China, operated by 21Vianet.
    China,
}

impl Cloud {
    /// Every cloud, in configuration order.
    pub const ALL: [Cloud; 4] = [Cloud::Global, Cloud::Usgov, Cloud::UsgovDod, Cloud::China];

    /// The value of `entra.cloud` naming this cloud.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::Usgov => "usgov",
            Cloud::UsgovDod => "usgov-dod",
            Cloud::China => "china",
        }
    }

    /// The login host Entra ID serves this cloud from.
    pub fn authority_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov | Cloud::UsgovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.partner.microsoftonline.cn",
        }
    }

    /// The cloud's Microsoft Graph: its base URL and the resource of its scopes.
    pub fn graph_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::UsgovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// The clouds whose login host `host` is (US Gov L4 and L5 share one); empty when the host
    /// is no cloud's (a simulator, a proxy).
    pub fn of_login_host(host: &str) -> Vec<Cloud> {
        let host = host.to_ascii_lowercase();
        // China also answers on its older name.
        if host == "login.chinacloudapi.cn" {
            return vec![Cloud::China];
        }
        Cloud::ALL
            .into_iter()
            .filter(|c| c.authority_host().trim_start_matches("https://") == host)
            .collect()
    }

    /// The cloud whose Graph host `host` is, if any.
    pub fn of_graph_host(host: &str) -> Option<Cloud> {
        let host = host.to_ascii_lowercase();
        Cloud::ALL
            .into_iter()
            .find(|c| c.graph_host().trim_start_matches("https://") == host)
    }
}

/// Why `authority` and `graph` do not belong to one cloud (or to `cloud`), if they do not.
/// Hosts that are no cloud's (a simulator, a proxy) never mismatch.
pub(super) fn cloud_mismatch(cloud: Option<Cloud>, authority: &Url, graph: &Url) -> Option<String> {
    let login = Cloud::of_login_host(authority.host_str().unwrap_or(""));
    let graph_cloud = Cloud::of_graph_host(graph.host_str().unwrap_or(""));
    let names = |cs: &[Cloud]| cs.iter().map(|c| c.name()).collect::<Vec<_>>().join("/");
    match cloud {
        Some(k) if !login.is_empty() && !login.contains(&k) => Some(format!(
            "entra.authority_host {authority} belongs to {} but entra.cloud is {}",
            names(&login),
            k.name()
        )),
        Some(k) => graph_cloud.filter(|g| *g != k).map(|g| {
            format!(
                "graph.base_url {graph} belongs to {} but entra.cloud is {}",
                g.name(),
                k.name()
            )
        }),
        None => graph_cloud
            .filter(|g| !login.is_empty() && !login.contains(g))
            .map(|g| {
                format!(
                "entra.authority_host {authority} belongs to {} but graph.base_url {graph} to {}",
                names(&login),
                g.name()
            )
            }),
    }
}
