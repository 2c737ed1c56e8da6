//! Validation, one file per section: each turns its `Raw*` section into the section of
//! [`Config`], pushing every problem it finds (with the key and where its value came from)
//! instead of stopping at the first.

mod actions;
mod audit;
mod callers;
mod entra;
mod graph;
mod identities;
mod secret;
mod server;

pub use audit::{valid_schema_name, MIN_HMAC_KEY_BYTES};

use super::load::Loaded;
use super::model::{ActionsConfig, Config};
use super::origin::Origins;
use super::ConfigError;
use std::net::IpAddr;
use url::Url;

/// The problems found so far, and where each value came from.
pub(super) struct Check {
    errors: Vec<ConfigError>,
    origins: Origins,
}

impl Check {
    /// Where `key`'s value came from, inside a message about another key: the environment
    /// variable, the file, or the default.
    fn origin(&self, key: &str) -> String {
        match self.origins.env_var(key) {
            Some(var) => format!("from the environment, {var}"),
            None if self.origins.is_set(key) => "from the file".into(),
            None => "the default".into(),
        }
    }

    /// A problem with `key`; the error says where its value came from.
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::at(key, message, &self.origins));
    }

    /// A problem whose message already says where the value came from.
    fn err_plain(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(key, message));
    }

    fn required<T>(&mut self, key: &str, v: Option<T>) -> Option<T> {
        if v.is_none() {
            self.err_plain(key, "is required");
        }
        v
    }

    /// A GUID, in the lower case Entra writes in tokens (`tid`, `appid`).
    fn guid(&mut self, key: &str, v: Option<String>) -> Option<String> {
        let v = self.required(key, v)?;
        match uuid::Uuid::parse_str(&v) {
            Ok(id) => Some(id.hyphenated().to_string()),
            Err(_) => {
                self.err(key, format!("must be a GUID, got {v:?}"));
                None
            }
        }
    }

    fn url(&mut self, key: &str, v: Option<String>) -> Option<Url> {
        let v = self.required(key, v)?;
        match parse_service_url(&v) {
            Ok(u) => Some(u),
            Err(m) => {
                self.err(key, m);
                None
            }
        }
    }

    fn positive(&mut self, key: &str, v: u64) -> u64 {
        if v == 0 {
            self.err(key, "must be greater than 0");
        }
        v
    }
}

/// Every section checked; a `Config` only when nothing is wrong.
pub(super) fn validate(loaded: Loaded) -> Result<Config, Vec<ConfigError>> {
    let Loaded {
        raw,
        origins,
        azure,
        unknown,
    } = loaded;
    let mut c = Check {
        errors: unknown,
        origins,
    };
    let server = c.server(raw.server);
    let limits = c.limits(raw.limits, server.as_ref().map(|s| s.max_connections));
    let entra = c.entra(raw.entra, &azure);
    let graph = c.graph(raw.graph, &entra);
    // Every table an app may name, valid or not: a broken identity is its own error.
    let identity_names: Vec<String> = raw.identities.keys().cloned().collect();
    let callers = c.callers(raw.callers, &identity_names);
    let sync_scope = graph.as_ref().map(|g| g.scope(super::SYNC_PERMISSION));
    let identities = c.identities(
        raw.identities,
        callers.as_ref().map(|c| c.allowed_tenants.as_slice()),
        sync_scope.as_deref(),
    );
    let audit = c.audit(raw.audit);
    let sync = c.sync_action(raw.actions.sync);

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    // Every `None` above pushed an error, so these unwraps cannot fail.
    Ok(Config {
        server: server.unwrap(),
        entra: entra.config.unwrap(),
        callers: callers.unwrap(),
        graph: graph.unwrap(),
        limits: limits.unwrap(),
        audit: audit.unwrap(),
        actions: ActionsConfig {
            sync: sync.unwrap(),
        },
        identities,
    })
}

/// Parses a URL the gateway calls: `https://`, or `http://` only for loopback hosts.
pub fn parse_service_url(v: &str) -> Result<Url, String> {
    let u = Url::parse(v).map_err(|e| format!("not a URL ({e}): {v:?}"))?;
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => return Err(format!("has no host: {v:?}")),
    };
    match u.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "must use https:// (http:// is allowed only for loopback hosts): {v:?}"
            ))
        }
        s => return Err(format!("unsupported scheme {s:?}: {v:?}")),
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!("must not carry a query or fragment: {v:?}"));
    }
    Ok(u)
}
